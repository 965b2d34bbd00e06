"""Mask R-CNN's mask branch (He, Gkioxari, Dollar & Girshick, ICCV 2017) and ``paste_masks``.

Given a feature map and boxes (from any detector), RoIAlign cuts a 14x14 window of features per
box without rounding the box to the feature grid, four 3x3 convs process it, a 2x2 stride-2
transposed conv doubles it to 28x28 and a 1x1 conv predicts one mask per class. Each box's mask
is then resized into the box on the full image (``paste_masks``). Layer names follow detectron2's
``MaskRCNNConvUpsampleHead``.

Shapes for K boxes on a (N, 256, 50, 68) feature map (an 800 x 1088 image at stride 16,
``spatial_scale`` = 1/16), C classes::

    features (N, 256, 50, 68), boxes (K, 5) [batch_index, x1, y1, x2, y2] in image pixels
    roi_align  14x14, aligned, sampling ratio 2  -> (K, 256, 14, 14)
    mask_fcn1..4   3x3 conv + ReLU               -> (K, 256, 14, 14)
    deconv         2x2 stride 2 + ReLU           -> (K, 256, 28, 28)
    predictor      1x1                           -> (K,   C, 28, 28)  mask logits
    paste_masks(sigmoid(logits[k, class_k]), boxes[:, 1:], (800, 1088)) -> (K, 800, 1088) bool
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import functional as F
from .. import nn
from ..backend import get_array_module, to_numpy
from ..tensor import Tensor, as_tensor
from ._blocks import check_positive

__all__ = ["MaskHead", "paste_masks"]


def _box_rows(boxes: Any, N: int) -> np.ndarray:
    """``boxes`` ((K, 5) rows or a list of (K_i, 4) per image) as validated (K, 5) float64 rows."""
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > N:
            raise ValueError(f"boxes: a list of {len(boxes)} per-image box arrays for a batch of "
                             f"N={N} images")
        parts = []
        for i, b in enumerate(boxes):
            b = np.asarray(to_numpy(b.data if isinstance(b, Tensor) else b), dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes: boxes[{i}] must be (K_i, 4) [x1, y1, x2, y2], got shape "
                                 f"{b.shape}")
            parts.append(np.concatenate([np.full((len(b), 1), float(i)), b], axis=1))
        rows = np.concatenate(parts) if parts else np.zeros((0, 5))
    else:
        rows = np.asarray(to_numpy(boxes.data if isinstance(boxes, Tensor) else boxes),
                          dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise ValueError(f"boxes: must be (K, 5) rows [batch_index, x1, y1, x2, y2] or a list "
                             f"of (K_i, 4) boxes per image, got shape {rows.shape}")
    _check_xyxy(rows[:, 1:], "boxes")
    b = rows[:, 0]
    bad = (b != np.floor(b)) | (b < 0) | (b >= N)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"boxes: box {k} has batch index {b[k]:g}, outside the batch of N={N} "
                         f"images")
    return rows


def _check_xyxy(xyxy: np.ndarray, name: str) -> None:
    if not np.isfinite(xyxy).all():
        k = int(np.argmin(np.isfinite(xyxy).all(axis=1)))
        raise ValueError(f"{name}: boxes must be finite, box {k} is {xyxy[k].tolist()}")
    bad = (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{name}: box {k} = {xyxy[k].tolist()} has x2 < x1 or y2 < y1 (boxes are "
                         f"[x1, y1, x2, y2])")


class MaskHead(nn.Module):
    """Mask R-CNN's mask head: ``head(features, boxes)`` -> (K, num_classes, 2r, 2r), r = roi_size.

    ``features`` (N, in_channels, H, W); ``boxes`` as for ``F.roi_align``: (K, 5) rows
    ``[batch_index, x1, y1, x2, y2]`` or a list of (K_i, 4) per image, in image coordinates,
    which ``spatial_scale`` maps onto the feature map. RoIAlign runs with ``aligned=True`` (pixel
    centres at half-integers, the detectron2 / torchvision v2 convention) and 2x2 samples per bin.
    """

    def __init__(self, in_channels: int, num_classes: int, roi_size: int = 14,
                 spatial_scale: float = 1.0, width: int = 256) -> None:
        super().__init__()
        self.in_channels = check_positive("in_channels", in_channels)
        K = self.num_classes = check_positive("num_classes", num_classes)
        r = check_positive("roi_size", roi_size)
        w = check_positive("width", width)
        self.roi_align = nn.RoIAlign((r, r), spatial_scale, sampling_ratio=2, aligned=True)
        self.mask_fcn1 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.mask_fcn2 = nn.Conv2d(w, w, 3, padding=1)
        self.mask_fcn3 = nn.Conv2d(w, w, 3, padding=1)
        self.mask_fcn4 = nn.Conv2d(w, w, 3, padding=1)
        self.deconv = nn.ConvTranspose2d(w, w, 2, stride=2)
        self.predictor = nn.Conv2d(w, K, 1)

    def forward(self, features: Any, boxes: Any) -> Tensor:
        x = as_tensor(features)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"features: MaskHead expects (N, {self.in_channels}, H, W), got shape "
                             f"{x.shape}")
        rows = _box_rows(boxes, x.shape[0])                      # (K, 5)
        if len(rows) == 0:  # no boxes, no masks (the convs take no empty batch)
            r = 2 * self.roi_align.output_size[0], 2 * self.roi_align.output_size[1]
            return Tensor(get_array_module(x.data).zeros((0, self.num_classes, *r), x.dtype))
        h = self.roi_align(x, rows.astype(x.dtype))              # (K, C, 14, 14)
        for conv in (self.mask_fcn1, self.mask_fcn2, self.mask_fcn3, self.mask_fcn4):
            h = F.relu(conv(h))                                  # (K, width, 14, 14)
        h = F.relu(self.deconv(h))                               # (K, width, 28, 28)
        return self.predictor(h)                                 # (K, num_classes, 28, 28)


def paste_masks(probs: Any, boxes: Any, image_size: Sequence[int],
                threshold: float = 0.5) -> Any:
    """Resize each (M, M') mask into its box on an (H, W) image: (K, H, W) bool masks.

    ``probs`` (K, M, M') mask probabilities (a Tensor or a NumPy / CuPy array), ``boxes`` (K, 4)
    ``[x1, y1, x2, y2]`` in image pixels. Convention (half-pixel, as detectron2's
    ``paste_masks_in_image``): image pixel (i, j) has its centre at (j + 0.5, i + 0.5); the mask's
    M columns split the box into equal cells, column m centred at ``x1 + (m + 0.5)(x2 - x1)/M``.
    So pixel j samples the mask at column coordinate ``u = (j + 0.5 - x1) / (x2 - x1) * M - 0.5``
    (likewise rows) with bilinear interpolation, clamped to the edge cells as ``F.interpolate``
    (align_corners=False) does; for a box on integer coordinates the pasted values *are*
    ``F.interpolate(mask, size=(y2 - y1, x2 - x1), mode="bilinear")``. Only pixels whose centre
    lies in the box, ``x1 <= j + 0.5 < x2`` and ``y1 <= i + 0.5 < y2``, can be set (detectron2
    pads the mask with zeros instead and lets it spill up to half a cell past the box). A pixel
    is in the mask when its value is ``>= threshold``.
    """
    p = probs.data if isinstance(probs, Tensor) else probs
    if not hasattr(p, "ndim") or p.ndim != 3:
        raise ValueError(f"probs: must be (K, M, M) mask probabilities, got "
                         f"{getattr(p, 'shape', type(p).__name__)}")
    xp = get_array_module(p)
    b = np.asarray(to_numpy(boxes.data if isinstance(boxes, Tensor) else boxes), dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or len(b) != len(p):
        raise ValueError(f"boxes: must be (K, 4) [x1, y1, x2, y2] with K = {len(p)} masks (probs "
                         f"{tuple(p.shape)}), got shape {b.shape}")
    _check_xyxy(b, "boxes")
    if (len(image_size) != 2 or any(not isinstance(v, (int, np.integer)) or v <= 0
                                    for v in image_size)):
        raise ValueError(f"image_size: must be (H, W) positive ints, got {image_size!r}")
    H, W = (int(v) for v in image_size)
    K, M, Mw = p.shape
    out = xp.zeros((K, H, W), dtype=bool)
    for k in range(K):
        x1, y1, x2, y2 = b[k]
        # pixels with centres in [x1, x2): j + 0.5 >= x1 and j + 0.5 < x2
        j0, j1 = max(math.ceil(x1 - 0.5), 0), min(math.ceil(x2 - 0.5), W)
        i0, i1 = max(math.ceil(y1 - 0.5), 0), min(math.ceil(y2 - 0.5), H)
        if j1 <= j0 or i1 <= i0:
            continue
        v = (xp.arange(i0, i1) + 0.5 - y1) / (y2 - y1) * M - 0.5     # mask row coordinates
        u = (xp.arange(j0, j1) + 0.5 - x1) / (x2 - x1) * Mw - 0.5    # mask column coordinates
        mask = p[k].astype(np.float64)
        rows = _lerp(xp, mask, v, axis=0)                              # (i1 - i0, Mw)
        values = _lerp(xp, rows, u, axis=1)                            # (i1 - i0, j1 - j0)
        out[k, i0:i1, j0:j1] = values >= threshold
    return out


def _lerp(xp: Any, a: Any, src: Any, axis: int) -> Any:
    """``a`` sampled at fractional indices ``src`` along ``axis``: F.interpolate's clamping."""
    n = a.shape[axis]
    src = xp.maximum(src, 0.0)
    i0 = xp.minimum(xp.floor(src).astype(np.int64), n - 1)
    i1 = xp.minimum(i0 + 1, n - 1)
    lam = src - i0
    a0, a1 = xp.take(a, i0, axis=axis), xp.take(a, i1, axis=axis)
    lam = lam[:, None] if axis == 0 else lam[None, :]
    return (1 - lam) * a0 + lam * a1
