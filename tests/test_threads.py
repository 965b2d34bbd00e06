"""SPEC "Concurrency": ops, a model's forward and backward, run from several Python threads at once,
give the results of serial calls (no abort, no deadlock), and a process forked while another
thread is inside an op works, with its BLAS threads back.

Numba's workqueue threading layer aborts the whole process when two threads launch parallel
kernels at once, so the threaded run happens in a child process: a regression fails this test
with the child's message instead of killing the test runner.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np
import pytest
from minisegnet.kernels import _parallel
from threadpoolctl import threadpool_info

import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor, _cpu_pool

THREADS, ROUNDS = 4, 50


def inputs(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    f32 = np.float32
    return {
        # 4x16x32x32 -> 16 3x3: 19 MFLOP, above conv2d's per-core threshold, so the conv runs on
        # minisegnet's CPU pool; everything else runs Numba parallel kernels.
        "x": r.standard_normal((4, 16, 32, 32)).astype(f32),
        "w": (r.standard_normal((16, 16, 3, 3)) * 0.1).astype(f32),
        "wt": (r.standard_normal((16, 4, 3, 3)) * 0.1).astype(f32),
        "boxes": np.array([[0, 1.5, 2.0, 20.0, 25.5], [3, 0, 0, 63, 63], [2, 10, 4, 30, 12]], f32),
        "image": r.random((2, 3, 24, 24)).astype(f32),
        "target": r.integers(0, 3, (2, 24, 24)),
    }


def model() -> nn.Module:
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(8, 3, 1),
    )
    r = np.random.default_rng(1)  # the same weights in every thread
    for p in m.parameters():
        p.data[...] = r.standard_normal(p.shape).astype(p.dtype) * 0.2
    return m


def run_ops(a: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A chain through every op with a Numba parallel kernel, backward, then a small model's
    training step; every output and gradient, as arrays."""
    x, w = Tensor(a["x"], requires_grad=True), Tensor(a["w"], requires_grad=True)
    wt = Tensor(a["wt"], requires_grad=True)
    y = F.relu(F.conv2d(x, w, padding=1))  # (4, 16, 32, 32)
    p, idx = F.max_pool2d(y, 2, return_indices=True)  # (4, 16, 16, 16)
    q = F.max_unpool2d(p, idx, 2)  # (4, 16, 32, 32)
    z = F.conv_transpose2d(p, wt, stride=2, padding=1, output_padding=1)  # (4, 4, 32, 32)
    u = F.interpolate(z, scale_factor=0.5, mode="bilinear")  # (4, 4, 16, 16)
    r = F.roi_align(q, a["boxes"], 4, sampling_ratio=2)  # (3, 16, 4, 4)
    ((r * r).sum() + (u * u).mean()).backward()
    out = [t.data for t in (y, z, u, p, idx, q, r)] + [x.grad, w.grad, wt.grad]
    m = model()
    logits = m(Tensor(a["image"]))
    F.cross_entropy(logits, Tensor(a["target"])).backward()
    return out + [logits.data] + [prm.grad for prm in m.parameters()]


def threaded_run() -> int:
    """THREADS threads x ROUNDS rounds of run_ops, each round compared with the serial result of
    its input; returns the number of Numba kernels whose serial twin ran (contended calls)."""
    cases = [inputs(k) for k in range(THREADS)]
    expected = [run_ops(c) for c in cases]
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def worker(k: int) -> None:
        try:
            start.wait()
            for rnd in range(ROUNDS):
                got = run_ops(cases[k])
                for i, (g, e) in enumerate(zip(got, expected[k])):
                    if g.dtype != e.dtype or not np.array_equal(g, e):
                        errors.append(f"thread {k} round {rnd}: output {i} differs")
                        return
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is still running: deadlock?"
    assert not errors, errors[:5]
    return sum(1 for kern in _parallel.KERNELS if kern.serial.signatures)


def test_ops_from_four_threads_at_once_match_serial_calls():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_threads; "
            "print('serial kernels used:', test_threads.threaded_run())")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(2, os.cpu_count() or 1)))
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    used = int(proc.stdout.strip().rsplit(" ", 1)[-1])
    # The contended path really ran: some calls found another thread's parallel region in
    # flight and took the serial twin (else this test would not show that path is safe).
    assert used > 0, proc.stdout


def test_serial_twin_gives_the_parallel_result():
    # The contended path, forced: the same call with the launch lock held by another thread.
    a = inputs(7)
    expected = run_ops(a)
    held, release = threading.Event(), threading.Event()

    def hold():
        with _parallel._launch:
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(60)
    try:
        got = run_ops(a)
    finally:
        release.set()
        t.join()
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and np.array_equal(g, e), f"output {i} differs"
    assert any(k.serial.signatures for k in _parallel.KERNELS)


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_mid_op_runs_ops_with_its_blas_threads_back():
    # The main thread forks from inside a pool job (BLAS held to one thread) while a pool thread
    # holds the parallel launch lock: neither the hold nor the lock may outlive them in the child.
    assert numba.get_num_threads() >= 2, "conftest must start Numba with 2+ threads"
    a = inputs(3)
    expected = run_ops(a)
    before = blas_threads()
    locked, release = threading.Event(), threading.Event()

    def job(b):
        if b == 1:  # on a pool thread
            with _parallel._launch:
                locked.set()
                release.wait(60)
            return None
        try:  # b == 0 runs on the calling (main) thread
            assert locked.wait(60)
            assert all(n == 1 for n in blas_threads())  # the hold is on
            return _fork_and_run(a, expected, before)
        finally:
            release.set()

    status = _cpu_pool.map_blocks(job, [0, 1])[0]
    assert status == b"\x00", f"child status {status!r} (2: wrong BLAS threads or results)"
    assert blas_threads() == before


def _fork_and_run(a, expected, before) -> bytes:
    """Fork; the child checks its BLAS threads, runs run_ops on a fresh thread and in this one,
    and reports one status byte (0: all good); the parent returns that byte."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running the parent's cleanup
        status = 1
        try:
            ok = blas_threads() == before and _parallel._launch.acquire(blocking=False)
            _parallel._launch.release()
            got = []
            t = threading.Thread(target=lambda: got.append(run_ops(a)))
            t.start()
            t.join(120)
            got.append(run_ops(a))
            ok = ok and len(got) == 2 and all(
                np.array_equal(g, e) for run in got for g, e in zip(run, expected))
            status = 0 if ok else 2
        finally:
            os.write(wfd, bytes([status]))
            os._exit(0)
    os.close(wfd)
    ready, _, _ = select.select([rfd], [], [], 120)
    status = os.read(rfd, 1) if ready else b"timeout"
    os.close(rfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return status
