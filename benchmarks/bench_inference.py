"""inference: overlap-tile U-Net prediction of one large image, in one process and on Dask workers.

A standalone script (the harness in ``common.py`` times one op per implementation; this measures
schedulers and memory): the real nuclei image tiled into an S x S mosaic, saved as a float32
``.npy`` (loaded whole by predict_tiled, read window by window by Dask's blocks), a
random-weight same-padded U-Net, and

* ``predict_tiled``            the whole image in one process (in memory, tile T)
* ``dask threads``             ``predict_dask(npy, tile=T).to_zarr(...)`` on Dask's threads
* ``distributed, N workers``   the same on a ``LocalCluster`` of N worker processes (1 thread each)

For each: wall time, megapixels per second and peak resident memory of the process that computed
(``VmHWM`` of a fresh process: the predict_tiled child, each worker), next to its resident
memory before the computation. Every Dask result is validated against predict_tiled (labels
identical) before its numbers count. A second table runs one worker on 2048^2 ... 16384^2
images with a cheap base-1 network: a worker's peak memory against the image size. Writes
``benchmarks/RESULTS_inference.md`` (CPU model and the load average beside the numbers: the
machine is shared). About 10 minutes on 2 busy cores (the 1 GiB 16384^2 image: 4 of them).

    python benchmarks/bench_inference.py                       # 4096 x 4096, tile 512
    python benchmarks/bench_inference.py --size 1024 --memory-sizes 1024,2048 --out -  # print only
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

HERE = Path(__file__).resolve().parent


def mosaic(size: int) -> np.ndarray:
    """(1, size, size) float32: the nuclei image halves and their mirror images, tiled."""
    from minisegnet import data

    halves = [data.load("nuclei", split=s).images[0, 0] for s in ("train", "test")]
    flips = (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])
    cells = [f(a) for a in halves for f in flips]
    rows = [np.concatenate([cells[(i * 3 + j) % 8] for j in range(-(-size // 512))], 1)
            for i in range(-(-size // 256))]
    return np.ascontiguousarray(np.concatenate(rows, 0)[None, :size, :size], dtype=np.float32)


def make_model(base: int, depth: int):
    import minisegnet as msn
    from minisegnet.models.unet import UNet

    msn.random.manual_seed(0)
    return UNet(1, 2, base_channels=base, depth=depth, padding="same", batch_norm=True).eval()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address space.
    Not ru_maxrss, which Linux carries across fork and exec: a worker spawned by a parent that
    once held a big image would report the parent's peak."""
    return _status_mb("VmHWM")


def _tiled_child(npy: str, base: int, depth: int, tile: int, q) -> None:
    model = make_model(base, depth)
    from minisegnet.models.unet import predict_tiled

    image = np.load(npy)  # in memory: predict_tiled takes an array
    before = rss_mb()
    t = time.perf_counter()
    labels = predict_tiled(model, image, tile=tile).argmax(0).astype(np.uint8)
    q.put((time.perf_counter() - t, before, peak_rss_mb(), labels))


def in_child(target, *args):
    """``target(*args, queue)`` in a fresh process (its peak RSS is this run's alone); what it put
    on the queue. A child that dies is an error, not a hang."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:
        try:
            out = q.get(timeout=2)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{target.__name__} died (exit code {p.exitcode})") from None
    p.join()
    return out


def run_tiled(npy: str, base: int, depth: int, tile: int):
    return in_child(_tiled_child, npy, base, depth, tile)


def _threads_child(npy: str, base: int, depth: int, tile: int, out: str, q) -> None:
    from minisegnet.inference import predict_dask

    labels = predict_dask(make_model(base, depth), npy, tile=tile)
    before = rss_mb()
    t = time.perf_counter()
    import dask

    with dask.config.set(scheduler="threads"):
        labels.to_zarr(out, overwrite=True, compute=True)
    q.put((time.perf_counter() - t, before, peak_rss_mb()))


def run_dask(npy: str, model, tile: int, out: str, workers: int | None, base: int, depth: int):
    """Time predict_dask(...).to_zarr on Dask's threads in a fresh process (workers None) or on a
    fresh LocalCluster of ``workers`` processes."""
    import zarr

    from minisegnet.inference import predict_dask

    labels = predict_dask(model, npy, tile=tile)
    if workers is None:
        dt, before, peak = in_child(_threads_child, npy, base, depth, tile, out)
        return dt, [(before, peak)], labels, np.asarray(zarr.open_array(out))
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.run(lambda: __import__("minisegnet.models.unet"))  # imports before the clock
        before = client.run(rss_mb)
        t = time.perf_counter()
        client.compute(labels.to_zarr(out, overwrite=True, compute=False), sync=True)
        dt = time.perf_counter() - t
        peak = client.run(peak_rss_mb)
        mem = [(before[w], peak[w]) for w in sorted(peak)]
    return dt, mem, labels, np.asarray(zarr.open_array(out))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def row_of(size: int, name: str, blocks: str, dt: float, mem, load: float) -> str:
    return (f"| {size}x{size} | {name} | {blocks} | {dt:.1f} | {size * size / 1e6 / dt:.2f} | "
            + ", ".join(f"{b:.0f} -> {p:.0f} (+{p - b:.0f})" for b, p in mem) + f" | {load:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="image side S (default 4096)")
    ap.add_argument("--tile", type=int, default=512, help="output tile = Dask block (default 512)")
    ap.add_argument("--base", type=int, default=4, help="U-Net base channels (default 4)")
    ap.add_argument("--depth", type=int, default=3, help="U-Net depth (default 3)")
    ap.add_argument("--memory-sizes", default="2048,4096,8192,16384",
                    help="sides of the memory sweep (1 worker, base-1 U-Net; '' to skip)")
    ap.add_argument("--out", default=str(HERE / "RESULTS_inference.md"), help="'-' to print only")
    args = ap.parse_args(argv)

    model = make_model(args.base, args.depth)
    speed, memory, started = [], [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        size = args.size
        npy = os.path.join(tmp, f"mosaic{size}.npy")
        np.save(npy, mosaic(size))
        ref = None
        for name, workers in [("predict_tiled, 1 process", "tiled"),
                              ("predict_dask, Dask threads", None),
                              ("predict_dask, distributed 1 worker", 1),
                              ("predict_dask, distributed 2 workers", 2)]:
            load0 = os.getloadavg()[0]
            if workers == "tiled":
                dt, before, peak, ref = run_tiled(npy, args.base, args.depth, args.tile)
                mem, blocks = [(before, peak)], "-"
            else:
                dt, mem, labels, got = run_dask(npy, model, args.tile,
                                                os.path.join(tmp, "labels.zarr"), workers,
                                                args.base, args.depth)
                assert np.array_equal(got, ref), f"{name}: labels differ from predict_tiled"
                blocks = f"{labels.numblocks[0]}x{labels.numblocks[1]} of {labels.chunksize[0]}"
            speed.append(row_of(size, name, blocks, dt, mem, (load0 + os.getloadavg()[0]) / 2))
            print(speed[-1], flush=True)
        os.remove(npy)
        # Memory against image size: a cheap network, so that big images take seconds.
        small_model = make_model(1, 2)
        for size in [int(s) for s in args.memory_sizes.split(",") if s]:
            npy = os.path.join(tmp, f"mosaic{size}.npy")
            np.save(npy, mosaic(size))
            load0 = os.getloadavg()[0]
            dt, mem, labels, _ = run_dask(npy, small_model, args.tile,
                                          os.path.join(tmp, "labels.zarr"), 1, 1, 2)
            blocks = f"{labels.numblocks[0]}x{labels.numblocks[1]} of {labels.chunksize[0]}"
            memory.append(row_of(size, f"1 worker ({size * size * 4 / 2**20:.0f} MB image)",
                                 blocks, dt, mem, (load0 + os.getloadavg()[0]) / 2))
            print(memory[-1], flush=True)
            os.remove(npy)
    table = ["| image | run | blocks | seconds | MP/s | memory MB (before -> peak (+increase)) "
             "| load avg |",
             "|---|---|---|---|---|---|---|"]
    header = [
        "# Overlap-tile prediction of a large image: one process against Dask workers",
        "",
        f"`python benchmarks/bench_inference.py --size {args.size} --tile {args.tile} --base "
        f"{args.base} --depth {args.depth}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{time.time() - started:.0f} s in all.",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, shared with other engineers "
        "(load average = mean of the 1-minute load before and after each run). Image: the nuclei "
        "mosaic, a float32 `.npy` (predict_tiled loads it whole; each Dask block reads its own "
        "window from it). Model: random-weight same-padded U-Net "
        f"(base {args.base}, depth {args.depth}, batch norm), 2 classes. Dask runs write uint8 "
        "labels to zarr (never gathered) and are checked equal to predict_tiled's labels first. "
        "Workers: 1 thread each (Numba's kernels use all cores inside each).",
        "",
        "Memory: resident MB of the computing process before the run -> its peak (VmHWM of a "
        "fresh process: a child for predict_tiled and for the threads, each worker of a fresh "
        "cluster; one pair per worker). predict_tiled holds the image and the (K, H, W) float32 "
        "logits. predict_dask on a file: each block is one task that reads its own window from "
        "the file (its tile plus the network's context, mirrored at the border) and returns its "
        "labels; tasks share no data, so a worker holds the model and the tiles it is running.",
        "",
        "## Throughput",
        "",
        *table, *speed,
        "",
        "## Peak memory of one worker against image size",
        "",
        f"1 worker, tile {args.tile}, a base-1 depth-2 U-Net (cheap, so that the large images "
        "take seconds; the blocks are the same as above). Peak - before should not depend on "
        "the image size.",
        "",
        *table, *memory,
    ]
    text = "\n".join(header) + "\n"
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
