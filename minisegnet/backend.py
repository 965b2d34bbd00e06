"""Array backends (NumPy / CuPy) and the kernel-implementation registry.

Two independent choices are made for every op:

* **Where the data lives** is decided by the array type: NumPy arrays are "cpu", CuPy arrays are
  "cuda". CuPy is used only when `cupy.cuda.is_available()` says a GPU is there: importing CuPy
  succeeds on machines without one and only fails later, at the first allocation.
* **Which kernel runs** is decided per call by :func:`current_impl`. CuPy arrays always run the
  CUDA kernels. NumPy arrays run the Numba CPU kernels unless :func:`use_impl` (a context manager)
  or the ``MINISEGNET_IMPL`` environment variable names another implementation:
  ``"reference"`` (loops straight from the formula), ``"numpy"`` (vectorised NumPy), ``"numba"``
  or ``"cuda"`` (on NumPy arrays that means Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1``,
  or host-to-device copies around each launch on a real GPU).

Kernel modules in ``minisegnet.kernels`` each end with a table ``IMPLS`` mapping a kernel name to
``{implementation name: function}``; :func:`register` adds such a table and :func:`kernel` looks
one up. A missing implementation raises ``NotImplementedError`` naming both: no silent fallback.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

IMPLEMENTATIONS = ("reference", "numpy", "numba", "cuda")
DEVICES = ("cpu", "cuda")

# --------------------------------------------------------------------------------------------
# Numba threading layer, for speed only. Numba's default OpenMP layer busy-waits after a parallel
# region, and on 2 cores a Numba parallel call next to a NumPy (BLAS) matmul was measured to cost
# a flat ~8 ms. The workqueue layer never spins. It must be chosen before the first parallel
# kernel runs, so it is set here, at import; a user's own NUMBA_THREADING_LAYER wins (set "tbb"
# when your own parallel=True code runs in several threads: workqueue aborts on that). Thread
# safety does not rest on the layer: minisegnet launches one parallel region at a time and runs
# a contended call serially in its own thread (kernels/_parallel.py), whatever the layer.
if "NUMBA_THREADING_LAYER" not in os.environ:
    import numba

    numba.config.THREADING_LAYER = "workqueue"

# --------------------------------------------------------------------------------------------
# CuPy, imported lazily and only trusted when a device is really there.
_cupy: ModuleType | None = None
_cupy_checked = False


def cupy_module() -> ModuleType | None:
    """Return the ``cupy`` module if it imports *and* a CUDA device is available, else None."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy

            if cupy.cuda.is_available():
                _cupy = cupy
        except Exception:  # ImportError, or a CUDA driver/runtime error on a GPU-less machine
            _cupy = None
    return _cupy


def is_cupy_array(a: Any) -> bool:
    """True for a ``cupy.ndarray`` (checked without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (like ``cupy.get_array_module``)."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy

            return cupy
    return np


def array_device(a: Any) -> str:
    """"cuda" for a CuPy array, "cpu" otherwise."""
    return "cuda" if is_cupy_array(a) else "cpu"


def check_device(device: str) -> str:
    """Validate a device name and return it; "cuda" needs a working CuPy."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and cupy_module() is None:
        raise RuntimeError(
            "device='cuda' needs CuPy and a CUDA GPU: install minisegnet[cuda12] or "
            "minisegnet[cuda13]; cupy.cuda.is_available() is False on this machine"
        )
    return device


def to_device(a: Any, device: str) -> Any:
    """Move an array to ``device`` ("cpu" -> NumPy, "cuda" -> CuPy); a no-op when already there."""
    check_device(device)
    if device == "cpu":
        return a.get() if is_cupy_array(a) else np.asarray(a)
    cp = cupy_module()
    assert cp is not None
    return cp.asarray(a)


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy copy/view of a NumPy or CuPy array."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


# --------------------------------------------------------------------------------------------
# Implementation choice.
_local = threading.local()


def _check_impl(impl: str) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    return impl


def default_impl() -> str:
    """The implementation for NumPy arrays outside any ``use_impl``: $MINISEGNET_IMPL or "numba"."""
    return _check_impl(os.environ.get("MINISEGNET_IMPL", "numba") or "numba")


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[str]:
    """Run the kernels of ``impl`` on NumPy arrays inside the ``with`` block.

    >>> with use_impl("reference"):
    ...     y = F.conv2d(x, w)          # the plain-loop oracle
    """
    _check_impl(impl)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(impl)
    try:
        yield impl
    finally:
        stack.pop()


def current_impl(*arrays: Any) -> str:
    """The implementation a kernel call on ``arrays`` runs: "cuda" for CuPy, else the chosen one."""
    if any(is_cupy_array(a) for a in arrays):
        return "cuda"
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else default_impl()


# --------------------------------------------------------------------------------------------
# Registry: kernel name -> {implementation: function}.
REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


def register(impls: dict[str, dict[str, Callable[..., Any]]]) -> None:
    """Add a kernel module's ``IMPLS`` table ({kernel: {implementation: fn}}) to the registry."""
    for name, table in impls.items():
        for impl in table:
            _check_impl(impl)
        REGISTRY.setdefault(name, {}).update(table)


def kernel(name: str, *arrays: Any, impl: str | None = None) -> Callable[..., Any]:
    """The function implementing kernel ``name`` for ``arrays`` (or for an explicit ``impl``)."""
    if name not in REGISTRY:
        raise NotImplementedError(f"no kernel named {name!r} is registered")
    chosen = impl or current_impl(*arrays)
    fn = REGISTRY[name].get(chosen)
    if fn is None:
        have = ", ".join(sorted(REGISTRY[name]))
        raise NotImplementedError(
            f"op {name!r} has no {chosen!r} implementation (it has: {have})"
        )
    return fn


def implementations(name: str) -> tuple[str, ...]:
    """The implementation names registered for kernel ``name``, in canonical order."""
    return tuple(i for i in IMPLEMENTATIONS if i in REGISTRY.get(name, {}))
