"""The ``minisegnet`` command: train / evaluate / predict, the run directory, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minisegnet as msn
from minisegnet import cli, data
from minisegnet.training import load_checkpoint

# a U-Net small enough for seconds-long runs on the synthetic shapes data
TINY = ["--model", "unet", "--data", "shapes", "--model-arg", "base_channels=4",
        "--model-arg", "depth=2", "--batch", "2", "--patch", "32", "--seed", "3"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert run_cli("train", *TINY, "--epochs", "2", "--steps", "3", "--out", out) == 0
    return out


def test_train_writes_the_run_directory(shapes_run):
    out = shapes_run
    for name in ("config.json", "last.npz", "best.npz", "metrics.jsonl", "metrics.json",
                 "predictions.npz", "prediction.png", "curves.png"):
        assert (out / name).is_file(), name
    for png in ("prediction.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == PNG
    m = json.loads((out / "metrics.json").read_text())
    required = {"model", "data", "miou", "pixel_accuracy", "per_class_iou", "seconds", "device",
                "minisegnet_version", "instance_accuracy_50", "instance_f1_50", "dsb_score"}
    assert required <= set(m), required - set(m)
    assert m["model"] == "unet" and m["data"] == "shapes" and m["device"] == "cpu"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [3, 6]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_kwargs"] == {"base_channels": 4, "depth": 2} and cfg["steps"] == 3


def test_valid_unet_trains_on_patches_smaller_than_its_input(tmp_path):
    # unet-valid needs >= 44 input pixels at depth 2; --patch 16 is the label crop, the image
    # crop is the valid input around it (mirrored past the 64x64 shapes images' borders)
    from minisegnet import models
    from minisegnet.training import _patch_sizes

    net = models.create("unet-valid", 2, in_channels=3, base_channels=4, depth=2)
    size, label = _patch_sizes(net, 16)
    assert label >= 16 and size == net.input_size_for(16, 16)[0] and net.output_size(
        size, size) == (label, label)
    argv = [a if a != "unet" else "unet-valid" for a in TINY]
    assert run_cli("train", *argv[:-4], "--patch", "16", "--epochs", "1", "--steps", "2",
                   "--out", tmp_path) == 0
    m = json.load(open(tmp_path / "metrics.json"))
    assert m["model"] == "unet-valid" and m["steps"] == 2 and 0 <= m["miou"] <= 1


def test_metrics_json_recomputed_from_saved_predictions(shapes_run):
    """metrics.json agrees with metrics computed independently from predictions.npz."""
    from stardist.matching import matching as sd_matching

    m = json.loads((shapes_run / "metrics.json").read_text())
    preds = msn.load(shapes_run / "predictions.npz")
    test = data.load("shapes", split="test")
    pred, true = preds["labels"], test.labels
    assert pred.shape == true.shape
    keep = true >= 0
    assert m["pixel_accuracy"] == pytest.approx((pred[keep] == true[keep]).mean(), abs=1e-12)
    ious = []
    for c, name in enumerate(test.class_names):
        inter = ((pred == c) & (true == c) & keep).sum()
        union = (((pred == c) | (true == c)) & keep).sum()
        iou = inter / union if union else None
        expected = pytest.approx(iou, abs=1e-12) if iou is not None else None
        assert m["per_class_iou"][name] == expected
        if iou is not None:
            ious.append(iou)
    assert m["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    # instances: stardist's matching, summed over images
    tp = fp = fn = 0
    for t, p in zip(test.instances, preds["instances"], strict=True):
        s = sd_matching(t, p, thresh=0.5)
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    assert m["instance_accuracy_50"] == pytest.approx(tp / max(tp + fp + fn, 1), abs=1e-12)


def test_evaluate_rewrites_metrics_for_a_checkpoint(shapes_run, tmp_path):
    assert run_cli("evaluate", "--checkpoint", shapes_run / "last.npz", "--out", tmp_path) == 0
    a = json.loads((shapes_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "metrics.json").read_text())
    for k in ("miou", "pixel_accuracy", "instance_accuracy_50", "dsb_score"):
        assert b[k] == pytest.approx(a[k], abs=1e-12), k


def test_predict_writes_labels_instances_and_overlay(shapes_run, tmp_path):
    from PIL import Image

    test = data.load("shapes", split="test")
    raw = test.images[0]  # (C, H, W) in [0, 1]
    np.save(tmp_path / "a.npy", raw[:, :45, :51])  # odd size, not a multiple of 2^depth
    rgb = (raw.transpose(1, 2, 0) * 255).astype(np.uint8).squeeze()
    Image.fromarray(rgb).save(tmp_path / "b.png")
    out = tmp_path / "pred"
    assert run_cli("predict", "--checkpoint", shapes_run / "best.npz", tmp_path / "a.npy",
                   tmp_path / "b.png", "--out", out) == 0
    for stem, shape in (("a", (45, 51)), ("b", raw.shape[1:])):
        labels = np.load(out / f"{stem}_labels.npy")
        inst = np.load(out / f"{stem}_instances.npy")
        assert labels.shape == shape and inst.shape == shape and inst.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < len(test.class_names)
        assert ((inst > 0) <= (labels > 0) | (inst > 0)).all()
        for png in (f"{stem}_labels.png", f"{stem}_overlay.png"):
            assert (out / png).read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "nope"], ["--model", "nope", "unet", "fcn8s"]),
    (["train", "--data", "nope"], ["--data", "nope", "nuclei", "shapes"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["train", "--bogus"], ["--bogus"]),
    (["evaluate", "--checkpoint", "/nonexistent/ckpt.npz"], ["/nonexistent/ckpt.npz"]),
])
def test_bad_usage_is_one_line_and_exit_2(argv, words, capsys):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_bad_files_are_one_line_and_exit_2(shapes_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run_cli("train", *TINY, "--out", tmp_path / "file") == 2
    assert "not a directory" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes((shapes_run / "last.npz").read_bytes()[:1000])  # truncated
    assert run_cli("evaluate", "--checkpoint", corrupt) == 2
    assert "not a minisegnet checkpoint" in capsys.readouterr().err
    # a checkpoint of a 4-class shapes model against the 11-class digits data
    assert run_cli("evaluate", "--checkpoint", shapes_run / "last.npz", "--data", "digits") == 2
    err = capsys.readouterr().err
    assert "4-class" in err and "11 classes" in err
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    assert run_cli("predict", "--checkpoint", shapes_run / "last.npz", tmp_path / "bad.png",
                   "--out", tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and len(err.strip().splitlines()) == 1


def _cmd(*argv):
    return [sys.executable, "-m", "minisegnet.cli", *map(str, argv)]


def _weights(path):
    sd, meta, opt = load_checkpoint(str(path))
    return sd, opt["state"], meta["state"]["step"]


def test_ctrl_c_saves_and_resume_ends_with_the_same_weights(tmp_path):
    """Interrupt a real run with SIGINT, resume it, and compare with an uninterrupted run."""
    args = [*TINY, "--epochs", "3", "--steps", "25"]
    env = {**os.environ, "CI": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cmd("train", *args, "--out", ref), check=True, env=env, capture_output=True)

    run = tmp_path / "run"
    p = subprocess.Popen(_cmd("train", *args, "--out", run), env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "last.npz").exists():  # written at the end of epoch 1
        assert p.poll() is None and time.time() < deadline, "training ended before epoch 1 saved"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert "--resume" in err and str(run) in err
    _, _, step = _weights(run / "last.npz")
    assert 25 <= step < 75, step  # stopped in epoch 2 or 3, after a finished step
    subprocess.run(_cmd("train", *args, "--out", run, "--resume"), check=True, env=env,
                   capture_output=True)
    (a, opt_a, step_a), (b, opt_b, step_b) = _weights(ref / "last.npz"), _weights(run / "last.npz")
    assert step_a == step_b == 75
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for i in opt_a:
        for k in opt_a[i]:
            np.testing.assert_array_equal(opt_a[i][k], opt_b[i][k], err_msg=f"{i}.{k}")


def test_second_ctrl_c_stops_at_once(tmp_path):
    run = tmp_path / "run"
    # patches of 96: steps of a few hundred ms, so the second signal lands inside one
    p = subprocess.Popen(_cmd("train", *TINY, "--patch", "96", "--epochs", "50", "--steps", "50",
                              "--out", run),
                         env={**os.environ, "CI": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "config.json").exists():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    if (run / "last.npz").exists():  # whatever was written is a whole checkpoint
        load_checkpoint(str(run / "last.npz"))
