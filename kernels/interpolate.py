"""interpolate: nearest and bilinear resizing of (N, C, H, W) images, and their backward.

Formula (PyTorch's ``F.interpolate``, to the last half-pixel), per axis with input size ``I``,
output size ``O`` and ``scale = I / O``, or ``1 / scale_factor`` when a scale factor was given
(PyTorch maps coordinates with the factor the user gave, not with the rounded sizes)::

    nearest:                       src(d) = min(floor(d * scale), I - 1)
    bilinear, align_corners=True:  src(d) = d * (I - 1) / (O - 1)        (0 when O = 1)
    bilinear, align_corners=False: src(d) = max(scale * (d + 0.5) - 0.5, 0)
    then  i0 = floor(src),  i1 = min(i0 + 1, I - 1),  l = src - i0

    nearest:   y[n,c,oh,ow] = x[n, c, src_h(oh), src_w(ow)]
    bilinear:  separably, along H then W:
               t_j = (1 - lh) * x[n, c, i0h, j] + lh * x[n, c, i1h, j]     for j in (i0w, i1w)
               y   = (1 - lw) * t_i0w + lw * t_i1w

Precision of the coordinates, chosen to pick the same pixels as PyTorch: nearest evaluates
``d * scale`` in float32 with a float32 ``scale`` (PyTorch does, for every data type); bilinear
works in float64 whatever the data type (continuous in ``src``, so this only moves the last bits).
``align_corners=True`` is evaluated as written, ``(d * (I - 1)) / (O - 1)``, so the last output
maps exactly onto the last input: corners are kept exactly.

PyTorch's shortcuts are *not* copied, because they contradict the formula above (SPEC): when a
non-integer ``scale_factor`` leaves an axis's size unchanged (``O == I``; for nearest also
``O == 2I``), PyTorch 2.x's CPU kernels copy along that axis (or take ``x[d // 2]``) instead of
mapping with ``1 / scale_factor``. Everywhere else the values match PyTorch's CPU results (to the
last bits for bilinear, exactly for nearest).

Backward: the adjoint, ``gx[n,c,i,j] = sum over (oh, ow) of wh(oh, i) * ww(ow, j) * gy[n,c,oh,ow]``
with ``wh(oh, i)`` the weight output row ``oh`` gives input row ``i`` (1 for nearest; ``1 - l`` at
``i0``, ``l`` at ``i1`` for bilinear; both when ``i0 == i1``). Because ``src`` is non-decreasing
in ``d``, the outputs that read input ``i`` form one contiguous range per axis::

    nearest:   {d : src(d) == i}
    bilinear:  {d : i0(d) <= i <= i1(d)}      (i1 is i0 or i0 + 1)

so every backward here is a *gather* over those ranges (deterministic, no atomics).

Shapes: x (N, C, H, W) float32/float64 -> y (N, C, OH, OW) same dtype; gy (N, C, OH, OW) -> gx
(N, C, H, W). Every kernel takes the sizes and the per-axis ``scale`` pair computed by
:func:`source_scale` (the functional layer validates everything first).

Versions in this file (all checked against the reference by tests/test_interpolate.py):

* reference: Python loops straight from the formula (the oracle); its coordinate math is written
  out again on purpose, independent of the shared helpers.
* numpy: per-axis index/weight tables computed with vectorised NumPy, then fancy indexing along
  H and along W; backward ``np.add.at`` of the same tables (unbuffered: repeats accumulate).
* numba: per-axis tables from the shared helpers; forward interpolates along H into a row buffer
  (contiguous, vectorised) and then gathers along W; backward gathers: per input row, the rows
  of gy in its range are combined (vectorised), then each input pixel sums its W-range.
  ``prange`` over (plane, block of rows) tasks.
* cuda: forward one thread per output pixel, calling the shared helpers; backward one thread per
  input pixel summing its (H-range x W-range) block of gy with per-axis inverse tables built on
  the host from the same helpers: a gather, deterministic, no atomics.

Benchmark: ``python benchmarks/bench_interpolate.py`` (bilinear and nearest, x2 at N=8, C=64,
128x128 float32, and more, against ``torch.nn.functional.interpolate``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import dev_empty, float_array, launch, to_dev, to_host_like
from ._parallel import parallel_njit

Pair = tuple[int, int]
FPair = tuple[float, float]


def source_scale(in_size: int, out_size: int, scale_factor: float | None = None,
                 mode: str = "bilinear") -> float:
    """The coordinate scale of one axis: ``1 / scale_factor`` if one was given, else ``in / out``.

    For ``mode="nearest"`` the value is rounded to float32 the way PyTorch computes it
    (``float(1.0 / scale_factor)``, or the float32 quotient ``float(in) / out``): the kernels then
    evaluate ``d * scale`` in float32 as PyTorch does, so they pick the same pixel even where the
    product lands within rounding of an integer. Bilinear coordinates are float64 throughout.
    align_corners=True ignores the scale (it maps with (in - 1) / (out - 1)).
    """
    if mode == "nearest":
        if scale_factor is not None and scale_factor > 0:
            return float(np.float32(1.0 / float(scale_factor)))
        return float(np.float32(in_size) / np.float32(out_size))
    if scale_factor is not None and scale_factor > 0:
        return 1.0 / float(scale_factor)
    return float(in_size) / float(out_size)


# =============================================================================================
# reference
# =============================================================================================


def _ref_nearest(d: int, n_in: int, scale: float) -> int:
    # d * scale in float32, as PyTorch evaluates it (see source_scale)
    return min(math.floor(np.float32(d) * np.float32(scale)), n_in - 1)


def _ref_linear(d: int, n_in: int, n_out: int, scale: float, align_corners: bool):
    if align_corners:
        src = d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        src = max(scale * (d + 0.5) - 0.5, 0.0)
    i0 = math.floor(src)
    i1 = min(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def interpolate_nearest_reference(x: np.ndarray, out_size: Pair, scale: FPair) -> np.ndarray:
    """y[n,c,oh,ow] = x[n, c, src_h(oh), src_w(ow)]: plain loops."""
    N, C, H, W = x.shape
    OH, OW = out_size
    y = np.empty((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                ih = _ref_nearest(oh, H, scale[0])
                for ow in range(OW):
                    y[n, c, oh, ow] = x[n, c, ih, _ref_nearest(ow, W, scale[1])]
    return y


def interpolate_nearest_backward_reference(gy: np.ndarray, in_size: Pair,
                                           scale: FPair) -> np.ndarray:
    """gx[n, c, src_h(oh), src_w(ow)] += gy[n, c, oh, ow]: plain loops (a scatter)."""
    N, C, OH, OW = gy.shape
    H, W = in_size
    gx = np.zeros((N, C, H, W), gy.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                ih = _ref_nearest(oh, H, scale[0])
                for ow in range(OW):
                    gx[n, c, ih, _ref_nearest(ow, W, scale[1])] += gy[n, c, oh, ow]
    return gx


def interpolate_bilinear_reference(x: np.ndarray, out_size: Pair, scale: FPair,
                                   align_corners: bool) -> np.ndarray:
    """Two-tap interpolation along H, then along W: plain loops in Python floats."""
    N, C, H, W = x.shape
    OH, OW = out_size
    y = np.empty((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1, lh = _ref_linear(oh, H, OH, scale[0], align_corners)
                for ow in range(OW):
                    w0, w1, lw = _ref_linear(ow, W, OW, scale[1], align_corners)
                    t0 = (1 - lh) * float(x[n, c, h0, w0]) + lh * float(x[n, c, h1, w0])
                    t1 = (1 - lh) * float(x[n, c, h0, w1]) + lh * float(x[n, c, h1, w1])
                    y[n, c, oh, ow] = (1 - lw) * t0 + lw * t1
    return y


def interpolate_bilinear_backward_reference(gy: np.ndarray, in_size: Pair, scale: FPair,
                                            align_corners: bool) -> np.ndarray:
    """Each gy[n,c,oh,ow] added to its four taps with the forward's weights (a scatter)."""
    N, C, OH, OW = gy.shape
    H, W = in_size
    gx = np.zeros((N, C, H, W), np.float64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0, h1, lh = _ref_linear(oh, H, OH, scale[0], align_corners)
                for ow in range(OW):
                    w0, w1, lw = _ref_linear(ow, W, OW, scale[1], align_corners)
                    g = float(gy[n, c, oh, ow])
                    gx[n, c, h0, w0] += (1 - lh) * (1 - lw) * g
                    gx[n, c, h1, w0] += lh * (1 - lw) * g
                    gx[n, c, h0, w1] += (1 - lh) * lw * g
                    gx[n, c, h1, w1] += lh * lw * g
    return gx.astype(gy.dtype)


# =============================================================================================
# shared per-element helpers (called from the numba CPU table builders and the CUDA kernels)
# =============================================================================================


# inline="always" inlines the helpers at Numba-IR level into their callers: the CUDA kernels then
# compile to PTX without a GPU (a separately compiled device function asks the driver for its
# compute capability), and the CPU loops lose the call overhead.
@numba.njit(inline="always", cache=True)
def nearest_source(d, n_in, scale):
    """Input index read by output ``d``: min(floor(d * scale), n_in - 1), clamped into [0, n_in).

    The product is a float32 one, like PyTorch's (``scale`` comes from :func:`source_scale`).
    """
    s = int(math.floor(np.float32(d) * np.float32(scale)))
    if s > n_in - 1:
        s = n_in - 1
    if s < 0:
        s = 0
    return s


@numba.njit(inline="always", cache=True)
def linear_source(d, n_in, n_out, scale, align_corners):
    """(i0, i1, l) for output ``d``: the two taps and the weight of the second (float64)."""
    if align_corners:
        src = (d * (n_in - 1)) / (n_out - 1) if n_out > 1 else 0.0
    else:
        src = scale * (d + 0.5) - 0.5
        if src < 0.0:
            src = 0.0
    i0 = int(math.floor(src))
    if i0 > n_in - 1:  # never for valid sizes; keeps every read in bounds whatever the caller
        i0 = n_in - 1
    i1 = i0 + 1 if i0 < n_in - 1 else n_in - 1
    return i0, i1, src - i0


@numba.njit(cache=True)
def _nearest_table(n_in, n_out, scale, idx):
    """idx[d, 0] = nearest_source(d): the (O, 1) forward table of one axis."""
    for d in range(n_out):
        idx[d, 0] = nearest_source(d, n_in, scale)


@numba.njit(cache=True)
def _linear_table(n_in, n_out, scale, align_corners, idx, lam):
    """idx[d] = (i0, i1), lam[d] = l: the (O, 2) forward table of one axis."""
    for d in range(n_out):
        i0, i1, l = linear_source(d, n_in, n_out, scale, align_corners)
        idx[d, 0] = i0
        idx[d, 1] = i1
        lam[d] = l


def _forward_table(n_in: int, n_out: int, scale: float, linear: bool, align_corners: bool,
                   dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis taps ``idx`` (O, K) int64 and weights ``wt`` (O, K) of ``dtype``; K = 1 or 2."""
    if not linear:
        idx = np.empty((n_out, 1), np.int64)
        _nearest_table(n_in, n_out, float(scale), idx)
        return idx, np.ones((n_out, 1), dtype)
    idx = np.empty((n_out, 2), np.int64)
    lam = np.empty(n_out, np.float64)
    _linear_table(n_in, n_out, float(scale), bool(align_corners), idx, lam)
    wt = np.stack([1.0 - lam, lam], axis=1).astype(dtype)  # (O, 2)
    return idx, wt


def _inverse_table(idx: np.ndarray, wt: np.ndarray, n_in: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gather form of one axis: for each input i, the outputs [start[i], start[i] + cnt[i])
    that read it and their weights ``wi[i, :cnt[i]]`` (both taps' weights summed where i0 == i1).

    Contiguous because the taps are non-decreasing in d: outputs with idx[d, 0] <= i <= idx[d, -1].
    """
    n_out, K = idx.shape
    i = np.arange(n_in)
    start = np.searchsorted(idx[:, K - 1], i, side="left")  # first d with last tap >= i
    stop = np.searchsorted(idx[:, 0], i, side="right")  # past the last d with first tap <= i
    cnt = np.maximum(stop - start, 0).astype(np.int64)
    R = max(int(cnt.max()) if n_in else 0, 1)
    wi = np.zeros((n_in, R), wt.dtype)  # (I, R)
    j = np.arange(R)
    d = start[:, None] + j[None, :]  # (I, R) output index of each slot
    ok = j[None, :] < cnt[:, None]
    dc = np.where(ok, d, 0)
    for k in range(K):
        hit = ok & (idx[dc, k] == i[:, None])
        wi += np.where(hit, wt[dc, k], 0).astype(wt.dtype)
    return start.astype(np.int64), cnt, wi


# =============================================================================================
# numpy
# =============================================================================================


def _forward_table_numpy(n_in: int, n_out: int, scale: float, linear: bool,
                         align_corners: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The same (O, K) tables as :func:`_forward_table`, computed with vectorised NumPy."""
    d = np.arange(n_out)
    if not linear:
        # float32 product, as in nearest_source (and PyTorch)
        src = np.floor(d.astype(np.float32) * np.float32(scale)).astype(np.int64)
        return np.minimum(src, n_in - 1)[:, None], np.ones((n_out, 1), dtype)
    if align_corners:
        src = (d * (n_in - 1)) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum(scale * (d + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, n_in - 1)
    lam = src - i0
    return np.stack([i0, i1], axis=1), np.stack([1.0 - lam, lam], axis=1).astype(dtype)


def _resample_numpy(x: np.ndarray, out_size: Pair, scale: FPair, linear: bool,
                    align_corners: bool) -> np.ndarray:
    N, C, H, W = x.shape
    hi, hw = _forward_table_numpy(H, out_size[0], scale[0], linear, align_corners, x.dtype)
    wi, ww = _forward_table_numpy(W, out_size[1], scale[1], linear, align_corners, x.dtype)
    if not linear:
        return x[:, :, hi[:, 0][:, None], wi[:, 0][None, :]]  # (N, C, OH, OW)
    t = hw[:, 0, None] * x[:, :, hi[:, 0], :] + hw[:, 1, None] * x[:, :, hi[:, 1], :]  # (N,C,OH,W)
    return ww[:, 0] * t[:, :, :, wi[:, 0]] + ww[:, 1] * t[:, :, :, wi[:, 1]]  # (N, C, OH, OW)


def _resample_backward_numpy(gy: np.ndarray, in_size: Pair, scale: FPair, linear: bool,
                             align_corners: bool) -> np.ndarray:
    N, C, OH, OW = gy.shape
    H, W = in_size
    hi, hw = _forward_table_numpy(H, OH, scale[0], linear, align_corners, gy.dtype)
    wi, ww = _forward_table_numpy(W, OW, scale[1], linear, align_corners, gy.dtype)
    t = np.zeros((W, N, C, OH), gy.dtype)  # adjoint of the W pass, W axis first for add.at
    g = gy.transpose(3, 0, 1, 2)  # (OW, N, C, OH)
    for k in range(wi.shape[1]):
        np.add.at(t, wi[:, k], ww[:, k, None, None, None] * g)
    gx = np.zeros((H, N, C, W), gy.dtype)  # adjoint of the H pass
    t = t.transpose(3, 1, 2, 0)  # (OH, N, C, W)
    for k in range(hi.shape[1]):
        np.add.at(gx, hi[:, k], hw[:, k, None, None, None] * t)
    return np.ascontiguousarray(gx.transpose(1, 2, 0, 3))  # (N, C, H, W)


def interpolate_nearest_numpy(x: np.ndarray, out_size: Pair, scale: FPair) -> np.ndarray:
    return _resample_numpy(x, out_size, scale, False, False)


def interpolate_nearest_backward_numpy(gy: np.ndarray, in_size: Pair,
                                       scale: FPair) -> np.ndarray:
    return _resample_backward_numpy(gy, in_size, scale, False, False)


def interpolate_bilinear_numpy(x: np.ndarray, out_size: Pair, scale: FPair,
                               align_corners: bool) -> np.ndarray:
    return _resample_numpy(x, out_size, scale, True, align_corners)


def interpolate_bilinear_backward_numpy(gy: np.ndarray, in_size: Pair, scale: FPair,
                                        align_corners: bool) -> np.ndarray:
    return _resample_backward_numpy(gy, in_size, scale, True, align_corners)


# =============================================================================================
# numba (CPU)
# =============================================================================================

# Rows per prange task: enough tasks to keep both cores busy when N*C is small, few enough that
# the per-task row buffer costs nothing.
_ROWS = 16


@parallel_njit(cache=True)
def _resample_numba(x, y, hi, hw, wi, ww):
    """y = (along W) o (along H) x with per-axis tables hi/hw (OH, KH), wi/ww (OW, KW)."""
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    KH, KW = hi.shape[1], wi.shape[1]
    nblk = (OH + _ROWS - 1) // _ROWS
    for t in prange(P * nblk):
        p = t // nblk
        r0 = (t % nblk) * _ROWS
        r1 = min(OH, r0 + _ROWS)
        buf = np.empty(W, x.dtype)
        for oh in range(r0, r1):
            # along H: one contiguous row (a view for nearest, two taps combined for bilinear)
            if KH == 1:
                row = x[p, hi[oh, 0]]
            else:
                a, b = hi[oh, 0], hi[oh, 1]
                u, v = hw[oh, 0], hw[oh, 1]
                for j in range(W):
                    buf[j] = u * x[p, a, j] + v * x[p, b, j]
                row = buf
            # along W: gather from the row (in L1)
            out = y[p, oh]
            if KW == 1:
                for ow in range(OW):
                    out[ow] = row[wi[ow, 0]]
            else:
                for ow in range(OW):
                    out[ow] = ww[ow, 0] * row[wi[ow, 0]] + ww[ow, 1] * row[wi[ow, 1]]


@parallel_njit(cache=True)
def _resample_backward_numba(gy, gx, hs, hc, hwi, ws, wc, wwi):
    """gx[p,i,j] = sum_{a<hc[i]} sum_{b<wc[j]} hwi[i,a] wwi[j,b] gy[p, hs[i]+a, ws[j]+b]."""
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    nblk = (H + _ROWS - 1) // _ROWS
    for t in prange(P * nblk):
        p = t // nblk
        r0 = (t % nblk) * _ROWS
        r1 = min(H, r0 + _ROWS)
        acc = np.empty(OW, gy.dtype)
        for i in range(r0, r1):
            # along H (adjoint): combine the gy rows that read input row i (vectorised)
            acc[:] = 0
            for a in range(hc[i]):
                u = hwi[i, a]
                src = gy[p, hs[i] + a]
                for ow in range(OW):
                    acc[ow] += u * src[ow]
            # along W (adjoint): each input column sums its range of acc
            out = gx[p, i]
            for j in range(W):
                s = gy.dtype.type(0)
                base = ws[j]
                for b in range(wc[j]):
                    s += wwi[j, b] * acc[base + b]
                out[j] = s


def _resample_numba_launch(x: np.ndarray, out_size: Pair, scale: FPair, linear: bool,
                           align_corners: bool) -> np.ndarray:
    N, C, H, W = x.shape
    OH, OW = out_size
    hi, hw = _forward_table(H, OH, scale[0], linear, align_corners, x.dtype)
    wi, ww = _forward_table(W, OW, scale[1], linear, align_corners, x.dtype)
    y = np.empty((N, C, OH, OW), x.dtype)
    if y.size:
        _resample_numba(np.ascontiguousarray(x).reshape(N * C, H, W),  # (N*C, H, W)
                        y.reshape(N * C, OH, OW), hi, hw, wi, ww)  # (N*C, OH, OW)
    return y


def _resample_backward_numba_launch(gy: np.ndarray, in_size: Pair, scale: FPair, linear: bool,
                                    align_corners: bool) -> np.ndarray:
    N, C, OH, OW = gy.shape
    H, W = in_size
    hs, hc, hwi = _inverse_table(*_forward_table(H, OH, scale[0], linear, align_corners,
                                                 gy.dtype), H)
    ws, wc, wwi = _inverse_table(*_forward_table(W, OW, scale[1], linear, align_corners,
                                                 gy.dtype), W)
    gx = np.empty((N, C, H, W), gy.dtype)
    if gx.size:
        _resample_backward_numba(np.ascontiguousarray(gy).reshape(N * C, OH, OW),  # (N*C,OH,OW)
                                 gx.reshape(N * C, H, W), hs, hc, hwi, ws, wc, wwi)  # (N*C,H,W)
    return gx


def interpolate_nearest_numba(x: np.ndarray, out_size: Pair, scale: FPair) -> np.ndarray:
    return _resample_numba_launch(x, out_size, scale, False, False)


def interpolate_nearest_backward_numba(gy: np.ndarray, in_size: Pair,
                                       scale: FPair) -> np.ndarray:
    return _resample_backward_numba_launch(gy, in_size, scale, False, False)


def interpolate_bilinear_numba(x: np.ndarray, out_size: Pair, scale: FPair,
                               align_corners: bool) -> np.ndarray:
    return _resample_numba_launch(x, out_size, scale, True, align_corners)


def interpolate_bilinear_backward_numba(gy: np.ndarray, in_size: Pair, scale: FPair,
                                        align_corners: bool) -> np.ndarray:
    return _resample_backward_numba_launch(gy, in_size, scale, True, align_corners)


# =============================================================================================
# cuda
# =============================================================================================


def _nearest_cuda(x, y, scale_h, scale_w):
    t = cuda.grid(1)
    P, OH, OW = y.shape
    if t >= P * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    p = t // (OW * OH)
    H, W = x.shape[1], x.shape[2]
    y[p, oh, ow] = x[p, nearest_source(oh, H, scale_h), nearest_source(ow, W, scale_w)]


def _bilinear_cuda(x, y, scale_h, scale_w, align_corners):
    t = cuda.grid(1)
    P, OH, OW = y.shape
    if t >= P * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    p = t // (OW * OH)
    H, W = x.shape[1], x.shape[2]
    h0, h1, lh = linear_source(oh, H, OH, scale_h, align_corners)
    w0, w1, lw = linear_source(ow, W, OW, scale_w, align_corners)
    one = x.dtype.type(1)
    ah = x.dtype.type(lh)  # weights in the data's precision, like the CPU kernels
    aw = x.dtype.type(lw)
    t0 = (one - ah) * x[p, h0, w0] + ah * x[p, h1, w0]  # along H at column w0
    t1 = (one - ah) * x[p, h0, w1] + ah * x[p, h1, w1]  # along H at column w1
    y[p, oh, ow] = (one - aw) * t0 + aw * t1


def _resample_backward_cuda(gy, gx, hs, hc, hwi, ws, wc, wwi):
    t = cuda.grid(1)
    P, H, W = gx.shape
    if t >= P * H * W:
        return
    j = t % W
    i = (t // W) % H
    p = t // (W * H)
    OH, OW = gy.shape[1], gy.shape[2]
    acc = gx.dtype.type(0)
    for a in range(hc[i]):
        oh = hs[i] + a
        if oh >= OH:  # the host tables never do this; a guard against bad tables
            break
        s = gx.dtype.type(0)
        for b in range(wc[j]):
            ow = ws[j] + b
            if ow >= OW:
                break
            s += wwi[j, b] * gy[p, oh, ow]
        acc += hwi[i, a] * s
    gx[p, i, j] = acc


nearest_cuda_kernel = cuda.jit(_nearest_cuda)
bilinear_cuda_kernel = cuda.jit(_bilinear_cuda)
resample_backward_cuda_kernel = cuda.jit(_resample_backward_cuda)





def _forward_cuda(x, out_size: Pair, scale: FPair, linear: bool, align_corners: bool):
    N, C, H, W = x.shape
    OH, OW = out_size
    y = dev_empty(x, (N * C, OH, OW), x.dtype)  # (N*C, OH, OW)
    if N * C * OH * OW:
        dx = to_dev(x.reshape(N * C, H, W))  # (N*C, H, W)
        if linear:
            launch(bilinear_cuda_kernel, N * C * OH * OW, dx, y, float(scale[0]),
                   float(scale[1]), bool(align_corners))
        else:
            launch(nearest_cuda_kernel, N * C * OH * OW, dx, y, float(scale[0]), float(scale[1]))
    return to_host_like(x, y).reshape(N, C, OH, OW)


def _backward_cuda(gy, in_size: Pair, scale: FPair, linear: bool, align_corners: bool):
    N, C, OH, OW = gy.shape
    H, W = in_size
    dt = np.dtype(gy.dtype)
    # Per-axis inverse tables, built on the host by the same helpers the forward kernel calls.
    hs, hc, hwi = _inverse_table(*_forward_table(H, OH, scale[0], linear, align_corners, dt), H)
    ws, wc, wwi = _inverse_table(*_forward_table(W, OW, scale[1], linear, align_corners, dt), W)
    gx = dev_empty(gy, (N * C, H, W), dt)  # (N*C, H, W)
    if N * C * H * W:
        dgy = to_dev(gy.reshape(N * C, OH, OW))  # (N*C, OH, OW)
        tabs = [to_dev(a, like=gy) for a in (hs, hc, hwi, ws, wc, wwi)]
        launch(resample_backward_cuda_kernel, N * C * H * W, dgy, gx, *tabs)
    return to_host_like(gy, gx).reshape(N, C, H, W)


def interpolate_nearest_cuda(x, out_size: Pair, scale: FPair):
    return _forward_cuda(x, out_size, scale, False, False)


def interpolate_nearest_backward_cuda(gy, in_size: Pair, scale: FPair):
    return _backward_cuda(gy, in_size, scale, False, False)


def interpolate_bilinear_cuda(x, out_size: Pair, scale: FPair, align_corners: bool):
    return _forward_cuda(x, out_size, scale, True, align_corners)


def interpolate_bilinear_backward_cuda(gy, in_size: Pair, scale: FPair, align_corners: bool):
    return _backward_cuda(gy, in_size, scale, True, align_corners)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "interpolate_nearest": {
        "reference": interpolate_nearest_reference,
        "numpy": interpolate_nearest_numpy,
        "numba": interpolate_nearest_numba,
        "cuda": interpolate_nearest_cuda,
    },
    "interpolate_nearest_backward": {
        "reference": interpolate_nearest_backward_reference,
        "numpy": interpolate_nearest_backward_numpy,
        "numba": interpolate_nearest_backward_numba,
        "cuda": interpolate_nearest_backward_cuda,
    },
    "interpolate_bilinear": {
        "reference": interpolate_bilinear_reference,
        "numpy": interpolate_bilinear_numpy,
        "numba": interpolate_bilinear_numba,
        "cuda": interpolate_bilinear_cuda,
    },
    "interpolate_bilinear_backward": {
        "reference": interpolate_bilinear_backward_reference,
        "numpy": interpolate_bilinear_backward_numpy,
        "numba": interpolate_bilinear_backward_numba,
        "cuda": interpolate_bilinear_backward_cuda,
    },
}



_I1 = types.Array(types.int64, 1, "C")
PTX = [
    (_nearest_cuda,
     [(float_array(3, dt), float_array(3, dt), types.float64, types.float64)
      for dt in (np.float32, np.float64)]),
    (_bilinear_cuda,
     [(float_array(3, dt), float_array(3, dt), types.float64, types.float64, types.boolean)
      for dt in (np.float32, np.float64)]),
    (_resample_backward_cuda,
     [(float_array(3, dt), float_array(3, dt), _I1, _I1, float_array(2, dt), _I1, _I1,
       float_array(2, dt))
      for dt in (np.float32, np.float64)]),
]
