"""Pick OpenBLAS's AVX-512 kernels on AMD CPUs that have AVX-512 but that it does not recognise.

NumPy's bundled OpenBLAS (0.3.31) takes AMD Zen 4/5 CPUs for Haswell and runs its AVX2 kernels;
its SkylakeX (AVX-512) kernels run float32 GEMM 1.5-1.9x faster there (measured on the 2-core
AMD EPYC machines this project is built on: 95 -> 175 GFLOP/s at 2048^3). OpenBLAS reads
``OPENBLAS_CORETYPE`` once, when NumPy is first imported, so this must run before that: it is the
first import of ``minisegnet``. It does nothing when NumPy is already loaded, when the variable is
already set (yours wins), or on any other CPU.
"""

from __future__ import annotations

import os
import sys


def prefer_avx512_openblas() -> bool:
    """Set OPENBLAS_CORETYPE=SkylakeX when that is safe and useful; True if it was set."""
    if "numpy" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            info = f.read(1 << 16)
    except OSError:  # not Linux
        return False
    flags = set()
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    # SkylakeX kernels need AVX-512 F, BW, VL, DQ and CD; Zen 4 and later have them all.
    if "AuthenticAMD" in info and {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        return True
    return False


prefer_avx512_openblas()
