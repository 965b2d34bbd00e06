"""Metrics checked against scikit-learn's independent implementations and against definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import jaccard_score

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


# ---------------------------------------------------------------------------------------------
# Instance matching: against stardist.matching (an independent implementation) and by hand

def _random_instances(r: np.random.Generator, shape=(40, 48), n=12) -> np.ndarray:
    """Overlapping random rectangles with sparse ids (later ones drawn on top)."""
    img = np.zeros(shape, np.int32)
    for i in r.choice(np.arange(1, 1000), size=n, replace=False):
        y, x = r.integers(0, shape[0] - 3), r.integers(0, shape[1] - 3)
        h, w = r.integers(3, 12, size=2)
        img[y:y + h, x:x + w] = i
    return img


def _perturbed(r: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """A prediction: the truth shifted by a pixel or two, some objects dropped, some invented."""
    pred = np.roll(true, tuple(r.integers(-2, 3, size=2)), axis=(0, 1)).copy()
    ids = np.unique(pred)[1:]
    pred[np.isin(pred, r.choice(ids, size=len(ids) // 4, replace=False))] = 0
    extra = _random_instances(r, true.shape, n=3)
    pred[extra > 0] = extra[extra > 0] + 1000
    return pred


THRESHOLDS = [0.1, 0.3, 0.5, 0.55, 0.7, 0.9]


@pytest.mark.parametrize("seed", range(8))
def test_matching_agrees_with_stardist(seed):
    sd = pytest.importorskip("stardist.matching")
    r = np.random.default_rng(seed)
    true = _random_instances(r)
    pred = _perturbed(r, true)
    ours_all = metrics.matching(true, pred, THRESHOLDS)
    for thr, ours in zip(THRESHOLDS, ours_all):
        theirs = sd.matching(true, pred, thresh=thr)
        for key in ("tp", "fp", "fn", "n_true", "n_pred"):
            assert ours[key] == getattr(theirs, key), (thr, key)
        for key in ("precision", "recall", "f1", "accuracy"):
            assert ours[key] == pytest.approx(getattr(theirs, key), rel=1e-12), (thr, key)
        # stardist breaks ties among maximum matchings by all assigned IoUs (also those below the
        # threshold), we by the matched ones: the matched pairs agree for thresholds >= 0.5
        if thr >= 0.5:
            assert ours["mean_matched_iou"] == pytest.approx(theirs.mean_matched_score, rel=1e-6)
            assert ours["panoptic_quality"] == pytest.approx(theirs.panoptic_quality, rel=1e-6)
    assert metrics.matching(true, pred) == ours_all[2]  # one threshold: one dict, 0.5 default


def test_matching_dataset_agrees_with_stardist():
    sd = pytest.importorskip("stardist.matching")
    r = np.random.default_rng(42)
    trues = [_random_instances(r) for _ in range(4)]
    preds = [_perturbed(r, t) for t in trues]
    for thr in (0.3, 0.5, 0.75):
        ours = metrics.matching_dataset(trues, preds, thr)
        theirs = sd.matching_dataset(trues, preds, thresh=thr, by_image=False, show_progress=False)
        for key in ("tp", "fp", "fn", "n_true", "n_pred"):
            assert ours[key] == getattr(theirs, key)
        for key in ("precision", "recall", "f1", "accuracy"):
            assert ours[key] == pytest.approx(getattr(theirs, key), rel=1e-12)
        # pooled = per-image counts summed
        per = [metrics.matching(t, p, thr) for t, p in zip(trues, preds)]
        assert ours["tp"] == sum(m["tp"] for m in per)


def test_matching_ignores_ids_and_negative_pixels():
    r = np.random.default_rng(3)
    true = _random_instances(r)
    pred = _perturbed(r, true)
    ref = metrics.matching(true, pred, 0.5)
    # any injective renaming of the ids changes nothing
    perm = np.concatenate([[0], r.permutation(np.arange(1, 3000)) + 5000])
    assert metrics.matching(perm[true], perm[pred], 0.5) == ref
    # a true label < 0 drops the pixel from both images: same as cropping it away
    t2 = true.copy()
    t2[:, 30:] = -1
    assert metrics.matching(t2, pred, 0.5) == metrics.matching(true[:, :30], pred[:, :30], 0.5)


def test_matching_hand_cases():
    # a bar 8 wide against the same bar shifted by 2: IoU = 6 / 10 = 0.6 exactly
    a = np.zeros((4, 12), np.int32)
    b = np.zeros((4, 12), np.int32)
    a[1:3, 0:8], b[1:3, 2:10] = 7, 3
    m = metrics.matching(a, b, 0.6)  # the threshold is inclusive
    assert (m["tp"], m["fp"], m["fn"], m["accuracy"]) == (1, 0, 0, 1.0)
    assert m["mean_matched_iou"] == pytest.approx(0.6)
    m = metrics.matching(a, b, 0.65)
    assert (m["tp"], m["fp"], m["fn"], m["accuracy"], m["f1"]) == (0, 1, 1, 0.0, 0.0)
    # passes 0.5, 0.55 and 0.6 of the ten DSB thresholds
    assert metrics.dsb_score(a, b) == pytest.approx(3 / 10)
    assert metrics.dsb_score(a, a) == 1.0
    # a true object split exactly in half: both halves have IoU 0.5 and one of them is matched
    c = a.copy()
    c[1:3, 4:8] = 9
    m = metrics.matching(a, c, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    # empty against empty: no true positive, so every ratio is 0 (stardist's convention)
    z = np.zeros_like(a)
    m = metrics.matching(z, z)
    assert (m["tp"], m["fp"], m["fn"], m["accuracy"], m["precision"]) == (0, 0, 0, 0.0, 0.0)
    m = metrics.matching(z, a)
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"]) == (0, 1, 0, 1)


def test_matching_bad_input():
    a = np.zeros((4, 5), np.int32)
    with pytest.raises(ValueError, match="true_instances.*pred_instances"):
        metrics.matching(a, np.zeros((5, 4), np.int32))
    with pytest.raises(ValueError, match="pred_instances.*non-negative"):
        metrics.matching(a, a - 1)
    with pytest.raises(TypeError, match="pred_instances"):
        metrics.matching(a, a.astype(float))
    with pytest.raises(ValueError, match="threshold"):
        metrics.matching(a, a, 1.5)
    with pytest.raises(ValueError, match="pred_instances"):
        metrics.matching_dataset([a, a], [a])


# ---------------------------------------------------------------------------------------------
# Average precision (VOC and COCO style)

def _sequence_dets(hits: list[bool]):
    """Boxes for a ranked TP/FP sequence: the k-th TP copies the k-th ground truth box, an FP
    lies far from everything. Scores strictly decreasing."""
    n_gt = sum(hits)
    gt = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(n_gt)], float)
    dets, k = [], 0
    for h in hits:
        dets.append(gt[k] if h else [1000, 1000, 1010, 1010])
        k += h
    return np.array(dets, float), np.linspace(1, 0.1, len(hits)), gt


def test_ap_hand_worked_voc_and_coco():
    # ranking TP, FP, TP over 2 ground truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope: 1 up to recall 1/2, 2/3 above it.
    dets, scores, gt = _sequence_dets([True, False, True])
    # VOC: area = 1/2 * 1 + 1/2 * 2/3
    assert metrics.average_precision(dets, scores, gt) == pytest.approx(0.5 + 1 / 3)
    # COCO: recall points 0 .. 0.50 (51 of them) see 1, 0.51 .. 1.00 (50) see 2/3
    assert metrics.average_precision(dets, scores, gt, style="coco") == \
        pytest.approx((51 + 50 * 2 / 3) / 101)
    # a ground truth never found: recall stops at 1/2 -> COCO points above it are 0
    gt3 = np.concatenate([gt, [[500, 500, 510, 510]]])
    assert metrics.average_precision(dets, scores, gt3, style="coco") == \
        pytest.approx((34 * 1 + 33 * 2 / 3) / 101)  # recall 1/3 reached at 0.33, 2/3 at 0.66
    # a box with IoU exactly 0.6 (inter 6, union 10) is a hit at 0.5, 0.55, 0.6 only
    r = metrics.coco_ap(np.array([[2, 0, 10, 1]]), [0.9], np.array([[0, 0, 8, 1]]))
    assert r["ap"] == pytest.approx(3 / 10) and r["ap50"] == 1.0 and r["ap75"] == 0.0


@given(st.lists(st.booleans(), min_size=1, max_size=14).filter(any))
def test_voc_ap_against_sklearn(hits):
    # Every ground truth is found once, scores are distinct. sklearn's AP sums (R_k - R_(k-1)) P_k
    # over the hits, ours the same with the envelope max_(j >= k) P_j: equal exactly when the
    # precision at successive hits never rises, larger otherwise.
    from sklearn.metrics import average_precision_score

    dets, scores, gt = _sequence_dets(hits)
    ours = metrics.average_precision(dets, scores, gt, style="voc")
    if all(hits):
        assert ours == 1.0
        return
    theirs = average_precision_score(np.array(hits, int), scores)
    tp = np.cumsum(hits)
    p_at_hits = (tp / np.arange(1, len(hits) + 1))[np.array(hits)]
    if np.all(np.diff(p_at_hits) <= 0):
        assert ours == pytest.approx(theirs, abs=1e-12)
    else:
        assert ours > theirs + 1e-12


def test_ap_boxes_equal_rasterised_masks_and_pooling_equals_one_canvas():
    r = np.random.default_rng(5)

    def boxes(n):
        xy = r.integers(0, 30, size=(n, 2))
        wh = r.integers(2, 10, size=(n, 2))
        return np.concatenate([xy, xy + wh], 1).astype(float)

    def raster(b, shape=(40, 40)):
        m = np.zeros((len(b), *shape), bool)
        for k, (x1, y1, x2, y2) in enumerate(b.astype(int)):
            m[k, y1:y2, x1:x2] = True
        return m

    gts = [boxes(6), boxes(5)]
    dets = [np.concatenate([g + r.integers(-1, 2, g.shape), boxes(2)]) for g in gts]
    dets = [np.clip(d, 0, 40) for d in dets]
    scores = [r.random(len(d)) for d in dets]
    for style in ("voc", "coco"):
        for thr in (0.5, 0.75):
            for i in range(2):  # boxes and their pixel masks have the same IoUs
                assert metrics.average_precision(dets[i], scores[i], gts[i], thr, style) == \
                    pytest.approx(metrics.average_precision(raster(dets[i]), scores[i],
                                                            raster(gts[i]), thr, style))
            # two images pooled = the two side by side in one image (no IoU across them)
            pooled = metrics.average_precision(dets, scores, gts, thr, style)
            shift = np.array([100, 0, 100, 0], float)
            one = metrics.average_precision(np.concatenate([dets[0], dets[1] + shift]),
                                            np.concatenate(scores),
                                            np.concatenate([gts[0], gts[1] + shift]), thr, style)
            assert pooled == pytest.approx(one)
    c = metrics.coco_ap(dets, scores, gts)
    per = [metrics.average_precision(dets, scores, gts, t, "coco") for t in metrics.COCO_THRESHOLDS]
    assert c["ap"] == pytest.approx(np.mean(per))
    assert (c["ap50"], c["ap75"]) == (pytest.approx(per[0]), pytest.approx(per[5]))


def test_ap_masks_from_instances_and_empty_cases():
    inst = np.zeros((10, 10), np.int32)
    inst[:4, :4], inst[6:, 6:] = 5, 17
    masks, ids = metrics.masks_from_instances(inst)
    assert masks.shape == (2, 10, 10) and ids.tolist() == [5, 17]
    assert (masks[0] == (inst == 5)).all() and (masks[1] == (inst == 17)).all()
    assert metrics.coco_ap(masks, [0.2, 0.1], masks)["ap"] == 1.0
    assert metrics.average_precision([], [], masks) == 0.0  # nothing detected
    assert np.isnan(metrics.average_precision(masks, [0.2, 0.1], np.zeros((0, 10, 10), bool)))


def test_ap_bad_input():
    gt = np.array([[0, 0, 10, 10]], float)
    with pytest.raises(ValueError, match=r"pred.*\(K, 4\)"):
        metrics.average_precision(np.zeros((1, 5)), [1.0], gt)
    with pytest.raises(ValueError, match="target.*x2 >= x1"):
        metrics.average_precision(gt, [1.0], np.array([[10, 0, 0, 10]], float))
    with pytest.raises(ValueError, match="pred.*size"):
        metrics.average_precision(np.ones((1, 4, 4), bool), [1.0], np.ones((1, 5, 5), bool))
    with pytest.raises(ValueError, match="scores"):
        metrics.average_precision(gt, [1.0, 0.5], gt)
    with pytest.raises(ValueError, match="pred.*masks.*boxes"):
        metrics.average_precision(np.ones((1, 4, 4), bool), [1.0], gt)
    with pytest.raises(ValueError, match="pred.*boolean"):
        metrics.average_precision(np.full((1, 4, 4), 0.7), [1.0], np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match="style"):
        metrics.average_precision(gt, [1.0], gt, style="pascal")
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics.average_precision(gt, [1.0], gt, iou_threshold=2)
    with pytest.raises(ValueError, match="lengths"):
        metrics.average_precision([gt, gt], [[1.0]], [gt, gt])
