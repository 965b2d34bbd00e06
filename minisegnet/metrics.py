"""Segmentation metrics on integer label maps (pixels with a negative label are ignored).

Confusion matrix ``N[i, j]`` = pixels of true class i predicted as j. Pixel accuracy =
trace / total. ``IoU_i = N_ii / (sum_j N_ij + sum_j N_ji - N_ii)``; mIoU = nanmean over classes
(a class absent from both prediction and target is NaN and skipped). Inputs may be NumPy or CuPy
arrays or Tensors; results are NumPy values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import to_numpy

__all__ = [
    "confusion_matrix", "pixel_accuracy", "iou_per_class", "mean_iou", "mask_iou", "dice",
    "average_precision", "SegmentationMeter",
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
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


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
    a, b = to_numpy(getattr(a, "data", a)).astype(bool), to_numpy(getattr(b, "data", b)).astype(bool)
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


def _box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)  # (D, H*W)
    b = b.reshape(len(b), -1).astype(np.float64)  # (G, H*W)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(
    pred: Any, scores: Sequence[float] | Any, target: Any, iou_threshold: float = 0.5
) -> float:
    """AP of detections against ground truth at one IoU threshold.

    ``pred`` and ``target`` are either boxes (D, 4) / (G, 4) in xyxy, or boolean instance masks
    (D, H, W) / (G, H, W). Detections are taken in descending score; one is a true positive when
    its best IoU with a still-unmatched ground truth is at or above the threshold. AP is the area
    under the monotone (right-to-left maximum) precision envelope of the precision-recall curve.
    """
    pred = to_numpy(getattr(pred, "data", pred))
    target = to_numpy(getattr(target, "data", target))
    scores = to_numpy(getattr(scores, "data", scores)).reshape(-1)
    if len(scores) != len(pred):
        raise ValueError(f"scores: {len(scores)} scores for {len(pred)} detections")
    if len(target) == 0:
        return float("nan")
    if len(pred) == 0:
        return 0.0
    boxes = pred.ndim == 2 and pred.shape[-1] == 4
    iou = _box_iou_np(pred, target) if boxes else _mask_iou_matrix(pred, target)
    order = np.argsort(-scores, kind="stable")
    matched = np.zeros(len(target), dtype=bool)
    tp = np.zeros(len(pred))
    for rank, d in enumerate(order):
        cand = np.where(matched, -1.0, iou[d])
        g = int(np.argmax(cand))
        if cand[g] >= iou_threshold:
            matched[g] = True
            tp[rank] = 1
    ctp = np.cumsum(tp)
    recall = ctp / len(target)
    precision = ctp / np.arange(1, len(pred) + 1)
    # envelope: precision at recall r is the best precision at any recall >= r
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * envelope))


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
