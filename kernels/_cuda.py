"""Shared CUDA launch helpers: grid sizing, output allocation, float signatures for PTX checks."""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np
from numba import cuda, types
from numba.np.numpy_support import from_dtype

# Numba's simulator runs each thread as a Python thread: keep blocks small there so a test's few
# hundred threads do not become thousands of idle ones.
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
THREADS = 32 if SIMULATOR else 256
# Compute capability used for the PTX compile checks (any GPU since Volta).
PTX_CC = (7, 0)


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Number of blocks so that ``blocks * threads >= n`` (at least one)."""
    return max(1, (int(n) + threads - 1) // threads)


def xp_of(a: Any):
    """The array module (numpy or cupy) that owns ``a``."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def empty_like_module(a: Any, shape: tuple[int, ...], dtype: Any = None, zero: bool = False) -> Any:
    """An output array on the same side (host or device) as ``a``."""
    xp = xp_of(a)
    dt = a.dtype if dtype is None else dtype
    return xp.zeros(shape, dtype=dt) if zero else xp.empty(shape, dtype=dt)


# Launch plumbing shared by every kernel file. CuPy arrays go to the kernels as they are; NumPy
# arrays are copied to the device once and results copied back once (the simulator and GPU-less
# tests take this path).
def to_dev(a: Any, like: Any = None) -> Any:
    """``a`` as a C-contiguous array on ``like``'s side (default: ``a``'s own): device or CuPy."""
    xp = xp_of(a if like is None else like)
    if xp is np:
        return cuda.to_device(np.ascontiguousarray(a))
    return xp.ascontiguousarray(xp.asarray(a))


def dev_empty(like: Any, shape: tuple[int, ...], dtype: Any, fill: Any = None) -> Any:
    """An output on ``like``'s side: a Numba device array for NumPy, a CuPy array for CuPy."""
    xp = xp_of(like)
    if xp is np:
        return cuda.device_array(shape, dtype) if fill is None else cuda.to_device(
            np.full(shape, fill, dtype))
    return xp.empty(shape, dtype) if fill is None else xp.full(shape, fill, dtype)


def to_host_like(like: Any, a: Any) -> Any:
    """A kernel's output back on ``like``'s side: copied to the host for NumPy callers."""
    return a.copy_to_host() if xp_of(like) is np else a


def contiguous(a: Any) -> Any:
    """``a`` C-contiguous, with its own array module."""
    return xp_of(a).ascontiguousarray(a)


def launch(kernel: Any, n: int, *args: Any) -> None:
    """Launch a 1-D grid of at least ``n`` threads; each thread checks ``i < n`` itself."""
    if n <= 0:
        return
    kernel[blocks_for(n), THREADS](*args)


def float_array(ndim: int, dtype: Any) -> types.Array:
    """A Numba array type for PTX signatures: ``float_array(4, np.float32)`` is float32[:, :, :, :].
    """
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C")


FLOAT_DTYPES = (np.float32, np.float64)


def twins(fn):
    """(CPU helper, CUDA helper) compiled from one scalar-only Python function.

    An ordinary ``@njit`` for the CPU kernels (LLVM inlines it anyway; an IR-level inline makes
    parallel kernels compile slower) and an ``inline="always"`` ``@njit`` for the CUDA kernels:
    inlined at Numba-IR level, which lets ``numba.cuda.compile_ptx`` type it on a machine without
    a GPU. Scalars in and out, so that the CUDA simulator can call the helper as it is.
    """
    return numba.njit(cache=True)(fn), numba.njit(inline="always")(fn)
