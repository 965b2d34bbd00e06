"""Instance segmentation: Mask R-CNN's mask branch on a small backbone, on real nuclei.

He, Gkioxari, Dollar & Girshick, "Mask R-CNN" (ICCV 2017) turn a detector into an instance
segmenter with two ideas: a small FCN that predicts one 28x28 mask per box and per class, and
RoIAlign, which cuts the box's features out of the feature map without rounding the box to the
feature grid. Here the detector is replaced by a proposal source (the semantic U-Net's connected
components, grown by a margin), so the pipeline is::

    image (1, 1, 256, 512)                          the nuclei test half
    backbone  stem  2 x (conv3x3 + BN + ReLU)       -> (1,  w, 256, 512)
              down1 conv3x3 s2, conv3x3 (+BN+ReLU)  -> (1, 2w, 128, 256)
              down2 conv3x3 s2, conv3x3 (+BN+ReLU)  -> (1, 4w,  64, 128)   features, stride 4
    proposals  U-Net -> connected components -> boxes grown by a margin    (K, 4)
    mask_head  RoIAlign 14x14 at spatial_scale 1/4, 4 convs, deconv, 1x1   -> (K, C, 28, 28)
    scores     mean mask probability inside each 28x28 mask                 (K,)
    paste      each box's mask resized into its box (paste_masks)           (K, 256, 512)
    NMS        on the pasted masks' boxes, IoU 0.5                           (D, 256, 512)
    metrics    COCO mask AP@[.5:.95] and AP@0.5 against the truth, matching / DSB score

Training (Mask R-CNN trains its mask branch on positive proposals, IoU >= 0.5 with a ground
truth): random crops of the train half with one of the 8 flips/rotations, the ground-truth
boxes jittered (each corner moved by up to ``jitter`` x the box size, kept when IoU >= 0.5),
mask targets made Mask R-CNN's way (:func:`mask_targets`: the ground-truth instance's binary mask
RoIAligned into the box at 28x28, aligned, thresholded at 0.5; other nuclei in the box are
background), per-pixel binary cross-entropy on the mask of the box's class.

``MaskNet(..., pooler="pool")`` puts Fast R-CNN's quantized RoIPool in the head's RoI slot: the
same head and budget, the ablation of Mask R-CNN's Table 2c (``benchmarks/instance_study.py``).

``train(cfg)`` is ``minisegnet train --model maskhead``: it trains the proposal U-Net first (the
run's budget, with ``minisegnet.training.train``, into ``OUT/proposals/``; or
``--model-arg proposals=CKPT`` reuses a trained semantic checkpoint), then the mask network, and
writes the run directory of ``minisegnet.training`` (config.json, last.npz / best.npz in the same
checkpoint format, metrics.jsonl, metrics.json, predictions.npz, prediction.png, curves.png) plus
``masks.png`` (pasted masks over the image).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import functional as F
from . import nn
from .backend import to_numpy
from .models._blocks import check_input, check_positive, conv_bn_relu
from .models.mask_head import MaskHead, _check_xyxy, paste_masks
from .tensor import Tensor

__all__ = [
    "MaskNet", "Detections", "Proposals", "boxes_from_instances", "mask_targets", "jitter_boxes",
    "sample_batch", "mask_loss", "fit", "predict_masks", "proposals_from_semantic",
    "score_detections", "evaluate", "train", "model_from_checkpoint", "plot_pool_vs_align",
    "save_masks_figure", "MODEL_KEYS", "PIPELINE_DEFAULTS",
]

#: ``--model-arg`` keys that build the network (the rest of ``model_kwargs`` is the pipeline's).
MODEL_KEYS = ("width", "head_width", "stride", "roi_size", "pooler")
#: The pipeline's settings and their defaults (overridable with ``--model-arg KEY=VALUE``).
PIPELINE_DEFAULTS: dict[str, Any] = {
    "proposals": None,          # a semantic checkpoint to take proposals from; None: train a U-Net
    "proposal_kwargs": {},      # model arguments of that U-Net (training.MODEL_DEFAULTS otherwise)
    "margin": 0.1,              # proposal boxes grow by margin x size + pad on each side
    "pad": 1.0,
    "jitter": 0.2,              # corner jitter, as a fraction of the box size
    "boxes_per_instance": 2,    # jittered boxes per ground truth per step
    "max_boxes": 64,            # boxes per step (a random subset beyond that)
    "nms": 0.5,                 # IoU above which a lower-scored mask is dropped
}
MODEL_DEFAULTS: dict[str, Any] = {"width": 8, "head_width": 32, "stride": 4, "roi_size": 14,
                                  "pooler": "align"}


# ============================================================================================
# the network
# ============================================================================================


class MaskNet(nn.Module):
    """A small conv backbone and Mask R-CNN's mask head: ``net(images, boxes)`` -> mask logits.

    ``images`` (N, in_channels, H, W); ``boxes`` (K, 5) rows ``[batch_index, x1, y1, x2, y2]`` (or
    a list of (K_i, 4) per image) in image pixels; output (K, num_classes, 2*roi_size,
    2*roi_size) logits, one mask per foreground class. Shapes for a (1, 1, 256, 512) image,
    ``width`` w, ``stride`` 4::

        stem   conv3x3 + BN + ReLU, twice                 -> (1,  w, 256, 512)
        down1  conv3x3 s2 + BN + ReLU, conv3x3 + BN + ReLU -> (1, 2w, 128, 256)
        down2  the same                                   -> (1, 4w,  64, 128)  features
        mask_head (MaskHead, spatial_scale 1/4)           -> (K, num_classes, 28, 28)

    ``stride`` 1, 2, 4 or 8 sets the number of ``down`` stages (0-3). ``pooler="pool"`` replaces
    the head's RoIAlign (aligned, 2x2 samples per bin) by RoIPool at the same output size and
    scale; nothing else changes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: int = 8,
                 head_width: int = 32, stride: int = 4, roi_size: int = 14,
                 pooler: str = "align") -> None:
        super().__init__()
        self.in_channels = check_positive("in_channels", in_channels)
        self.num_classes = check_positive("num_classes", num_classes)
        w = check_positive("width", width)
        check_positive("head_width", head_width)
        check_positive("roi_size", roi_size)
        if stride not in (1, 2, 4, 8) or isinstance(stride, bool):
            raise ValueError(f"stride: must be 1, 2, 4 or 8, got {stride!r}")
        if pooler not in ("align", "pool"):
            raise ValueError(f"pooler: must be 'align' (RoIAlign) or 'pool' (RoIPool), "
                             f"got {pooler!r}")
        self.stride, self.pooler, self.roi_size = stride, pooler, roi_size
        self.stem = nn.Sequential(conv_bn_relu(in_channels, w), conv_bn_relu(w, w))
        c = w
        self.n_down = int(math.log2(stride))
        for i in range(self.n_down):
            setattr(self, f"down{i + 1}", nn.Sequential(conv_bn_relu(c, 2 * c, stride=2),
                                                        conv_bn_relu(2 * c, 2 * c)))
            c *= 2
        self.feature_channels = c
        self.mask_head = MaskHead(c, num_classes, roi_size, 1.0 / stride, width=head_width)
        if pooler == "pool":
            # the ablation: the head's RoI slot gets Fast R-CNN's quantized RoIPool
            self.mask_head.roi_align = nn.RoIPool((roi_size, roi_size), 1.0 / stride)

    @property
    def mask_size(self) -> int:
        return 2 * self.roi_size

    def features(self, x: Any) -> Tensor:
        """(N, C, H, W) images -> (N, feature_channels, ceil(H/stride), ceil(W/stride))."""
        h = self.stem(check_input("MaskNet", x, self.in_channels))
        for i in range(self.n_down):
            h = getattr(self, f"down{i + 1}")(h)
        return h

    def forward(self, x: Any, boxes: Any) -> Tensor:
        return self.mask_head(self.features(x), boxes)


def _build(in_channels: int, num_classes: int, model_kwargs: dict[str, Any]) -> MaskNet:
    kw = {**MODEL_DEFAULTS, **{k: v for k, v in model_kwargs.items() if k in MODEL_KEYS}}
    return MaskNet(in_channels, num_classes, **kw)


# ============================================================================================
# boxes and mask targets
# ============================================================================================


def _instance_image(a: Any, name: str) -> np.ndarray:
    a = to_numpy(getattr(a, "data", a))
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) instance label image, got shape "
                         f"{getattr(a, 'shape', None)}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer instance ids, got dtype {a.dtype}")
    return a


def boxes_from_instances(instances: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes (n, 4) ``[x1, y1, x2, y2]`` and ids (n,) of an (H, W) instance label image.

    Boxes are in pixel-edge coordinates: an instance covering columns c0..c1 and rows r0..r1 has
    the box ``[c0, r0, c1 + 1, r1 + 1]`` (pixel (i, j) is the square [j, j+1] x [i, i+1], centre
    (j + 0.5, i + 0.5): the convention of ``roi_align(aligned=True)`` and ``paste_masks``).
    """
    from scipy import ndimage

    a = _instance_image(instances, "instances")
    ids = np.unique(a)
    ids = ids[ids > 0]
    boxes = np.zeros((len(ids), 4))
    if len(ids):
        slices = ndimage.find_objects(a.astype(np.int64, copy=False))
        for k, i in enumerate(ids):
            sy, sx = slices[i - 1]
            boxes[k] = (sx.start, sy.start, sx.stop, sy.stop)
    return boxes, ids


def _xyxy(boxes: Any, name: str, n: int | None = None) -> np.ndarray:
    b = to_numpy(getattr(boxes, "data", boxes))
    b = np.asarray(b)
    if b.ndim != 2 or b.shape[1] != 4 or (n is not None and len(b) != n):
        want = "(K, 4)" if n is None else f"({n}, 4)"
        raise ValueError(f"{name}: must be {want} [x1, y1, x2, y2], got shape {b.shape}")
    if b.dtype.kind not in "iuf":
        raise TypeError(f"{name}: boxes must hold numbers, got dtype {b.dtype}")
    b = b.astype(np.float64)
    _check_xyxy(b, name)
    return b


def mask_targets(masks: Any, boxes: Any, index: Any, size: int = 28) -> np.ndarray:
    """Mask R-CNN's mask targets: (K, size, size) float32 of 0/1, the truth resampled into each box.

    ``masks`` (n, H, W) binary ground-truth masks; ``boxes`` (K, 4) ``[x1, y1, x2, y2]`` in
    pixels; ``index`` (K,) the ground truth of each box. Target k is
    ``roi_align(masks[index[k]], boxes[k], size, sampling_ratio=0, aligned=True) >= 0.5``
    (detectron2's ``BitMasks.crop_and_resize``): the part of the instance inside the box, at
    size x size; other instances in the box are background.
    """
    m = to_numpy(getattr(masks, "data", masks))
    if m.ndim != 3:
        raise ValueError(f"masks: must be (n, H, W) binary masks, got shape {m.shape}")
    b = _xyxy(boxes, "boxes")
    idx = np.asarray(to_numpy(getattr(index, "data", index)))
    if idx.shape != (len(b),) or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"index: must be ({len(b)},) integers (one ground truth per box), got "
                         f"shape {idx.shape} dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(m)):
        raise ValueError(f"index: ground-truth indices must lie in [0, {len(m)}) for masks of "
                         f"shape {m.shape}, got range [{idx.min()}, {idx.max()}]")
    check_positive("size", size)
    if len(b) == 0:
        return np.zeros((0, size, size), np.float32)
    rows = np.concatenate([idx[:, None].astype(np.float64), b], axis=1)  # (K, 5)
    planes = Tensor(np.ascontiguousarray(m[:, None], dtype=np.float32))   # (n, 1, H, W)
    t = F.roi_align(planes, rows, size, 1.0, sampling_ratio=0, aligned=True).data[:, 0]
    return (t >= 0.5).astype(np.float32)                                 # (K, size, size)


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[k] with b[k], (K,)."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def jitter_boxes(boxes: Any, rng: np.random.Generator, jitter: float = 0.2, per_box: int = 2,
                 min_iou: float = 0.5, image_size: tuple[int, int] | None = None,
                 tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Positive RoIs around ground-truth boxes: (K * per_box, 4) boxes and the (K*per_box,) index
    of the box each came from.

    Each corner moves by ``u * jitter * size`` (u uniform in [-1, 1], size the box's width for x
    and height for y); the box is clipped to ``image_size`` (H, W) when given, and redrawn
    (up to ``tries`` times) until its IoU with its ground truth is >= ``min_iou``; a box that
    never makes it is the ground-truth box itself.
    """
    b = _xyxy(boxes, "boxes")
    if not (0 <= jitter) or not (0 < min_iou <= 1):
        raise ValueError(f"jitter, min_iou: need jitter >= 0 and 0 < min_iou <= 1, got {jitter}, "
                         f"{min_iou}")
    check_positive("per_box", per_box)
    idx = np.repeat(np.arange(len(b)), per_box)
    gt = b[idx]                                                   # (K*per_box, 4)
    out = gt.copy()
    todo = np.ones(len(gt), bool)
    size = np.concatenate([gt[:, 2:] - gt[:, :2]] * 2, axis=1)    # (w, h, w, h)
    for _ in range(tries):
        if not todo.any():
            break
        n = int(todo.sum())
        cand = gt[todo] + rng.uniform(-1, 1, (n, 4)) * jitter * size[todo]
        cand[:, 2:] = np.maximum(cand[:, 2:], cand[:, :2])        # keep x2 >= x1, y2 >= y1
        if image_size is not None:
            H, W = image_size
            cand = np.clip(cand, 0, [W, H, W, H])
        ok = _paired_iou(cand, gt[todo]) >= min_iou
        sel = np.flatnonzero(todo)
        out[sel[ok]] = cand[ok]
        todo[sel[ok]] = False
    return out, idx


# ============================================================================================
# training
# ============================================================================================


def _class_tables(dataset: Any) -> list[np.ndarray]:
    """Per image: id -> head class (0..K-2), the majority foreground label under each instance."""
    K = len(dataset.class_names)
    tables = []
    for inst, lab in zip(dataset.instances, dataset.labels, strict=True):
        n = int(inst.max()) + 1
        ok = (inst > 0) & (lab > 0)
        counts = np.bincount(inst[ok].astype(np.int64) * K + lab[ok], minlength=n * K)
        counts = counts.reshape(n, K)[:, 1:]                      # foreground classes only
        tables.append(counts.argmax(1).astype(np.int64))          # no label: class 0
    return tables


def _require_instances(dataset: Any, name: str = "dataset") -> None:
    if getattr(dataset, "instances", None) is None:
        raise ValueError(f"{name}: the instance pipeline needs instance labels; this dataset has "
                         f"none")


def sample_batch(dataset: Any, rng: np.random.Generator, batch: int = 2, patch: int = 128,
                 mask_size: int = 28, jitter: float = 0.2, boxes_per_instance: int = 2,
                 max_boxes: int = 64, min_area: int = 10,
                 tables: list[np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """One training batch: (images (B, C, p, p), rows (K, 5), targets (K, M, M), classes (K,)).

    Each of the ``batch`` crops is a random ``patch`` x ``patch`` window (the whole image where
    it is smaller) under one of the 8 flips/rotations of the square; each instance with at least
    ``min_area`` pixels in the crop gives ``boxes_per_instance`` jittered boxes
    (:func:`jitter_boxes`) with their :func:`mask_targets`; beyond ``max_boxes`` a random subset.
    ``rows`` are ``[crop_index, x1, y1, x2, y2]``, ``classes`` the head's class of each box.
    """
    _require_instances(dataset)
    tables = _class_tables(dataset) if tables is None else tables
    N, C, H, W = dataset.images.shape
    ph, pw = min(patch, H), min(patch, W)
    images, rows, targets, classes = [], [], [], []
    for c in range(batch):
        for _ in range(20):  # a crop with at least one instance, if there is one
            i = int(rng.integers(N))
            y0, x0 = int(rng.integers(H - ph + 1)), int(rng.integers(W - pw + 1))
            img = dataset.images[i, :, y0:y0 + ph, x0:x0 + pw]
            inst = dataset.instances[i, y0:y0 + ph, x0:x0 + pw]
            k = int(rng.integers(4)) if ph == pw else 2 * int(rng.integers(2))
            img, inst = np.rot90(img, k, axes=(1, 2)), np.rot90(inst, k)
            if rng.integers(2):
                img, inst = img[:, :, ::-1], inst[:, ::-1]
            ids, area = np.unique(inst, return_counts=True)
            keep = (ids > 0) & (area >= min_area)
            if keep.any():
                break
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        if not keep.any():
            continue
        ids = ids[keep]
        masks = inst[None] == ids[:, None, None]                  # (n, ph, pw)
        sl = _compact(inst, ids)
        gt = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in sl], np.float64)
        jb, j = jitter_boxes(gt, rng, jitter, boxes_per_instance, 0.5, inst.shape)
        targets.append(mask_targets(masks, jb, j, mask_size))
        rows.append(np.concatenate([np.full((len(jb), 1), float(c)), jb], axis=1))
        classes.append(tables[i][ids[j]])
    if not rows:
        raise ValueError("dataset: no instance of at least min_area pixels found in 20 random "
                         "crops per image; nothing to train the mask head on")
    rows, targets, classes = np.concatenate(rows), np.concatenate(targets), np.concatenate(classes)
    if len(rows) > max_boxes:
        sel = np.sort(rng.choice(len(rows), max_boxes, replace=False))
        rows, targets, classes = rows[sel], targets[sel], classes[sel]
    return np.stack(images), rows.astype(np.float32), targets, classes


def _compact(inst: np.ndarray, ids: np.ndarray) -> list:
    """find_objects slices of the instances ``ids`` (in that order) of a label image."""
    from scipy import ndimage

    lut = np.zeros(int(inst.max()) + 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return ndimage.find_objects(lut[inst], max_label=len(ids))


def mask_loss(logits: Tensor, targets: Any, classes: Any) -> Tensor:
    """Mean per-pixel binary cross-entropy on each box's own class mask.

    ``logits`` (K, C, M, M), ``targets`` (K, M, M) in [0, 1], ``classes`` (K,) in [0, C): only
    the mask of the box's class is trained (Mask R-CNN's decoupled per-class masks).
    """
    K, C = logits.shape[:2]
    cls = np.asarray(to_numpy(getattr(classes, "data", classes)))
    if cls.shape != (K,) or (K and (cls.min() < 0 or cls.max() >= C)):
        got = f", range [{cls.min()}, {cls.max()}]" if cls.size else ""
        raise ValueError(f"classes: must be ({K},) class indices in [0, {C}), got shape "
                         f"{cls.shape}{got}")
    if C == 1:
        sel = logits.reshape(K, *logits.shape[2:])
    else:
        onehot = np.zeros((K, C, 1, 1), logits.dtype)
        onehot[np.arange(K), cls] = 1
        sel = (logits * Tensor(onehot).to(logits.device)).sum(dim=1)  # (K, M, M)
    t = targets if isinstance(targets, Tensor) else Tensor(np.asarray(targets, np.float32))
    return F.binary_cross_entropy_with_logits(sel, t.to(logits.device))


def _step(model: MaskNet, opt: Any, batch: tuple[np.ndarray, ...], device: str) -> float:
    images, rows, targets, classes = batch
    logits = model(Tensor(images).to(device), rows)
    loss = mask_loss(logits, targets, classes)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item())


def fit(model: MaskNet, dataset: Any, steps: int, batch: int = 2, patch: int = 128,
        lr: float = 1e-3, seed: int = 0, device: str = "cpu", jitter: float = 0.2,
        boxes_per_instance: int = 2, max_boxes: int = 64, log: Any = None) -> list[float]:
    """Train ``model``'s backbone and head on ``dataset`` for ``steps`` Adam steps (cosine decay
    to 0): :func:`sample_batch`, :func:`mask_loss`. Returns the loss of each step."""
    from . import optim

    check_positive("steps", steps)
    model.to(device).train()
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.CosineAnnealingLR(opt, T_max=steps)
    rng = np.random.default_rng(seed)
    tables = _class_tables(dataset)
    losses = []
    for s in range(steps):
        b = sample_batch(dataset, rng, batch, patch, model.mask_size, jitter, boxes_per_instance,
                         max_boxes, tables=tables)
        losses.append(_step(model, opt, b, device))
        sched.step()
        if log is not None and (s + 1) % max(steps // 10, 1) == 0:
            log(f"step {s + 1}/{steps}: loss {np.mean(losses[-max(steps // 10, 1):]):.4f}")
    return losses


# ============================================================================================
# inference
# ============================================================================================


@dataclass
class Detections:
    """One image's instances: ``masks`` (D, H, W) bool, ``scores`` (D,), ``boxes`` (D, 4) (the
    masks' tight boxes), ``classes`` (D,) dataset class ids, ``instances`` (H, W) int32 label
    image (overlaps go to the higher score)."""

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    instances: np.ndarray


@dataclass
class Proposals:
    """Boxes for the mask head: ``boxes`` (P, 4) grown by the margin, ``classes`` (P,) dataset
    class ids, ``scores`` (P,) the semantic model's mean class probability over each component,
    ``instances`` (H, W) the connected components themselves."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    instances: np.ndarray


def _label_image(masks: np.ndarray, scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for rank, d in enumerate(np.argsort(scores, kind="stable")):  # ascending: best painted last
        out[masks[d]] = rank + 1
    return _relabel(out)


def _relabel(a: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(a, return_inverse=True)
    out = inv.reshape(a.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1


def predict_masks(model: MaskNet, image: Any, boxes: Any, classes: Any = None,
                  device: str = "cpu", threshold: float = 0.5,
                  nms_threshold: float | None = 0.5) -> Detections:
    """Masks of ``model`` for one (C, H, W) image at (K, 4) boxes, pasted, scored, NMS'd.

    ``classes`` (K,) dataset class ids (1..; default all 1): box k takes the mask of class
    ``classes[k] - 1``. Score = the mean mask probability over the 28x28 cells at or above
    ``threshold`` (0 for an empty mask, which is dropped). Masks are pasted into their boxes
    (:func:`paste_masks`), then greedy NMS over the pasted masks' tight boxes drops a mask whose
    box IoU with a better-scored one is above ``nms_threshold`` (None: no NMS).
    """
    import minisegnet as msn

    img = np.asarray(to_numpy(getattr(image, "data", image)), dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"image: expected (C, H, W), got shape {img.shape}")
    H, W = img.shape[1:]
    b = _xyxy(boxes, "boxes")
    cls = np.ones(len(b), np.int64) if classes is None else np.asarray(to_numpy(classes))
    if cls.shape != (len(b),) or (cls.size and (cls.min() < 1 or cls.max() > model.num_classes)):
        raise ValueError(f"classes: must be ({len(b)},) class ids in [1, {model.num_classes}], "
                         f"got shape {cls.shape}" + (f", range [{cls.min()}, {cls.max()}]"
                                                     if cls.size else ""))
    empty = Detections(np.zeros((0, H, W), bool), np.zeros(0), np.zeros((0, 4)),
                       np.zeros(0, np.int64), np.zeros((H, W), np.int32))
    if len(b) == 0:
        return empty
    was_training = model.training
    model.eval()
    try:
        with msn.no_grad():
            rows = np.concatenate([np.zeros((len(b), 1)), b], axis=1).astype(np.float32)
            logits = model(Tensor(img[None]).to(device), rows)              # (K, C, M, M)
            probs = to_numpy(F.sigmoid(logits).data)[np.arange(len(b)), cls - 1]  # (K, M, M)
    finally:
        model.train(was_training)
    on = probs >= threshold
    scores = np.where(on.any((1, 2)), (probs * on).sum((1, 2)) / np.maximum(on.sum((1, 2)), 1), 0)
    masks = np.asarray(paste_masks(probs, b, (H, W), threshold))               # (K, H, W)
    keep = masks.any((1, 2)) & (scores > 0)
    masks, scores, cls = masks[keep], scores[keep], cls[keep]
    if len(masks) == 0:
        return empty
    mboxes = np.stack([_mask_box(m) for m in masks])
    if nms_threshold is not None:
        kept = to_numpy(F.nms(mboxes, scores, float(nms_threshold)).data)
        masks, scores, mboxes, cls = masks[kept], scores[kept], mboxes[kept], cls[kept]
    return Detections(masks, scores, mboxes, cls, _label_image(masks, scores, (H, W)))


def _mask_box(m: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _grow(boxes: np.ndarray, margin: float, pad: float, shape: tuple[int, int]) -> np.ndarray:
    H, W = shape
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    grown = boxes + np.array([-1, -1, 1, 1]) * (margin * size + pad)
    return np.clip(grown, 0, [W, H, W, H])


def proposals_from_semantic(probs: Any, margin: float = 0.1, pad: float = 1.0,
                            min_size: int = 8) -> Proposals:
    """Boxes from a semantic model's class probabilities (K, H, W) for one image.

    The argmax's connected components (:func:`minisegnet.inference.instances_from_semantic`,
    components under ``min_size`` pixels dropped, carved gaps refilled); each component's tight
    box grown on every side by ``margin`` x its width (height) + ``pad`` pixels, clipped to the
    image; its class is the component's label, its score the mean probability of that class
    over the component (what the components score with when they are scored as masks).
    """
    from .inference import instances_from_semantic

    p = np.asarray(to_numpy(getattr(probs, "data", probs)))
    if p.ndim != 3:
        raise ValueError(f"probs: expected (K, H, W) class probabilities, got shape {p.shape}")
    if margin < 0 or pad < 0:
        raise ValueError(f"margin, pad: must be >= 0, got {margin}, {pad}")
    labels = p.argmax(0)
    inst = instances_from_semantic(labels, min_size=min_size)
    boxes, ids = boxes_from_instances(inst)
    n = len(ids)
    cls = np.zeros(n, np.int64)
    scores = np.zeros(n)
    if n:
        flat = inst.ravel()
        on = flat > 0
        counts = np.bincount(flat[on], minlength=n + 1)[1:]
        votes = np.zeros((n + 1, p.shape[0]))  # refilled gap pixels are background: no vote
        np.add.at(votes, (flat[on], labels.ravel()[on]), 1)
        cls = votes[1:, 1:].argmax(1) + 1
        own = p.reshape(p.shape[0], -1)[cls[flat[on] - 1], np.flatnonzero(on)]  # P(own class)
        sums = np.bincount(flat[on], weights=own, minlength=n + 1)[1:]
        scores = sums / np.maximum(counts, 1)
    return Proposals(_grow(boxes, margin, pad, labels.shape), cls, scores, inst)


# ============================================================================================
# evaluation
# ============================================================================================


def score_detections(detections: list[Detections], true_instances: Any,
                     true_classes: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Mask AP (COCO, per class then averaged) and matching of detections on N images.

    ``true_instances`` (N, H, W) label images (or a list of (H, W)); ``true_classes`` one array
    per image giving each instance's class, in the order of its ids (default: all class 1).
    Returns ``mask_ap`` (AP@[.5:.95]), ``mask_ap50``, ``mask_ap75``, ``mask_ap_per_threshold``
    (IoU 0.5, 0.55, ..., 0.95), and from the label images
    (class-agnostic, pooled over images) ``instance_accuracy_50``, ``instance_f1_50``,
    ``dsb_score`` (mean over images).
    """
    from . import metrics

    truths = [_instance_image(t, f"true_instances[{i}]") for i, t in enumerate(true_instances)]
    if len(truths) != len(detections):
        raise ValueError(f"detections: {len(detections)} images for {len(truths)} label images in "
                         f"true_instances")
    tp = fp = fn = 0
    dsb, by_class = [], {}
    for i, (d, t) in enumerate(zip(detections, truths, strict=True)):
        if d.instances.shape != t.shape:
            raise ValueError(f"true_instances[{i}]: shape {t.shape} differs from the predicted "
                             f"label image's {d.instances.shape}")
        masks, ids = metrics.masks_from_instances(t)
        tc = np.ones(len(ids), np.int64) if true_classes is None else np.asarray(true_classes[i])
        if tc.shape != (len(ids),):
            raise ValueError(f"true_classes[{i}]: shape {tc.shape} for {len(ids)} instances")
        for c in set(tc.tolist()) | set(d.classes.tolist()):
            entry = by_class.setdefault(c, ([], [], []))
            entry[0].append(d.masks[d.classes == c])
            entry[1].append(d.scores[d.classes == c])
            entry[2].append(masks[tc == c])
        m = metrics.matching(t, d.instances, threshold=0.5)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        dsb.append(metrics.dsb_score(t, d.instances))
    aps = []
    for _, (pm, ps, tm) in sorted(by_class.items()):
        if sum(len(x) for x in tm) == 0:
            continue  # a class with no ground truth has no AP (COCO skips it)
        aps.append(metrics.coco_ap(pm, ps, tm))
    out = {"mask_ap": float(np.mean([a["ap"] for a in aps])) if aps else float("nan"),
           "mask_ap50": float(np.mean([a["ap50"] for a in aps])) if aps else float("nan"),
           "mask_ap75": float(np.mean([a["ap75"] for a in aps])) if aps else float("nan"),
           "mask_ap_per_threshold": [float(np.mean([list(a["per_threshold"].values())[t]
                                                    for a in aps])) if aps else float("nan")
                                     for t in range(10)],
           "instance_accuracy_50": tp / max(tp + fp + fn, 1),
           "instance_f1_50": 2 * tp / max(2 * tp + fp + fn, 1),
           "dsb_score": float(np.mean(dsb)) if dsb else float("nan"),
           "instances_true": tp + fn, "instances_pred": tp + fp}
    return out


def _true_classes(dataset: Any) -> list[np.ndarray]:
    tables = _class_tables(dataset)
    out = []
    for t, inst in zip(tables, dataset.instances, strict=True):
        ids = np.unique(inst)
        out.append(t[ids[ids > 0]] + 1)
    return out


def _components_as_detections(p: Proposals) -> Detections:
    masks = p.instances[None] == np.arange(1, len(p.boxes) + 1)[:, None, None]  # (P, H, W)
    return Detections(masks, p.scores, np.zeros((len(masks), 4)), p.classes, p.instances)


def evaluate(model: MaskNet, dataset: Any, proposals: list[Proposals] | None = None,
             device: str = "cpu", nms_threshold: float = 0.5) -> tuple[dict[str, Any], dict]:
    """Mask AP and matching of ``model`` on ``dataset`` with ground-truth boxes and, when given,
    with ``proposals`` (one :class:`Proposals` per image; their connected components are scored
    the same way as a baseline).

    Returns (metrics, detections): metrics ``{"gt_boxes": {...}, "proposals": {...},
    "connected_components": {...}}`` (:func:`score_detections`' keys), detections
    ``{"gt_boxes": [Detections], "proposals": [Detections]}``.
    """
    _require_instances(dataset)
    tc = _true_classes(dataset)
    result, dets = {}, {}
    gt = []
    for img, inst, c in zip(dataset.images, dataset.instances, tc, strict=True):
        boxes, _ = boxes_from_instances(inst)
        gt.append(predict_masks(model, img, boxes, c, device, nms_threshold=nms_threshold))
    dets["gt_boxes"] = gt
    result["gt_boxes"] = score_detections(gt, dataset.instances, tc)
    if proposals is not None:
        if len(proposals) != len(dataset.images):
            raise ValueError(f"proposals: {len(proposals)} for {len(dataset.images)} images")
        pr = [predict_masks(model, img, p.boxes, p.classes, device, nms_threshold=nms_threshold)
              for img, p in zip(dataset.images, proposals, strict=True)]
        dets["proposals"] = pr
        result["proposals"] = score_detections(pr, dataset.instances, tc)
        result["connected_components"] = score_detections(
            [_components_as_detections(p) for p in proposals], dataset.instances, tc)
    return result, dets


# ============================================================================================
# the run: minisegnet train --model maskhead
# ============================================================================================


def _split_kwargs(model_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(model_kwargs) - set(MODEL_KEYS) - set(PIPELINE_DEFAULTS))
    if unknown:
        raise ValueError(f"--model-arg: unknown key(s) {unknown} for maskhead; model keys "
                         f"{list(MODEL_KEYS)}, pipeline keys {list(PIPELINE_DEFAULTS)}")
    model = {**MODEL_DEFAULTS, **{k: v for k, v in model_kwargs.items() if k in MODEL_KEYS}}
    pipe = {**PIPELINE_DEFAULTS,
            **{k: v for k, v in model_kwargs.items() if k in PIPELINE_DEFAULTS}}
    return model, pipe


def _proposal_model(cfg: Any, pipe: dict[str, Any], log: Any) -> tuple[Any, str]:
    """The semantic model proposals come from: a given checkpoint, or a U-Net trained with the
    run's budget in OUT/proposals (resumed if interrupted, reused when finished)."""
    from . import training

    path = pipe["proposals"]
    if path is None:
        sub = os.path.join(cfg.out, "proposals")
        path = os.path.join(sub, "best.npz")
        if not os.path.exists(os.path.join(sub, "metrics.json")):
            ucfg = training.TrainConfig(
                model="unet", data=cfg.data, epochs=cfg.epochs, steps=cfg.steps, batch=cfg.batch,
                patch=cfg.patch, lr=cfg.lr, seed=cfg.seed, device=cfg.device, out=sub,
                weight_map=cfg.weight_map, elastic=cfg.elastic,
                model_kwargs=dict(pipe["proposal_kwargs"]))
            log(f"proposals: training a U-Net ({cfg.epochs} x {cfg.steps} steps) into {sub}/")
            training.train(ucfg, resume=os.path.exists(os.path.join(sub, "last.npz")), log=log)
    model, _ = training.model_from_checkpoint(path, device=cfg.device)
    return model, path


def _proposals_for(semantic: Any, dataset: Any, pipe: dict[str, Any],
                   device: str) -> list[Proposals]:
    from .inference import predict_image

    return [proposals_from_semantic(predict_image(semantic, img, device=device),
                                    pipe["margin"], pipe["pad"]) for img in dataset.images]


def model_from_checkpoint(path: str, device: str = "cpu") -> tuple[MaskNet, dict[str, Any]]:
    """Rebuild a ``maskhead`` checkpoint's :class:`MaskNet` with its weights; (model, meta)."""
    from .training import CheckpointError, load_checkpoint

    sd, meta, _ = load_checkpoint(path)
    if meta.get("task") != "instance":
        raise CheckpointError(f"checkpoint: {path!r} is not a maskhead (instance) checkpoint")
    model = _build(meta["in_channels"], meta["num_classes"] - 1, meta["config"]["model_kwargs"])
    model.load_state_dict(sd)
    return model.to(device), meta


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    """The scalars of one evaluation, for metrics.jsonl and the curves."""
    p, g = result.get("proposals", {}), result["gt_boxes"]
    row = {"mask_ap": p.get("mask_ap"), "mask_ap50": p.get("mask_ap50"),
           "gt_mask_ap": g["mask_ap"], "gt_mask_ap50": g["mask_ap50"]}
    for k in ("miou", "pixel_accuracy", "instance_accuracy_50", "instance_f1_50", "dsb_score"):
        if k in result:
            row[k] = result[k]
    return row


def _full_result(model: MaskNet, test_set: Any, proposals: list[Proposals] | None,
                 device: str, nms: float) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    from .training import metrics_from_predictions

    res, dets = evaluate(model, test_set, proposals, device, nms)
    main = dets["proposals"] if proposals is not None else dets["gt_boxes"]
    inst = np.stack([d.instances for d in main])                     # (N, H, W)
    labels = np.zeros(inst.shape, np.int64)
    for n, d in enumerate(main):
        cls = np.concatenate([[0], d.classes[np.argsort(d.scores, kind="stable")]])
        labels[n] = cls[d.instances]  # label image ids are score ranks (relabelled in order)
    out = metrics_from_predictions(labels, test_set, inst)
    src = res["proposals"] if proposals is not None else res["gt_boxes"]
    out.update(mask_ap=src["mask_ap"], mask_ap50=src["mask_ap50"], mask_ap75=src["mask_ap75"])
    out.update({k: v for k, v in res.items()})
    preds = {"labels": labels, "instances": inst}
    return out, preds, dets


def train(cfg: Any, resume: bool = False, log: Any = print) -> dict[str, Any]:
    """``minisegnet train --model maskhead``: proposals, mask network, run directory.

    ``cfg`` is a :class:`minisegnet.training.TrainConfig` (model "maskhead"): epochs x steps Adam
    steps (cosine decay) of ``batch`` crops of ``patch`` pixels, ``lr``, ``seed``, ``device``;
    ``model_kwargs`` holds the network's keys (:data:`MODEL_KEYS`) and the pipeline's
    (:data:`PIPELINE_DEFAULTS`). Evaluates on the test split each epoch (ground-truth boxes and
    proposals); best.npz keeps the best proposal mask AP@[.5:.95]. Returns metrics.json's content.
    Ctrl-C saves last.npz and raises :class:`minisegnet.training.Interrupted`.
    """
    import minisegnet as msn
    from minisegnet import data, optim
    from minisegnet import random as msn_random

    from . import training

    os.makedirs(cfg.out, exist_ok=True)
    last_path, best_path = os.path.join(cfg.out, "last.npz"), os.path.join(cfg.out, "best.npz")
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": None,
                             "history": [], "losses": [], "seconds": 0.0}
    saved_opt: dict[str, Any] = {}
    if resume and not os.path.exists(last_path):
        # interrupted while the proposal U-Net trained: that run resumes, the head starts fresh
        if not os.path.exists(os.path.join(cfg.out, "proposals", "last.npz")):
            raise FileNotFoundError(f"--resume: no checkpoint {last_path!r} to resume from")
        resume = False
    if resume:
        sd, meta, saved_opt = training.load_checkpoint(last_path)
        saved = meta["config"]
        for k in ("model", "data", "seed", "model_kwargs", "patch", "batch"):
            if saved[k] != getattr(cfg, k):
                log(f"resume: using the checkpoint's {k}={saved[k]!r}")
                setattr(cfg, k, saved[k])
        state = meta["state"]
    model_kw, pipe = _split_kwargs(cfg.model_kwargs)

    train_set = data.load(cfg.data, split="train", weights=False)
    test_set = data.load(cfg.data, split="test", weights=False)
    _require_instances(train_set, f"data {cfg.data!r}")
    num_classes, in_channels = len(train_set.class_names), train_set.images.shape[1]
    t_prop = time.perf_counter()
    semantic, prop_path = _proposal_model(cfg, pipe, log)
    proposals = _proposals_for(semantic, test_set, pipe, cfg.device)
    prop_seconds = time.perf_counter() - t_prop

    msn.manual_seed(cfg.seed)
    model = _build(in_channels, num_classes - 1, model_kw)
    total = cfg.epochs * cfg.steps
    opt = optim.Adam(model.parameters(), lr=cfg.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=max(total, 1))
    if resume:
        model.load_state_dict(sd)
        opt.load_state_dict(saved_opt)
        sched.load_state_dict(meta["scheduler"])
        msn_random.default_rng().bit_generator.state = meta["rng"]
    else:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
        open(os.path.join(cfg.out, "metrics.jsonl"), "w").close()
    model.to(cfg.device)

    def meta_now() -> dict[str, Any]:
        return {"config": asdict(cfg), "state": state, "task": "instance",
                "num_classes": num_classes, "in_channels": in_channels,
                "class_names": list(train_set.class_names),
                "normalization": train_set.normalization, "scheduler": sched.state_dict(),
                "has_instances": True, "proposals": os.path.abspath(prop_path),
                "rng": msn_random.default_rng().bit_generator.state,
                "minisegnet_version": msn.__version__}

    tables = _class_tables(train_set)
    n_params = model.num_parameters()
    roi = "RoIAlign" if model.pooler == "align" else "RoIPool"
    log(f"training maskhead ({n_params:,} parameters, {roi}, stride {model.stride}) on "
        f"{cfg.data}: {cfg.epochs} epochs x {cfg.steps} steps of "
        f"{cfg.batch} crops {cfg.patch}x{cfg.patch}, device {cfg.device}")
    t_start = time.perf_counter() - state["seconds"]
    with training._SigintGuard() as guard:
        for epoch in range(state["epoch"], cfg.epochs):
            model.train()
            rng = np.random.default_rng([cfg.seed, epoch])

            def draw(rng: np.random.Generator = rng) -> tuple[np.ndarray, ...]:
                return sample_batch(train_set, rng, cfg.batch, cfg.patch, model.mask_size,
                                    pipe["jitter"], pipe["boxes_per_instance"],
                                    pipe["max_boxes"], tables=tables)

            for _ in range(state["step_in_epoch"]):  # resume: replay this epoch's draws
                draw()
            bar = training._progress(cfg.steps, state["step_in_epoch"],
                                     f"epoch {epoch + 1}/{cfg.epochs}")
            while state["step_in_epoch"] < cfg.steps:
                loss = _step(model, opt, draw(), cfg.device)
                sched.step()
                state["step"] += 1
                state["step_in_epoch"] += 1
                state["losses"].append(round(loss, 5))
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                if guard.requested:
                    bar.close()
                    state["seconds"] = time.perf_counter() - t_start
                    training.save_checkpoint(last_path, model, meta_now(), opt)
                    raise training.Interrupted(cfg.out, state["step"])
            bar.close()
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
            result, _, _ = _full_result(model, test_set, proposals, cfg.device, pipe["nms"])
            state["seconds"] = time.perf_counter() - t_start
            row = {"epoch": epoch + 1, "step": state["step"],
                   "loss": float(np.mean(state["losses"][-cfg.steps:])),
                   "seconds": round(state["seconds"], 2), **_flat(result)}
            state["history"].append(row)
            with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            log(f"epoch {epoch + 1}, step {row['step']}, loss {row['loss']:.4f}, mask AP "
                f"{row['mask_ap']:.3f} (AP@0.5 {row['mask_ap50']:.3f}), GT boxes AP "
                f"{row['gt_mask_ap']:.3f} (AP@0.5 {row['gt_mask_ap50']:.3f}), instance acc@0.5 "
                f"{row['instance_accuracy_50']:.3f} ({row['seconds']:.0f} s)")
            if state["best"] is None or result["mask_ap"] > state["best"]["value"]:
                state["best"] = {"epoch": epoch + 1, "metric": "mask_ap",
                                 "value": result["mask_ap"]}
                training.save_checkpoint(best_path, model, meta_now())
            training.save_checkpoint(last_path, model, meta_now(), opt)

    final, preds, dets = _full_result(model, test_set, proposals, cfg.device, pipe["nms"])
    final.update(model=cfg.model, data=cfg.data, device=cfg.device, epochs=cfg.epochs,
                 steps=state["step"], parameters=n_params, seconds=round(state["seconds"], 2),
                 proposal_seconds=round(prop_seconds, 2), best=state["best"],
                 pooler=model.pooler, proposals_checkpoint=os.path.abspath(prop_path),
                 minisegnet_version=msn.__version__)
    training.write_run_outputs(cfg.out, final, preds, test_set, state["history"],
                               state["losses"])
    save_masks_figure(os.path.join(cfg.out, "masks.png"), test_set.images[0], dets["proposals"][0],
                      test_set.instances[0], proposals[0],
                      f"maskhead on {cfg.data} (test): mask AP {final['mask_ap']:.3f}, "
                      f"AP@0.5 {final['mask_ap50']:.3f}; with GT boxes AP@0.5 "
                      f"{final['gt_boxes']['mask_ap50']:.3f}")
    return final


# ============================================================================================
# figures
# ============================================================================================


def save_masks_figure(path: str, image: np.ndarray, detections: Detections,
                      truth: np.ndarray | None = None, proposals: Proposals | None = None,
                      title: str = "") -> None:
    """Pasted masks over the image (each its own colour, outlined, score-ranked), the proposal
    boxes dashed; beside it the ground truth. A PNG."""
    from .plots import _image2d, _pyplot, label_colors

    plt = _pyplot()
    grey = _image2d(image)
    if grey.ndim == 3:  # RGB
        grey = grey.mean(2)
    panels = [("pasted masks (dashed: proposal boxes)", detections.instances)]
    if truth is not None:
        panels.append(("ground truth", np.asarray(truth)))
    h, w = grey.shape
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, len(panels) * 12 * h / w + 0.8))
    axes = np.atleast_1d(axes)
    for ax, (name, inst) in zip(axes, panels, strict=True):
        rgb = np.repeat(grey[..., None], 3, axis=2)
        fg = inst > 0
        rgb[fg] = 0.5 * rgb[fg] + 0.5 * label_colors(inst)[fg]
        ax.imshow(np.clip(rgb, 0, 1), interpolation="nearest")
        if inst.max() > 0:
            ax.contour(inst > 0, levels=[0.5], colors="white", linewidths=0.5)
        ax.set_title(name)
        ax.axis("off")
    if proposals is not None:
        for x1, y1, x2, y2 in proposals.boxes:
            axes[0].add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                            ec="yellow", lw=0.6, ls="--"))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pool_vs_align(path: str, image: np.ndarray | None = None,
                       instances: np.ndarray | None = None, instance_id: int | None = None,
                       stride: int = 4, output_size: int = 7,
                       models: dict[str, MaskNet] | None = None) -> dict[str, float]:
    """Figure: RoIPool's quantized bins against RoIAlign's sample points on one nucleus, and the
    masks each gives. Returns the IoU of each mask with the true one.

    The nucleus (default: the test half's median-sized one) sits on a feature grid of ``stride``
    pixels. Left: RoIPool rounds the box to feature cells and splits it into ``output_size``^2
    integer bins (shaded cells, red); RoIAlign keeps the box and samples 2x2 bilinear points per
    bin (blue dots). Middle: each pools the stride-``stride`` mask itself (the mask averaged over
    each feature cell, as a one-channel feature map) into 14x14, pasted back into the box: the
    quantization shows as a shifted, blocky mask. Right (``models`` given, e.g.
    ``{"RoIAlign": net_a, "RoIPool": net_p}``): the masks the trained heads predict at the
    ground-truth box.
    """
    from .plots import _pyplot

    plt = _pyplot()
    if image is None or instances is None:
        from . import data

        ds = data.load("nuclei", split="test", weights=False)
        image = ds.images[0] if image is None else image
        instances = ds.instances[0] if instances is None else instances
    inst = _instance_image(instances, "instances")
    boxes, ids = boxes_from_instances(inst)
    if len(ids) == 0:
        raise ValueError("instances: no instance to draw")
    if instance_id is None:
        area = np.array([(inst == i).sum() for i in ids])
        inner = (boxes[:, 0] > 8) & (boxes[:, 1] > 8) & (boxes[:, 2] < inst.shape[1] - 8) \
            & (boxes[:, 3] < inst.shape[0] - 8)
        cand = np.flatnonzero(inner) if inner.any() else np.arange(len(ids))
        k = cand[np.argsort(area[cand])[len(cand) // 2]]
    else:
        hit = np.flatnonzero(ids == instance_id)
        if not len(hit):
            raise ValueError(f"instance_id: {instance_id} is not in instances (ids "
                             f"{ids.min()}..{ids.max()})")
        k = int(hit[0])
    true = inst == ids[k]
    box = boxes[k]
    # a fractional box, as a detector would give: grown by a fraction of a feature cell
    fbox = box + np.array([-0.37, -0.61, 0.83, 0.29]) * stride
    s = 1.0 / stride
    H, W = inst.shape
    fh, fw = math.ceil(H / stride), math.ceil(W / stride)
    pad = np.zeros((fh * stride, fw * stride), np.float32)
    pad[:H, :W] = true
    fmask = pad.reshape(fh, stride, fw, stride).mean((1, 3))[None, None]   # (1, 1, fh, fw)
    rows = np.array([[0, *fbox]], np.float32)
    r = 14
    pooled = {
        "RoIPool": F.roi_pool(Tensor(fmask), rows, r, s).numpy()[0, 0],
        "RoIAlign": F.roi_align(Tensor(fmask), rows, r, s, sampling_ratio=2,
                                aligned=True).numpy()[0, 0],
    }
    masks = {k_: paste_masks(v[None], fbox[None], (H, W), 0.5)[0] for k_, v in pooled.items()}
    if models:
        for name, net in models.items():
            d = predict_masks(net, np.asarray(image, np.float32), fbox[None], nms_threshold=None)
            masks[f"{name} head"] = d.masks[0] if len(d.masks) else np.zeros((H, W), bool)
    ious = {k_: float((m & true).sum() / max((m | true).sum(), 1)) for k_, m in masks.items()}

    # the window drawn: the box and a few feature cells around it
    x0 = max(int(math.floor(fbox[0] / stride)) - 2, 0) * stride
    y0 = max(int(math.floor(fbox[1] / stride)) - 2, 0) * stride
    x1 = min(int(math.ceil(fbox[2] / stride)) + 2, fw) * stride
    y1 = min(int(math.ceil(fbox[3] / stride)) + 2, fh) * stride
    img2 = np.asarray(image)[0] if np.asarray(image).ndim == 3 else np.asarray(image)
    n_panels = 1 + len(masks)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 4.6))
    ext = (x0, min(x1, W), min(y1, H), y0)  # imshow extent in pixel-edge coordinates

    def show(ax: Any) -> None:
        ax.imshow(img2[y0:y1, x0:x1], cmap="gray", extent=ext, interpolation="nearest")
        for gx in range(x0, x1 + 1, stride):
            ax.axvline(gx, color="0.6", lw=0.4)
        for gy in range(y0, y1 + 1, stride):
            ax.axhline(gy, color="0.6", lw=0.4)
        ax.contour(np.arange(x0, min(x1, W)) + 0.5, np.arange(y0, min(y1, H)) + 0.5,
                   true[y0:y1, x0:x1], levels=[0.5], colors="lime", linewidths=1.0)
        ax.add_patch(plt.Rectangle(fbox[:2], *(fbox[2:] - fbox[:2]), fill=False, ec="cyan",
                                   lw=1.5))
        ax.set_xlim(x0, min(x1, W))
        ax.set_ylim(min(y1, H), y0)
        ax.set_xticks([])
        ax.set_yticks([])

    ax = axes[0]
    show(ax)
    # RoIPool: the box rounded to feature cells, integer bins (output_size for legibility)
    q = np.sign(fbox * s) * np.floor(np.abs(fbox * s) + 0.5)     # round half away from zero
    rw, rh = max(q[2] - q[0] + 1, 1), max(q[3] - q[1] + 1, 1)
    px = [(math.floor(p * rw / output_size) + q[0]) * stride for p in range(output_size)] \
        + [(q[0] + rw) * stride]
    py = [(math.floor(p * rh / output_size) + q[1]) * stride for p in range(output_size)] \
        + [(q[1] + rh) * stride]
    for v in px:
        ax.plot([v, v], [py[0], py[-1]], color="red", lw=1.0)
    for v in py:
        ax.plot([px[0], px[-1]], [v, v], color="red", lw=1.0)
    # RoIAlign: the exact box in output_size bins, 2x2 samples each (aligned: pixel centres at +0.5)
    bw, bh = (fbox[2] - fbox[0]) / output_size, (fbox[3] - fbox[1]) / output_size
    sx = fbox[0] + (np.arange(output_size)[:, None] + (np.arange(2)[None] + 0.5) / 2).ravel() * bw
    sy = fbox[1] + (np.arange(output_size)[:, None] + (np.arange(2)[None] + 0.5) / 2).ravel() * bh
    gx, gy = np.meshgrid(sx, sy)
    ax.plot(gx.ravel(), gy.ravel(), "o", color="dodgerblue", ms=2.2, mec="white", mew=0.3)
    ax.set_title(f"{output_size}x{output_size} bins at stride {stride}\nred: RoIPool (rounded), "
                 f"blue: RoIAlign samples", fontsize=9)
    for ax, (name, m) in zip(axes[1:], masks.items(), strict=True):
        show(ax)
        ax.contourf(np.arange(x0, min(x1, W)) + 0.5, np.arange(y0, min(y1, H)) + 0.5,
                    m[y0:y1, x0:x1], levels=[0.5, 1.5], colors=["orange"], alpha=0.45)
        what = "the true mask pooled" if name in pooled else "its 28x28 mask"
        ax.set_title(f"{name}: {what}, RoI {r}x{r}\nIoU with truth {ious[name]:.3f}", fontsize=9)
    fig.suptitle("RoIPool vs RoIAlign on one nucleus (green: truth, cyan: box, orange: mask)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ious
