"""avg_pool2d: windowed mean (PyTorch's defaults count_include_pad=True, ceil_mode=False), and back.

Formula (per (n, c) plane; kh, kw kernel, sh, sw stride, ph, pw zero padding)::

    OH = floor((H + 2*ph - kh) / sh) + 1                     (likewise OW)
    y[n,c,oh,ow] = sum over taps (i, j) inside the input of x[n,c,oh*sh-ph+i, ow*sw-pw+j],
                   divided by kh*kw

With ceil_mode=False no window reaches past the padded input, so count_include_pad=True divides
every window by kh*kw (the padded taps count as zeros). The map is linear; its adjoint is::

    gx[n,c,h,w] = (sum over windows (oh, ow) that contain (h, w) of gy[n,c,oh,ow]) / (kh*kw)

Every version sums the taps in row-major order (and the backward the windows in (oh, ow) order)
starting from 0, then divides once, so they agree to the last bit or nearly.

Shapes: x (N, C, H, W) float32/float64 -> y (N, C, OH, OW); gy (N, C, OH, OW) -> gx (N, C, H, W).

Versions in this file (every one checked against the reference by tests/test_avg_pool2d.py):

* reference: Python loops from the formula; the backward scatters (the oracle).
* numpy: pooling is separable, ``y = P_h @ x @ P_w^T / (kh*kw)`` with 0/1 window-membership
  matrices P (OH, H), P (OW, W); the backward is the transpose, ``P_h^T @ gy @ P_w / (kh*kw)``.
* numba: prange over (n, c) planes. Forward: per output row, taps outer and the row of windows
  inner (a contiguous, vectorisable loop). Backward: the shared per-pixel gather.
* cuda: one thread per output (forward, the shared per-window helper) and one thread per input
  pixel (backward, the shared gather): deterministic, no atomics.

Benchmark: none of its own yet in ``benchmarks/`` (bench_max_pool2d.py shows how: validate against
the reference, then time the functional op against ``torch.nn.functional.avg_pool2d``).
"""

from __future__ import annotations

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
from .max_pool2d import _tap_range, output_size

Pair = tuple[int, int]

# =============================================================================================
# reference
# =============================================================================================


def avg_pool2d_reference(x: np.ndarray, kernel_size: Pair, stride: Pair,
                         padding: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    OH, OW = output_size(H, kh, sh, ph, 1), output_size(W, kw, sw, pw, 1)
    y = np.empty((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    s = x.dtype.type(0)
                    for i in range(kh):
                        for j in range(kw):
                            h, w = oh * sh - ph + i, ow * sw - pw + j
                            if 0 <= h < H and 0 <= w < W:  # padded taps are zeros
                                s += x[n, c, h, w]
                    y[n, c, oh, ow] = s / (kh * kw)
    return y


def avg_pool2d_backward_reference(gy: np.ndarray, input_size: Pair, kernel_size: Pair,
                                  stride: Pair, padding: Pair) -> np.ndarray:
    N, C, OH, OW = gy.shape
    H, W = input_size
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    gx = np.zeros((N, C, H, W), gy.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    for i in range(kh):
                        for j in range(kw):
                            h, w = oh * sh - ph + i, ow * sw - pw + j
                            if 0 <= h < H and 0 <= w < W:
                                gx[n, c, h, w] += gy[n, c, oh, ow]
    return gx / gx.dtype.type(kh * kw)


# =============================================================================================
# shared per-element helpers (called from the numba CPU kernels and the CUDA kernels)
# =============================================================================================


@numba.njit(inline="always", cache=True)
def _avg_pool_at(x, y, n, c, oh, ow, kh, kw, sh, sw, ph, pw):
    """y[n,c,oh,ow] = (sum of the window's taps inside x, row-major) / (kh*kw)."""
    h0, ilo, ihi = _tap_range(oh, sh, ph, kh, 1, x.shape[2])
    w0, jlo, jhi = _tap_range(ow, sw, pw, kw, 1, x.shape[3])
    acc = y.dtype.type(0)
    for i in range(ilo, ihi):
        for j in range(jlo, jhi):
            acc += x[n, c, h0 + i, w0 + j]
    y[n, c, oh, ow] = acc / y.dtype.type(kh * kw)


@numba.njit(inline="always", cache=True)
def _avg_pool_grad_at(gy, gx, n, c, h, w, kh, kw, sh, sw, ph, pw):
    """gx[n,c,h,w] = (sum of gy over the windows containing (h, w), in (oh, ow) order)/(kh*kw)."""
    OH = gy.shape[2]
    OW = gy.shape[3]
    acc = gx.dtype.type(0)
    for i in range(kh - 1, -1, -1):  # i descending = oh ascending
        t = h + ph - i
        if t < 0 or t % sh != 0 or t // sh >= OH:
            continue
        oh = t // sh
        for j in range(kw - 1, -1, -1):
            u = w + pw - j
            if u < 0 or u % sw != 0 or u // sw >= OW:
                continue
            acc += gy[n, c, oh, u // sw]
    gx[n, c, h, w] = acc / gx.dtype.type(kh * kw)


# =============================================================================================
# numpy
# =============================================================================================


def window_matrix(O: int, n: int, k: int, s: int, p: int, dtype) -> np.ndarray:
    """(O, n) 0/1 matrix: entry [o, i] = 1 when input i is a tap of window o (padding dropped)."""
    i = np.arange(n)[None, :] - (np.arange(O) * s - p)[:, None]  # (O, n) tap number of i
    return ((i >= 0) & (i < k)).astype(dtype)


def avg_pool2d_numpy(x: np.ndarray, kernel_size: Pair, stride: Pair,
                     padding: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    OH, OW = output_size(H, kh, sh, ph, 1), output_size(W, kw, sw, pw, 1)
    Ph = window_matrix(OH, H, kh, sh, ph, x.dtype)  # (OH, H)
    Pw = window_matrix(OW, W, kw, sw, pw, x.dtype)  # (OW, W)
    y = Ph @ (x @ Pw.T)  # (OH, H) @ (N, C, H, OW) -> (N, C, OH, OW)
    return (y / x.dtype.type(kh * kw)).astype(x.dtype)


def avg_pool2d_backward_numpy(gy: np.ndarray, input_size: Pair, kernel_size: Pair,
                              stride: Pair, padding: Pair) -> np.ndarray:
    N, C, OH, OW = gy.shape
    H, W = input_size
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    Ph = window_matrix(OH, H, kh, sh, ph, gy.dtype)  # (OH, H)
    Pw = window_matrix(OW, W, kw, sw, pw, gy.dtype)  # (OW, W)
    gx = Ph.T @ (gy @ Pw)  # (H, OH) @ (N, C, OH, W) -> (N, C, H, W)
    return (gx / gy.dtype.type(kh * kw)).astype(gy.dtype)


# =============================================================================================
# numba (CPU)
# =============================================================================================

_U = np.uint64  # unsigned offsets: no wraparound test per access (see kernels/max_pool2d.py)


@parallel_njit(cache=True)
def _avg_pool2d_numba(x, y, kh, kw, sh, sw, ph, pw):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    NC = N * C
    xf = x.reshape(NC, H * W)  # (N*C, H*W)
    yf = y.reshape(NC, OH * OW)  # (N*C, OH*OW)
    for p in prange(NC):
        scale = y.dtype.type(kh * kw)
        xp = xf[p]
        yp = yf[p]
        for oh in range(OH):
            h0, ilo, ihi = _tap_range(oh, sh, ph, kh, 1, H)
            o0 = _U(oh * OW)
            for ow in range(_U(OW)):
                yp[o0 + ow] = 0
            for i in range(ilo, ihi):  # taps in row-major order, each over the row of windows
                for j in range(kw):
                    a = pw - j  # tap j of window ow reads column ow*sw - a
                    lo = 0 if a <= 0 else (a + sw - 1) // sw
                    hi = min(OW, (W - 1 + a) // sw + 1)
                    if lo >= hi:
                        continue
                    kx = _U((h0 + i) * W + lo * sw - a)  # >= 0
                    ko = o0 + _U(lo)
                    for t in range(_U(hi - lo)):
                        yp[ko + t] += xp[kx + t * _U(sw)]
            for ow in range(_U(OW)):
                yp[o0 + ow] = yp[o0 + ow] / scale


@parallel_njit(cache=True)
def _avg_pool2d_backward_numba(gy, gx, kh, kw, sh, sw, ph, pw):
    N, C, H, W = gx.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        for h in range(H):
            for w in range(W):
                _avg_pool_grad_at(gy, gx, n, c, h, w, kh, kw, sh, sw, ph, pw)


def avg_pool2d_numba(x: np.ndarray, kernel_size: Pair, stride: Pair,
                     padding: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    OH, OW = output_size(H, kh, sh, ph, 1), output_size(W, kw, sw, pw, 1)
    y = np.empty((N, C, OH, OW), x.dtype)
    if y.size:
        _avg_pool2d_numba(np.ascontiguousarray(x), y, kh, kw, sh, sw, ph, pw)
    return y


def avg_pool2d_backward_numba(gy: np.ndarray, input_size: Pair, kernel_size: Pair,
                              stride: Pair, padding: Pair) -> np.ndarray:
    N, C = gy.shape[:2]
    gx = np.empty((N, C) + tuple(input_size), gy.dtype)
    if gx.size:
        _avg_pool2d_backward_numba(np.ascontiguousarray(gy), gx, *kernel_size, *stride, *padding)
    return gx


# =============================================================================================
# cuda
# =============================================================================================

# The simulator runs kernels as Python on fake arrays, which @njit helpers cannot unbox.
_avg_pool_at_dev = _avg_pool_at.py_func if SIMULATOR else _avg_pool_at
_avg_pool_grad_at_dev = _avg_pool_grad_at.py_func if SIMULATOR else _avg_pool_grad_at


def _avg_pool2d_cuda(x, y, kh, kw, sh, sw, ph, pw):
    t = cuda.grid(1)
    N, C, OH, OW = y.shape
    if t >= N * C * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    c = (t // (OW * OH)) % C
    n = t // (OW * OH * C)
    _avg_pool_at_dev(x, y, n, c, oh, ow, kh, kw, sh, sw, ph, pw)


def _avg_pool2d_backward_cuda(gy, gx, kh, kw, sh, sw, ph, pw):
    t = cuda.grid(1)
    N, C, H, W = gx.shape
    if t >= N * C * H * W:
        return
    w = t % W
    h = (t // W) % H
    c = (t // (W * H)) % C
    n = t // (W * H * C)
    _avg_pool_grad_at_dev(gy, gx, n, c, h, w, kh, kw, sh, sw, ph, pw)


avg_pool2d_cuda_kernel = cuda.jit(_avg_pool2d_cuda)
avg_pool2d_backward_cuda_kernel = cuda.jit(_avg_pool2d_backward_cuda)


def avg_pool2d_cuda(x, kernel_size: Pair, stride: Pair, padding: Pair):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    OH, OW = output_size(H, kh, sh, ph, 1), output_size(W, kw, sw, pw, 1)
    if xp_of(x) is not np:
        x = xp_of(x).ascontiguousarray(x)
    y = dev_empty(x, (N, C, OH, OW), x.dtype)
    launch(avg_pool2d_cuda_kernel, N * C * OH * OW, to_dev(x), y, kh, kw, sh, sw, ph, pw)
    return to_host_like(x, y)


def avg_pool2d_backward_cuda(gy, input_size: Pair, kernel_size: Pair, stride: Pair,
                             padding: Pair):
    N, C = gy.shape[:2]
    H, W = input_size
    if xp_of(gy) is not np:
        gy = xp_of(gy).ascontiguousarray(gy)
    gx = dev_empty(gy, (N, C, H, W), gy.dtype)
    launch(avg_pool2d_backward_cuda_kernel, N * C * H * W, to_dev(gy), gx,
           *kernel_size, *stride, *padding)
    return to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "avg_pool2d": {
        "reference": avg_pool2d_reference,
        "numpy": avg_pool2d_numpy,
        "numba": avg_pool2d_numba,
        "cuda": avg_pool2d_cuda,
    },
    "avg_pool2d_backward": {
        "reference": avg_pool2d_backward_reference,
        "numpy": avg_pool2d_backward_numpy,
        "numba": avg_pool2d_backward_numba,
        "cuda": avg_pool2d_backward_cuda,
    },
}



_I = types.int64
PTX = [
    (_avg_pool2d_cuda,
     [(float_array(4, dt), float_array(4, dt)) + (_I,) * 6 for dt in FLOAT_DTYPES]),
    (_avg_pool2d_backward_cuda,
     [(float_array(4, dt), float_array(4, dt)) + (_I,) * 6 for dt in FLOAT_DTYPES]),
]
