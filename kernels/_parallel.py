"""Numba ``parallel=True`` CPU kernels that any Python thread may call at any time.

Why. Numba's threading layers differ in what they survive. The OpenMP layer busy-waits after each
parallel region (next to an OpenBLAS call on 2 cores that cost a flat ~8 ms per launch: a small
U-Net training step took 36 ms against 9.8 ms), and GNU OpenMP is not fork-safe. The workqueue
layer never spins, so :mod:`minisegnet.backend` picks it by default, but it aborts the whole
process ("Concurrent access has been detected") when two threads launch parallel regions at once;
TBB is safe but is not installed with NumPy and Numba. So safety cannot come from the layer.

How. Every parallel kernel in ``kernels/`` is declared with :func:`parallel_njit` and so is
compiled twice from the same Python function: a ``parallel=True`` version and a serial
``nogil=True`` one. A call takes one process-wide launch lock *without waiting*: the thread that
gets it runs the parallel version on all cores; a thread that finds it taken runs the serial
version in its own thread, GIL released, instead of queueing behind the other (the cores are busy
with that one anyway). So at most one parallel region is ever in flight, whatever the threading
layer, and no thread blocks on another: no abort and no deadlock. The serial version compiles on
first contention only (and is cached on disk like the parallel one).

Same results. The two versions run the same loop bodies: every ``prange`` iteration in
``kernels/`` writes only its own outputs (no prange reductions; a kernel that splits its work by
thread count takes that count as an argument), so the serial version gives bitwise the same
result as the parallel one. ``tests/test_threads.py`` checks this from four threads at once.

A process forked while another thread held the lock gets a fresh, free lock.
"""

from __future__ import annotations

import functools
import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba

_launch = threading.Lock()
KERNELS: list[ParallelKernel] = []  # every kernel declared with parallel_njit, for tests


def _fresh_lock_after_fork() -> None:
    # The thread that held the lock does not exist in the child: it would never be released.
    global _launch
    _launch = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)


class ParallelKernel:
    """A kernel compiled twice: ``.parallel`` (``parallel=True``) and ``.serial`` (one thread,
    ``nogil=True``). Calling it runs ``.parallel`` when no other thread is in a parallel region,
    else ``.serial`` (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.parallel = numba.njit(parallel=True, nogil=True, **options)(fn)
        # A twin function object with its own qualified name: Numba's on-disk cache keys entries
        # by name and bytecode, not by compile flags, so without it the serial dispatcher could
        # load the parallel machine code from the cache (and vice versa).
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__module__ = fn.__module__
        twin.__doc__ = fn.__doc__
        self.serial = numba.njit(nogil=True, **options)(twin)
        functools.update_wrapper(self, fn)
        KERNELS.append(self)

    def __call__(self, *args: Any) -> Any:
        lock = _launch
        if lock.acquire(blocking=False):
            try:
                return self.parallel(*args)
            finally:
                lock.release()
        return self.serial(*args)


def parallel_njit(**options: Any) -> Callable[[Callable[..., Any]], ParallelKernel]:
    """``@parallel_njit(cache=True)``: like ``@numba.njit(parallel=True, cache=True)``, but safe to
    call from several Python threads at once (one parallel region at a time; the others run the
    same function serially). The kernel must be called from Python, not from other jitted code,
    and its ``prange`` iterations must write disjoint outputs (no prange reductions)."""
    return lambda fn: ParallelKernel(fn, options)
