"""RoI operators and boxes: roi_align, roi_pool (differentiable in the feature map), nms, box_iou.

``roi_align`` and ``roi_pool`` are :class:`~minisegnet.tensor.Function` subclasses whose forward and
backward call the kernels of ``kernels/roi_align.py`` and ``kernels/roi_pool.py`` through the
registry, so the implementation follows the array type and ``msn.use_impl``. Semantics (SPEC; the
formulas are in the kernel files' headers):

* ``roi_align``: Mask R-CNN's RoIAlign, torchvision's arithmetic: ``aligned`` shifts the box by
  half a pixel, an adaptive sampling grid ``ceil(roi/P)`` when ``sampling_ratio <= 0``, samples
  beyond one pixel outside the map add 0 but still count in the average.
* ``roi_pool``: Fast R-CNN's quantized RoIPool (coordinates rounded half away from zero, integer
  bins, max per bin, an empty bin gives 0); the backward routes each bin's gradient to its argmax.
* ``nms``: greedy, in descending score; a box is dropped when its IoU with a kept box is strictly
  greater than ``iou_threshold``. ``box_iou``: the (K, M) IoU matrix. Neither is differentiable.

Boxes are constants: no gradient flows to them (as in torchvision). They are given either as a
(K, 5) array/Tensor of rows ``[batch_index, x1, y1, x2, y2]`` or as a list with one (K_i, 4) array
per image (the list position is the batch index), in input-image coordinates that
``spatial_scale`` maps onto the feature map.

Bad input (SPEC): ValueError naming the argument and the shapes or values, TypeError for a wrong
type; checked here, before any kernel runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_array_module, is_cupy_array, kernel, register, to_numpy
from ..kernels import nms as _nms_kernels
from ..kernels import roi_align as _align_kernels
from ..kernels import roi_pool as _pool_kernels
from ..tensor import Function, Tensor, as_tensor

__all__ = ["roi_align", "roi_pool", "nms", "box_iou"]

for _k in (_align_kernels, _pool_kernels, _nms_kernels):
    register(_k.IMPLS)

Pair = tuple[int, int]
IntOrPair = int | tuple[int, int]
Boxes = Any  # (K, 5) array/Tensor, or a sequence of (K_i, 4) arrays/Tensors


# ============================================================================================
# argument handling
# ============================================================================================


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _raw(a: Any) -> Any:
    return a.data if isinstance(a, Tensor) else a


def _is_array(a: Any) -> bool:
    return isinstance(a, (np.ndarray, Tensor)) or is_cupy_array(a)


def _feature_map(x: Any, op: str) -> Tensor:
    if not (isinstance(x, (Tensor, np.ndarray)) or is_cupy_array(x)):
        raise TypeError(f"{op}: input must be a Tensor or an array, got {type(x).__name__}")
    x = as_tensor(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: input must be float32 or float64, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"{op}: input is empty: shape {tuple(x.shape)}")
    return x


def _output_size(value: Any, op: str) -> Pair:
    if _is_int(value):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        out = (int(value[0]), int(value[1]))
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        raise ValueError(f"{op}: output_size must be an int or a (PH, PW) pair, got {value!r}")
    else:
        raise TypeError(f"{op}: output_size must be an int or a (PH, PW) pair of ints, "
                        f"got {value!r}")
    if min(out) <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {out}")
    return out


def _spatial_scale(value: Any, op: str) -> float:
    if not _is_real(value):
        raise TypeError(f"{op}: spatial_scale must be a real number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{op}: spatial_scale must be positive and finite, got {value!r}")
    return float(value)


def _box_array(b: Any, op: str, name: str) -> Any:
    """A raw numeric array from a Tensor/array (ints allowed; bools and objects not)."""
    if not _is_array(b):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(b).__name__}")
    b = _raw(b)
    if b.dtype.kind not in "iuf":
        raise TypeError(f"{op}: {name} must hold numbers, got dtype {b.dtype}")
    return b


def _rois(boxes: Boxes, x: Tensor, op: str) -> Any:
    """(K, 5) rows [batch_index, x1, y1, x2, y2] in x's dtype and array module, validated."""
    xp = get_array_module(x.data)
    N = x.shape[0]
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            b = _box_array(b, op, f"boxes[{i}]")
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"{op}: boxes[{i}] must be (K_i, 4) [x1, y1, x2, y2] for image "
                                 f"{i}, got shape {tuple(b.shape)}")
            b = to_numpy(b).astype(np.float64)
            parts.append(np.concatenate([np.full((b.shape[0], 1), float(i)), b], axis=1))
        host = np.concatenate(parts, axis=0) if parts else np.zeros((0, 5))  # (K, 5)
    else:
        b = _box_array(boxes, op, "boxes")
        if b.ndim != 2 or b.shape[1] != 5:
            raise ValueError(f"{op}: boxes must be (K, 5) rows [batch_index, x1, y1, x2, y2] or a "
                             f"list of (K_i, 4) boxes per image, got shape {tuple(b.shape)}")
        host = to_numpy(b).astype(np.float64)
    if not np.isfinite(host).all():
        k = int(np.argmin(np.isfinite(host).all(axis=1)))
        raise ValueError(f"{op}: boxes must be finite, box {k} is {host[k].tolist()}")
    idx = host[:, 0]
    bad = (idx != np.floor(idx))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{op}: box batch indices must be integers, box {k} has batch index "
                         f"{float(idx[k])}")
    bad = (idx < 0) | (idx >= N)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{op}: box batch index out of range: box {k} has batch index "
                         f"{int(idx[k])} but input has N={N} images (shape {tuple(x.shape)})")
    return xp.asarray(host.astype(x.dtype))


# ============================================================================================
# roi_align
# ============================================================================================


class RoIAlignFunction(Function):
    """y = roi_align(x); backward scatters gy through the same bilinear weights (boxes: fixed)."""

    def __init__(self, rois: Any, output_size: Pair, spatial_scale: float, sampling_ratio: int,
                 aligned: bool) -> None:
        self.rois = rois
        self.args = (spatial_scale, sampling_ratio, aligned)
        self.output_size = output_size

    def forward(self, x: Any) -> Any:
        self.in_shape = tuple(x.shape)
        K, C = self.rois.shape[0], x.shape[1]
        if K == 0:
            return get_array_module(x).zeros((0, C) + self.output_size, x.dtype)
        return kernel("roi_align", x, self.rois)(x, self.rois, self.output_size, *self.args)

    def backward(self, gy: Any) -> Any:
        if self.rois.shape[0] == 0:
            return get_array_module(gy).zeros(self.in_shape, gy.dtype)
        return kernel("roi_align_backward", gy, self.rois)(gy, self.rois, self.in_shape,
                                                           *self.args)


def roi_align(input: Any, boxes: Boxes, output_size: IntOrPair, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (Mask R-CNN): (N, C, H, W) features and K boxes -> (K, C, PH, PW).

    For box ``[b, x1, y1, x2, y2]``: ``off = 0.5 if aligned else 0``, ``start = x1*scale - off``,
    ``roi_w = x2*scale - off - start`` (at least 1 when not aligned), ``bin_w = roi_w / PW``; each
    bin averages a ``gh x gw`` grid of bilinear samples at
    ``y = start_y + ph*bin_h + (iy + 0.5)*bin_h/gh`` (likewise x), ``gh = sampling_ratio`` if it is
    positive, else ``ceil(roi_h / PH)``; the average divides by ``max(gh*gw, 1)``, and a sample
    more than one pixel outside the map adds 0.

    ``boxes``: (K, 5) rows ``[batch_index, x1, y1, x2, y2]``, or a list of (K_i, 4) per image, in
    input coordinates (``spatial_scale`` maps them to the feature map, e.g. 1/16). Differentiable
    in ``input`` only: boxes are constants. K = 0 gives an empty (0, C, PH, PW) output.
    ``sampling_ratio`` is a positive int, or -1 / 0 for the adaptive grid.

    Work is bounded however large a box is: only samples within one pixel of the map are visited
    (the others add 0), so with the adaptive grid a box costs at most
    O(C (PH + 2H + 4)(PW + 2W + 4)); a grid above 2^31 - 1 samples per axis of a bin (a box some
    2^31 bins wide) is a ValueError naming the box.
    """
    op = "roi_align"
    x = _feature_map(input, op)
    out = _output_size(output_size, op)
    scale = _spatial_scale(spatial_scale, op)
    if not _is_int(sampling_ratio):
        raise TypeError(f"{op}: sampling_ratio must be an int, got {sampling_ratio!r}")
    if sampling_ratio < -1:
        raise ValueError(f"{op}: sampling_ratio must be positive, or -1 / 0 for the adaptive grid "
                         f"ceil(roi / output_size), got {sampling_ratio}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"{op}: aligned must be a bool, got {aligned!r}")
    rois = _rois(boxes, x, op)
    _check_grid(rois, out, scale, int(sampling_ratio), bool(aligned), op)
    return RoIAlignFunction(rois, out, scale, int(sampling_ratio), bool(aligned))(x)


def _check_grid(rois: Any, out: Pair, scale: float, sampling_ratio: int, aligned: bool,
                op: str) -> None:
    """ValueError for a sampling grid above ``MAX_GRID`` samples along an axis of a bin (their
    product, the divisor, must fit in int64). Smaller grids cost bounded work however large the
    box: the kernels visit only the samples near the map (``kernels/roi_align.py``)."""
    limit = _align_kernels.MAX_GRID
    if sampling_ratio > limit:
        raise ValueError(f"{op}: sampling_ratio {sampling_ratio} is above the largest grid "
                         f"{limit} per axis")
    if sampling_ratio > 0 or rois.shape[0] == 0:
        return
    r = to_numpy(rois)
    T = r.dtype.type
    off = T(0.5) if aligned else T(0)
    with np.errstate(over="ignore", invalid="ignore"):  # in x's dtype, as the kernels compute
        for axis, (c1, c2, pooled) in enumerate(((2, 4, out[0]), (1, 3, out[1]))):
            start = r[:, c1] * T(scale) - off
            size = r[:, c2] * T(scale) - off - start
            if not aligned:
                size = np.maximum(size, T(1))
            grid = np.ceil(size / T(pooled))
            bad = ~(grid <= limit)  # also inf and NaN (a box beyond the dtype's range)
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(
                    f"{op}: box {k} {r[k].tolist()} needs an adaptive sampling grid of "
                    f"{float(grid[k]):.4g} samples per bin along {'yx'[axis]}, above the largest "
                    f"{limit}: pass a positive sampling_ratio or clip the box")


# ============================================================================================
# roi_pool
# ============================================================================================


class RoIPoolFunction(Function):
    """y = roi_pool(x) with the argmax saved; backward adds gy at the argmax. Boxes: constants."""

    def __init__(self, rois: Any, output_size: Pair, spatial_scale: float) -> None:
        self.rois = rois
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, x: Any) -> Any:
        self.in_shape = tuple(x.shape)
        K, C = self.rois.shape[0], x.shape[1]
        if K == 0:
            xp = get_array_module(x)
            self.argmax = xp.zeros((0, C) + self.output_size, np.int64)
            return xp.zeros((0, C) + self.output_size, x.dtype)
        y, self.argmax = kernel("roi_pool", x, self.rois)(x, self.rois, self.output_size,
                                                          self.spatial_scale)
        return y

    def backward(self, gy: Any) -> Any:
        if self.rois.shape[0] == 0:
            return get_array_module(gy).zeros(self.in_shape, gy.dtype)
        return kernel("roi_pool_backward", gy, self.rois)(gy, self.argmax, self.rois,
                                                          self.in_shape, self.spatial_scale)


def roi_pool(input: Any, boxes: Boxes, output_size: IntOrPair,
             spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN): (N, C, H, W) features and K boxes -> (K, C, PH, PW).

    ``x1' = round_half_away_from_zero(x1*scale)`` (likewise the others),
    ``roi_w = max(x2' - x1' + 1, 1)``; bin pw spans columns
    ``[floor(pw*roi_w/PW) + x1', ceil((pw+1)*roi_w/PW) + x1')`` clamped to [0, W] (likewise rows);
    the output is the max over the bin (first maximum in row-major order; NaN wins), 0 for an
    empty bin. The backward adds each bin's gradient at its argmax. ``boxes`` as in
    :func:`roi_align`; differentiable in ``input`` only. Bins are clamped to the map before any
    pixel is read, so a huge box costs what a box over the whole map costs.
    """
    op = "roi_pool"
    x = _feature_map(input, op)
    out = _output_size(output_size, op)
    scale = _spatial_scale(spatial_scale, op)
    rois = _rois(boxes, x, op)
    return RoIPoolFunction(rois, out, scale)(x)


# ============================================================================================
# boxes: box_iou and nms (not differentiable)
# ============================================================================================


def _xyxy(b: Any, op: str, name: str) -> Any:
    """A raw (K, 4) float array (integer boxes become float32, like Python numbers do)."""
    b = _box_array(b, op, name)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{op}: {name} must be (K, 4) [x1, y1, x2, y2], got shape "
                         f"{tuple(b.shape)}")
    if b.dtype not in (np.float32, np.float64):
        b = b.astype(np.float32)
    return b


def box_iou(boxes1: Any, boxes2: Any) -> Tensor:
    """Pairwise IoU of (K, 4) and (M, 4) xyxy boxes -> (K, M), in the dtype of ``boxes1``.

    ``area = (x2 - x1)*(y2 - y1)``,
    ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)``,
    ``IoU = inter / (area1 + area2 - inter)``; 0 where that union is not positive (degenerate
    boxes; torchvision gives NaN there). Not differentiable.
    """
    op = "box_iou"
    a = _xyxy(boxes1, op, "boxes1")
    b = _xyxy(boxes2, op, "boxes2")
    if is_cupy_array(a) != is_cupy_array(b):
        raise ValueError(f"{op}: boxes1 and boxes2 must be on the same device")
    b = b.astype(a.dtype, copy=False)
    return Tensor(kernel("box_iou", a, b)(a, b))


def nms(boxes: Any, scores: Any, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, in descending score.

    Boxes (K, 4) xyxy are visited in descending score (ties: lower index first); a box is dropped
    when its IoU (see :func:`box_iou`) with an already kept box is strictly greater than
    ``iou_threshold``. Not differentiable.
    """
    op = "nms"
    b = _xyxy(boxes, op, "boxes")
    if not _is_array(scores):
        raise TypeError(f"{op}: scores must be a Tensor or an array, got {type(scores).__name__}")
    s = _raw(scores)
    if s.dtype.kind not in "iuf":
        raise TypeError(f"{op}: scores must hold numbers, got dtype {s.dtype}")
    if s.ndim != 1 or s.shape[0] != b.shape[0]:
        raise ValueError(f"{op}: scores must be (K,) with K = {b.shape[0]} boxes, got shape "
                         f"{tuple(s.shape)} for boxes {tuple(b.shape)}")
    if is_cupy_array(b) != is_cupy_array(s):
        raise ValueError(f"{op}: boxes and scores must be on the same device")
    if not _is_real(iou_threshold):
        raise TypeError(f"{op}: iou_threshold must be a real number, got {iou_threshold!r}")
    if math.isnan(float(iou_threshold)):
        raise ValueError(f"{op}: iou_threshold must not be NaN")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)  # negating unsigned scores for the sort would wrap
    if b.shape[0] == 0:
        return Tensor(get_array_module(b).zeros(0, np.int64))
    return Tensor(kernel("nms", b, s)(b, s, float(iou_threshold)))
