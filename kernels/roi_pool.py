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
0) -> y (K, C, PH, PW) same dtype, argmax (K, C, PH, PW) int32 (internal: saved for the backward;
int32 as in torchvision halves its memory traffic). gy, argmax, boxes -> gx (N, C, H, W).
A box whose batch index is outside [0, N) yields zeros and argmax -1.

Versions in this file (each checked against the reference by tests/test_roi_pool.py):

* reference: Python loops straight from the formula (the oracle).
* numpy: none (the ragged bins have no natural vectorised form).
* numba: forward channels-last: x is copied once to (N, H, W, C); one prange iteration per box
  computes its bins once, then scans each bin's pixels with the channel as the inner, contiguous
  loop, keeping per-channel max / argmax / first-NaN with selects rather than branches (so it
  vectorises; a branchy per-channel scan of the NCHW planes was 5-10x slower), and writes the
  (PH*PW, C) tiles back transposed. Backward: one prange iteration per channel: a channel's
  planes (all images) belong to one thread, so the scatter is race-free and runs in (k, ph, pw)
  order; the planes are flat (H*W) so that argmax indexes them without a division.
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

from ._cuda import (
    FLOAT_DTYPES,
    SIMULATOR,
    contiguous,
    dev_empty,
    float_array,
    launch,
    to_dev,
    to_host_like,
    twins,
)
from ._parallel import parallel_njit
from .roi_align import _batch_of, _batch_of_dev, _transpose_into

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
    arg = np.full((K, C, PH, PW), -1, np.int32)
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
# shared per-element helpers: scalars in, scalars out (so the CUDA simulator can call them as
# they are). Each is compiled twice from the same Python function by ``_cuda.twins``: a plain
# @njit for the CPU kernels and an inline="always" @njit, ``*_dev``, for the CUDA kernels.
# The batch-index helper is RoIAlign's (same boxes format).
# =============================================================================================




def _round_half_away(T, v):
    """round() with halves away from zero, as an integer (clamped far outside any map)."""
    a = abs(v)
    if not a < T(1e15):  # huge or NaN: any far-away value is clamped to the map later
        return (1 << 50) if v > T(0.0) else -(1 << 50)
    r = int(math.floor(a))
    if a - T(r) >= T(0.5):  # a - floor(a) is exact: no 0.49999997 + 0.5 == 1 trap
        r += 1
    return r if v >= T(0.0) else -r


_round_half_away, _round_half_away_dev = twins(_round_half_away)


def _pool_bin(p, roi, P, start, size):
    """[lo, hi) of bin p along one axis: [floor(p*roi/P), ceil((p+1)*roi/P)) + start, clamped."""
    lo = (p * roi) // P + start
    hi = -((-(p + 1) * roi) // P) + start
    lo = min(max(lo, 0), size)
    hi = min(max(hi, 0), size)
    return lo, hi


_pool_bin, _pool_bin_dev = twins(_pool_bin)



def _bin_max(x, b, c, hs, he, ws, we):
    """(max, h*W + w of the first maximum) of x[b, c] over rows [hs, he) and columns [ws, we), the
    bin being non-empty; the first NaN wins. Written without an early exit so that the compilers
    turn the updates into selects: a data-dependent branch here made the CPU kernel 3x slower."""
    W = x.shape[3]
    best = x[b, c, hs, ws]
    where = hs * W + ws
    first_nan = -1
    for h in range(hs, he):
        for w in range(ws, we):
            v = x[b, c, h, w]
            if v > best:  # strict: the first maximum stays; False for NaN
                best = v
                where = h * W + w
            if v != v and first_nan < 0:
                first_nan = h * W + w
    if first_nan >= 0:
        return x[b, c, first_nan // W, first_nan % W], first_nan
    return best, where


# It takes an array, which the CUDA simulator's fake device arrays cannot bring into an @njit
# function: under the simulator the CUDA kernel calls the plain Python original. (The CPU kernel
# runs the same rule channels-last, vectorised over channels, in _pool_box.)
_bin_max_dev = _bin_max if SIMULATOR else numba.njit(inline="always")(_bin_max)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@numba.njit(cache=True)
def _pool_box(xf, H, W, b, rows, cols, tv, ti, tn, out_k, arg_k):
    """One box over all channels, channels-last: xf (N*H*W, C), rows (PH, 2) and cols (PW, 2) its
    bins; tv, ti, tn (PH*PW, C) scratch tiles (max, argmax, first NaN); out_k, arg_k (C, PH, PW)."""
    C = xf.shape[1]
    PH, PW = rows.shape[0], cols.shape[0]
    T = xf.dtype.type
    for ph in range(PH):
        hs, he = rows[ph, 0], rows[ph, 1]
        for pw in range(PW):
            ws, we = cols[pw, 0], cols[pw, 1]
            p = ph * PW + pw
            best, where, first_nan = tv[p], ti[p], tn[p]  # (C,) each
            if b < 0 or he <= hs or we <= ws:
                best[:] = T(0.0)
                where[:] = -1
                continue
            best[:] = xf[(b * H + hs) * W + ws]
            where[:] = hs * W + ws
            first_nan[:] = -1
            for h in range(hs, he):
                for w in range(ws, we):
                    v = xf[(b * H + h) * W + w]  # (C,): the pixel's channels
                    idx = h * W + w
                    for c in range(C):  # selects, no branches: vectorises over channels
                        bc = best[c]
                        up = v[c] > bc  # strict: the first maximum stays; False for NaN
                        best[c] = v[c] if up else bc
                        where[c] = idx if up else where[c]
                        first_nan[c] = idx if (v[c] != v[c] and first_nan[c] < 0) else first_nan[c]
            for c in range(C):  # the first NaN wins
                if first_nan[c] >= 0:
                    best[c] = xf[b * H * W + first_nan[c], c]
                    where[c] = first_nan[c]
    _transpose_into(tv, out_k.reshape(C, PH * PW))  # (PH*PW, C) -> (C, PH*PW)
    _transpose_into(ti, arg_k.reshape(C, PH * PW))


@parallel_njit(cache=True)
def _roi_pool_numba(xf, H, W, boxes, scale, out, arg):
    # xf (N*H*W, C): x channels-last, one row per pixel; out, arg (K, C, PH, PW)
    N = xf.shape[0] // (H * W)
    K, C, PH, PW = out.shape
    T = xf.dtype.type
    sc = T(scale)
    for k in prange(K):  # boxes are independent
        b = _batch_of(boxes[k, 0], N)
        xs = _round_half_away(T, boxes[k, 1] * sc)  # x1'; roi_w = max(x2' - x1' + 1, 1)
        rw = max(_round_half_away(T, boxes[k, 3] * sc) - xs + 1, 1)
        ys = _round_half_away(T, boxes[k, 2] * sc)
        rh = max(_round_half_away(T, boxes[k, 4] * sc) - ys + 1, 1)
        rows = np.empty((PH, 2), np.int64)  # [lo, hi) of each bin
        cols = np.empty((PW, 2), np.int64)
        for ph in range(PH):
            rows[ph, 0], rows[ph, 1] = _pool_bin(ph, rh, PH, ys, H)
        for pw in range(PW):
            cols[pw, 0], cols[pw, 1] = _pool_bin(pw, rw, PW, xs, W)
        tv = np.empty((PH * PW, C), xf.dtype)
        ti = np.empty((PH * PW, C), np.int32)
        tn = np.empty((PH * PW, C), np.int32)
        _pool_box(xf, H, W, b, rows, cols, tv, ti, tn, out[k], arg[k])


@parallel_njit(cache=True)
def _roi_pool_backward_numba(gy, arg, boxes, gx):
    # gy, arg (K, C, PH*PW); gx (N, C, H*W) zeroed: flat planes, so argmax indexes them directly
    N, C, HW = gx.shape
    K, _, P = gy.shape
    for c in prange(C):  # channel c of every image belongs to this iteration: no races
        for k in range(K):
            b = _batch_of(boxes[k, 0], N)
            if b < 0:
                continue
            for p in range(P):
                i = arg[k, c, p]
                if i >= 0 and i < HW:  # skip empty bins (and anything outside the plane)
                    gx[b, c, i] += gy[k, c, p]


def roi_pool_numba(x: np.ndarray, boxes: np.ndarray, output_size: Pair,
                   spatial_scale: float) -> tuple[np.ndarray, np.ndarray]:
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    out = np.empty((K, C, PH, PW), x.dtype)
    arg = np.empty((K, C, PH, PW), np.int32)
    if out.size:
        xf = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(N * H * W, C)  # (N*H*W, C)
        _roi_pool_numba(xf, H, W, np.ascontiguousarray(boxes, x.dtype), float(spatial_scale),
                        out, arg)
    return out, arg


def roi_pool_backward_numba(gy: np.ndarray, argmax: np.ndarray, boxes: np.ndarray,
                            input_shape: tuple, spatial_scale: float) -> np.ndarray:
    N, C, H, W = input_shape
    K, _, PH, PW = gy.shape
    gx = np.zeros((N, C, H * W), gy.dtype)  # (N, C, H*W)
    if gy.size and gx.size:
        _roi_pool_backward_numba(np.ascontiguousarray(gy).reshape(K, C, PH * PW),
                                 np.ascontiguousarray(argmax).reshape(K, C, PH * PW),
                                 np.ascontiguousarray(boxes, gy.dtype), gx)
    return gx.reshape(N, C, H, W)


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
    b = _batch_of_dev(boxes[k, 0], N)
    xs = _round_half_away_dev(T, boxes[k, 1] * sc)  # x1'; roi_w = max(x2' - x1' + 1, 1)
    rw = max(_round_half_away_dev(T, boxes[k, 3] * sc) - xs + 1, 1)
    ys = _round_half_away_dev(T, boxes[k, 2] * sc)
    rh = max(_round_half_away_dev(T, boxes[k, 4] * sc) - ys + 1, 1)
    hs, he = _pool_bin_dev(ph, rh, PH, ys, H)
    ws, we = _pool_bin_dev(pw, rw, PW, xs, W)
    if b < 0 or he <= hs or we <= ws:
        out[k, c, ph, pw] = T(0.0)
        arg[k, c, ph, pw] = -1
        return
    out[k, c, ph, pw], arg[k, c, ph, pw] = _bin_max_dev(x, b, c, hs, he, ws, we)


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
        if _batch_of_dev(boxes[k, 0], N) != n:
            continue
        xs = _round_half_away_dev(T, boxes[k, 1] * sc)  # x1'; roi_w = max(x2' - x1' + 1, 1)
        rw = max(_round_half_away_dev(T, boxes[k, 3] * sc) - xs + 1, 1)
        ys = _round_half_away_dev(T, boxes[k, 2] * sc)
        rh = max(_round_half_away_dev(T, boxes[k, 4] * sc) - ys + 1, 1)
        for ph in range(PH):
            hs, he = _pool_bin_dev(ph, rh, PH, ys, H)
            if h < hs or h >= he:
                continue
            for pw in range(PW):
                ws, we = _pool_bin_dev(pw, rw, PW, xs, W)
                if w >= ws and w < we and arg[k, c, ph, pw] == me:
                    acc += gy[k, c, ph, pw]
    gx[n, c, h, w] = acc


roi_pool_cuda_kernel = cuda.jit(_roi_pool_cuda)
roi_pool_backward_cuda_kernel = cuda.jit(_roi_pool_backward_cuda)







def roi_pool_cuda(x, boxes, output_size: Pair, spatial_scale: float):
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    x, boxes = contiguous(x), contiguous(boxes.astype(x.dtype, copy=False))
    out = dev_empty(x, (K, C, PH, PW), x.dtype)
    arg = dev_empty(x, (K, C, PH, PW), np.int32)
    launch(roi_pool_cuda_kernel, K * C * PH * PW, to_dev(x), to_dev(boxes),
           float(spatial_scale), out, arg)
    return to_host_like(x, out), to_host_like(x, arg)


def roi_pool_backward_cuda(gy, argmax, boxes, input_shape: tuple, spatial_scale: float):
    # the gather recomputes the bins, hence spatial_scale (the scatters only need argmax)
    gy, argmax = contiguous(gy), contiguous(argmax)
    boxes = contiguous(boxes.astype(gy.dtype, copy=False))
    gx = dev_empty(gy, tuple(input_shape), gy.dtype)
    launch(roi_pool_backward_cuda_kernel, int(np.prod(input_shape)), to_dev(gy),
           to_dev(argmax), to_dev(boxes), float(spatial_scale), gx)
    return to_host_like(gy, gx)


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


_IDX = types.Array(types.int32, 4, "C")
PTX = [
    (_roi_pool_cuda,
     [(float_array(4, dt), float_array(2, dt), types.float64, float_array(4, dt), _IDX)
      for dt in FLOAT_DTYPES]),
    (_roi_pool_backward_cuda,
     [(float_array(4, dt), _IDX, float_array(2, dt), types.float64, float_array(4, dt))
      for dt in FLOAT_DTYPES]),
]
