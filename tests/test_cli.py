"""The ``minisegnet`` command: the demo trains on real data and writes its artefacts."""

from __future__ import annotations

import json

import numpy as np

import minisegnet as msn
from minisegnet import cli


def test_demo_writes_metrics_png_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["demo", "--epochs", "1", "--steps", "3", "--batch", "2", "--crop", "32",
                   "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"miou", "pixel_accuracy", "per_class_iou", "seconds"} <= set(m)
    assert 0.0 <= m["pixel_accuracy"] <= 1.0 and len(m["per_class_iou"]) == 2
    assert (out / "prediction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint loads back into a fresh model of the same architecture
    model = cli.build_demo_model()
    model.load_state_dict(msn.load(str(out / "checkpoint.npz")))
    assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_real_data_is_real():
    img, mask = cli.load_nuclei()
    assert img.shape == mask.shape == (512, 512)
    assert 0.05 < mask.mean() < 0.6  # nuclei cover part of the field, not none or all
    assert img[mask == 1].mean() > img[mask == 0].mean()  # nuclei are brighter than background
