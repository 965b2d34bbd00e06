"""roi_align: Mask R-CNN's RoIAlign (bilinear sampling on a regular grid per bin), and its backward.

Formula (SPEC "roi_align"; torchvision's CPU kernel is the model). For box k = [b, x1, y1, x2, y2]
(input coordinates, dtype of x), output bin (ph, pw) of a PH x PW grid, scale = spatial_scale::

    off    = 0.5 if aligned else 0
    start  = x1*scale - off,   roi_w = x2*scale - off - start
    roi_w  = max(roi_w, 1)     only when not aligned
    bin_w  = roi_w / PW,       gw = sampling_ratio if sampling_ratio > 0 else ceil(roi_w / PW)
    (likewise start_y, roi_h, bin_h, gh along y)
    count  = max(gh*gw, 1)
    sample (iy, ix):  y = start_y + ph*bin_h + (iy + 0.5)*bin_h/gh,  x likewise, 0<=iy<gh, 0<=ix<gw
    value of a sample: 0 if y < -1 or y > H or x < -1 or x > W (it still counts); else
        y = max(y, 0); y_low = int(y); if y_low >= H-1: y_low = y_high = H-1, y = y_low
        else y_high = y_low + 1; ly = y - y_low, hy = 1 - ly (likewise x) and the bilinear mix
        hy*hx*x[b,c,y_low,x_low] + hy*lx*x[b,c,y_low,x_high] + ly*hx*x[b,c,y_high,x_low]
        + ly*lx*x[b,c,y_high,x_high]
    y[k, c, ph, pw] = (sum of the sample values) / count

All coordinate arithmetic runs in the dtype of x (as torchvision does), so every implementation
finds the same grid sizes and the same taps.

Bounded work on absurd boxes. The adaptive grid grows with the box (a 1e9-pixel box has 5e8 x 5e8
samples per bin of a 2x2 output), but only samples within one pixel of the map can add anything.
A sample's coordinate moves monotonically with its index (each rounding step is monotone), so
``_sample_range`` finds the samples of a bin that lie in [-1, size] by bisection, in O(log grid),
and every implementation visits only those: the same sums in the same order as visiting all of
them. With the adaptive grid samples are at least half a pixel apart, so a box costs at most
O(C * (PH + 2H + 4) * (PW + 2W + 4)) work and the CPU tables O(PH + PW + 2(H + W) + 8) memory,
whatever its size. ``count`` stays ``gh*gw``. The functional layer rejects a grid above
``MAX_GRID`` per axis (its product must fit in int64).

A sample's validity and weights factor into a y part and an x part (``_axis_taps``):
w = (hy or ly) * (hx or lx), valid = valid_y and valid_x.

Backward (boxes are constants: no gradient flows to them, as in torchvision)::

    gx[b, c, tap] += gy[k, c, ph, pw] * w_tap / count      for every valid sample and its 4 taps

Shapes: x (N, C, H, W) float32/float64, boxes (K, 5) same dtype (column 0 holds the batch index as
a float) -> y (K, C, PH, PW). gy (K, C, PH, PW), boxes -> gx (N, C, H, W). A box whose batch index
is outside [0, N) yields zeros (the functional layer rejects it before a kernel runs).

Versions in this file (each checked against the reference by tests/test_roi_align.py):

* reference: Python loops straight from the formula, in the dtype of x (NumPy scalars). The oracle.
* numpy: none (no natural vectorised form; the table says so with NotImplementedError).
* numba: x is copied once to channels-last (N, H, W, C). One prange iteration per box builds the
  box's per-axis tap tables (PH*gh rows, PW*gw columns: a sample's weights are products of the
  two), then for each bin and sample adds the four weighted tap *vectors* over all channels (the
  contiguous, SIMD-friendly inner loop) into a (PH*PW, C) tile, divides by count and writes the
  tile back transposed to (C, PH, PW). The backward splits the *channels* among threads: each
  thread transposes its slice of each box's gy to (PH*PW, cw) and scatters the samples' four taps
  into its own channel slice of a channels-last gx, so overlapping boxes never race and the sums
  run in box order whatever the thread count (deterministic); gx is transposed back at the end.
  The backward folds 1/count into the y weights once per box, where the reference divides
  g*w by count per tap: the two differ in the last bit.
  The two transposes (tile -> out, gy -> channels-last) are the price of vectorising over
  channels; with the output 5-50 MB they cost about as much as the sampling itself.
* cuda: one thread per output element (k, c, ph, pw), NCHW, calling the same per-axis helpers.
  The backward uses ATOMICS: one thread per gy element adds its samples' 4 taps into gx with
  ``cuda.atomic.add``. A gather would need every input pixel to search all boxes, bins and samples
  that touch it, and boxes overlap arbitrarily, so the scatter is the practical form; the order of
  the float additions then varies from run to run (results agree within rounding, which
  tests/test_roi_align.py checks).

Benchmark: ``python benchmarks/bench_roi_align.py`` (1x256x50x50 float32, 256 boxes, 7x7 and 14x14).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import (
    FLOAT_DTYPES,
    contiguous,
    dev_empty,
    float_array,
    launch,
    to_dev,
    to_host_like,
    twins,
)
from ._parallel import parallel_njit

Pair = tuple[int, int]

MAX_GRID = 2**31 - 1
"""Largest sampling grid along one axis of a bin (the adaptive ``ceil(roi/P)`` or sampling_ratio):
``count = gh*gw`` must fit in int64. Reached by boxes some 2^31 bins wide; functional.roi_align
rejects them with a ValueError. The work of smaller grids is bounded (see the header)."""


# =============================================================================================
# reference
# =============================================================================================


def _geometry_reference(T, c1, c2, scale, pooled, sampling_ratio, aligned):
    """(start, bin_size, grid) along one axis, from the formula, in dtype T."""
    off = T(0.5) if aligned else T(0.0)
    start = T(c1) * scale - off
    size = T(c2) * scale - off - start
    if not aligned:
        size = max(size, T(1.0))
    bin_size = size / T(pooled)
    grid = sampling_ratio if sampling_ratio > 0 else int(math.ceil(size / T(pooled)))
    return start, bin_size, grid


def _taps_reference(T, y, x, H, W):
    """[(weight, h, w)] * 4 of one sample, or [] when it lies beyond one pixel outside the map."""
    if y < -1 or y > H or x < -1 or x > W:
        return []
    y = max(y, T(0))
    x = max(x, T(0))
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = T(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = T(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - T(y_low), x - T(x_low)
    hy, hx = T(1) - ly, T(1) - lx
    return [(hy * hx, y_low, x_low), (hy * lx, y_low, x_high),
            (ly * hx, y_high, x_low), (ly * lx, y_high, x_high)]


def _bins_reference(T, box, H, W, PH, PW, scale, sampling_ratio, aligned):
    """Yield (ph, pw, count, samples) per bin; samples: a list of 4-tap lists ([] = outside)."""
    ys, bh, gh = _geometry_reference(T, box[2], box[4], scale, PH, sampling_ratio, aligned)
    xs, bw, gw = _geometry_reference(T, box[1], box[3], scale, PW, sampling_ratio, aligned)
    count = max(gh * gw, 1)
    for ph in range(PH):
        iy0, iy1 = _valid_samples_reference(T, ys, bh, gh, ph, H)  # the others add 0
        for pw in range(PW):
            ix0, ix1 = _valid_samples_reference(T, xs, bw, gw, pw, W)
            samples = []
            for iy in range(iy0, iy1):
                y = ys + T(ph) * bh + (T(iy) + T(0.5)) * bh / T(gh)
                for ix in range(ix0, ix1):
                    x = xs + T(pw) * bw + (T(ix) + T(0.5)) * bw / T(gw)
                    samples.append(_taps_reference(T, y, x, H, W))
            yield ph, pw, count, samples


def roi_align_reference(x: np.ndarray, boxes: np.ndarray, output_size: Pair,
                        spatial_scale: float, sampling_ratio: int, aligned: bool) -> np.ndarray:
    """Plain loops from the formula: x (N,C,H,W), boxes (K,5) -> (K,C,PH,PW)."""
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    T = x.dtype.type
    scale = T(spatial_scale)
    y = np.zeros((K, C, PH, PW), x.dtype)
    for k in range(K):
        b = boxes[k, 0]
        if not 0 <= b < N:
            continue
        b = int(b)
        for ph, pw, count, samples in _bins_reference(T, boxes[k], H, W, PH, PW, scale,
                                                      sampling_ratio, aligned):
            for c in range(C):
                acc = T(0)
                for taps in samples:
                    if taps:
                        (w1, h1, v1), (w2, h2, v2), (w3, h3, v3), (w4, h4, v4) = taps
                        acc += (w1 * x[b, c, h1, v1] + w2 * x[b, c, h2, v2]
                                + w3 * x[b, c, h3, v3] + w4 * x[b, c, h4, v4])
                y[k, c, ph, pw] = acc / T(count)
    return y


def roi_align_backward_reference(gy: np.ndarray, boxes: np.ndarray, input_shape: tuple,
                                 spatial_scale: float, sampling_ratio: int,
                                 aligned: bool) -> np.ndarray:
    """gx[b, c, tap] += gy[k, c, ph, pw] * w_tap / count, looping as the forward does."""
    N, C, H, W = input_shape
    K, _, PH, PW = gy.shape
    T = gy.dtype.type
    scale = T(spatial_scale)
    gx = np.zeros((N, C, H, W), gy.dtype)
    for k in range(K):
        b = boxes[k, 0]
        if not 0 <= b < N:
            continue
        b = int(b)
        for ph, pw, count, samples in _bins_reference(T, boxes[k], H, W, PH, PW, scale,
                                                      sampling_ratio, aligned):
            for c in range(C):
                g = gy[k, c, ph, pw]
                for taps in samples:
                    for w, h, v in taps:
                        gx[b, c, h, v] += g * w / T(count)
    return gx


# =============================================================================================
# shared per-element helpers: scalars in, scalars out (so the CUDA simulator can call them as
# they are). Each is compiled twice from the same Python function by ``_cuda.twins``: a plain
# @njit for the CPU kernels and an inline="always" @njit, ``*_dev``, for the CUDA kernels.
# =============================================================================================



def _batch_of(v, N):
    """Batch index stored as a float in boxes[k, 0]; -1 when outside [0, N) (or NaN)."""
    if v >= 0 and v < N:
        return int(v)
    return -1


_batch_of, _batch_of_dev = twins(_batch_of)


def _axis_geometry(T, c1, c2, scale, pooled, sampling_ratio, aligned):
    """Along one axis of a box [c1, c2]: (start, bin_size, grid) in dtype T."""
    off = T(0.5) if aligned else T(0.0)
    start = c1 * scale - off
    size = c2 * scale - off - start
    if not aligned:
        if size < T(1.0):
            size = T(1.0)
    bin_size = size / T(pooled)
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = int(math.ceil(size / T(pooled)))
    return start, bin_size, grid


_axis_geometry, _axis_geometry_dev = twins(_axis_geometry)


def _sample_coord(T, start, bin_size, grid, p, i):
    """Coordinate of sample i of bin p: start + p*bin + (i + 0.5)*bin/grid."""
    return start + T(p) * bin_size + (T(i) + T(0.5)) * bin_size / T(grid)


_sample_coord, _sample_coord_dev = twins(_sample_coord)


def _sample_range(T, start, bin_size, grid, p, size):
    """(i0, i1): the samples of bin p whose coordinate lies in [-1, size], i0 <= i < i1; the others
    add 0. The coordinate (``_sample_coord``'s expression, written out so that the CUDA twin
    needs no call) is monotone in i, increasing for bin_size >= 0, so two bisections find them."""
    if grid <= 0 or size <= 0 or not (bin_size >= T(0.0) or bin_size < T(0.0)):  # NaN bin
        return 0, 0
    up = bin_size >= T(0.0)
    lo, hi = 0, grid
    while lo < hi:  # i0: the first sample not before the map's near edge
        mid = (lo + hi) // 2
        v = start + T(p) * bin_size + (T(mid) + T(0.5)) * bin_size / T(grid)
        if (v >= T(-1.0)) if up else (v <= T(size)):
            hi = mid
        else:
            lo = mid + 1
    i0, hi = lo, grid
    while lo < hi:  # i1: the first sample past the far edge
        mid = (lo + hi) // 2
        v = start + T(p) * bin_size + (T(mid) + T(0.5)) * bin_size / T(grid)
        if (v > T(size)) if up else (v < T(-1.0)):
            hi = mid
        else:
            lo = mid + 1
    return i0, lo


_valid_samples_reference = _sample_range  # the reference's use: plain Python (tests swap it)
_sample_range, _sample_range_dev = twins(_sample_range)


def _axis_taps(T, v, size):
    """One axis of a bilinear sample: (valid, low, high, w_low, w_high).

    valid is False beyond one pixel outside [0, size] (and for NaN); the sample then adds 0.
    """
    if size <= 0 or not (v >= T(-1.0) and v <= T(size)):
        return False, 0, 0, T(0.0), T(0.0)
    if v <= T(0.0):
        v = T(0.0)
    low = int(v)
    if low >= size - 1:
        low = size - 1
        high = low
        v = T(low)
    else:
        high = low + 1
    lw = v - T(low)
    return True, low, high, T(1.0) - lw, lw


_axis_taps, _axis_taps_dev = twins(_axis_taps)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@numba.njit(cache=True)
def _axis_table(T, start, bin_size, grid, pooled, size):
    """Per-axis tap table of one box, for the samples that can add something: bin p's are rows
    first[p] <= r < first[p + 1], in sample order (the others add 0 and get no row)."""
    first = np.empty(pooled + 1, np.int64)
    i0 = np.empty(pooled, np.int64)
    n = 0
    for p in range(pooled):
        a, b = _sample_range(T, start, bin_size, grid, p, size)
        first[p] = n
        i0[p] = a
        n += max(b - a, 0)
    first[pooled] = n
    ok = np.empty(n, np.bool_)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    wl = np.empty(n, T)
    wh = np.empty(n, T)
    for p in range(pooled):
        for r in range(first[p], first[p + 1]):
            v = _sample_coord(T, start, bin_size, grid, p, i0[p] + r - first[p])
            ok[r], lo[r], hi[r], wl[r], wh[r] = _axis_taps(T, v, size)
    return first, ok, lo, hi, wl, wh


@numba.njit(cache=True)
def _transpose_into(src, dst):
    """dst[j, i] = src[i, j] for 2-D arrays, four rows of dst at a time.

    Writing four dst rows in step keeps every write stream sequential; measured here about 3x
    faster than 16x16 tiles or a plain double loop for the (PH*PW, C) <-> (C, PH*PW) shapes."""
    M, L = src.shape
    L4 = L - L % 4
    for j0 in range(0, L4, 4):
        d0, d1, d2, d3 = dst[j0], dst[j0 + 1], dst[j0 + 2], dst[j0 + 3]
        for i in range(M):
            d0[i] = src[i, j0]
            d1[i] = src[i, j0 + 1]
            d2[i] = src[i, j0 + 2]
            d3[i] = src[i, j0 + 3]
    for j in range(L4, L):
        for i in range(M):
            dst[j, i] = src[i, j]


@numba.njit(cache=True)
def _align_box(xf, H, W, box, sc, sampling_ratio, aligned, tile, out_k):
    """One box's forward: tile (PH*PW, C) accumulates channels-last; out_k (C, PH, PW) gets it."""
    C = xf.shape[1]
    N = xf.shape[0] // (H * W)
    _, PH, PW = out_k.shape
    T = xf.dtype.type
    b = _batch_of(box[0], N)
    if b < 0:
        out_k[:] = 0
        return
    ys, bh, gh = _axis_geometry(T, box[2], box[4], sc, PH, sampling_ratio, aligned)
    xs, bw, gw = _axis_geometry(T, box[1], box[3], sc, PW, sampling_ratio, aligned)
    count = T(max(gh * gw, 1))
    gh = max(gh, 0)  # a negative grid (inverted aligned box) means no samples
    gw = max(gw, 0)
    yfirst, yok, ylo, yhi, ywl, ywh = _axis_table(T, ys, bh, gh, PH, H)
    xfirst, xok, xlo, xhi, xwl, xwh = _axis_table(T, xs, bw, gw, PW, W)
    base = b * H * W
    tile[:] = 0
    for ph in range(PH):
        for pw in range(PW):
            acc = tile[ph * PW + pw]  # (C,)
            for ry in range(yfirst[ph], yfirst[ph + 1]):
                if not yok[ry]:
                    continue
                for rx in range(xfirst[pw], xfirst[pw + 1]):
                    if not xok[rx]:
                        continue
                    w1 = ywl[ry] * xwl[rx]
                    w2 = ywl[ry] * xwh[rx]
                    w3 = ywh[ry] * xwl[rx]
                    w4 = ywh[ry] * xwh[rx]
                    v1 = xf[base + ylo[ry] * W + xlo[rx]]  # (C,) tap vectors
                    v2 = xf[base + ylo[ry] * W + xhi[rx]]
                    v3 = xf[base + yhi[ry] * W + xlo[rx]]
                    v4 = xf[base + yhi[ry] * W + xhi[rx]]
                    for c in range(C):  # contiguous in c: vectorises
                        acc[c] += w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c]
            for c in range(C):
                acc[c] /= count
    _transpose_into(tile, out_k.reshape(C, PH * PW))  # (PH*PW, C) -> (C, PH*PW)


@parallel_njit(cache=True)
def _roi_align_numba(xf, H, W, boxes, scale, sampling_ratio, aligned, out):
    # xf (N*H*W, C): x channels-last, one row per pixel; out (K, C, PH, PW)
    K, C, PH, PW = out.shape
    sc = xf.dtype.type(scale)
    for k in prange(K):  # boxes are independent; the per-box work is a separate function
        tile = np.empty((PH * PW, C), xf.dtype)  # (PH*PW, C): one box's output, channels last
        _align_box(xf, H, W, boxes[k], sc, sampling_ratio, aligned, tile, out[k])


@numba.njit(cache=True)
def _align_box_backward(gy_k, box, sc, sampling_ratio, aligned, H, W, c0, gt, gf):
    """One box's backward into channels c0 : c0+cw of gf (N*H*W, C); gt is a (PH*PW, cw) buffer."""
    _, PH, PW = gy_k.shape
    cw = gt.shape[1]
    N = gf.shape[0] // (H * W)
    T = gf.dtype.type
    b = _batch_of(box[0], N)
    if b < 0:
        return
    ys, bh, gh = _axis_geometry(T, box[2], box[4], sc, PH, sampling_ratio, aligned)
    xs, bw, gw = _axis_geometry(T, box[1], box[3], sc, PW, sampling_ratio, aligned)
    count = T(max(gh * gw, 1))
    gh = max(gh, 0)
    gw = max(gw, 0)
    yfirst, yok, ylo, yhi, ywl, ywh = _axis_table(T, ys, bh, gh, PH, H)
    xfirst, xok, xlo, xhi, xwl, xwh = _axis_table(T, xs, bw, gw, PW, W)
    _transpose_into(gy_k[c0:c0 + cw].reshape(cw, PH * PW), gt)  # (cw, PH*PW) -> (PH*PW, cw)
    # fold 1/count into the row weights once (the reference divides g*w by count per tap: the
    # two differ in the last bit only)
    for r in range(ywl.shape[0]):
        ywl[r] /= count
        ywh[r] /= count
    base = b * H * W
    for ph in range(PH):
        for pw in range(PW):
            g = gt[ph * PW + pw]  # (cw,)
            for ry in range(yfirst[ph], yfirst[ph + 1]):
                if not yok[ry]:
                    continue
                for rx in range(xfirst[pw], xfirst[pw + 1]):
                    if not xok[rx]:
                        continue
                    w1 = ywl[ry] * xwl[rx]  # already divided by count
                    w2 = ywl[ry] * xwh[rx]
                    w3 = ywh[ry] * xwl[rx]
                    w4 = ywh[ry] * xwh[rx]
                    # 1-D row views (2-D indexing here defeats LLVM's vectoriser)
                    d1 = gf[base + ylo[ry] * W + xlo[rx], c0:c0 + cw]
                    d2 = gf[base + ylo[ry] * W + xhi[rx], c0:c0 + cw]
                    d3 = gf[base + yhi[ry] * W + xlo[rx], c0:c0 + cw]
                    d4 = gf[base + yhi[ry] * W + xhi[rx], c0:c0 + cw]
                    # d1..d4 may be one pixel at the border: each c still adds in order
                    for c in range(cw):
                        gc = g[c]
                        d1[c] += w1 * gc
                        d2[c] += w2 * gc
                        d3[c] += w3 * gc
                        d4[c] += w4 * gc


@parallel_njit(cache=True)
def _roi_align_backward_numba(gy, boxes, scale, sampling_ratio, aligned, H, W, nchunks, gf):
    # gy (K, C, PH, PW); gf (N*H*W, C) zeroed: gx channels-last, one row per pixel
    K, C, PH, PW = gy.shape
    sc = gf.dtype.type(scale)
    chunk = (C + nchunks - 1) // nchunks
    for t in prange(nchunks):  # each thread owns a slice of channels: no two write one element
        c0 = min(C, t * chunk)
        gt = np.empty((PH * PW, min(C, c0 + chunk) - c0), gf.dtype)  # (PH*PW, cw)
        for k in range(K):
            _align_box_backward(gy[k], boxes[k], sc, sampling_ratio, aligned, H, W, c0, gt, gf)


def roi_align_numba(x: np.ndarray, boxes: np.ndarray, output_size: Pair, spatial_scale: float,
                    sampling_ratio: int, aligned: bool) -> np.ndarray:
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    out = np.empty((K, C, PH, PW), x.dtype)
    if out.size:
        xf = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(N * H * W, C)  # (N*H*W, C)
        _roi_align_numba(xf, H, W, np.ascontiguousarray(boxes, x.dtype), float(spatial_scale),
                         int(sampling_ratio), bool(aligned), out)
    return out


def roi_align_backward_numba(gy: np.ndarray, boxes: np.ndarray, input_shape: tuple,
                             spatial_scale: float, sampling_ratio: int,
                             aligned: bool) -> np.ndarray:
    N, C, H, W = input_shape
    gf = np.zeros((N * H * W, C), gy.dtype)  # (N*H*W, C): gx channels-last
    if gy.size and gf.size:
        # channel slices of >= 16 (a few SIMD vectors), one per thread
        nchunks = max(1, min(numba.get_num_threads(), C // 16))
        _roi_align_backward_numba(np.ascontiguousarray(gy), np.ascontiguousarray(boxes, gy.dtype),
                                  float(spatial_scale), int(sampling_ratio), bool(aligned), H, W,
                                  nchunks, gf)
    return np.ascontiguousarray(gf.reshape(N, H, W, C).transpose(0, 3, 1, 2))  # (N, C, H, W)


# =============================================================================================
# cuda
# =============================================================================================


def _roi_align_cuda(x, boxes, scale, sampling_ratio, aligned, out):
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
    if b < 0:
        out[k, c, ph, pw] = T(0.0)
        return
    ys, bh, gh = _axis_geometry_dev(T, boxes[k, 2], boxes[k, 4], sc, PH, sampling_ratio, aligned)
    xs, bw, gw = _axis_geometry_dev(T, boxes[k, 1], boxes[k, 3], sc, PW, sampling_ratio, aligned)
    count = max(gh * gw, 1)
    acc = T(0.0)
    iy0, iy1 = _sample_range_dev(T, ys, bh, gh, ph, H)  # the other samples add 0
    ix0, ix1 = _sample_range_dev(T, xs, bw, gw, pw, W)
    for iy in range(iy0, iy1):
        oky, yl, yh, hy, ly = _axis_taps_dev(T, _sample_coord_dev(T, ys, bh, gh, ph, iy), H)
        if not oky:
            continue
        for ix in range(ix0, ix1):
            okx, xl, xh, hx, lx = _axis_taps_dev(T, _sample_coord_dev(T, xs, bw, gw, pw, ix), W)
            if okx:
                acc += (hy * hx * x[b, c, yl, xl] + hy * lx * x[b, c, yl, xh]
                        + ly * hx * x[b, c, yh, xl] + ly * lx * x[b, c, yh, xh])
    out[k, c, ph, pw] = acc / T(count)


def _roi_align_backward_cuda(gy, boxes, scale, sampling_ratio, aligned, gx):
    # one thread per gy element; its taps are added into gx with atomics (boxes overlap)
    i = cuda.grid(1)
    K, C, PH, PW = gy.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    N, H, W = gx.shape[0], gx.shape[2], gx.shape[3]
    T = gy.dtype.type
    sc = T(scale)
    b = _batch_of_dev(boxes[k, 0], N)
    if b < 0:
        return
    ys, bh, gh = _axis_geometry_dev(T, boxes[k, 2], boxes[k, 4], sc, PH, sampling_ratio, aligned)
    xs, bw, gw = _axis_geometry_dev(T, boxes[k, 1], boxes[k, 3], sc, PW, sampling_ratio, aligned)
    count = T(max(gh * gw, 1))
    g = gy[k, c, ph, pw]
    iy0, iy1 = _sample_range_dev(T, ys, bh, gh, ph, H)  # the other samples add 0
    ix0, ix1 = _sample_range_dev(T, xs, bw, gw, pw, W)
    for iy in range(iy0, iy1):
        oky, yl, yh, hy, ly = _axis_taps_dev(T, _sample_coord_dev(T, ys, bh, gh, ph, iy), H)
        if not oky:
            continue
        for ix in range(ix0, ix1):
            okx, xl, xh, hx, lx = _axis_taps_dev(T, _sample_coord_dev(T, xs, bw, gw, pw, ix), W)
            if okx:
                cuda.atomic.add(gx, (b, c, yl, xl), g * (hy * hx) / count)
                cuda.atomic.add(gx, (b, c, yl, xh), g * (hy * lx) / count)
                cuda.atomic.add(gx, (b, c, yh, xl), g * (ly * hx) / count)
                cuda.atomic.add(gx, (b, c, yh, xh), g * (ly * lx) / count)


roi_align_cuda_kernel = cuda.jit(_roi_align_cuda)
roi_align_backward_cuda_kernel = cuda.jit(_roi_align_backward_cuda)


def roi_align_cuda(x, boxes, output_size: Pair, spatial_scale: float, sampling_ratio: int,
                   aligned: bool):
    N, C, H, W = x.shape
    PH, PW = output_size
    K = boxes.shape[0]
    x, boxes = contiguous(x), contiguous(boxes.astype(x.dtype, copy=False))
    out = dev_empty(x, (K, C, PH, PW), x.dtype, fill=0)
    launch(roi_align_cuda_kernel, K * C * PH * PW, to_dev(x), to_dev(boxes),
           float(spatial_scale), int(sampling_ratio), bool(aligned), out)
    return to_host_like(x, out)


def roi_align_backward_cuda(gy, boxes, input_shape: tuple, spatial_scale: float,
                            sampling_ratio: int, aligned: bool):
    K, C, PH, PW = gy.shape
    gy, boxes = contiguous(gy), contiguous(boxes.astype(gy.dtype, copy=False))
    gx = dev_empty(gy, tuple(input_shape), gy.dtype, fill=0)
    launch(roi_align_backward_cuda_kernel, K * C * PH * PW, to_dev(gy), to_dev(boxes),
           float(spatial_scale), int(sampling_ratio), bool(aligned), gx)
    return to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================


IMPLS = {
    "roi_align": {
        "reference": roi_align_reference,
        "numba": roi_align_numba,
        "cuda": roi_align_cuda,
    },
    "roi_align_backward": {
        "reference": roi_align_backward_reference,
        "numba": roi_align_backward_numba,
        "cuda": roi_align_backward_cuda,
    },
}


PTX = [
    (fn, [(float_array(4, dt), float_array(2, dt), types.float64, types.int64, types.boolean,
           float_array(4, dt)) for dt in FLOAT_DTYPES])
    for fn in (_roi_align_cuda, _roi_align_backward_cuda)
]
