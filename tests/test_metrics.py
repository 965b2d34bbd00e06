"""Metrics checked against scikit-learn's independent implementations and against definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion, jaccard_score

from minisegnet import Tensor, metrics


# sklearn warns when only one label occurs; we pass `labels`, so its matrix shape is right anyway
@pytest.mark.filterwarnings("ignore:A single label was found")
@given(st.integers(1, 5), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_confusion_and_iou_match_sklearn(k, n, seed):
    r = np.random.default_rng(seed)
    target = r.integers(-1, k, size=(n,))  # -1 pixels are ignored
    pred = r.integers(0, k, size=(n,))
    cm = metrics.confusion_matrix(pred, target, k)
    keep = target >= 0
    if not keep.any():
        assert cm.sum() == 0
        return
    np.testing.assert_array_equal(cm, sk_confusion(target[keep], pred[keep], labels=range(k)))
    assert metrics.pixel_accuracy(pred, target) == pytest.approx((pred == target)[keep].mean())
    present = np.union1d(target[keep], pred[keep])
    sk = jaccard_score(target[keep], pred[keep], labels=present, average=None, zero_division=0)
    np.testing.assert_allclose(metrics.iou_per_class(pred, target, k)[present], sk)
    assert metrics.mean_iou(pred, target, k) == pytest.approx(sk.mean())
    absent = np.setdiff1d(np.arange(k), present)
    assert np.isnan(metrics.iou_per_class(pred, target, k)[absent]).all()


def test_meter_accumulates_like_one_big_batch():
    r = np.random.default_rng(0)
    preds = [r.integers(0, 4, (2, 8, 8)) for _ in range(3)]
    targets = [r.integers(-1, 4, (2, 8, 8)) for _ in range(3)]
    meter = metrics.SegmentationMeter(4)
    for p, t in zip(preds, targets):
        meter.update(Tensor(p), t)
    allp, allt = np.concatenate(preds), np.concatenate(targets)
    np.testing.assert_array_equal(meter.cm, metrics.confusion_matrix(allp, allt, 4))
    assert meter.mean_iou() == pytest.approx(metrics.mean_iou(allp, allt, 4))
    s = meter.summary()
    assert set(s) >= {"miou", "pixel_accuracy", "per_class_iou"} and len(s["per_class_iou"]) == 4


@given(st.integers(0, 2**31 - 1))
def test_mask_iou_and_dice_definitions(seed):
    r = np.random.default_rng(seed)
    a, b = r.random((6, 7)) > 0.5, r.random((6, 7)) > 0.5
    inter, union = (a & b).sum(), (a | b).sum()
    assert metrics.mask_iou(a, b) == pytest.approx(inter / union if union else 1.0)
    d = metrics.dice(a, b)
    iou = metrics.mask_iou(a, b)
    assert d == pytest.approx(2 * iou / (1 + iou))  # Dice and IoU are monotone transforms


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match="target"):
        metrics.confusion_matrix(np.zeros(3, int), np.array([0, 1, 5]), 3)
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3)


def test_average_precision_cases():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    # perfect detections in any score order: AP = 1
    assert metrics.average_precision(gt[::-1], [0.3, 0.9], gt) == pytest.approx(1.0)
    # a false positive ranked first, then both hits: precision 0, 1/2, 2/3 at recall 0, .5, 1;
    # envelope 2/3 everywhere -> AP = 2/3
    fp = np.array([[50, 50, 60, 60]], float)
    dets = np.concatenate([fp, gt])
    assert metrics.average_precision(dets, [0.99, 0.5, 0.4], gt) == pytest.approx(2 / 3)
    # a duplicate of a matched box is a false positive, not a second match
    dup = np.concatenate([gt[:1], gt[:1]])
    assert metrics.average_precision(dup, [0.9, 0.8], gt) == pytest.approx(0.5)
    # masks work the same way as boxes
    m = np.zeros((2, 32, 32), bool)
    m[0, :10, :10] = True
    m[1, 20:30, 20:30] = True
    assert metrics.average_precision(m, [0.5, 0.6], m) == pytest.approx(1.0)
