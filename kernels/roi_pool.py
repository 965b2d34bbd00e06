"""roi_pool: Fast R-CNN's quantized RoIPool (max over integer bins), and its backward.

Formula (SPEC "roi_pool"; torchvision's CPU kernel is the model). For box k = [b, x1, y1, x2, y2]
and output bin (ph, pw) of a PH x PW grid, scale = spatial_scale::

    x1' = round_half_away_from_zero(x1*scale)   (likewise y1', x2', y2'; products in x's dtype)
    roi_w = max(x2' - x1' + 1, 1),  roi_h = max(y2' - y1' + 1, 1)
    bin columns [floor(pw*roi_w/PW) + x1', ceil((pw+1)*roi_w/PW) + x1')  clamped to [0, W]
    bin rows    [floor(ph*roi_h/PH) + y1', ceil((ph+1)*roi_h/PH) + y1')  clamped to [0, H]
    y[k,c,ph,pw]      = max of x[b, c] over the bin;  0 for an empty bin
    argmax[k,c,ph,pw] = h*W + w of that maximum within the (b, c) plane; -1 for an empty bin

The floor/ceil are exact integer divisions (torchvision computes them through a float bin size,
which agrees except for float rounding at exact multiples). Ties: the first maximum in row-major
order wins. NaN wins (the first NaN of a bin), as in max_pool2d (torchvision skips NaN instead).

Backward (argmax from the forward; every implementation takes (gy, argmax, boxes, input_shape,
spatial_scale), the CUDA gather being the one that needs the scale)::

    gx[b, c].flat[argmax[k,c,ph,pw]] += gy[k,c,ph,pw]      in (k, ph, pw) order, skipping -1

Shapes: x (N, C, H, W) float32/float64, boxes (K, 5) same dtype (batch index as a float in column
0) -> y (K, C, PH, PW) same dtype, argmax (K, C, PH, PW) int64. gy, argmax, boxes -> gx (N,C,H,W).
A box whose batch index is outside [0, N) yields zeros and argmax -1.

Versions in this file (each checked against the reference by tests/test_roi_pool.py):

* reference: Python loops straight from the formula (the oracle).
* numpy: none (the ragged bins have no natural vectorised form).
* numba: forward, one prange iteration per (box, channel); backward, one prange iteration per
  channel: a channel's planes (all images) belong to one thread, so the scatter is race-free and
  runs in (k, ph, pw) order.
* cuda: forward, one thread per output element. Backward is a GATHER, not atomics: one thread per
  input pixel (n, c, h, w) visits every box of image n, finds the bins whose row and column ranges
  contain (h, w) and adds gy where that bin's argmax is this pixel. Deterministic, and its sum
  runs in (k, ph, pw) order like the CPU scatter. Cost O(K*(PH + PW)) per pixel: fine for the
  hundreds of boxes of a detection head.

Benchmark: ``python benchmarks/bench_roi_pool.py``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda, prange, types
from numba.np.numpy_support import from_dtype

from ._cuda import launch, xp_of

Pair = tuple[int, int]


# =============================================================================================
# reference
# =============================================================================================


def _round_half_away_reference(v) -> int:
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    a = abs(float(v))
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


def _bin_reference(p: int, roi: int, P: int, start: int, size: int) -> tuple[int, int]:
    """[lo, hi) of bin p along one axis, clamped to [0, size]."""
    lo = (p * roi) // P + start  # floor(p*roi/P), exactly
    hi = -((-(p + 1) * roi) // P) + start  # ceil((p+1)*roi/P)
    return min(max(lo, 0), size), min(max(hi, 0), size)


def _box_reference(T, box, scale):
    x1, y1, x2, y2 = (_round_half_away_reference(T(v) * scale) for v in box[1:5])
    return x1, y1, max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)


def roi_pool_reference(x: np.ndarray, boxes: np.ndarray, output_size: Pair,
                       spatial_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Plain loops from the formula: returns (y, argmax)."""
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    T = x.dtype.type
    y = np.zeros((K, C, PH, PW), x.dtype)
    arg = np.full((K, C, PH, PW), -1, np.int64)
    for k in range(K):
        if not 0 <= boxes[k, 0] < N:
            continue
        b = int(boxes[k, 0])
        x1, y1, roi_w, roi_h = _box_reference(T, boxes[k], T(spatial_scale))
        for ph in range(PH):
            hs, he = _bin_reference(ph, roi_h, PH, y1, H)
            for pw in range(PW):
                ws, we = _bin_reference(pw, roi_w, PW, x1, W)
                for c in range(C):
                    best, where = None, -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            v = x[b, c, h, w]
                            if where < 0 or v > best or (math.isnan(v) and not math.isnan(best)):
                                best, where = v, h * W + w
                    if where >= 0:
                        y[k, c, ph, pw], arg[k, c, ph, pw] = best, where
    return y, arg


def roi_pool_backward_reference(gy: np.ndarray, argmax: np.ndarray, boxes: np.ndarray,
                                input_shape: tuple, spatial_scale: float) -> np.ndarray:
    """gx[b, c].flat[argmax] += gy, in (k, ph, pw) order (spatial_scale unused: see cuda)."""
    N, C, H, W = input_shape
    K, _, PH, PW = gy.shape
    gx = np.zeros((N, C, H, W), gy.dtype)
    for k in range(K):
        if not 0 <= boxes[k, 0] < N:
            continue
        b = int(boxes[k, 0])
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    i = argmax[k, c, ph, pw]
                    if 0 <= i < H * W:
                        gx[b, c, i // W, i % W] += gy[k, c, ph, pw]
    return gx


# =============================================================================================
# shared per-element helpers (scalars only: the CUDA simulator calls them as they are)
# =============================================================================================


@numba.njit(inline="always", cache=True)
def _batch_of(v, N):
    """Batch index stored as a float in boxes[k, 0]; -1 when outside [0, N) (or NaN)."""
    if v >= 0 and v < N:
        return int(v)
    return -1


@numba.njit(inline="always", cache=True)
def _round_half_away(T, v):
    """round() with halves away from zero, as an integer (clamped far outside any map)."""
    a = abs(v)
    if not a < T(1e15):  # huge or NaN: any far-away value is clamped to the map later
        return (1 << 50) if v > T(0.0) else -(1 << 50)
    r = int(math.floor(a))
    if a - T(r) >= T(0.5):  # a - floor(a) is exact: no 0.49999997 + 0.5 == 1 trap
        r += 1
    return r if v >= T(0.0) else -r


@numba.njit(inline="always", cache=True)
def _pool_bin(p, roi, P, start, size):
    """[lo, hi) of bin p along one axis: [floor(p*roi/P), ceil((p+1)*roi/P)) + start, clamped."""
    lo = (p * roi) // P + start
    hi = -((-(p + 1) * roi) // P) + start
    lo = min(max(lo, 0), size)
    hi = min(max(hi, 0), size)
    return lo, hi


@numba.njit(inline="always", cache=True)
def _pool_box(T, c1, c2, scale):
    """Along one axis: (start, roi) = (round(c1*scale), max(round(c2*scale) - start + 1, 1))."""
    s = _round_half_away(T, c1 * scale)
    e = _round_half_away(T, c2 * scale)
    return s, max(e - s + 1, 1)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@numba.njit(parallel=True, cache=True)
def _roi_pool_numba(x, boxes, scale, out, arg):
    N, C, H, W = x.shape
    K, _, PH, PW = out.shape
    T = x.dtype.type
    sc = T(scale)
    for kc in prange(K * C):  # independent (box, channel) pairs
        k = kc // C
        c = kc % C
        b = _batch_of(boxes[k, 0], N)
        xs, rw = _pool_box(T, boxes[k, 1], boxes[k, 3], sc)
        ys, rh = _pool_box(T, boxes[k, 2], boxes[k, 4], sc)
        for ph in range(PH):
            hs, he = _pool_bin(ph, rh, PH, ys, H)
            for pw in range(PW):
                ws, we = _pool_bin(pw, rw, PW, xs, W)
                if b < 0 or he <= hs or we <= ws:
                    out[k, c, ph, pw] = T(0.0)
                    arg[k, c, ph, pw] = -1
                    continue
                best = x[b, c, hs, ws]
                where = hs * W + ws
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = x[b, c, h, w]
                        if v > best or (v != v and best == best):  # first max; first NaN wins
                            best = v
                            where = h * W + w
                out[k, c, ph, pw] = best
                arg[k, c, ph, pw] = where


@numba.njit(parallel=True, cache=True)
def _roi_pool_backward_numba(gy, arg, boxes, gx):
    N, C, H, W = gx.shape
    K, _, PH, PW = gy.shape
    for c in prange(C):  # channel c of every image belongs to this iteration: no races
        for k in range(K):
            b = _batch_of(boxes[k, 0], N)
            if b < 0:
                continue
            for ph in range(PH):
                for pw in range(PW):
                    i = arg[k, c, ph, pw]
                    if i >= 0 and i < H * W:
                        gx[b, c, i // W, i % W] += gy[k, c, ph, pw]


def roi_pool_numba(x: np.ndarray, boxes: np.ndarray, output_size: Pair,
                   spatial_scale: float) -> tuple[np.ndarray, np.ndarray]:
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    out = np.empty((K, C, PH, PW), x.dtype)
    arg = np.empty((K, C, PH, PW), np.int64)
    if out.size:
        _roi_pool_numba(np.ascontiguousarray(x), np.ascontiguousarray(boxes, x.dtype),
                        float(spatial_scale), out, arg)
    return out, arg


def roi_pool_backward_numba(gy: np.ndarray, argmax: np.ndarray, boxes: np.ndarray,
                            input_shape: tuple, spatial_scale: float) -> np.ndarray:
    gx = np.zeros(tuple(input_shape), gy.dtype)
    if gy.size and gx.size:
        _roi_pool_backward_numba(np.ascontiguousarray(gy), np.ascontiguousarray(argmax),
                                 np.ascontiguousarray(boxes, gy.dtype), gx)
    return gx


# =============================================================================================
# cuda
# =============================================================================================


def _roi_pool_cuda(x, boxes, scale, out, arg):
    i = cuda.grid(1)
    K, C, PH, PW = out.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    T = x.dtype.type
    sc = T(scale)
    b = _batch_of(boxes[k, 0], N)
    xs, rw = _pool_box(T, boxes[k, 1], boxes[k, 3], sc)
    ys, rh = _pool_box(T, boxes[k, 2], boxes[k, 4], sc)
    hs, he = _pool_bin(ph, rh, PH, ys, H)
    ws, we = _pool_bin(pw, rw, PW, xs, W)
    if b < 0 or he <= hs or we <= ws:
        out[k, c, ph, pw] = T(0.0)
        arg[k, c, ph, pw] = -1
        return
    best = x[b, c, hs, ws]
    where = hs * W + ws
    for h in range(hs, he):
        for w in range(ws, we):
            v = x[b, c, h, w]
            if v > best or (v != v and best == best):
                best = v
                where = h * W + w
    out[k, c, ph, pw] = best
    arg[k, c, ph, pw] = where


def _roi_pool_backward_cuda(gy, arg, boxes, scale, gx):
    # a gather: one thread per input pixel sums gy over the bins whose argmax is this pixel
    i = cuda.grid(1)
    N, C, H, W = gx.shape
    if i >= N * C * H * W:
        return
    w = i % W
    h = (i // W) % H
    c = (i // (W * H)) % C
    n = i // (W * H * C)
    K, _, PH, PW = gy.shape
    T = gx.dtype.type
    sc = T(scale)
    me = h * W + w
    acc = T(0.0)
    for k in range(K):
        if _batch_of(boxes[k, 0], N) != n:
            continue
        xs, rw = _pool_box(T, boxes[k, 1], boxes[k, 3], sc)
        ys, rh = _pool_box(T, boxes[k, 2], boxes[k, 4], sc)
        for ph in range(PH):
            hs, he = _pool_bin(ph, rh, PH, ys, H)
            if h < hs or h >= he:
                continue
            for pw in range(PW):
                ws, we = _pool_bin(pw, rw, PW, xs, W)
                if w >= ws and w < we and arg[k, c, ph, pw] == me:
                    acc += gy[k, c, ph, pw]
    gx[n, c, h, w] = acc


roi_pool_cuda_kernel = cuda.jit(_roi_pool_cuda)
roi_pool_backward_cuda_kernel = cuda.jit(_roi_pool_backward_cuda)


# Launch plumbing: CuPy arrays go to the kernels as they are; NumPy arrays are copied to the device
# once and results copied back once (the simulator and host-array callers take this path).
def _to_dev(a):
    return cuda.to_device(np.ascontiguousarray(a)) if xp_of(a) is np else a


def _dev_empty(like, shape, dtype):
    if xp_of(like) is np:
        return cuda.device_array(shape, dtype)
    return xp_of(like).empty(shape, dtype)


def _to_host_like(like, a):
    return a.copy_to_host() if xp_of(like) is np else a


def _contig(a):
    return np.ascontiguousarray(a) if xp_of(a) is np else xp_of(a).ascontiguousarray(a)


def roi_pool_cuda(x, boxes, output_size: Pair, spatial_scale: float):
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    x, boxes = _contig(x), _contig(boxes.astype(x.dtype, copy=False))
    out = _dev_empty(x, (K, C, PH, PW), x.dtype)
    arg = _dev_empty(x, (K, C, PH, PW), np.int64)
    launch(roi_pool_cuda_kernel, K * C * PH * PW, _to_dev(x), _to_dev(boxes),
           float(spatial_scale), out, arg)
    return _to_host_like(x, out), _to_host_like(x, arg)


def roi_pool_backward_cuda(gy, argmax, boxes, input_shape: tuple, spatial_scale: float):
    # the gather recomputes the bins, hence spatial_scale (the scatters only need argmax)
    gy, argmax = _contig(gy), _contig(argmax)
    boxes = _contig(boxes.astype(gy.dtype, copy=False))
    gx = _dev_empty(gy, tuple(input_shape), gy.dtype)
    launch(roi_pool_backward_cuda_kernel, int(np.prod(input_shape)), _to_dev(gy),
           _to_dev(argmax), _to_dev(boxes), float(spatial_scale), gx)
    return _to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "roi_pool": {
        "reference": roi_pool_reference,
        "numba": roi_pool_numba,
        "cuda": roi_pool_cuda,
    },
    "roi_pool_backward": {
        "reference": roi_pool_backward_reference,
        "numba": roi_pool_backward_numba,
        "cuda": roi_pool_backward_cuda,
    },
}


def _farr(ndim: int, dtype) -> types.Array:
    # (kernels/_cuda.float_array calls types.from_dtype, which this Numba lacks)
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C")


_IDX = types.Array(types.int64, 4, "C")
PTX = [
    (_roi_pool_cuda,
     [(_farr(4, dt), _farr(2, dt), types.float64, _farr(4, dt), _IDX)
      for dt in (np.float32, np.float64)]),
    (_roi_pool_backward_cuda,
     [(_farr(4, dt), _IDX, _farr(2, dt), types.float64, _farr(4, dt))
      for dt in (np.float32, np.float64)]),
]
