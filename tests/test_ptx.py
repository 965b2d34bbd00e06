"""Compile every CUDA kernel to PTX for both float dtypes.

The CUDA simulator runs kernels as Python, so it accepts code the real compiler rejects (a float64
literal meeting a float32 array, an unsupported NumPy call, a Python object in a kernel). Compiling
to PTX with Numba's real CUDA front end catches those without a GPU. Every kernels module lists its
kernels in ``PTX = [(python_function, [signature, ...]), ...]``.
"""

from __future__ import annotations

import importlib
import pkgutil

import minisegnet.kernels as kernels_pkg
import pytest
from minisegnet.kernels._cuda import PTX_CC

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(kernels_pkg.__path__) if not m.name.startswith("_")
)
# Teaching tools with no GPU version (said in their headers).
NO_CUDA = {"conv_matrix"}

CASES = []
for name in MODULES:
    mod = importlib.import_module(f"minisegnet.kernels.{name}")
    for fn, sigs in getattr(mod, "PTX", []):
        for sig in sigs:
            CASES.append(pytest.param(fn, sig, id=f"{name}.{fn.__name__}[{sig}]"))


def test_every_kernel_module_lists_its_cuda_kernels():
    for name in MODULES:
        if name in NO_CUDA:
            continue
        mod = importlib.import_module(f"minisegnet.kernels.{name}")
        assert getattr(mod, "PTX", None), f"kernels/{name}.py has no PTX list of CUDA kernels"
        assert "cuda" in next(iter(mod.IMPLS.values())), f"kernels/{name}.py has no cuda impl"


@pytest.mark.parametrize("fn, sig", CASES)
def test_compiles_to_ptx(fn, sig):
    from numba import cuda

    ptx, _ = cuda.compile_ptx(fn, sig, cc=PTX_CC)
    assert ".entry" in ptx  # a real kernel entry point was emitted
