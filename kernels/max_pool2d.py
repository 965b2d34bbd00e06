"""max_pool2d: windowed maximum with the argmax index, and its backward.

Formula (NCHW, per (n, c) plane; kh, kw kernel, sh, sw stride, ph, pw padding, dh, dw dilation)::

    OH = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1          (likewise OW; ceil_mode=False)
    taps of window (oh, ow):  h = oh*sh - ph + i*dh,  w = ow*sw - pw + j*dw,  0<=i<kh, 0<=j<kw
    y[n,c,oh,ow]   = max over the taps inside the input (padding acts as -inf)
    idx[n,c,oh,ow] = h*W + w of that tap, within the *unpadded* (n, c) plane (int64)

Ties: the first maximum in row-major tap order wins. NaN wins: the first NaN of a window is the
output and its index is returned (PyTorch's CPU/CUDA kernels return the *last* NaN instead).
A window with no tap inside the input (only possible with dilation > 1; the functional layer
rejects such parameters) gives -inf and index -1.

Backward (``idx`` is from the forward with the same parameters)::

    gx[n,c].flat[idx[n,c,oh,ow]] += gy[n,c,oh,ow]        over all (oh, ow), in row-major order

Shapes: x (N, C, H, W) float32/float64 -> y (N, C, OH, OW) same dtype, idx (N, C, OH, OW) int64;
gy (N, C, OH, OW), idx -> gx (N, C, H, W).

Versions in this file (every one checked against the reference by tests/test_max_pool2d.py):

* reference: Python loops straight from the formula (the oracle).
* numpy: the -inf-padded input gathered into (N, C, OH, OW, kh*kw) taps, then ``argmax`` (its
  first-maximum, first-NaN rule is the SPEC's); backward ``np.add.at``.
* numba: one prange iteration per (n, c) plane. Forward: the interior windows (every tap inside)
  run a branch-free loop over precomputed tap offsets, the border windows call the shared
  per-window helper. Backward: scatter by index, sequentially within the plane (so the sums run
  in (oh, ow) order). Kernel 2, stride 2, no padding (U-Net, SegNet, FCN) has its own pair of
  kernels: a vectorised balanced-tree forward, and a branch-free gather backward (the windows do
  not overlap, so each pixel reads its own window's index).
* cuda: one thread per output (forward) and, for the backward, one thread per *input* pixel that
  visits the windows containing it and sums gy where that window's index is this pixel: a gather,
  deterministic, no atomics. Its sum runs in (oh, ow) order too, so it matches the numba scatter
  bit for bit.

Benchmark: ``python benchmarks/bench_max_pool2d.py`` (alone and chained with max_unpool2d; N=8,
C=64, 128x128, 2x2 stride 2, float32) against PyTorch.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import (
    FLOAT_DTYPES,
    SIMULATOR,
    dev_empty,
    float_array,
    launch,
    to_dev,
    to_host_like,
    xp_of,
)
from ._parallel import parallel_njit

Pair = tuple[int, int]


def output_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """floor((n + 2p - d(k-1) - 1) / s) + 1 (may be <= 0 for bad parameters: callers check)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# =============================================================================================
# reference
# =============================================================================================


def max_pool2d_reference(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair,
                         dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Plain loops from the formula: returns (y, idx)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH, OW = output_size(H, kh, sh, ph, dh), output_size(W, kw, sw, pw, dw)
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, arg = None, -1
                    for i in range(kh):
                        h = oh * sh - ph + i * dh
                        if not 0 <= h < H:
                            continue  # padding acts as -inf: never chosen
                        for j in range(kw):
                            w = ow * sw - pw + j * dw
                            if not 0 <= w < W:
                                continue
                            v = x[n, c, h, w]
                            # strict '>' keeps the first maximum; the first NaN wins and stays
                            if arg < 0 or v > best or (math.isnan(v) and not math.isnan(best)):
                                best, arg = v, h * W + w
                    y[n, c, oh, ow] = best if arg >= 0 else -np.inf
                    idx[n, c, oh, ow] = arg
    return y, idx


def max_pool2d_backward_reference(gy: np.ndarray, idx: np.ndarray, input_size: Pair,
                                  kernel_size: Pair, stride: Pair, padding: Pair,
                                  dilation: Pair) -> np.ndarray:
    """Scatter-add of gy to the argmax positions, in row-major (oh, ow) order."""
    N, C, OH, OW = gy.shape
    H, W = input_size
    gx = np.zeros((N, C, H, W), gy.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    k = idx[n, c, oh, ow]
                    if 0 <= k < H * W:
                        gx[n, c, k // W, k % W] += gy[n, c, oh, ow]
    return gx


# =============================================================================================
# shared per-element helpers (called from the numba CPU kernels and the CUDA kernels)
# =============================================================================================


@numba.njit(inline="always", cache=True)
def _tap_range(o, s, p, k, d, n):
    """Taps i in [lo, hi) of window o whose position o*s - p + i*d lies in [0, n)."""
    start = o * s - p
    lo = 0
    if start < 0:
        lo = (-start + d - 1) // d
    hi = k
    room = n - start  # taps must satisfy i*d < room
    if room <= 0:
        hi = 0
    elif (room + d - 1) // d < k:
        hi = (room + d - 1) // d
    return start, lo, hi


@numba.njit(inline="always", cache=True)
def _max_pool_at(x, y, idx, n, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw):
    """y[n,c,oh,ow], idx[n,c,oh,ow] = max and first argmax of one window (NaN wins)."""
    H = x.shape[2]
    W = x.shape[3]
    h0, ilo, ihi = _tap_range(oh, sh, ph, kh, dh, H)
    w0, jlo, jhi = _tap_range(ow, sw, pw, kw, dw, W)
    if ilo >= ihi or jlo >= jhi:
        y[n, c, oh, ow] = -np.inf
        idx[n, c, oh, ow] = -1
        return
    hb = h0 + ilo * dh
    wb = w0 + jlo * dw
    best = x[n, c, hb, wb]
    arg = hb * W + wb
    for i in range(ilo, ihi):
        h = h0 + i * dh
        for j in range(jlo, jhi):
            w = w0 + j * dw
            v = x[n, c, h, w]
            # strict '>' keeps the first maximum; v != v is NaN: the first NaN wins and stays
            if v > best or (v != v and best == best):
                best = v
                arg = h * W + w
    y[n, c, oh, ow] = best
    idx[n, c, oh, ow] = arg


@numba.njit(inline="always", cache=True)
def _max_pool_grad_at(gy, idx, gx, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw):
    """gx[n,c,h,w] = sum of gy over the windows that contain (h, w) and chose it (a gather)."""
    OH = gy.shape[2]
    OW = gy.shape[3]
    W = gx.shape[3]
    me = h * W + w
    acc = gx.dtype.type(0)
    # i descending -> oh ascending, j descending -> ow ascending: the scatter's (oh, ow) order
    for i in range(kh - 1, -1, -1):
        t = h + ph - i * dh
        if t < 0 or t % sh != 0:
            continue
        oh = t // sh
        if oh >= OH:
            continue
        for j in range(kw - 1, -1, -1):
            u = w + pw - j * dw
            if u < 0 or u % sw != 0:
                continue
            ow = u // sw
            if ow >= OW:
                continue
            if idx[n, c, oh, ow] == me:
                acc += gy[n, c, oh, ow]
    gx[n, c, h, w] = acc


# =============================================================================================
# numpy
# =============================================================================================


def _first_valid_tap(O: int, s: int, p: int, k: int, d: int, n: int) -> np.ndarray:
    """Per window along one axis, the first tap inside [0, n) (or -1): shape (O,)."""
    start = np.arange(O) * s - p  # (O,)
    lo = np.where(start < 0, (-start + d - 1) // d, 0)
    ok = (lo < k) & (start + lo * d < n)
    return np.where(ok, lo, -1)


def max_pool2d_numpy(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair,
                     dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised: pad with -inf, gather all taps, argmax (first maximum; first NaN)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH, OW = output_size(H, kh, sh, ph, dh), output_size(W, kw, sw, pw, dw)
    # Enough padding on the far side for every tap of every window (ceil_mode=False never needs
    # more than ph, but keep the view in bounds whatever the parameters).
    eh = max(0, (OH - 1) * sh + (kh - 1) * dh + 1 - (H + ph))
    ew = max(0, (OW - 1) * sw + (kw - 1) * dw + 1 - (W + pw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=-np.inf)
    hs = (np.arange(OH) * sh)[:, None] + np.arange(kh) * dh  # (OH, kh) padded row of each tap
    ws = (np.arange(OW) * sw)[:, None] + np.arange(kw) * dw  # (OW, kw)
    taps = xp[:, :, hs[:, None, :, None], ws[None, :, None, :]]  # (N, C, OH, OW, kh, kw)
    taps = taps.reshape(N, C, OH, OW, kh * kw)  # (N, C, OH, OW, kh*kw), row-major tap order
    t = np.argmax(taps, axis=-1)  # first maximum, first NaN (NumPy's argmax rules)
    y = np.take_along_axis(taps, t[..., None], axis=-1)[..., 0]  # (N, C, OH, OW)
    ti, tj = t // kw, t % kw
    hh = np.arange(OH)[:, None] * sh - ph + ti * dh  # (N, C, OH, OW) unpadded row
    ww = np.arange(OW)[None, :] * sw - pw + tj * dw
    inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    # A padded tap wins only when every real tap is -inf: then the first real tap is the answer.
    fi = _first_valid_tap(OH, sh, ph, kh, dh, H)[:, None]  # (OH, 1)
    fj = _first_valid_tap(OW, sw, pw, kw, dw, W)[None, :]  # (1, OW)
    has = (fi >= 0) & (fj >= 0)  # (OH, OW)
    fh = np.arange(OH)[:, None] * sh - ph + fi * dh
    fw = np.arange(OW)[None, :] * sw - pw + fj * dw
    idx = np.where(inside, hh * W + ww, np.where(has, fh * W + fw, -1)).astype(np.int64)
    y = np.where(has, y, -np.inf).astype(x.dtype)
    return y, idx


def max_pool2d_backward_numpy(gy: np.ndarray, idx: np.ndarray, input_size: Pair,
                              kernel_size: Pair, stride: Pair, padding: Pair,
                              dilation: Pair) -> np.ndarray:
    """np.add.at into the flattened planes (unbuffered: repeated indices accumulate)."""
    N, C, OH, OW = gy.shape
    H, W = input_size
    gx = np.zeros(N * C * H * W, gy.dtype)
    flat = idx.reshape(N * C, OH * OW)  # (N*C, OH*OW)
    ok = (flat >= 0) & (flat < H * W)
    where = flat + (np.arange(N * C) * (H * W))[:, None]  # (N*C, OH*OW) into gx
    np.add.at(gx, where[ok], gy.reshape(N * C, OH * OW)[ok])
    return gx.reshape(N, C, H, W)


# =============================================================================================
# numba (CPU)
# =============================================================================================


# Plane-flat views and *unsigned* offsets in the hot loops: with signed indices Numba emits a
# negative-index wraparound test on every load, which keeps LLVM from vectorising the loop.
_U = np.uint64


@parallel_njit(cache=True)
def _max_pool2d_numba(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    NC = N * C
    xf = x.reshape(NC, H * W)  # (N*C, H*W)
    yf = y.reshape(NC, OH * OW)  # (N*C, OH*OW)
    af = idx.reshape(NC, OH * OW)  # (N*C, OH*OW)
    # Interior windows (every tap inside the input): oh in [oh_a, oh_b), ow in [ow_a, ow_b).
    # They skip all bounds logic; the border windows go through the shared per-window helper.
    ow_a = min(OW, (pw + sw - 1) // sw)
    ow_b = max(ow_a, min(OW, (W - 1 + pw - (kw - 1) * dw) // sw + 1))
    oh_a = min(OH, (ph + sh - 1) // sh)
    oh_b = max(oh_a, min(OH, (H - 1 + ph - (kh - 1) * dh) // sh + 1))
    T = kh * kw
    off = np.empty(T, np.uint64)  # plane offset of tap t = (i, j) from the window's first tap
    for i in range(kh):
        for j in range(kw):
            off[i * kw + j] = _U(i * dh * W + j * dw)
    for p in prange(NC):  # independent (n, c) planes
        n, c = p // C, p % C
        xp = xf[p]
        yp = yf[p]
        ap = af[p]
        for oh in range(OH):
            if oh < oh_a or oh >= oh_b:
                for ow in range(OW):
                    _max_pool_at(x, y, idx, n, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
                continue
            for ow in range(ow_a):
                _max_pool_at(x, y, idx, n, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
            for ow in range(ow_b, OW):
                _max_pool_at(x, y, idx, n, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
            rb = _U((oh * sh - ph) * W - pw)  # >= 0 for interior rows (plus ow_a * sw >= pw)
            o0 = _U(oh * OW)
            for ow in range(_U(ow_a), _U(ow_b)):
                base = rb + ow * _U(sw)
                best = xp[base]
                arg = base
                for t in range(_U(1), _U(T)):
                    k = base + off[t]
                    v = xp[k]
                    # = (v > best or v is NaN) and best is not NaN: the helper's rule, branch-free
                    take = (best == best) & (not (v <= best))
                    best = v if take else best
                    arg = k if take else arg
                yp[o0 + ow] = best
                ap[o0 + ow] = np.int64(arg)


@parallel_njit(cache=True)
def _max_pool2d_2x2_numba(x, y, idx):
    """kernel 2, stride 2, no padding (U-Net, SegNet, FCN): a balanced tree per window, which
    LLVM vectorises. The pairwise rule is associative in tap order, so the tree equals the scan:
    (0,0)-(0,1), (1,0)-(1,1), then row 0's winner against row 1's."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    NC = N * C
    xf = x.reshape(NC, H * W)  # (N*C, H*W)
    yf = y.reshape(NC, OH * OW)  # (N*C, OH*OW)
    af = idx.reshape(NC, OH * OW)  # (N*C, OH*OW)
    for p in prange(NC):
        xp = xf[p]
        yp = yf[p]
        ap = af[p]
        for oh in range(OH):
            top = xp[2 * oh * W:(2 * oh + 1) * W]  # the window rows as two contiguous streams
            bot = xp[(2 * oh + 1) * W:(2 * oh + 2) * W]
            yo = yp[oh * OW:(oh + 1) * OW]
            ao = ap[oh * OW:(oh + 1) * OW]
            base = 2 * oh * W
            for ow in range(_U(OW)):
                a0 = top[_U(2) * ow]
                a1 = top[_U(2) * ow + _U(1)]
                b0 = bot[_U(2) * ow]
                b1 = bot[_U(2) * ow + _U(1)]
                ca = (a0 == a0) & (not (a1 <= a0))
                ma = a1 if ca else a0
                cb = (b0 == b0) & (not (b1 <= b0))
                mb = b1 if cb else b0
                c = (ma == ma) & (not (mb <= ma))
                yo[ow] = mb if c else ma
                off = (W if c else 0) + ((1 if cb else 0) if c else (1 if ca else 0))
                ao[ow] = base + np.int64(2 * ow) + off


@parallel_njit(cache=True)
def _max_pool2d_backward_numba(gy, idx, gx):
    N, C, OH, OW = gy.shape
    HW = gx.shape[2] * gx.shape[3]
    NC = N * C
    gyf = gy.reshape(NC, OH * OW)  # (N*C, OH*OW)
    af = idx.reshape(NC, OH * OW)  # (N*C, OH*OW)
    gxf = gx.reshape(NC, HW)  # (N*C, H*W)
    for p in prange(NC):  # planes are independent; sequential scatter within a plane
        g = gxf[p]
        a = af[p]
        d = gyf[p]
        g[:] = 0
        for t in range(_U(OH * OW)):
            k = a[t]
            if k >= 0 and k < HW:  # skip indices that point outside the plane
                g[_U(k)] += d[t]


@parallel_njit(cache=True)
def _max_pool2d_2x2_backward_numba(gy, idx, gx):
    """Non-overlapping 2x2 windows: each input pixel lies in exactly one window, so the scatter
    is a branch-free gather that writes every gx element once (no zeroing pass)."""
    N, C, OH, OW = gy.shape
    H, W = gx.shape[2], gx.shape[3]
    NC = N * C
    gyf = gy.reshape(NC, OH * OW)  # (N*C, OH*OW)
    af = idx.reshape(NC, OH * OW)  # (N*C, OH*OW)
    gxf = gx.reshape(NC, H * W)  # (N*C, H*W)
    Wu = _U(W)
    for p in prange(NC):
        zero = gx.dtype.type(0)
        g = gxf[p]
        a = af[p]
        d = gyf[p]
        if H % 2 == 1:  # the last row lies in no window
            for w in range(_U(W)):
                g[_U((H - 1) * W) + w] = zero
        for oh in range(OH):
            r0 = _U(2 * oh * W)
            o0 = _U(oh * OW)
            if W % 2 == 1:
                g[r0 + Wu - _U(1)] = zero
                g[r0 + Wu + Wu - _U(1)] = zero
            for ow in range(_U(OW)):
                k = r0 + _U(2) * ow
                m = a[o0 + ow]
                v = d[o0 + ow]
                g[k] = v if m == np.int64(k) else zero
                g[k + _U(1)] = v if m == np.int64(k + _U(1)) else zero
                g[k + Wu] = v if m == np.int64(k + Wu) else zero
                g[k + Wu + _U(1)] = v if m == np.int64(k + Wu + _U(1)) else zero


def _is_2x2(kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> bool:
    return (tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2)
            and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1))


def max_pool2d_numba(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair,
                     dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH, OW = output_size(H, kh, sh, ph, dh), output_size(W, kw, sw, pw, dw)
    x = np.ascontiguousarray(x)
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    if y.size == 0:
        pass
    elif _is_2x2(kernel_size, stride, padding, dilation):
        _max_pool2d_2x2_numba(x, y, idx)
    else:
        _max_pool2d_numba(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw)
    return y, idx


def max_pool2d_backward_numba(gy: np.ndarray, idx: np.ndarray, input_size: Pair,
                              kernel_size: Pair, stride: Pair, padding: Pair,
                              dilation: Pair) -> np.ndarray:
    N, C = gy.shape[:2]
    gx = np.empty((N, C) + tuple(input_size), gy.dtype)
    gy, idx = np.ascontiguousarray(gy), np.ascontiguousarray(idx)
    if gx.size == 0:
        pass
    elif _is_2x2(kernel_size, stride, padding, dilation):
        _max_pool2d_2x2_backward_numba(gy, idx, gx)
    else:
        _max_pool2d_backward_numba(gy, idx, gx)
    return gx


# =============================================================================================
# cuda
# =============================================================================================


# Under Numba's CUDA simulator the kernels run as Python on fake device arrays, which @njit
# functions cannot unbox: there the kernels call the helpers' pure-Python originals instead.
_max_pool_at_dev = _max_pool_at.py_func if SIMULATOR else _max_pool_at
_max_pool_grad_at_dev = _max_pool_grad_at.py_func if SIMULATOR else _max_pool_grad_at


def _max_pool2d_cuda(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    t = cuda.grid(1)
    N, C, OH, OW = y.shape
    if t >= N * C * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    c = (t // (OW * OH)) % C
    n = t // (OW * OH * C)
    _max_pool_at_dev(x, y, idx, n, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)


def _max_pool2d_backward_cuda(gy, idx, gx, kh, kw, sh, sw, ph, pw, dh, dw):
    t = cuda.grid(1)
    N, C, H, W = gx.shape
    if t >= N * C * H * W:
        return
    w = t % W
    h = (t // W) % H
    c = (t // (W * H)) % C
    n = t // (W * H * C)
    _max_pool_grad_at_dev(gy, idx, gx, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw)


max_pool2d_cuda_kernel = cuda.jit(_max_pool2d_cuda)
max_pool2d_backward_cuda_kernel = cuda.jit(_max_pool2d_backward_cuda)





def max_pool2d_cuda(x, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    OH, OW = output_size(H, kh, sh, ph, dh), output_size(W, kw, sw, pw, dw)
    if xp_of(x) is not np:
        x = xp_of(x).ascontiguousarray(x)
    dx = to_dev(x)
    y = dev_empty(x, (N, C, OH, OW), x.dtype)
    idx = dev_empty(x, (N, C, OH, OW), np.int64)
    launch(max_pool2d_cuda_kernel, N * C * OH * OW, dx, y, idx, kh, kw, sh, sw, ph, pw, dh, dw)
    return to_host_like(x, y), to_host_like(x, idx)


def max_pool2d_backward_cuda(gy, idx, input_size: Pair, kernel_size: Pair, stride: Pair,
                             padding: Pair, dilation: Pair):
    N, C = gy.shape[:2]
    H, W = input_size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if xp_of(gy) is not np:
        xp = xp_of(gy)
        gy, idx = xp.ascontiguousarray(gy), xp.ascontiguousarray(idx)
    gx = dev_empty(gy, (N, C, H, W), gy.dtype)
    launch(max_pool2d_backward_cuda_kernel, N * C * H * W, to_dev(gy), to_dev(idx), gx,
           kh, kw, sh, sw, ph, pw, dh, dw)
    return to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "max_pool2d": {
        "reference": max_pool2d_reference,
        "numpy": max_pool2d_numpy,
        "numba": max_pool2d_numba,
        "cuda": max_pool2d_cuda,
    },
    "max_pool2d_backward": {
        "reference": max_pool2d_backward_reference,
        "numpy": max_pool2d_backward_numpy,
        "numba": max_pool2d_backward_numba,
        "cuda": max_pool2d_backward_cuda,
    },
}


_I = types.int64
_IDX = types.Array(types.int64, 4, "C")
PTX = [
    (_max_pool2d_cuda,
     [(float_array(4, dt), float_array(4, dt), _IDX) + (_I,) * 8 for dt in FLOAT_DTYPES]),
    (_max_pool2d_backward_cuda,
     [(float_array(4, dt), _IDX, float_array(4, dt)) + (_I,) * 8 for dt in FLOAT_DTYPES]),
]
