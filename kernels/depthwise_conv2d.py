"""Depthwise 2-D convolution (groups = channels), forward and both backward passes, done directly.

Formula (cross-correlation, channel multiplier m, output channel o reads input channel c = o // m):

    y[n, o, i, j] = sum_{p, q} x[n, o // m, i*sh - ph + p*dh, j*sw - pw + q*dw] * w[o, 0, p, q]

reads outside the input are 0. The two backward passes are the adjoints of that map:

    gx[n, c, h, v] = sum_{o = c*m .. c*m+m-1} sum_{p, q : (h + ph - p*dh) % sh == 0, ...}
                         gy[n, o, (h + ph - p*dh) / sh, (v + pw - q*dw) / sw] * w[o, 0, p, q]
    gw[o, 0, p, q] = sum_{n, i, j} x[n, o // m, i*sh - ph + p*dh, j*sw - pw + q*dw] * gy[n, o, i, j]

Shapes: x (N, C, H, W), w (C*m, 1, KH, KW), y and gy (N, C*m, OH, OW) with
``OH = floor((H + 2ph - dh(KH-1) - 1) / sh) + 1`` (likewise OW). stride / padding / dilation are
(h, w) pairs of ints.

Why a separate kernel: im2col for a depthwise conv builds a (C*KH*KW, OH*OW) matrix per image only
to multiply it block-diagonally; a direct loop reads each input row KH*KW times from cache instead.

Kernels (names and signatures are what ``minisegnet.functional.conv2d`` dispatches to when
``groups == C`` and ``weight.shape[1] == 1``):

    depthwise_conv2d(x, w, stride, padding, dilation) -> y
    depthwise_conv2d_backward_input(gy, w, x_shape, stride, padding, dilation) -> gx
    depthwise_conv2d_backward_weight(x, gy, w_shape, stride, padding, dilation) -> gw

Versions in this file:
    reference  plain Python loops from the formulas above (the test oracle; the input gradient is
               written as the scatter that transposes the forward loop, so the gathers below are
               checked against a differently-shaped computation).
    numpy      one vectorised multiply-add per kernel tap over strided views of the padded input.
    numba      @njit(parallel=True): prange over (n, o) planes; for each output row and tap the
               valid column range is computed once, so the innermost loop is a branch-free
               contiguous (stride 1) multiply-add that LLVM vectorises. The input gradient gathers
               per input row; the weight gradient accumulates per-tap row buffers (vectorisable,
               fixed order) and sums them at the end: deterministic.
    cuda       forward: one thread per output element. backward_input: one thread per input
               element gathering the outputs that read it. backward_weight: one block per weight
               element, threads stride over N*OH*OW and a shared-memory tree reduces their partial
               sums (fixed order: deterministic, no atomics).

Benchmark: ``python benchmarks/bench_depthwise_conv2d.py`` (validates every version against the
reference, then times forward + backward).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, get_num_threads, njit, prange, types
from numba.np.numpy_support import from_dtype

from ._cuda import THREADS, empty_like_module, launch, xp_of

Pair = tuple[int, int]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """conv2d output length ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (never negative)."""
    return max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)


def _ints(stride: Pair, padding: Pair, dilation: Pair) -> tuple[int, int, int, int, int, int]:
    """The six geometry ints as plain Python ints (one compiled signature whatever the caller gave)."""
    return (int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
            int(dilation[0]), int(dilation[1]))


# =============================================================================================
# reference
# =============================================================================================
def depthwise_conv2d_reference(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                               dilation: Pair) -> np.ndarray:
    """y (N, C*m, OH, OW) from x (N, C, H, W) and w (C*m, 1, KH, KW), plain loops."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = x.shape
    CO, _, KH, KW = w.shape
    m = CO // C
    OH, OW = _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    y = np.zeros((N, CO, OH, OW), dtype=x.dtype)
    for n in range(N):
        for o in range(CO):
            c = o // m
            for i in range(OH):
                for j in range(OW):
                    acc = x.dtype.type(0)
                    for p in range(KH):
                        for q in range(KW):
                            h, v = i * sh - ph + p * dh, j * sw - pw + q * dw
                            if 0 <= h < H and 0 <= v < W:
                                acc += x[n, c, h, v] * w[o, 0, p, q]
                    y[n, o, i, j] = acc
    return y


def depthwise_conv2d_backward_input_reference(gy: np.ndarray, w: np.ndarray, x_shape: tuple,
                                              stride: Pair, padding: Pair,
                                              dilation: Pair) -> np.ndarray:
    """gx (N, C, H, W): the forward loop with every read turned into an accumulate (a scatter)."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = (int(s) for s in x_shape)
    CO, _, KH, KW = w.shape
    m = CO // C
    OH, OW = gy.shape[2], gy.shape[3]
    gx = np.zeros((N, C, H, W), dtype=gy.dtype)
    for n in range(N):
        for o in range(CO):
            c = o // m
            for i in range(OH):
                for j in range(OW):
                    for p in range(KH):
                        for q in range(KW):
                            h, v = i * sh - ph + p * dh, j * sw - pw + q * dw
                            if 0 <= h < H and 0 <= v < W:
                                gx[n, c, h, v] += gy[n, o, i, j] * w[o, 0, p, q]
    return gx


def depthwise_conv2d_backward_weight_reference(x: np.ndarray, gy: np.ndarray, w_shape: tuple,
                                               stride: Pair, padding: Pair,
                                               dilation: Pair) -> np.ndarray:
    """gw (C*m, 1, KH, KW) = sum over n, i, j of input tap times output gradient, plain loops."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = x.shape
    CO, _, KH, KW = (int(s) for s in w_shape)
    m = CO // C
    OH, OW = gy.shape[2], gy.shape[3]
    gw = np.zeros((CO, 1, KH, KW), dtype=x.dtype)
    for o in range(CO):
        c = o // m
        for p in range(KH):
            for q in range(KW):
                acc = x.dtype.type(0)
                for n in range(N):
                    for i in range(OH):
                        for j in range(OW):
                            h, v = i * sh - ph + p * dh, j * sw - pw + q * dw
                            if 0 <= h < H and 0 <= v < W:
                                acc += x[n, c, h, v] * gy[n, o, i, j]
                gw[o, 0, p, q] = acc
    return gw


# =============================================================================================
# shared per-element helpers (scalars only, so they run under the CUDA simulator too)
# =============================================================================================
@njit(cache=True)
def _in_index(i: int, p: int, s: int, pad: int, d: int, size: int) -> int:
    """Input coordinate read by output ``i`` at tap ``p`` (``i*s - pad + p*d``), or -1 if outside."""
    h = i * s - pad + p * d
    return h if 0 <= h < size else -1


@njit(cache=True)
def _out_index(h: int, p: int, s: int, pad: int, d: int, out_size: int) -> int:
    """Output coordinate whose tap ``p`` reads input ``h`` (solves ``i*s - pad + p*d = h``), or -1."""
    num = h + pad - p * d
    if num < 0 or num % s != 0:
        return -1
    i = num // s
    return i if i < out_size else -1


@njit(cache=True)
def _col_range(off: int, s: int, size: int, out_size: int) -> tuple[int, int]:
    """Half-open range [j0, j1) of outputs j whose input ``j*s + off`` lies in [0, size)."""
    j0 = 0 if off >= 0 else (-off + s - 1) // s
    j1 = (size - 1 - off) // s + 1 if size - 1 - off >= 0 else 0
    return j0, min(j1, out_size)


# =============================================================================================
# numpy
# =============================================================================================
def _tap(a: np.ndarray, p: int, q: int, dh: int, dw: int, sh: int, sw: int, OH: int,
         OW: int) -> np.ndarray:
    """The strided view of padded ``a`` read by tap (p, q): ``a[..., p*dh + i*sh, q*dw + j*sw]``."""
    return a[:, :, p * dh: p * dh + (OH - 1) * sh + 1: sh, q * dw: q * dw + (OW - 1) * sw + 1: sw]


def depthwise_conv2d_numpy(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                           dilation: Pair) -> np.ndarray:
    """Vectorised forward: one broadcast multiply-add per kernel tap."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = x.shape
    CO, _, KH, KW = w.shape
    m = CO // C
    OH, OW = _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H+2ph, W+2pw)
    wr = w.reshape(C, m, KH, KW)  # (C, m, KH, KW): output channel o = c*m + k
    y = np.zeros((N, C, m, OH, OW), dtype=x.dtype)
    for p in range(KH):
        for q in range(KW):
            patch = _tap(xpad, p, q, dh, dw, sh, sw, OH, OW)  # (N, C, OH, OW)
            y += patch[:, :, None] * wr[None, :, :, p, q, None, None]
    return y.reshape(N, CO, OH, OW)  # (N, C*m, OH, OW)


def depthwise_conv2d_backward_input_numpy(gy: np.ndarray, w: np.ndarray, x_shape: tuple,
                                          stride: Pair, padding: Pair,
                                          dilation: Pair) -> np.ndarray:
    """Vectorised input gradient: each tap adds into a strided view of the padded gradient."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = (int(s) for s in x_shape)
    CO, _, KH, KW = w.shape
    m = CO // C
    OH, OW = gy.shape[2], gy.shape[3]
    gyr = gy.reshape(N, C, m, OH, OW)  # (N, C, m, OH, OW)
    wr = w.reshape(C, m, KH, KW)  # (C, m, KH, KW)
    gxpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    for p in range(KH):
        for q in range(KW):
            # A view is written once per tap, and within one tap no two outputs hit the same pixel.
            _tap(gxpad, p, q, dh, dw, sh, sw, OH, OW)[...] += (
                gyr * wr[None, :, :, p, q, None, None]).sum(axis=2)  # (N, C, OH, OW)
    return np.ascontiguousarray(gxpad[:, :, ph: ph + H, pw: pw + W])


def depthwise_conv2d_backward_weight_numpy(x: np.ndarray, gy: np.ndarray, w_shape: tuple,
                                           stride: Pair, padding: Pair,
                                           dilation: Pair) -> np.ndarray:
    """Vectorised weight gradient: one einsum over (n, i, j) per kernel tap."""
    sh, sw, ph, pw, dh, dw = _ints(stride, padding, dilation)
    N, C, H, W = x.shape
    CO, _, KH, KW = (int(s) for s in w_shape)
    m = CO // C
    OH, OW = gy.shape[2], gy.shape[3]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H+2ph, W+2pw)
    gyr = gy.reshape(N, C, m, OH, OW)  # (N, C, m, OH, OW)
    gw = np.zeros((C, m, KH, KW), dtype=x.dtype)
    for p in range(KH):
        for q in range(KW):
            patch = _tap(xpad, p, q, dh, dw, sh, sw, OH, OW)  # (N, C, OH, OW)
            gw[:, :, p, q] = np.einsum("ncij,ncmij->cm", patch, gyr)
    return gw.reshape(CO, 1, KH, KW)  # (C*m, 1, KH, KW)


# =============================================================================================
# numba
# =============================================================================================
# Every task pads one (n, c) plane into a private zero buffer first, so the inner loops have no
# bounds logic at all: each is `for j in range(OW)` over slices that start at 0, the form LLVM
# vectorises (an index like `j + off` keeps Numba's negative-index wraparound and stays scalar).
# Tasks are chunked so that each chunk allocates its buffer once.
@njit(cache=True)
def _pad_into(buf, src, oh, ow):
    """buf[:, :] = 0, then buf[r + oh, s + ow] = src[r, s] wherever both are inside (oh/ow may be < 0)."""
    buf[:, :] = 0
    HB, WB = buf.shape
    H, W = src.shape
    r0, r1 = max(0, -oh), min(H, HB - oh)
    c0, c1 = max(0, -ow), min(W, WB - ow)
    for r in range(r0, r1):
        br = buf[r + oh, c0 + ow: c1 + ow]
        sr = src[r, c0:c1]
        for k in range(c1 - c0):
            br[k] = sr[k]


@njit(cache=True)
def _axpy(out, a, xs):
    """out[j] += a * xs[j] (compiled once for contiguous xs, the vectorised case, and once strided)."""
    for j in range(out.shape[0]):
        out[j] += a * xs[j]


@njit(cache=True)
def _mul_add(out, xs, ys):
    """out[j] += xs[j] * ys[j]."""
    for j in range(out.shape[0]):
        out[j] += xs[j] * ys[j]


@njit(cache=True)
def _taps3x3(out, wk, a0, a1, a2, b0, b1, b2, c0, c1, c2):
    """out[j] += the nine taps of a 3x3 window: nine loads and one store per output, fused."""
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    for j in range(out.shape[0]):
        out[j] += ((w00 * a0[j] + w01 * a1[j] + w02 * a2[j])
                   + (w10 * b0[j] + w11 * b1[j] + w12 * b2[j])
                   + (w20 * c0[j] + w21 * c1[j] + w22 * c2[j]))


@njit(cache=True)
def _corr_row(out, P, wk, r0, sw, dh, dw, accumulate):
    """out[j] (+)= sum_{p,q} wk[p, q] * P[r0 + p*dh, j*sw + q*dw]: one output row from a padded plane.

    Slices are taken without a step when sw == 1 so that Numba types them contiguous and the loops
    in _axpy / _taps3x3 vectorise.
    """
    OW = out.shape[0]
    KH, KW = wk.shape
    span = (OW - 1) * sw + 1
    if not accumulate:
        out[:] = 0
    if KH == 3 and KW == 3:
        r1, r2 = r0 + dh, r0 + 2 * dh
        if sw == 1:
            _taps3x3(out, wk, P[r0, 0:OW], P[r0, dw:dw + OW], P[r0, 2 * dw:2 * dw + OW],
                     P[r1, 0:OW], P[r1, dw:dw + OW], P[r1, 2 * dw:2 * dw + OW],
                     P[r2, 0:OW], P[r2, dw:dw + OW], P[r2, 2 * dw:2 * dw + OW])
        else:
            _taps3x3(out, wk, P[r0, 0:span:sw], P[r0, dw:dw + span:sw],
                     P[r0, 2 * dw:2 * dw + span:sw], P[r1, 0:span:sw], P[r1, dw:dw + span:sw],
                     P[r1, 2 * dw:2 * dw + span:sw], P[r2, 0:span:sw], P[r2, dw:dw + span:sw],
                     P[r2, 2 * dw:2 * dw + span:sw])
        return
    for p in range(KH):
        r = r0 + p * dh
        for q in range(KW):
            if sw == 1:
                _axpy(out, wk[p, q], P[r, q * dw: q * dw + OW])
            else:
                _axpy(out, wk[p, q], P[r, q * dw: q * dw + span: sw])


@njit(parallel=True, cache=True)
def _forward_numba(x, w, y, sh, sw, ph, pw, dh, dw, nthreads):
    N, C, H, W = x.shape
    CO, _, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    if OH <= 0 or OW <= 0:
        return
    m = max(CO // C, 1)
    HP, WP = (OH - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
    ntask = N * C
    nchunk = min(ntask, 4 * nthreads)
    for ch in prange(nchunk):
        P = np.empty((HP, WP), dtype=x.dtype)  # the padded input plane, (HP, WP)
        for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
            n, c = t // C, t % C
            _pad_into(P, x[n, c], ph, pw)
            for k in range(m):  # the plane serves all m output channels that read it
                o = c * m + k
                if o >= CO:
                    break
                for i in range(OH):
                    _corr_row(y[n, o, i], P, w[o, 0], i * sh, sw, dh, dw, False)


@njit(parallel=True, cache=True)
def _backward_input_numba(gy, w, wf, gx, sh, sw, ph, pw, dh, dw, nthreads):
    N, C, H, W = gx.shape
    CO = min(w.shape[0], gy.shape[1])
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = gy.shape[2], gy.shape[3]
    m = max(w.shape[0] // C, 1)
    NN = min(N, gy.shape[0])
    ntask = N * C
    nchunk = max(min(ntask, 4 * nthreads), 1)
    if sh == 1 and sw == 1:
        # Stride 1: a pure gather. gx[h, v] = sum_{p,q} wf[p, q] * B[h + p*dh, v + q*dw], the forward
        # correlation with the flipped kernel wf over the output gradient padded into B.
        HB, WB = H + (KH - 1) * dh, W + (KW - 1) * dw
        for ch in prange(nchunk):
            B = np.empty((HB, WB), dtype=gy.dtype)
            for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
                n, c = t // C, t % C
                gx[n, c, :, :] = 0
                if n >= NN:
                    continue
                for k in range(m):
                    o = c * m + k
                    if o >= CO:
                        break
                    _pad_into(B, gy[n, o], (KH - 1) * dh - ph, (KW - 1) * dw - pw)
                    for h in range(H):
                        _corr_row(gx[n, c, h], B, wf[o, 0], h, 1, dh, dw, True)
        return
    # Stride > 1: still a gather, one input row at a time. Padded row h + ph collects the output
    # rows i (and taps p) with i*sh + p*dh = h + ph; each tap q adds a strided slice of that output
    # row into the row buffer. The task owns the row, so the order of the sums is fixed.
    WP = (OW - 1) * sw + (KW - 1) * dw + 1 if OW > 0 else 0
    span = (OW - 1) * sw + 1
    v0, v1 = max(0, -pw), min(W, WP - pw)  # input columns some window reaches
    for ch in prange(nchunk):
        row = np.empty(WP, dtype=gy.dtype)  # one padded input row, (WP,)
        for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
            n, c = t // C, t % C
            gx[n, c, :, :] = 0
            if n >= NN:
                continue
            for h in range(H):
                row[:] = 0
                for k in range(m):
                    o = c * m + k
                    if o >= CO:
                        break
                    for p in range(KH):
                        i = _out_index(h, p, sh, ph, dh, OH)
                        if i < 0:
                            continue
                        gyr = gy[n, o, i]
                        for q in range(KW):
                            if sw == 1:
                                _axpy(row[q * dw: q * dw + OW], w[o, 0, p, q], gyr)
                            else:
                                _axpy(row[q * dw: q * dw + span: sw], w[o, 0, p, q], gyr)
                gxr = gx[n, c, h]
                for v in range(v0, v1):  # crop the padding away
                    gxr[v] = row[v + pw]


@njit(parallel=True, cache=True)
def _backward_weight_numba(x, gy, gw, sh, sw, ph, pw, dh, dw, nthreads):
    N, C, H, W = x.shape
    CO, _, KH, KW = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    NN = min(N, gy.shape[0])
    CC = min(CO, gy.shape[1])
    m = max(CO // C, 1)
    # partial[n, o, p, q]: image n's share; summed over n in a fixed order at the end (deterministic
    # and independent of the thread count).
    partial = np.zeros((max(NN, 1), CO, KH, KW), dtype=gw.dtype)
    if OH > 0 and OW > 0 and NN > 0:
        HP, WP = (OH - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
        span = (OW - 1) * sw + 1
        ntask = NN * C
        nchunk = min(ntask, 4 * nthreads)
        for ch in prange(nchunk):
            P = np.empty((HP, WP), dtype=x.dtype)
            # Per-tap row accumulators: an elementwise multiply-add vectorises where a running
            # scalar sum would not (LLVM may not reorder float additions).
            acc = np.empty((KH * KW, OW), dtype=gw.dtype)
            for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
                n, c = t // C, t % C
                _pad_into(P, x[n, c], ph, pw)
                for k in range(m):
                    o = c * m + k
                    if o >= CC:
                        break
                    acc[:, :] = 0
                    for i in range(OH):
                        gyr = gy[n, o, i]
                        for p in range(KH):
                            r = i * sh + p * dh
                            for q in range(KW):
                                if sw == 1:
                                    _mul_add(acc[p * KW + q], P[r, q * dw: q * dw + OW], gyr)
                                else:
                                    _mul_add(acc[p * KW + q], P[r, q * dw: q * dw + span: sw], gyr)
                    for p in range(KH):
                        for q in range(KW):
                            partial[n, o, p, q] = acc[p * KW + q].sum()
    for o in prange(CO):
        for p in range(KH):
            for q in range(KW):
                s = partial[0, o, p, q]
                for n in range(1, NN):
                    s += partial[n, o, p, q]
                gw[o, 0, p, q] = s


def depthwise_conv2d_numba(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                           dilation: Pair) -> np.ndarray:
    """Numba CPU forward: y (N, C*m, OH, OW)."""
    g = _ints(stride, padding, dilation)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w, dtype=x.dtype)
    N, _, H, W = x.shape
    CO, _, KH, KW = w.shape
    OH, OW = _out_size(H, KH, g[0], g[2], g[4]), _out_size(W, KW, g[1], g[3], g[5])
    y = np.empty((N, CO, OH, OW), dtype=x.dtype)
    _forward_numba(x, w, y, *g, get_num_threads())
    return y


def depthwise_conv2d_backward_input_numba(gy: np.ndarray, w: np.ndarray, x_shape: tuple,
                                          stride: Pair, padding: Pair,
                                          dilation: Pair) -> np.ndarray:
    """Numba CPU input gradient: gx (N, C, H, W)."""
    g = _ints(stride, padding, dilation)
    gy, w = np.ascontiguousarray(gy), np.ascontiguousarray(w, dtype=gy.dtype)
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1])  # (C*m, 1, KH, KW), flipped in both axes
    gx = np.empty(tuple(int(s) for s in x_shape), dtype=gy.dtype)
    _backward_input_numba(gy, w, wf, gx, *g, get_num_threads())
    return gx


def depthwise_conv2d_backward_weight_numba(x: np.ndarray, gy: np.ndarray, w_shape: tuple,
                                           stride: Pair, padding: Pair,
                                           dilation: Pair) -> np.ndarray:
    """Numba CPU weight gradient: gw (C*m, 1, KH, KW)."""
    g = _ints(stride, padding, dilation)
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy, dtype=x.dtype)
    gw = np.empty(tuple(int(s) for s in w_shape), dtype=x.dtype)
    _backward_weight_numba(x, gy, gw, *g, get_num_threads())
    return gw


# =============================================================================================
# cuda
# =============================================================================================
def _forward_cuda(x, w, y, zero, sh, sw, ph, pw, dh, dw):
    idx = cuda.grid(1)
    N, CO, OH, OW = y.shape
    if idx >= N * CO * OH * OW:
        return
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    j = idx % OW
    r = idx // OW
    i = r % OH
    r = r // OH
    o = r % CO
    n = r // CO
    c = o // max(CO // C, 1)
    acc = zero  # the input's dtype: float32 stays float32 on the GPU
    if c < C:
        for p in range(KH):
            h = _in_index(i, p, sh, ph, dh, H)
            if h < 0:
                continue
            for q in range(KW):
                v = _in_index(j, q, sw, pw, dw, W)
                if v >= 0:
                    acc += x[n, c, h, v] * w[o, 0, p, q]
    y[n, o, i, j] = acc


def _backward_input_cuda(gy, w, gx, zero, sh, sw, ph, pw, dh, dw):
    idx = cuda.grid(1)
    N, C, H, W = gx.shape
    if idx >= N * C * H * W:
        return
    OH, OW = gy.shape[2], gy.shape[3]
    CO = min(w.shape[0], gy.shape[1])
    KH, KW = w.shape[2], w.shape[3]
    m = max(w.shape[0] // C, 1)
    v = idx % W
    r = idx // W
    h = r % H
    r = r // H
    c = r % C
    n = r // C
    acc = zero
    if n < gy.shape[0]:
        # Gather: this input pixel sums the outputs (of its m output channels) that read it.
        for k in range(m):
            o = c * m + k
            if o >= CO:
                break
            for p in range(KH):
                i = _out_index(h, p, sh, ph, dh, OH)
                if i < 0:
                    continue
                for q in range(KW):
                    j = _out_index(v, q, sw, pw, dw, OW)
                    if j >= 0:
                        acc += gy[n, o, i, j] * w[o, 0, p, q]
    gx[n, c, h, v] = acc


def _backward_weight_cuda(x, gy, gw, zero, sh, sw, ph, pw, dh, dw):
    # One block per weight element (o, p, q). Every thread reaches the barriers (no early return).
    b = cuda.blockIdx.x
    t = cuda.threadIdx.x
    CO, KH, KW = gw.shape[0], gw.shape[2], gw.shape[3]
    N, C, H, W = x.shape
    OH, OW = gy.shape[2], gy.shape[3]
    NN = min(N, gy.shape[0])
    q = b % KW
    p = (b // KW) % KH
    o = b // (KH * KW)
    c = o // max(CO // C, 1)
    acc = zero
    if o < CO and c < C and o < gy.shape[1]:
        total = NN * OH * OW
        for e in range(t, total, cuda.blockDim.x):  # consecutive threads read consecutive j
            j = e % OW
            r = e // OW
            i = r % OH
            n = r // OH
            h = _in_index(i, p, sh, ph, dh, H)
            v = _in_index(j, q, sw, pw, dw, W)
            if h >= 0 and v >= 0:
                acc += x[n, c, h, v] * gy[n, o, i, j]
    partial = cuda.shared.array(THREADS, dtype=gw.dtype)
    partial[t] = acc
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:  # tree reduction in a fixed order: the same bits every run
        if t < s:
            partial[t] += partial[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0 and o < CO:
        gw[o, 0, p, q] = partial[0]


forward_cuda = cuda.jit(_forward_cuda)
backward_input_cuda = cuda.jit(_backward_input_cuda)
backward_weight_cuda = cuda.jit(_backward_weight_cuda)


def _contiguous(a: Any, dtype: Any = None) -> Any:
    return xp_of(a).ascontiguousarray(a, dtype=dtype)


def depthwise_conv2d_cuda(x: Any, w: Any, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """CUDA forward (NumPy or CuPy arrays in, same kind out): y (N, C*m, OH, OW)."""
    g = _ints(stride, padding, dilation)
    x = _contiguous(x)
    w = _contiguous(w, x.dtype)
    N, _, H, W = x.shape
    CO, _, KH, KW = w.shape
    OH, OW = _out_size(H, KH, g[0], g[2], g[4]), _out_size(W, KW, g[1], g[3], g[5])
    y = empty_like_module(x, (N, CO, OH, OW))
    launch(forward_cuda, N * CO * OH * OW, x, w, y, x.dtype.type(0), *g)
    return y


def depthwise_conv2d_backward_input_cuda(gy: Any, w: Any, x_shape: tuple, stride: Pair,
                                         padding: Pair, dilation: Pair) -> Any:
    """CUDA input gradient, one gathering thread per input element: gx (N, C, H, W)."""
    g = _ints(stride, padding, dilation)
    gy = _contiguous(gy)
    w = _contiguous(w, gy.dtype)
    shape = tuple(int(s) for s in x_shape)
    gx = empty_like_module(gy, shape)
    launch(backward_input_cuda, int(np.prod(shape)), gy, w, gx, gy.dtype.type(0), *g)
    return gx


def depthwise_conv2d_backward_weight_cuda(x: Any, gy: Any, w_shape: tuple, stride: Pair,
                                          padding: Pair, dilation: Pair) -> Any:
    """CUDA weight gradient, one reducing block per weight element: gw (C*m, 1, KH, KW)."""
    g = _ints(stride, padding, dilation)
    x = _contiguous(x)
    gy = _contiguous(gy, x.dtype)
    shape = tuple(int(s) for s in w_shape)
    gw = empty_like_module(x, shape)
    nblocks = int(np.prod(shape))
    if nblocks > 0:
        backward_weight_cuda[nblocks, THREADS](x, gy, gw, x.dtype.type(0), *g)
    return gw


# =============================================================================================
# registry
# =============================================================================================
IMPLS = {
    "depthwise_conv2d": {
        "reference": depthwise_conv2d_reference,
        "numpy": depthwise_conv2d_numpy,
        "numba": depthwise_conv2d_numba,
        "cuda": depthwise_conv2d_cuda,
    },
    "depthwise_conv2d_backward_input": {
        "reference": depthwise_conv2d_backward_input_reference,
        "numpy": depthwise_conv2d_backward_input_numpy,
        "numba": depthwise_conv2d_backward_input_numba,
        "cuda": depthwise_conv2d_backward_input_cuda,
    },
    "depthwise_conv2d_backward_weight": {
        "reference": depthwise_conv2d_backward_weight_reference,
        "numpy": depthwise_conv2d_backward_weight_numpy,
        "numba": depthwise_conv2d_backward_weight_numba,
        "cuda": depthwise_conv2d_backward_weight_cuda,
    },
}


def _sig(dtype: Any) -> tuple:
    scalar = from_dtype(np.dtype(dtype))
    a = types.Array(scalar, 4, "C")  # (N, C, H, W) arrays
    return (a, a, a, scalar) + (types.int64,) * 6


PTX = [
    (_forward_cuda, [_sig(np.float32), _sig(np.float64)]),
    (_backward_input_cuda, [_sig(np.float32), _sig(np.float64)]),
    (_backward_weight_cuda, [_sig(np.float32), _sig(np.float64)]),
]
