"""nms and box_iou: greedy non-maximum suppression and the pairwise IoU matrix (xyxy boxes).

Formula (SPEC "nms"; torchvision's CPU kernel is the model)::

    area(a)   = (a.x2 - a.x1) * (a.y2 - a.y1)
    inter     = max(min(a.x2, b.x2) - max(a.x1, b.x1), 0)
              * max(min(a.y2, b.y2) - max(a.y1, b.y1), 0)
    IoU(a, b) = inter / (area(a) + area(b) - inter),  and 0 where that union is <= 0
    nms: visit the boxes in descending score (ties: lower index first, a stable sort); keep a box
         unless its IoU with an already kept box is strictly greater than iou_threshold

A union <= 0 only happens for degenerate (zero-area) or inverted boxes, whose intersection is then
0: torchvision gives 0/0 = NaN there, which never exceeds a threshold; 0 behaves the same for any
threshold >= 0. Arithmetic runs in the boxes' dtype.

Shapes: box_iou(a (K,4), b (M,4)) -> (K, M), dtype of a. nms(boxes (K,4), scores (K,),
iou_threshold) -> int64 indices of the kept boxes, in descending score. Neither is differentiable.

Versions in this file (each checked against the reference by tests/test_nms.py):

* reference: Python loops straight from the formula (the oracle).
* numpy: box_iou by broadcasting; nms as the classic vectorised greedy loop (one IoU row against
  the remaining candidates per kept box).
* numba: box_iou as a plain double loop (O(K*M) cheap work: 1000 x 1000 boxes take a few ms,
  less than a parallel region's start-up and compile time); nms as the greedy loop (inherently
  sequential) over the boxes sorted by score, in a single compiled function.
* cuda: box_iou, one thread per pair. nms with the IoU bitmask: after a host-side stable sort,
  one thread per (box i, block of 64 boxes) writes a 64-bit mask of the boxes j > i of that block
  that i would suppress; the greedy pass over the masks (K steps, each an OR of K/64 words) runs
  on the host. The K x K/64 mask is made and consumed in blocks of rows of at most
  ``MASK_BYTES``, so device memory stays bounded for any K. No atomics; deterministic.

Benchmark: ``python benchmarks/bench_nms.py``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda, types

from ._cuda import FLOAT_DTYPES, float_array, launch, to_dev, xp_of

MASK_BITS = 64


# =============================================================================================
# reference
# =============================================================================================


def _iou_reference(T, a, b):
    area_a = (T(a[2]) - T(a[0])) * (T(a[3]) - T(a[1]))
    area_b = (T(b[2]) - T(b[0])) * (T(b[3]) - T(b[1]))
    iw = max(min(T(a[2]), T(b[2])) - max(T(a[0]), T(b[0])), T(0))
    ih = max(min(T(a[3]), T(b[3])) - max(T(a[1]), T(b[1])), T(0))
    inter = iw * ih
    union = area_a + area_b - inter
    return inter / union if union > 0 else T(0)


def box_iou_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, M) IoU matrix by plain loops."""
    T = a.dtype.type
    out = np.zeros((a.shape[0], b.shape[0]), a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = _iou_reference(T, a[i], b[j])
    return out


def nms_reference(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS by plain loops: kept indices in descending score."""
    T = boxes.dtype.type
    order = np.argsort(-scores, kind="stable")
    removed = [False] * len(order)
    keep = []
    for p, i in enumerate(order):
        if removed[p]:
            continue
        keep.append(i)
        for q in range(p + 1, len(order)):
            if not removed[q] and _iou_reference(T, boxes[i], boxes[order[q]]) > T(iou_threshold):
                removed[q] = True
    return np.array(keep, dtype=np.int64)


# =============================================================================================
# shared per-element helper: scalars in, scalar out (so the CUDA simulator can call it as it is),
# compiled twice from the same Python function: an ordinary @njit for the CPU kernels and an
# inline="always" @njit, ``_iou_dev``, for the CUDA kernels (inlined at Numba-IR level, which lets
# numba.cuda.compile_ptx type it on a machine without a GPU)
# =============================================================================================


def _iou(T, ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU of two xyxy boxes, in dtype T; 0 where the union is not positive."""
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw < T(0.0):
        iw = T(0.0)
    if ih < T(0.0):
        ih = T(0.0)
    inter = iw * ih
    union = area_a + area_b - inter
    if union > T(0.0):
        return inter / union
    return T(0.0)


_iou_dev = numba.njit(inline="always")(_iou)
_iou = numba.njit(cache=True)(_iou)


# =============================================================================================
# numpy
# =============================================================================================


def box_iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # (K,)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (M,)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (K, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (K, M, 2)
    wh = np.maximum(rb - lt, 0)  # (K, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (K, M)
    union = area_a[:, None] + area_b[None, :] - inter
    ok = union > 0
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=ok)
    return out.astype(a.dtype, copy=False)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = box_iou_numpy(boxes[i:i + 1], boxes[rest])[0]  # (len(rest),)
        order = rest[~(iou > boxes.dtype.type(iou_threshold))]
    return np.array(keep, dtype=np.int64)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@numba.njit(cache=True)
def _box_iou_numba(a, b, out):
    T = a.dtype.type
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = _iou(T, a[i, 0], a[i, 1], a[i, 2], a[i, 3],
                             b[j, 0], b[j, 1], b[j, 2], b[j, 3])


@numba.njit(cache=True)
def _nms_numba(boxes, order, thr, keep):
    # boxes (K, 4) already in score order; returns how many of `keep` are filled (positions)
    K = boxes.shape[0]
    T = boxes.dtype.type
    removed = np.zeros(K, np.bool_)
    n = 0
    for p in range(K):
        if removed[p]:
            continue
        keep[n] = order[p]
        n += 1
        x1, y1, x2, y2 = boxes[p, 0], boxes[p, 1], boxes[p, 2], boxes[p, 3]
        for q in range(p + 1, K):
            if not removed[q]:
                v = _iou(T, x1, y1, x2, y2, boxes[q, 0], boxes[q, 1], boxes[q, 2], boxes[q, 3])
                if v > thr:
                    removed[q] = True
    return n


def box_iou_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], b.shape[0]), a.dtype)
    if out.size:
        _box_iou_numba(np.ascontiguousarray(a), np.ascontiguousarray(b, a.dtype), out)
    return out


def nms_numba(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    keep = np.empty(order.size, np.int64)
    if order.size == 0:
        return keep
    sorted_boxes = np.ascontiguousarray(boxes[order])  # (K, 4) in score order
    n = _nms_numba(sorted_boxes, order, boxes.dtype.type(iou_threshold), keep)
    return keep[:n].copy()


# =============================================================================================
# cuda
# =============================================================================================


def _box_iou_cuda(a, b, out):
    t = cuda.grid(1)
    K, M = out.shape
    if t >= K * M:
        return
    i = t // M
    j = t % M
    T = a.dtype.type
    out[i, j] = _iou_dev(T, a[i, 0], a[i, 1], a[i, 2], a[i, 3],
                         b[j, 0], b[j, 1], b[j, 2], b[j, 3])


def _nms_mask_cuda(boxes, thr, i0, mask):
    # boxes (K, 4) in score order; mask (R, ceil(K/64)) uint64 for rows i0 .. i0+R-1: bit jj of
    # mask[i - i0, blk] is set when box j = blk*64 + jj (j > i) overlaps box i by more than thr
    t = cuda.grid(1)
    R, NB = mask.shape
    K = boxes.shape[0]
    if t >= R * NB:
        return
    i = i0 + t // NB
    blk = t % NB
    if i >= K:
        return
    T = boxes.dtype.type
    th = T(thr)
    bits = np.uint64(0)
    for jj in range(MASK_BITS):
        j = blk * MASK_BITS + jj
        if j > i and j < K:
            v = _iou_dev(T, boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3],
                     boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3])
            if v > th:
                bits |= np.uint64(1) << np.uint64(jj)
    mask[i - i0, blk] = bits


box_iou_cuda_kernel = cuda.jit(_box_iou_cuda)
nms_mask_cuda_kernel = cuda.jit(_nms_mask_cuda)


MASK_BYTES = 64 << 20
"""Device memory for the suppression masks at a time: the full mask is K*K/8 bytes (1.25 GB for
100,000 boxes), so it is computed and consumed in blocks of rows of at most this size."""


@numba.njit(cache=True)
def _nms_host_pass(mask, i0, order, removed, keep, n):
    # the greedy pass over the suppression masks of rows i0 .. i0+R-1: each step ORs one row of
    # NB words into `removed`; returns the new count of kept boxes
    R, NB = mask.shape
    for r in range(R):
        i = i0 + r
        if i >= order.shape[0]:
            break
        blk = i // MASK_BITS
        bit = np.uint64(1) << np.uint64(i % MASK_BITS)
        if removed[blk] & bit:
            continue
        keep[n] = order[i]
        n += 1
        for w in range(blk, NB):
            removed[w] |= mask[r, w]
    return n



def _host(a):
    return a.get() if xp_of(a) is not np else a


def box_iou_cuda(a, b):
    xp = xp_of(a)
    K, M = a.shape[0], b.shape[0]
    a = xp.ascontiguousarray(a)
    b = xp.ascontiguousarray(b.astype(a.dtype, copy=False))
    if xp is np:
        out = cuda.device_array((K, M), a.dtype)
    else:
        out = xp.empty((K, M), a.dtype)
    launch(box_iou_cuda_kernel, K * M, to_dev(a), to_dev(b), out)
    return out.copy_to_host() if xp is np else out


def nms_cuda(boxes, scores, iou_threshold: float):
    xp = xp_of(boxes)
    K = boxes.shape[0]
    # the sort is on the host: stable (ties keep index order), and K is small (a few thousand)
    order = np.argsort(-_host(scores), kind="stable").astype(np.int64)
    if K == 0:
        return xp.asarray(order)
    NB = (K + MASK_BITS - 1) // MASK_BITS
    sorted_boxes = xp.ascontiguousarray(boxes[xp.asarray(order)])  # (K, 4) in score order
    R = min(K, max(1, MASK_BYTES // (NB * 8)))  # rows per block of the mask
    mask = cuda.device_array((R, NB), np.uint64) if xp is np else xp.empty((R, NB), np.uint64)
    dev_boxes = to_dev(sorted_boxes)
    removed = np.zeros(NB, np.uint64)
    keep = np.empty(K, np.int64)
    n = 0
    for i0 in range(0, K, R):
        launch(nms_mask_cuda_kernel, R * NB, dev_boxes, float(iou_threshold), i0, mask)
        host_mask = mask.copy_to_host() if xp is np else mask.get()
        n = _nms_host_pass(host_mask, i0, order, removed, keep, n)
    return xp.asarray(keep[:n].copy())


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "box_iou": {
        "reference": box_iou_reference,
        "numpy": box_iou_numpy,
        "numba": box_iou_numba,
        "cuda": box_iou_cuda,
    },
    "nms": {
        "reference": nms_reference,
        "numpy": nms_numpy,
        "numba": nms_numba,
        "cuda": nms_cuda,
    },
}


_MASK = types.Array(types.uint64, 2, "C")
PTX = [
    (_box_iou_cuda, [(float_array(2, dt),) * 3 for dt in FLOAT_DTYPES]),
    (_nms_mask_cuda, [(float_array(2, dt), types.float64, types.int64, _MASK)
                      for dt in FLOAT_DTYPES]),
]
