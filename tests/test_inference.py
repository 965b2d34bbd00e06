"""predict_dask (SPEC "Large images"): overlap-tile U-Net prediction on Dask equals predict_tiled,
on the threaded scheduler, a process pool and a dask.distributed cluster of worker processes; the
model travels once per worker; a killed worker loses nothing; bad input fails fast.

The images are mosaics of the real nuclei image (train and test halves, flipped), the models small
random-weight U-Nets: a valid-padded one (the paper's scheme, halo 20) and a same-padded one with
batch norm (context 48). The 2048 x 2048 runs of the issue are marked slow; the default run uses
a 203 x 269 crop (odd sizes: the last tiles overhang the image) with several blocks per axis.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="needs the [dask] extra")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import minisegnet as msn  # noqa: E402
from minisegnet import cli, data, inference  # noqa: E402
from minisegnet.inference import predict_dask  # noqa: E402
from minisegnet.models.unet import UNet, predict_tiled  # noqa: E402
from minisegnet.training import CheckpointError, save_checkpoint  # noqa: E402

SMALL = (203, 269)
TILE = 96


def nuclei_mosaic(h: int, w: int) -> np.ndarray:
    """(1, h, w) float32: the nuclei images (256 x 512 each) and their mirror images, tiled."""
    halves = [data.load("nuclei", split=s).images[0, 0] for s in ("train", "test")]
    flips = (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])
    cells = [f(a) for a in halves for f in flips]
    rows = [np.concatenate([cells[(i * 3 + j) % len(cells)] for j in range(-(-w // 512))], 1)
            for i in range(-(-h // 256))]
    return np.ascontiguousarray(np.concatenate(rows, 0)[None, :h, :w], dtype=np.float32)


def make_model(kind: str) -> UNet:
    msn.random.manual_seed(14)
    if kind == "valid":
        return UNet(1, 2, base_channels=4, depth=2, padding="valid", batch_norm=False)
    m = UNet(1, 3, base_channels=4, depth=3, padding="same", batch_norm=True)
    r = np.random.default_rng(3)  # running statistics that change the output
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b[...] = r.normal(0, 0.1, b.shape)
        elif name.endswith("running_var"):
            b[...] = r.uniform(0.5, 2.0, b.shape)
    return m


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(0))
    return e / e.sum(0)


def assert_matches(labels: np.ndarray, probs: np.ndarray | None, logits: np.ndarray) -> None:
    """Labels identical to the argmax of predict_tiled's logits, probabilities within 1e-5."""
    assert labels.shape == logits.shape[1:] and labels.dtype.kind in "iu"
    np.testing.assert_array_equal(labels, logits.argmax(0))
    if probs is not None:
        assert probs.shape == logits.shape and probs.dtype == np.float32
        np.testing.assert_allclose(probs, softmax(logits), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def models() -> dict[str, UNet]:
    return {k: make_model(k) for k in ("valid", "same")}


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return nuclei_mosaic(*SMALL)


@pytest.fixture(scope="module")
def reference(models, small):
    cache: dict = {}

    def get(kind: str, tile=TILE) -> np.ndarray:
        if (kind, tile) not in cache:
            cache[kind, tile] = predict_tiled(models[kind], small, tile=tile)
        return cache[kind, tile]

    return get


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each, on the loopback interface only."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.ERROR) as c, \
            distributed.Client(c, set_as_default=False, timeout=60) as client:
        yield client


def worker_stats(client) -> dict[str, dict[str, int]]:
    return client.run(lambda: dict(inference.STATS))


# ------------------------------------------------------------------------------ equal results


@pytest.mark.parametrize("kind", ["valid", "same"])
@pytest.mark.parametrize("tile", [TILE, None], ids=["tile96", "tileNone"])
def test_threads_equal_predict_tiled(models, small, reference, kind, tile):
    labels = predict_dask(models[kind], small, tile=tile)
    probs = predict_dask(models[kind], small, tile=tile, output="probabilities")
    assert isinstance(labels, da.Array) and labels.shape == SMALL
    if tile is not None:
        assert labels.numblocks[0] > 1 and labels.numblocks[1] > 1  # real block seams
    assert_matches(labels.compute(scheduler="threads"), probs.compute(scheduler="threads"),
                   reference(kind, tile))


@pytest.mark.parametrize("kind", ["valid", "same"])
def test_local_cluster_equals_predict_tiled_and_ships_the_model_once(models, small, reference,
                                                                     cluster, kind):
    before = worker_stats(cluster)
    labels = predict_dask(models[kind], small, tile=TILE)
    probs = predict_dask(models[kind], small, tile=TILE, output="probabilities")
    got_labels, got_probs = cluster.compute([labels, probs], sync=True)
    assert_matches(got_labels, got_probs, reference(kind))
    after = worker_stats(cluster)
    blocks = labels.npartitions
    assert blocks >= 6 and len(after) == 2
    for w, s in after.items():
        # One unpickled copy per worker per computation (two computations here), against a
        # copy per block (2 x 6+) if the model travelled with the tasks; one build per worker.
        assert s["unpickled"] - before.get(w, {"unpickled": 0})["unpickled"] <= 2, (w, s, blocks)
        assert s["built"] - before.get(w, {"built": 0})["built"] <= 1, (w, s)
    assert sum(s["built"] - before.get(w, {"built": 0})["built"] for w, s in after.items()) >= 1


class RecordingPool:
    """What Dask's process scheduler sends its pool: ``dask.compute(..., scheduler="processes",
    pool=RecordingPool(inner))`` records each task's pickled payload (its function, arguments and
    the values of its dependencies) by key, then hands the batch to ``inner``."""

    def __init__(self, inner) -> None:
        self.inner, self._max_workers, self.payloads = inner, inner._max_workers, {}

    def submit(self, fn, batch):
        for key, payload, *_ in batch:
            self.payloads[key] = payload
        return self.inner.submit(fn, batch)


def carrying(payloads: dict, model: UNet) -> list:
    """The keys whose payload holds the model's weights (the bytes of its largest array)."""
    needle = max((np.asarray(v) for v in model.state_dict().values()), key=lambda v: v.nbytes)
    assert needle.nbytes >= 1024
    return [k for k, p in payloads.items() if needle.tobytes() in p]


@pytest.mark.parametrize("source", ["npy", "array"])
def test_process_pool_sends_the_weights_once_not_with_every_block(models, small, reference,
                                                                   tmp_path, source):
    """Dask's process pool pickles every task with its inputs. The weights must go in one task
    (the model key's), each block getting a small handle that loads them once per process.
    The pool here runs the tasks in threads: what it is sent is what a process pool is sent."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    model = make_model("same")  # 3 classes, batch norm: its own token
    image = str(tmp_path / "img.npy") if source == "npy" else small
    np.save(tmp_path / "img.npy", small)
    before = dict(inference.STATS)
    logits = predict_dask(model, image, tile=TILE, output="logits")
    with ThreadPoolExecutor(2) as inner:
        pool = RecordingPool(inner)
        (got,) = dask.compute(logits, scheduler="processes", pool=pool)
    np.testing.assert_array_equal(got, reference("same"))
    blocks = [k for k in pool.payloads if str(k[0] if isinstance(k, tuple) else k).startswith(
        "predict-dask")]
    assert len(blocks) >= 6
    assert len(carrying(pool.payloads, model)) == 1, carrying(pool.payloads, model)
    assert not set(carrying(pool.payloads, model)) & set(blocks)
    if source == "npy":  # a block that reads its own window from the file: a small task
        weights = sum(np.asarray(v).nbytes for v in model.state_dict().values())
        assert max(len(pool.payloads[k]) for k in blocks) < min(weights / 4, 8000)
    # one process stands in for all: the weights were unpickled once, the network built once
    assert inference.STATS["unpickled"] - before["unpickled"] == 1
    assert inference.STATS["built"] - before["built"] <= 1


def test_model_handle_pickles_small_and_loads_once_per_process(models):
    import pickle

    spec = inference.ModelSpec(models["valid"])
    wire = pickle.dumps(spec)  # a spec carries its weights (and writes a weights file)
    handle = inference._handle_of(pickle.loads(wire))
    small_wire = pickle.dumps(handle)
    assert len(small_wire) < len(wire) / 4 and os.path.isfile(spec.path)
    inference._MODELS.clear()  # as in a fresh worker process
    before = dict(inference.STATS)
    copies = [pickle.loads(small_wire) for _ in range(5)]
    nets = {id(h.model()) for h in copies}
    assert len(nets) == 1  # one network for the process ...
    assert inference.STATS["loaded"] - before["loaded"] == 1  # ... read from the file once
    assert inference.STATS["built"] - before["built"] == 1
    x = msn.Tensor(np.random.default_rng(0).random((1, 1, 60, 60), np.float32))
    with msn.no_grad():  # the same network
        np.testing.assert_array_equal(copies[0].model()(x).numpy(), spec.model()(x).numpy())
    path = spec.path
    del spec, copies, handle
    import gc

    gc.collect()
    assert not os.path.exists(path)  # the temporary weights file goes with its spec


def test_threads_reuse_the_callers_model_and_snapshot_its_weights(models, small, reference):
    model = make_model("valid")
    rng_state = msn.random.default_rng().bit_generator.state
    built = inference.STATS["built"]
    labels = predict_dask(model, small, tile=TILE, output="logits")
    for p in model.parameters():  # training goes on after the call: the graph keeps the weights
        p.data[...] = 0
    got = labels.compute(scheduler="threads")
    np.testing.assert_array_equal(got, reference("valid"))  # bitwise: the same tiles
    assert inference.STATS["built"] == built  # no rebuild in the calling process ...
    assert msn.random.default_rng().bit_generator.state == rng_state  # ... and no random draws


def test_graph_is_lazy_aligned_and_has_one_model_key(models):
    model = models["same"]
    big = da.zeros((1, 40000, 30000), dtype=np.uint16, chunks=(1, 5000, 7000))
    t = time.perf_counter()
    labels = predict_dask(model, big, tile=1024)
    assert time.perf_counter() - t < 30  # builds the graph, computes nothing
    assert labels.shape == (40000, 30000) and labels.dtype == np.uint8
    for chunks in labels.chunks:  # block origins on the tile grid (1024, a multiple of 2^3)
        assert all(c == 1024 for c in chunks[:-1])
    from dask.core import get_dependencies

    graph = dict(labels.__dask_graph__())
    model_keys = [k for k in graph if "minisegnet-model" in str(k)]
    assert len(model_keys) == 1  # one copy of the weights in the graph ...
    blocks = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("predict-dask")]
    assert len(blocks) == labels.npartitions == 40 * 30
    for k in blocks[:50]:  # ... that every block depends on
        assert model_keys[0] in get_dependencies(graph, k)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 40), (19, 2), (33, 64)])
@pytest.mark.parametrize("kind", ["valid", "same"])
def test_images_smaller_than_a_tile_are_mirrored_as_predict_tiled_does(models, small, kind, shape):
    """Defined behaviour: an image smaller than one tile (or than the halo) is one block,
    mirrored at the border exactly as predict_tiled mirrors it (np.pad's reflect, repeated)."""
    img = small[:, 100 : 100 + shape[0], 50 : 50 + shape[1]]
    ref = predict_tiled(models[kind], img)
    got = predict_dask(models[kind], img[0], output="logits").compute(scheduler="sync")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert_matches(predict_dask(models[kind], img).compute(scheduler="sync"), None, ref)


def test_npy_zarr_dask_inputs_and_zarr_output(models, small, reference, tmp_path):
    """Every input form gives the same labels; the result streams to zarr block by block."""
    np.save(tmp_path / "img.npy", small)
    da.from_array(small[0], chunks=(64, 100)).to_zarr(str(tmp_path / "img.zarr"))
    odd = da.from_array(small, chunks=(1, 37, 211))  # chunks unrelated to the tile grid
    want = reference("valid").argmax(0)
    for image in (tmp_path / "img.npy", str(tmp_path / "img.zarr"), odd, small[0]):
        labels = predict_dask(models["valid"], image, tile=TILE)
        np.testing.assert_array_equal(labels.compute(scheduler="threads"), want)
    labels.to_zarr(str(tmp_path / "labels.zarr"))
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "labels.zarr"))), want)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_file_block_reads_its_window_mirrored_as_np_pad(tmp_path, order):
    """A block of a .npy image reads its own window (row by row, or through a memory map for a
    Fortran-ordered file), mirrored beyond the image as np.pad's reflect mirrors."""
    img = np.random.default_rng(5).integers(0, 60000, (3, 23, 31)).astype(np.uint16)
    np.save(tmp_path / "img.npy", np.asfortranarray(img) if order == "F" else img)
    reader = inference._FileImage(str(tmp_path / "img.npy"), "npy")
    assert (reader.offset is None) == (order == "F")
    padded = np.pad(img, ((0, 0), (40, 40), (40, 40)), mode="reflect")
    for a, b, c, d in [(0, 23, 0, 31), (-7, 12, 20, 45), (-40, 63, -3, 5), (5, 6, 30, 71)]:
        got = reader.window(a, b, c, d)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, padded[:, a + 40 : b + 40, c + 40 : d + 40])


def write_checkpoint(path, model: UNet, name: str, kwargs: dict) -> str:
    meta = {"config": {"model": name, "model_kwargs": kwargs, "data": "nuclei"},
            "num_classes": model.num_classes, "in_channels": model.in_channels,
            "normalization": {"method": "percentile", "low": 1.0, "high": 99.8, "clip": True}}
    save_checkpoint(str(path), model, meta)
    return str(path)


def test_checkpoint_path_is_accepted(models, small, reference, tmp_path):
    ckpt = write_checkpoint(tmp_path / "valid.npz", models["valid"], "unet-valid",
                            {"base_channels": 4, "depth": 2})
    got = predict_dask(ckpt, small, tile=TILE, output="logits").compute(scheduler="threads")
    np.testing.assert_array_equal(got, reference("valid"))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("image, kwargs, error, words", [
    (np.zeros((1, 1, 64, 64), np.float32), {}, ValueError, ["(1, 1, 64, 64)", "(H, W)"]),
    (np.zeros((2, 64, 64), np.float32), {}, ValueError, ["(2, 64, 64)", "in_channels=1"]),
    (np.zeros((0, 64), np.float32), {}, ValueError, ["(1, 0, 64)"]),
    (np.zeros((64, 64), bool), {}, TypeError, ["bool"]),
    (np.zeros((64, 64), np.float32), {"output": "masks"}, ValueError, ["output", "'masks'"]),
    (np.zeros((64, 64), np.float32), {"tile": 3}, ValueError, ["tile", "smallest"]),
    ("/nonexistent/big.npy", {}, FileNotFoundError, ["/nonexistent/big.npy"]),
    ("/etc/hostname", {}, ValueError, [".npy", "zarr"]),
])
def test_bad_input_is_a_clear_error(models, image, kwargs, error, words):
    with pytest.raises(error) as e:
        predict_dask(models["valid"], image, **kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_checkpoint_that_does_not_match_is_a_clear_error(models, small, tmp_path):
    # weights of a depth-2 net under a name that builds the depth-3 default
    bad = write_checkpoint(tmp_path / "mismatch.npz", models["valid"], "unet-valid",
                           {"base_channels": 4})
    with pytest.raises(CheckpointError, match="does not fit model 'unet-valid'"):
        predict_dask(bad, small)
    # a checkpoint of another family: predict_dask tiles U-Nets only
    fcn = msn.models.create("fcn8s", 2, in_channels=1, width=4)
    other = tmp_path / "fcn.npz"
    kwargs = {"width": 4, "batch_norm": False}  # as created (the CLI's default has batch norm)
    save_checkpoint(str(other), fcn, {"config": {"model": "fcn8s", "model_kwargs": kwargs},
                                      "num_classes": 2, "in_channels": 1})
    with pytest.raises(TypeError, match="needs a UNet"):
        predict_dask(str(other), small)
    # a three-channel image for the one-channel net of the checkpoint
    good = write_checkpoint(tmp_path / "good.npz", models["valid"], "unet-valid",
                            {"base_channels": 4, "depth": 2})
    with pytest.raises(ValueError, match=r"got shape \(3, 203, 269\)"):
        predict_dask(good, np.repeat(small, 3, 0))


def run_guarded(fn, limit: float):
    """fn() in a thread; fails the test (instead of hanging it) past ``limit`` seconds."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still running after {limit} s"
    return box, time.monotonic() - start


def test_unreachable_scheduler_is_a_clear_error_not_a_hang(models, small, tmp_path, capsys):
    import dask

    ckpt = write_checkpoint(tmp_path / "c.npz", models["valid"], "unet-valid",
                            {"base_channels": 4, "depth": 2})
    np.save(tmp_path / "img.npy", small)
    box, took = run_guarded(lambda: inference.predict_to_zarr(
        ckpt, str(tmp_path / "img.npy"), str(tmp_path / "o.zarr"),
        scheduler="tcp://127.0.0.1:1", connect_timeout=2), limit=60)
    assert isinstance(box.get("error"), ConnectionError), box
    assert "tcp://127.0.0.1:1" in str(box["error"]) and took < 30
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        box, took = run_guarded(lambda: cli.main([
            "predict", "--checkpoint", ckpt, str(tmp_path / "img.npy"), "--out",
            str(tmp_path / "o.zarr"), "--scheduler", "tcp://127.0.0.1:1"]), limit=60)
    assert box.get("value") == 2, box
    err = capsys.readouterr().err
    assert "cannot reach a Dask scheduler at 'tcp://127.0.0.1:1'" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_missing_dask_names_the_extra(models, small, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install 'minisegnet\[dask\]'"):
        predict_dask(models["valid"], small)


# ------------------------------------------------------------------------------ command line


def test_cli_predict_writes_zarr_labels(models, small, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.npz", models["same"], "unet",
                            {"base_channels": 4, "depth": 3})
    raw = (small * 3000 + 100).astype(np.uint16)  # a raw microscope image
    np.save(tmp_path / "big.npy", raw)
    out = tmp_path / "labels.zarr"
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "big.npy"), "--out", str(out),
                     "--tile", str(TILE)]) == 0
    assert "203x269" in capsys.readouterr().out
    image = data.normalize(raw, {"method": "percentile", "low": 1.0, "high": 99.8, "clip": True})
    want = predict_tiled(models["same"], image, tile=TILE).argmax(0)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(out))), want)
    # a zarr input and --scheduler with a directory: <out>/<stem>_labels.zarr
    da.from_array(raw[0], chunks=100).to_zarr(str(tmp_path / "big.zarr"))
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "big.zarr"), "--out",
                     str(tmp_path / "dir"), "--scheduler", "threads", "--tile", str(TILE)]) == 0
    written = zarr.open_array(str(tmp_path / "dir" / "big_labels.zarr"))
    np.testing.assert_array_equal(np.asarray(written), want)


def test_progress_bars_local_and_on_a_cluster(models, small, cluster, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.npz", models["valid"], "unet-valid",
                            {"base_channels": 4, "depth": 2})
    np.save(tmp_path / "img.npy", small)
    outs = []
    for name, scheduler in (("threads", None), ("cluster", cluster.scheduler.address)):
        out = str(tmp_path / f"{name}.zarr")
        shape = inference.predict_to_zarr(ckpt, str(tmp_path / "img.npy"), out,
                                          scheduler=scheduler, tile=TILE, progress=True)
        assert shape == SMALL
        captured = capsys.readouterr()
        assert "100% Completed" in captured.out + captured.err, name
        outs.append(np.asarray(zarr.open_array(out)))
    np.testing.assert_array_equal(outs[0], outs[1])


# ------------------------------------------------------------------------------ failures


def test_worker_killed_mid_run_loses_nothing(models, small, reference, cluster):
    """SIGKILL the worker process that holds finished blocks while others are pending: Dask
    recomputes what it held on the survivor (and the restarted worker), the result is the same."""
    labels = predict_dask(models["valid"], small, tile=48, output="logits")
    assert labels.npartitions >= 20
    pids = cluster.run(os.getpid)

    def held() -> dict[str, list[str]]:
        return cluster.run_on_scheduler(lambda dask_scheduler: {
            str(ts.key): [w.address for w in ts.who_has] for ts in dask_scheduler.tasks.values()
            if ts.state == "memory" and "predict-dask" in str(ts.key)})

    future = cluster.compute(labels)
    deadline = time.monotonic() + 120
    while not held():
        assert time.monotonic() < deadline and not future.done(), "no block finished in time"
        time.sleep(0.02)
    victim = next(iter(held().values()))[0]
    os.kill(pids[victim], signal.SIGKILL)
    assert not future.done()  # killed mid-run
    got = future.result(timeout=300)
    np.testing.assert_array_equal(got, reference("valid", 48))
    cluster.wait_for_workers(2, timeout=120)
    assert pids[victim] not in cluster.run(os.getpid).values()  # it really died


# --------------------------------------------------------------------- slow: the sizes


@pytest.fixture(scope="module")
def mosaic2048() -> np.ndarray:
    return nuclei_mosaic(2048, 2048)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["valid", "same"])
def test_2048_mosaic_threads_cluster_and_predict_tiled_agree(models, mosaic2048, cluster, kind):
    ref = predict_tiled(models[kind], mosaic2048, tile=512)
    labels = predict_dask(models[kind], mosaic2048, tile=512)
    probs = predict_dask(models[kind], mosaic2048, tile=512, output="probabilities")
    assert labels.numblocks == (4, 4)
    assert_matches(labels.compute(scheduler="threads"), probs.compute(scheduler="threads"), ref)
    got_labels, got_probs = cluster.compute([labels, probs], sync=True)
    assert_matches(got_labels, got_probs, ref)


@pytest.mark.slow
def test_process_pool_equals_predict_tiled(models, small, reference):
    for kind in ("valid", "same"):
        labels = predict_dask(models[kind], small, tile=TILE)
        probs = predict_dask(models[kind], small, tile=TILE, output="probabilities")
        import dask

        got_labels, got_probs = dask.compute(labels, probs, scheduler="processes", num_workers=2)
        assert_matches(got_labels, got_probs, reference(kind))


@pytest.mark.slow
def test_a_real_process_pool_gets_the_weights_once_and_reads_them_from_the_file(
        models, small, reference, tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    import dask
    import dask.multiprocessing

    np.save(tmp_path / "img.npy", small)
    logits = predict_dask(models["valid"], str(tmp_path / "img.npy"), tile=TILE, output="logits")
    with ProcessPoolExecutor(2, mp_context=dask.multiprocessing.get_context()) as inner:
        pool = RecordingPool(inner)
        (got,) = dask.compute(logits, scheduler="processes", pool=pool)
    np.testing.assert_array_equal(got, reference("valid"))
    assert len(carrying(pool.payloads, models["valid"])) == 1
