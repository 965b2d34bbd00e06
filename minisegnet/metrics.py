"""Segmentation metrics on integer label maps (pixels with a negative label are ignored).

Semantic: confusion matrix ``N[i, j]`` = pixels of true class i predicted as j. Pixel accuracy =
trace / total. ``IoU_i = N_ii / (sum_j N_ij + sum_j N_ji - N_ii)``; mIoU = nanmean over classes
(a class absent from both prediction and target is NaN and skipped).

Instances, from label images: :func:`matching` (one-to-one by IoU: TP, FP, FN, precision, recall,
F1, accuracy = TP / (TP + FP + FN), mean matched IoU; as ``stardist.matching``),
:func:`matching_dataset` (pooled over images) and :func:`dsb_score` (the 2018 Data Science Bowl's
accuracy averaged over IoU 0.5:0.05:0.95).

Scored detections, boxes or masks: :func:`average_precision` (VOC's area under the precision
envelope, or COCO's 101-point interpolation, at one IoU threshold) and :func:`coco_ap`
(AP@[.5:.95], AP50, AP75); :func:`masks_from_instances` turns a label image into masks.

Inputs may be NumPy or CuPy arrays or Tensors; results are NumPy/Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import to_numpy

__all__ = [
    "confusion_matrix", "pixel_accuracy", "iou_per_class", "mean_iou", "mask_iou", "dice",
    "average_precision", "coco_ap", "masks_from_instances", "matching", "matching_dataset",
    "dsb_score", "SegmentationMeter",
]


def _labels(a: Any, name: str) -> np.ndarray:
    a = getattr(a, "data", a)
    a = to_numpy(a)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integer labels, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def confusion_matrix(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts of (true class, predicted class) over pixels with target >= 0."""
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred: shape {p.shape} does not match target shape {t.shape}")
    if num_classes <= 0:
        raise ValueError(f"num_classes: must be positive, got {num_classes}")
    keep = t >= 0
    p, t = p[keep], t[keep]
    for name, a in (("target", t), ("pred", p)):
        if a.size and (a.max() >= num_classes or a.min() < 0):
            raise ValueError(
                f"{name}: labels must lie in [0, {num_classes}) (negative target = ignored), "
                f"got range [{a.min()}, {a.max()}]"
            )
    counts = np.bincount(t * num_classes + p, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def _iou_from_cm(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def pixel_accuracy(pred: Any, target: Any) -> float:
    """Fraction of counted pixels (target >= 0) whose prediction equals the target."""
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred: shape {p.shape} does not match target shape {t.shape}")
    keep = t >= 0
    n = int(keep.sum())
    return float((p[keep] == t[keep]).sum() / n) if n else float("nan")


def iou_per_class(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """(K,) IoU per class; NaN for a class absent from both prediction and target."""
    return _iou_from_cm(confusion_matrix(pred, target, num_classes))


def mean_iou(pred: Any, target: Any, num_classes: int) -> float:
    """Mean of the per-class IoU over the classes that occur (NaN classes skipped)."""
    iou = iou_per_class(pred, target, num_classes)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def _masks(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = to_numpy(getattr(a, "data", a)).astype(bool)
    b = to_numpy(getattr(b, "data", b)).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"a: mask shape {a.shape} does not match b's {b.shape}")
    return a, b


def mask_iou(a: Any, b: Any) -> float:
    """|a and b| / |a or b| of two boolean masks (1.0 when both are empty)."""
    a, b = _masks(a, b)
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def dice(a: Any, b: Any) -> float:
    """2|a and b| / (|a| + |b|) of two boolean masks (1.0 when both are empty)."""
    a, b = _masks(a, b)
    total = int(a.sum() + b.sum())
    return float(2 * (a & b).sum() / total) if total else 1.0


# ----------------------------------------------------------------------------------------------
# Instance matching of label images: the 2018 Data Science Bowl's metrics (stardist's conventions)


def _instance_image(a: Any, name: str) -> np.ndarray:
    a = to_numpy(getattr(a, "data", a))
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer instance label image (0 = background), "
                        f"got dtype {a.dtype}")
    return a


def _instance_iou(true: Any, pred: Any) -> np.ndarray:
    """(n_true, n_pred) IoU of every true instance with every predicted one, from one pass.

    Pixels whose true label is negative are ignored (left out of both images). Ids are relabelled
    0..n by ``np.unique`` (0 stays background), then one ``bincount`` of the pixel pairs
    ``(true id, pred id)`` gives the whole (n_true + 1, n_pred + 1) overlap table, no per-pair
    masks.
    """
    t = _instance_image(true, "true_instances")
    p = _instance_image(pred, "pred_instances")
    if t.shape != p.shape:
        raise ValueError(f"true_instances: shape {t.shape} does not match pred_instances shape "
                         f"{p.shape}")
    if p.size and p.min() < 0:
        raise ValueError(f"pred_instances: ids must be non-negative (0 = background), "
                         f"got min {p.min()}")
    keep = t >= 0
    t, p = t[keep], p[keep]  # (P,) each, ignored pixels dropped

    def relabel(x: np.ndarray) -> tuple[int, np.ndarray]:
        if x.size and x.max() <= 4 * x.size + 1024:  # ids small enough for a lookup table
            present = np.bincount(x.ravel(), minlength=1) > 0
            present[0] = True  # index 0 is background whether or not it occurs
            lut = np.cumsum(present) - 1  # id -> 0..n
            return int(lut[-1]), lut[x]
        ids, inv = np.unique(x, return_inverse=True)
        if ids.size == 0 or ids[0] != 0:  # no background pixel: index 0 stays reserved for it
            return ids.size, inv.reshape(-1) + 1
        return ids.size - 1, inv.reshape(-1)

    nt, ti = relabel(t)
    np_, pi = relabel(p)
    overlap = np.bincount(ti * (np_ + 1) + pi, minlength=(nt + 1) * (np_ + 1))
    overlap = overlap.reshape(nt + 1, np_ + 1).astype(np.float64)  # (n_true + 1, n_pred + 1)
    area_t, area_p = overlap.sum(1), overlap.sum(0)
    inter = overlap[1:, 1:]
    union = area_t[1:, None] + area_p[None, 1:] - inter
    return inter / np.maximum(union, 1)  # every instance has >= 1 pixel: union > 0


def _assign(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """Most pairs with IoU >= threshold, one to one; among those, the largest IoU sum.

    Returns (number of matched pairs, sum of their IoU). Rows and columns without any candidate
    pair cannot be matched and are left out of the assignment problem.
    """
    from scipy.optimize import linear_sum_assignment

    cand = iou >= threshold
    rows, cols = np.flatnonzero(cand.any(1)), np.flatnonzero(cand.any(0))
    if rows.size == 0:
        return 0, 0.0
    sub, ok = iou[np.ix_(rows, cols)], cand[np.ix_(rows, cols)]
    # weight 1 per candidate pair plus a tie-break below 1/2 in total: count first, then IoU sum
    n = min(sub.shape)
    gain = np.where(ok, 1.0 + sub / (2 * n), 0.0)
    r, c = linear_sum_assignment(gain, maximize=True)
    hit = ok[r, c]
    return int(hit.sum()), float(sub[r, c][hit].sum())


def _ratios(tp: int, fp: int, fn: int, sum_iou: float) -> dict[str, float]:
    # stardist's convention: every ratio is 0 when there is no true positive, including the case
    # of no true and no predicted instance (where 0/0 would otherwise appear)
    def div(a: float, b: float) -> float:
        return float(a / b) if tp > 0 else 0.0

    return {
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "accuracy": div(tp, tp + fp + fn),
        "mean_matched_iou": div(sum_iou, tp),
        "panoptic_quality": div(sum_iou, tp + fp / 2 + fn / 2),
    }


def _stats(tp: int, n_true: int, n_pred: int, sum_iou: float, threshold: float) -> dict[str, Any]:
    fp, fn = n_pred - tp, n_true - tp
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn,
            **_ratios(tp, fp, fn, sum_iou), "n_true": n_true, "n_pred": n_pred}


def _check_threshold(t: Any, name: str = "threshold") -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(t, bool) or not 0 <= v <= 1:
        raise ValueError(f"{name}: must be a number in [0, 1], got {t!r}")
    return v


def matching(
    true_instances: Any, pred_instances: Any, threshold: float | Sequence[float] = 0.5
) -> dict[str, Any] | list[dict[str, Any]]:
    """Match two instance label images one to one by IoU and count hits and misses.

    ``true_instances`` and ``pred_instances``: integer label images of one shape (any number of
    dimensions: a 3-D array is one volume, not a batch; see :func:`matching_dataset`), 0 =
    background, ids need not be consecutive. Pixels with a negative true label are ignored.

    A true and a predicted instance may be paired when their IoU is >= ``threshold``; the pairing
    is an optimal assignment (``scipy.optimize.linear_sum_assignment``) with the most pairs, and
    among those the largest IoU sum. At thresholds above 0.5 a pair is unique anyway (two disjoint
    instances cannot both overlap a third by more than half of its union); at exactly 0.5 and below,
    the assignment matters. Then TP = pairs, FP = unpaired predictions, FN = unpaired truths and

        precision = TP / (TP + FP)     recall = TP / (TP + FN)     f1 = 2 TP / (2 TP + FP + FN)
        accuracy  = TP / (TP + FP + FN)      (the 2018 Data Science Bowl's per-threshold score)
        mean_matched_iou = mean IoU of the pairs
        panoptic_quality = sum of the pairs' IoU / (TP + FP / 2 + FN / 2)

    Every ratio is 0 when TP = 0, also when both images are empty (stardist's convention, so
    these numbers equal ``stardist.matching.matching``'s; its ``mean_matched_score`` is our
    ``mean_matched_iou``). Returns a dict with those keys plus ``threshold``, ``tp``, ``fp``,
    ``fn``, ``n_true``, ``n_pred``; for a sequence of thresholds, a list of such dicts (the IoU
    table is computed once).
    """
    iou = _instance_iou(true_instances, pred_instances)
    n_true, n_pred = iou.shape
    many = np.ndim(threshold) > 0
    ts = [_check_threshold(t) for t in (np.ravel(threshold) if many else [threshold])]
    out = []
    for t in ts:
        tp, sum_iou = _assign(iou, t)
        out.append(_stats(tp, n_true, n_pred, sum_iou, t))
    return out if many else out[0]


def matching_dataset(
    true_instances: Any, pred_instances: Any, threshold: float = 0.5
) -> dict[str, Any]:
    """:func:`matching` over many images, pooled: TP, FP and FN summed over images, then the ratios.

    ``true_instances`` / ``pred_instances``: sequences of label images (or (N, H, W) arrays), the
    ids of each image matched only within it. ``mean_matched_iou`` is over all pairs of all images.
    Equals ``stardist.matching.matching_dataset(..., by_image=False)``.
    """
    if len(true_instances) != len(pred_instances):
        raise ValueError(f"pred_instances: {len(pred_instances)} images for "
                         f"{len(true_instances)} in true_instances")
    t = _check_threshold(threshold)
    tp = n_true = n_pred = 0
    sum_iou = 0.0
    for a, b in zip(true_instances, pred_instances):
        iou = _instance_iou(a, b)
        k, s = _assign(iou, t)
        tp, sum_iou = tp + k, sum_iou + s
        n_true, n_pred = n_true + iou.shape[0], n_pred + iou.shape[1]
    return _stats(tp, n_true, n_pred, sum_iou, t)


#: The Data Science Bowl 2018's IoU thresholds 0.5, 0.55, ..., 0.95 (exact decimals, so an IoU of
#: exactly 0.6 passes 0.6).
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def dsb_score(true_instances: Any, pred_instances: Any) -> float:
    """The 2018 Data Science Bowl's score of one image: :func:`matching`'s accuracy
    TP / (TP + FP + FN) averaged over the IoU thresholds 0.5, 0.55, ..., 0.95.

    The competition's score of a data set is the mean of this over its images.
    """
    return float(np.mean([m["accuracy"] for m in
                          matching(true_instances, pred_instances, DSB_THRESHOLDS)]))


# ----------------------------------------------------------------------------------------------
# Average precision of scored detections (boxes or masks), VOC and COCO style

#: COCO's 101 recall points 0, 0.01, ..., 1 and its IoU thresholds 0.5, 0.55, ..., 0.95, as exact
#: decimals (pycocotools' ``np.linspace`` gives e.g. 0.07000000000000001, which a recall of exactly
#: 7/100 misses; the results differ from pycocotools only in such exact ties).
COCO_RECALLS = np.round(np.linspace(0.0, 1.0, 101), 2)
COCO_THRESHOLDS = DSB_THRESHOLDS


def masks_from_instances(instances: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) boolean masks, one per instance of a label image, and their (n,) ids (sorted).

    Turns an instance label image (0 = background) into the mask stack that
    :func:`average_precision` takes.
    """
    a = _instance_image(instances, "instances")
    ids = np.unique(a)
    ids = ids[ids > 0]
    return a[None] == ids.reshape(-1, *([1] * a.ndim)), ids


def _box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (D, G, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)  # (D, G)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(D, G) IoU of two boolean mask stacks, intersections by one sparse product."""
    from scipy import sparse

    def csr(m: np.ndarray) -> Any:
        rows, cols = np.nonzero(m.reshape(len(m), -1))  # (D, H*W) without a dense float copy
        return sparse.csr_matrix((np.ones(rows.size), (rows, cols)),
                                 shape=(len(m), m[0].size if len(m) else 0))

    inter = np.asarray((csr(a) @ csr(b).T).todense()).reshape(len(a), len(b))
    area_a = a.reshape(len(a), -1).sum(1)
    area_b = b.reshape(len(b), -1).sum(1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _detections(a: Any, name: str) -> tuple[str | None, np.ndarray]:
    """Check one image's boxes (K, 4) xyxy or boolean masks (K, H, W); returns (kind, array),
    kind None for an empty list (nothing detected, of either kind)."""
    a = to_numpy(getattr(a, "data", a))
    if a.size == 0 and a.ndim < 2:
        return None, np.zeros((0, 4))
    if a.ndim == 2:
        if a.shape[1] != 4:
            raise ValueError(f"{name}: boxes must have shape (K, 4) (x1, y1, x2, y2), "
                             f"got {a.shape}")
        if a.dtype == bool or a.dtype.kind not in "iuf":
            raise TypeError(f"{name}: boxes must be numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: boxes must be finite")
        bad = (a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: boxes need x2 >= x1 and y2 >= y1 (xyxy); box {i} is "
                             f"{a[i].tolist()}")
        got = "boxes"
    elif a.ndim == 3:
        if a.dtype != bool:
            if a.dtype.kind not in "iuf" or not np.isin(a, (0, 1)).all():
                raise ValueError(f"{name}: masks must be boolean (or 0/1), got dtype {a.dtype}"
                                 f"{'' if a.dtype.kind not in 'iuf' else ' with other values'}; "
                                 f"threshold probabilities first")
            a = a.astype(bool)
        got = "masks"
    else:
        raise ValueError(f"{name}: expected boxes (K, 4) or boolean masks (K, H, W), "
                         f"got shape {a.shape}")
    return got, a


def _is_image_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(hasattr(e, "shape") for e in x)


def _ranked_hits(
    pred: Any, scores: Any, target: Any, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (D,) in descending order, hit flags (T, D) per IoU threshold and the number of
    ground truths, pooled over images (per-image arrays or lists of them)."""
    many = _is_image_list(pred) or _is_image_list(target)
    preds, tgts = (pred, target) if many else ([pred], [target])
    scs = scores if many else [scores]
    if not (len(preds) == len(tgts) == len(scs)):
        raise ValueError(f"pred, scores, target: per-image lists of different lengths "
                         f"{len(preds)}, {len(scs)}, {len(tgts)}")
    all_scores, all_hits, n_gt, kind = [], [], 0, None
    for i, (p, s, t) in enumerate(zip(preds, scs, tgts)):
        at = f"[{i}]" if many else ""
        kt, t = _detections(t, "target" + at)
        kp, p = _detections(p, "pred" + at)
        for name, k, a in (("target" + at, kt, t), ("pred" + at, kp, p)):
            if len(a):  # boxes and masks do not mix (empty arrays go with either)
                if kind is not None and k != kind:
                    raise ValueError(f"{name}: {k} (shape {a.shape}) where the others are {kind}")
                kind = k
        s = to_numpy(getattr(s, "data", s)).astype(np.float64).reshape(-1)
        if len(s) != len(p):
            raise ValueError(f"scores{at}: {len(s)} scores for {len(p)} detections in pred{at}")
        if not np.isfinite(s).all():
            raise ValueError(f"scores{at}: scores must be finite")
        if kind == "masks" and len(p) and len(t) and p.shape[1:] != t.shape[1:]:
            raise ValueError(f"pred{at}: masks of size {p.shape[1:]} for target{at} masks of "
                             f"size {t.shape[1:]}")
        order = np.argsort(-s, kind="stable")
        hits = np.zeros((len(thresholds), len(p)), dtype=bool)
        if len(p) and len(t):
            iou = (_box_iou_np if kind == "boxes" else _mask_iou_matrix)(p, t)[order]  # (D, G)
            # each detection's candidate truths, best IoU first (lower index first on ties)
            lo = min(thresholds)
            cands = []
            for row in iou:
                g = np.flatnonzero(row >= lo)
                g = g[np.argsort(-row[g], kind="stable")]
                cands.append(list(zip(row[g].tolist(), g.tolist())))
            for k, thr in enumerate(thresholds):
                # greedy in score order: the best still-unmatched truth, if its IoU >= thr
                taken: set[int] = set()
                for d, cand in enumerate(cands):
                    for v, g in cand:
                        if v < thr:
                            break
                        if g not in taken:
                            taken.add(g)
                            hits[k, d] = True
                            break
        all_scores.append(s[order])
        all_hits.append(hits)
        n_gt += len(t)
    s = np.concatenate(all_scores)
    order = np.argsort(-s, kind="stable")  # images in order on ties, as pycocotools
    return s[order], np.concatenate(all_hits, axis=1)[:, order], n_gt


def _ap(hits: np.ndarray, n_gt: int, style: str) -> float:
    if n_gt == 0:
        return float("nan")
    if hits.size == 0:
        return 0.0
    tp = np.cumsum(hits)
    recall = tp / n_gt
    precision = tp / np.arange(1, len(hits) + 1)
    # envelope: precision at recall r is the best precision at any recall >= r
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if style == "voc":
        r = np.concatenate([[0.0], recall])
        return float(np.sum((r[1:] - r[:-1]) * envelope))
    # coco: the envelope at the first detection reaching each recall point (0 beyond the last)
    idx = np.searchsorted(recall, COCO_RECALLS, side="left")
    q = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(q.mean())


def average_precision(
    pred: Any,
    scores: Any,
    target: Any,
    iou_threshold: float = 0.5,
    style: str = "voc",
) -> float:
    """AP of scored detections against ground truth at one IoU threshold.

    pred / target: one image's detections and ground truths, either boxes (D, 4) / (G, 4) as
        (x1, y1, x2, y2) with x2 >= x1, y2 >= y1 (area (x2 - x1)(y2 - y1), as torchvision), or
        boolean masks (D, H, W) / (G, H, W) (:func:`masks_from_instances` makes them from a label
        image); or lists of such arrays, one per image, whose detections are pooled (ranked
        together, matched only within their image), as COCO and VOC score a data set.
    scores: (D,) confidence per detection (a list of them for a list of images).

    Detections are taken in descending score (ties in input order); one is a true positive when
    its best IoU with a still-unmatched ground truth (of its image) is >= ``iou_threshold``,
    otherwise a false positive (duplicates included). Along that ranking, precision P_k and recall
    R_k = TP_k / G after k detections; the envelope P*(r) = max over R_k >= r of P_k, and

    * ``style="voc"`` (VOC 2010+, "all points"): AP = sum_k (R_k - R_(k-1)) P*(R_k), the area under
      the envelope;
    * ``style="coco"``: AP = mean of P*(r) over the 101 recall points r = 0, 0.01, ..., 1
      (0 where r is beyond the last recall reached), with no cap on detections.

    Returns NaN when there is no ground truth, 0 when there are ground truths but no detections.
    """
    if style not in ("voc", "coco"):
        raise ValueError(f"style: must be 'voc' or 'coco', got {style!r}")
    t = _check_threshold(iou_threshold, "iou_threshold")
    _, hits, n_gt = _ranked_hits(pred, scores, target, [t])
    return _ap(hits[0], n_gt, style)


def coco_ap(pred: Any, scores: Any, target: Any) -> dict[str, Any]:
    """COCO's AP for one class: ``{"ap": AP@[.5:.95], "ap50", "ap75", "per_threshold"}``.

    ``average_precision(..., style="coco")`` at each IoU threshold 0.5, 0.55, ..., 0.95
    (``per_threshold``, 10 values), ``ap`` their mean; AP50 and AP75 are the 0.5 and 0.75 entries.
    Same arguments as :func:`average_precision` (boxes or masks, one image or lists of images);
    the matching is done once per threshold over one IoU table.
    """
    _, hits, n_gt = _ranked_hits(pred, scores, target, COCO_THRESHOLDS)
    per = [_ap(h, n_gt, "coco") for h in hits]
    return {"ap": float(np.mean(per)), "ap50": per[0], "ap75": per[5],
            "per_threshold": dict(zip(COCO_THRESHOLDS, per))}


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; reports pixel accuracy, IoU and mIoU."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes)

    def pixel_accuracy(self) -> float:
        total = self.cm.sum()
        return float(np.trace(self.cm) / total) if total else float("nan")

    def iou_per_class(self) -> np.ndarray:
        return _iou_from_cm(self.cm)

    def mean_iou(self) -> float:
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def summary(self) -> dict[str, Any]:
        """``{"miou", "pixel_accuracy", "per_class_iou"}`` with NaN classes as None (JSON-ready)."""
        return {
            "miou": self.mean_iou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in self.iou_per_class()],
        }
