"""minisegnet/_cpu_pool.py: blocks spread over the cores with BLAS held to one thread meanwhile,
and the BLAS thread count given back afterwards, whatever happens in the jobs."""

from __future__ import annotations

import threading

import numba
import pytest
from helpers import numba_threads
from threadpoolctl import threadpool_info

from minisegnet import _cpu_pool


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_workers():
    with numba_threads(2):  # tests/conftest.py starts Numba with 2+ threads on any runner
        yield


def test_results_in_order_on_pool_threads_with_single_threaded_blas(two_workers):
    before = blas_threads()
    seen = {}

    def job(b):
        seen[b] = (threading.current_thread().name, blas_threads())
        return b * b

    assert _cpu_pool.map_blocks(job, list(range(7))) == [b * b for b in range(7)]
    assert seen[0][0] == threading.current_thread().name  # the caller takes the first block
    assert all(seen[b][0].startswith("minisegnet-cpu") for b in range(1, 7))
    assert all(all(n == 1 for n in counts) for _, counts in seen.values())
    assert blas_threads() == before


def test_an_exception_reaches_the_caller_and_blas_is_restored(two_workers):
    before = blas_threads()

    def job(b):
        if b == 3:
            raise ValueError("block 3")
        return b

    with pytest.raises(ValueError, match="block 3"):
        _cpu_pool.map_blocks(job, list(range(5)))
    assert blas_threads() == before


def test_concurrent_and_nested_callers_share_one_hold(two_workers):
    # Two threads calling at once, each job calling map_blocks again (run inline in the worker):
    # the BLAS thread count must come back to where it was, not to the 1 that one caller saw.
    before = blas_threads()
    results = {}
    start = threading.Barrier(2)

    def inner(b):
        return _cpu_pool.map_blocks(lambda c: (b, c), [0, 1])

    def caller(k):
        start.wait()
        results[k] = _cpu_pool.map_blocks(inner, list(range(4)))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [[(b, 0), (b, 1)] for b in range(4)]
    assert results == {0: expected, 1: expected}
    assert blas_threads() == before


def test_a_hold_ended_by_another_thread_gives_blas_back(two_workers):
    # threadpoolctl lets only one thread resize OpenBLAS and ignores the others: a hold begun by
    # this thread and ended by another must still restore the thread count, and a hold taken by
    # a non-main thread must still hold BLAS to one thread.
    before = blas_threads()
    entered, go = threading.Event(), threading.Event()
    seen = []

    def other():
        _cpu_pool._enter_single_threaded_blas()
        seen.append(blas_threads())
        entered.set()
        go.wait(60)
        _cpu_pool._leave_single_threaded_blas()

    _cpu_pool._enter_single_threaded_blas()
    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(60)
    _cpu_pool._leave_single_threaded_blas()  # this thread leaves first: the other ends the hold
    go.set()
    t.join()
    assert blas_threads() == before
    # a hold from a non-main thread after this one has resized BLAS
    held = []
    t = threading.Thread(target=lambda: _cpu_pool.map_blocks(
        lambda b: held.append(blas_threads()), [0, 1]))
    t.start()
    t.join()
    assert held and all(all(n == 1 for n in counts) for counts in held + seen)
    assert blas_threads() == before


def test_one_worker_runs_inline():
    with numba_threads(1):
        names = _cpu_pool.map_blocks(lambda b: threading.current_thread().name, [0, 1, 2])
    assert names == [threading.current_thread().name] * 3


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_a_pass_run_in_the_calling_thread_holds_blas_to_one_thread(two_workers, monkeypatch, op):
    # A small conv (below PER_CORE_MIN_FLOPS: no pool) still runs its GEMMs with BLAS on one
    # thread: a multi-threaded OpenBLAS call leaves its threads spinning on the pool's cores.
    import numpy as np
    from threadpoolctl import threadpool_limits

    import minisegnet as msn
    import minisegnet.functional as F

    seen = []
    real = np.matmul

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    x = np.ones((1, 4, 6, 6), np.float32)
    w = np.ones((4, 4, 2, 2), np.float32)
    with msn.use_impl("numba"):  # first calls: kernels compiled, every BLAS library loaded
        F.conv2d(x, w, padding=1), F.conv_transpose2d(x, w, stride=2)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        monkeypatch.setattr(np, "matmul", spy)
        with msn.use_impl("numba"):
            if op == "conv2d":
                F.conv2d(x, w, padding=1)
            else:
                F.conv_transpose2d(x, w, stride=2)
        monkeypatch.setattr(np, "matmul", real)
        assert blas_threads() == before
    assert before and max(before) == 2, "the test needs BLAS on 2 threads to mean anything"
    assert seen and all(counts == [1] * len(counts) for counts in seen), seen


@pytest.mark.parametrize("total, parts", [(10, 3), (3, 5), (1, 1), (7, 7), (100, 8)])
def test_split_covers_the_range_in_near_equal_pieces(total, parts):
    pieces = _cpu_pool.split(total, parts)
    assert len(pieces) == min(total, parts)
    assert [a for a, _ in pieces[1:]] == [b for _, b in pieces[:-1]]
    assert pieces[0][0] == 0 and pieces[-1][1] == total
    sizes = [b - a for a, b in pieces]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_working_pool(two_workers):
    # A data-loading child forked after the parent used the pool must not queue work on the
    # parent's threads, which do not exist in the child: it would wait forever.
    import multiprocessing as mp

    assert _cpu_pool.map_blocks(lambda b: b + 1, [1, 2, 3]) == [2, 3, 4]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_blocks_in_child).get(timeout=60)
    assert result == [2, 3, 4]


def _blocks_in_child():
    numba.set_num_threads(2)
    return _cpu_pool.map_blocks(lambda b: b + 1, [1, 2, 3])
