"""One block of CPU work per core: a thread pool whose jobs call single-threaded BLAS.

Why. The im2col convolution alternates a Numba kernel (im2col) and a BLAS GEMM. With both
multi-threaded, every call wakes one thread pool while the other's threads are still spinning
(OpenBLAS busy-waits for a while after each call), so on a 2-core machine three or four threads
fight over two cores. Measured here (AMD EPYC, 2 cores): an im2col of 1x16x64x64 took 0.17 ms on
its own and 0.75 ms between GEMMs. Instead, :func:`map_blocks` gives each worker thread whole
blocks - its im2col (a Numba kernel compiled ``nogil=True``) and its GEMM (NumPy's matmul, which
releases the GIL) - with the BLAS library held to one thread meanwhile. No pool hands over to
another, and a block's columns are still in its core's cache when its GEMM reads them.

The number of workers is Numba's thread count (``NUMBA_NUM_THREADS``, or
``numba.set_num_threads``); at 1 the jobs run in the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numba

T = TypeVar("T")

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_blas: list[Any] | None = None  # threadpoolctl controllers of the loaded BLAS libraries
_blas_modules = -1  # len(sys.modules) when _blas was found: a new extension may bring a BLAS
_blas_users = 0  # map_blocks calls in flight (from any thread): the limit is process-wide
_blas_saved: list[tuple[Any, int]] = []  # (library, its thread count) when the hold began
_local = threading.local()  # .inside: this thread is running a map_blocks job


def _forget_after_fork() -> None:
    """In a forked child the parent's pool threads do not exist: start afresh (a job queued on
    the old pool would wait forever), with no BLAS hold in flight. A fork from one thread while
    another was inside map_blocks would leave the child's BLAS on one thread for good (nobody
    is left to end that hold): give it back the thread counts saved when the hold began."""
    global _lock, _blas_users
    _lock = threading.Lock()
    _pools.clear()
    if _blas_users > 0:
        for lib, n in _blas_saved:
            _set_threads(lib, n)
    _blas_users = 0


def _hold_lock_for_fork() -> None:
    # No BLAS resize may be half done in another thread when the process forks: threadpoolctl's
    # own lock, taken inside it, would stay locked in the child.
    _lock.acquire()


def _release_lock_after_fork() -> None:
    _lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold_lock_for_fork, after_in_parent=_release_lock_after_fork,
                        after_in_child=_forget_after_fork)


def workers() -> int:
    """How many blocks run at once: Numba's thread count for the calling thread."""
    return max(1, int(numba.get_num_threads()))


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="minisegnet-cpu")
        return pool


def _blas_libraries() -> list[Any]:
    """The loaded BLAS libraries, looked up again whenever modules were imported since the last
    look (SciPy, for one, loads its own OpenBLAS after NumPy's): a library missed here would
    keep all its threads inside the pool's jobs."""
    global _blas, _blas_modules
    if _blas is None or len(sys.modules) != _blas_modules:
        from threadpoolctl import ThreadpoolController

        _blas_modules = len(sys.modules)
        _blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    return _blas


def _set_threads(lib: Any, n: int) -> None:
    """``lib.set_num_threads(n)`` from whichever thread calls. threadpoolctl (3.6+) lets only one
    "controlling" thread resize OpenBLAS's process-wide pool and silently ignores the others, but
    a hold may begin in one thread and end in another (measured before this: a hold begun by
    the main thread and ended by a worker left BLAS on one thread for good, and holds taken by
    worker threads did nothing). So each change takes control and gives it back. Callers hold
    ``_lock``."""
    clear = getattr(type(lib), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    lib.set_num_threads(n)
    if clear is not None:
        clear()


def _enter_single_threaded_blas() -> None:
    """Hold every BLAS library to one thread; nested and concurrent callers share one hold."""
    global _blas_users, _blas_saved
    with _lock:
        if _blas_users == 0:
            _blas_saved = [(lib, lib.num_threads) for lib in _blas_libraries()]
            for lib, _ in _blas_saved:
                _set_threads(lib, 1)
        _blas_users += 1


def _leave_single_threaded_blas() -> None:
    global _blas_users
    with _lock:
        _blas_users -= 1
        if _blas_users == 0:
            for lib, n in _blas_saved:
                _set_threads(lib, n)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS held to one thread while the block runs (a shared hold, as :func:`map_blocks` takes).

    For the GEMMs a CPU conv pass runs in the calling thread alone (a small pass, a single block).
    Left multi-threaded, such a GEMM wakes OpenBLAS's own threads, which then busy-wait for a while
    after the call, on the cores the next pass's workers need. Measured on the 2-core Intel Xeon
    (same-padded U-Net training step, 4x1x128x128, quiet machine): 512 ms with OpenBLAS on 2
    threads outside the pool's passes, 417 ms with it on one; the process burnt 844 against
    631 ms of CPU. A hold costs ~17 us."""
    if getattr(_local, "inside", False):  # a pool job: its map_blocks caller holds BLAS already
        yield
        return
    _enter_single_threaded_blas()
    try:
        yield
    finally:
        _leave_single_threaded_blas()


def map_blocks(job: Callable[[Any], T], blocks: Sequence[Any]) -> list[T]:
    """``[job(b) for b in blocks]``, the blocks spread over :func:`workers` threads.

    ``job`` must release the GIL for its heavy work (Numba ``nogil`` kernels, NumPy matmul) and
    must not write memory that another block's job writes. BLAS runs single-threaded meanwhile.
    The calling thread runs the first block itself (one hand-over fewer: it matters for small
    convs, where a block takes tens of microseconds). Results come back in the order of
    ``blocks``; an exception raised by a job is re-raised here once every block has finished.
    A job that calls map_blocks again runs that inner call's blocks in its own thread.
    """
    n = min(workers(), len(blocks))
    if getattr(_local, "inside", False):
        return [job(b) for b in blocks]
    if n <= 1:
        with single_threaded_blas():
            return [job(b) for b in blocks]
    _enter_single_threaded_blas()
    try:
        futures = [_pool(n - 1).submit(_run_inside, job, b) for b in blocks[1:]]
        try:
            first = _run_inside(job, blocks[0])
        finally:
            wait(futures)  # every block is done before the caller may touch its buffers
        return [first, *(f.result() for f in futures)]
    finally:
        _leave_single_threaded_blas()


def _run_inside(job: Callable[[Any], T], block: Any) -> T:
    """``job(block)``, flagged so that a map_blocks inside it does not queue on the pool."""
    _local.inside = True
    try:
        return job(block)
    finally:
        _local.inside = False


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """[a, b) ranges cutting range(total) into ``parts`` near-equal non-empty pieces."""
    parts = max(1, min(parts, total))
    return [(total * k // parts, total * (k + 1) // parts) for k in range(parts)]
