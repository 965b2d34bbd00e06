"""Small helpers shared by the tests: tolerances per dtype and an implementation comparison."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import minisegnet as msn

# Tolerances for comparing two implementations of the same op. float32 sums of a few hundred terms
# differ in the last bits depending on summation order; scale atol by the magnitude involved.
TOL = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-10, 1e-12)}


def assert_close(actual, expected, dtype=None, scale: float = 1.0, what: str = "") -> None:
    """Shape, dtype, then values within the dtype's tolerance (atol scaled by ``scale``)."""
    actual = msn.backend.to_numpy(actual)
    expected = msn.backend.to_numpy(expected)
    assert actual.shape == expected.shape, f"{what} shape {actual.shape} != {expected.shape}"
    dt = np.dtype(dtype or expected.dtype)
    assert actual.dtype == expected.dtype, f"{what} dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOL.get(dt, (0, 0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1.0), err_msg=what)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def run_with_memory_limit(setup: str, body: str, budget_mb: int = 1500,
                          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``setup`` (imports, warm-up calls: compiling is not what is measured), then cap the
    child's address space at what it uses plus ``budget_mb`` (``RLIMIT_AS``), then run ``body``;
    the child prints "ok" at the end. A runaway allocation fails inside the child, never the
    machine. Returns the finished process (check ``returncode`` and ``stdout``)."""
    code = "\n".join([
        "import resource, numpy as np, minisegnet as msn, minisegnet.functional as F",
        setup,
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize'))",
        f"cap = (vm + {int(budget_mb)} * 1024) * 1024",
        "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))",
        body,
        "print('ok')",
    ])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
