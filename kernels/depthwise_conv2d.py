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
    numba      @njit(parallel=True), prange over chunks of (n, c) planes. Each plane is copied once
               into a zero-padded buffer split into column phases, so stride and padding leave
               no bounds checks and no strided loads: every innermost loop is a contiguous row
               multiply-add that LLVM vectorises, and 3x3 kernels use a fused nine-tap loop
               (one store per output). Input gradient, a gather in both cases: for stride 1 the
               forward correlation of the padded output gradient with the flipped kernel; for
               stride > 1 a polyphase gather (each phase of the padded input gradient is a
               stride-1 correlation with the taps that reach it). Weight gradient: per-tap row
               accumulators, per-image partial sums, then a sum over images in a fixed order:
               the same bits whatever the thread count. No two tasks write the same element.
    cuda       forward: one thread per output element. backward_input: one thread per input
               element gathering the outputs that read it. backward_weight: one block per weight
               element, threads stride over N*OH*OW and a shared-memory tree reduces their partial
               sums (fixed order: deterministic, no atomics).

Benchmark: ``python benchmarks/bench_depthwise_conv2d.py`` (validates every version against the
reference, then times forward + backward). Against PyTorch 2.13's CPU conv2d(groups=C) forward +
backward (NCHW, float32, N=8, 3x3, C in {32, 64, 128}, 64x64 and 128x128, stride and dilation in
{1, 2}; 2 shared cores, interleaved runs), numba forward + both backward passes took 1.3x-8x less
CPU time (process time, one thread each) in 21 of the 24 settings; stride 2 / dilation 1 on 64x64,
where PyTorch has a fast path, came out at 0.7x-1.1x (parity within the noise of a shared machine).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, get_num_threads, njit, prange, types

from ._cuda import THREADS, empty_like_module, float_array, launch, xp_of
from ._parallel import parallel_njit

Pair = tuple[int, int]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """conv2d output length ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (never negative)."""
    return max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)


def _ints(stride: Pair, padding: Pair, dilation: Pair) -> tuple[int, int, int, int, int, int]:
    """The six geometry ints as plain Python ints (one compiled signature whatever the caller
    gave)."""
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
# shared per-element helpers: scalars in, scalars out (so the CUDA simulator runs them as they
# are), inline="always" (inlined at Numba-IR level, which lets numba.cuda.compile_ptx type the
# CUDA kernels that call them on a machine without a GPU)
# =============================================================================================
@njit(cache=True, inline="always")
def _in_index(i: int, p: int, s: int, pad: int, d: int, size: int) -> int:
    """Input coordinate read by output ``i`` at tap ``p`` (``i*s - pad + p*d``), or -1 if
    outside."""
    h = i * s - pad + p * d
    return h if 0 <= h < size else -1


@njit(cache=True, inline="always")
def _out_index(h: int, p: int, s: int, pad: int, d: int, out_size: int) -> int:
    """Output coordinate whose tap ``p`` reads input ``h`` (solves ``i*s - pad + p*d = h``), or
    -1."""
    num = h + pad - p * d
    if num < 0 or num % s != 0:
        return -1
    i = num // s
    return i if i < out_size else -1



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
# Every task copies one (n, c) plane into a private zero-padded buffer first, so the loops have no
# bounds logic at all. Column stride sw is removed by splitting that buffer into sw column phases,
# P3[f, r, t] = padded[r, t*sw + f]: tap q then reads phase (q*dw) % sw from column (q*dw) // sw
# onwards, *contiguously*, for every stride. So every innermost loop is `for j in range(n)` over
# contiguous row slices, the form LLVM vectorises. Measured on this code (each 3-6x slower):
# an index like `j + off` (Numba's negative-index wraparound stays in the loop), a strided slice,
# a slice assigned inside an `if`, an `if` inside a row loop, and a helper called once per row
# with slices (every array argument is reference-counted). Hence whole-plane helpers with
# branch-free row loops. Tasks are chunked so that each chunk allocates its buffers once, and the
# prange bodies only call helpers (array expressions in a prange become nested parfors, slow to
# compile).
@njit(cache=True)
def _copy_block(dst, dr, dc, src, sr, sc, nr, nc):
    """dst[dr + r, dc + k] = src[sr + r, sc + k] for r < nr, k < nc."""
    for r in range(nr):
        d = dst[dr + r, dc:dc + nc]
        x = src[sr + r, sc:sc + nc]
        for k in range(nc):
            d[k] = x[k]


@njit(cache=True)
def _split_cols(d0, d1, dr, e0, e1, src, sr, sc, nr, n):
    """d0[dr + r, e0 + k] = src[sr + r, sc + 2k], d1[dr + r, e1 + k] = src[sr + r, sc + 2k + 1]."""
    for r in range(nr):
        a = d0[dr + r, e0:e0 + n]
        b = d1[dr + r, e1:e1 + n]
        x = src[sr + r, sc:sc + 2 * n]
        for k in range(n):  # a de-interleave: LLVM vectorises it with shuffles
            a[k] = x[2 * k]
            b[k] = x[2 * k + 1]


@njit(cache=True)
def _merge_cols(dst, dr, dc, s0, s1, sr, e0, e1, nr, n):
    """dst[dr + r, dc + 2k] = s0[sr + r, e0 + k], dst[dr + r, dc + 2k + 1] = s1[sr + r, e1 + k]."""
    for r in range(nr):
        x = dst[dr + r, dc:dc + 2 * n]
        a = s0[sr + r, e0:e0 + n]
        b = s1[sr + r, e1:e1 + n]
        for k in range(n):
            x[2 * k] = a[k]
            x[2 * k + 1] = b[k]


@njit(cache=True)
def _overlap(buf, plane, oh, ow):
    """Plane rows [r0, r1) and columns [c0, c1) that have a place in the padded, phase-split buf."""
    S, HB, WB = buf.shape
    H, W = plane.shape
    return max(0, -oh), min(H, HB - oh), max(0, -ow), min(W, S * WB - ow)


@njit(cache=True)
def _phase_copy(buf, plane, oh, ow, into_buf):
    """Copy between plane (H, W) and buf (S, HB, WB), the zero-padded plane split into S column
    phases: ``buf[f, r, t] = padded[r, t*S + f]``, ``padded[h + oh, v + ow] = plane[h, v]``
    (oh, ow may be negative: then the plane is cropped). Only the overlap is copied."""
    S, HB, WB = buf.shape
    r0, r1, c0, c1 = _overlap(buf, plane, oh, ow)
    nr = r1 - r0
    if nr <= 0 or c1 <= c0:
        return
    if S == 1:
        if into_buf:
            _copy_block(buf[0], r0 + oh, c0 + ow, plane, r0, c0, nr, c1 - c0)
        else:
            _copy_block(plane, r0, c0, buf[0], r0 + oh, c0 + ow, nr, c1 - c0)
    elif S == 2:
        V0 = c0 + ow  # padded column of plane column c0; pairs (c0 + 2k, c0 + 2k + 1) follow
        f0, e0, e1, n = V0 % 2, V0 // 2, (V0 + 1) // 2, (c1 - c0) // 2
        if into_buf:
            _split_cols(buf[f0], buf[1 - f0], r0 + oh, e0, e1, plane, r0, c0, nr, n)
            if (c1 - c0) % 2 == 1:  # the last, unpaired column
                _copy_block(buf[f0], r0 + oh, e0 + n, plane, r0, c1 - 1, nr, 1)
        else:
            _merge_cols(plane, r0, c0, buf[f0], buf[1 - f0], r0 + oh, e0, e1, nr, n)
            if (c1 - c0) % 2 == 1:
                _copy_block(plane, r0, c1 - 1, buf[f0], r0 + oh, e0 + n, nr, 1)
    else:
        for f in range(S):
            # buffer column t of phase f is padded column t*S + f, i.e. plane column t*S + f - ow
            t0 = max(0, (c0 + ow - f + S - 1) // S)
            t1 = min(WB, (c1 - 1 + ow - f) // S + 1) if c1 - 1 + ow - f >= 0 else 0
            if t1 > t0:
                cols = plane[:, t0 * S + f - ow::S]  # (H, ...) every S-th column, strided
                if into_buf:
                    _copy_block(buf[f], r0 + oh, t0, cols, r0, 0, nr, t1 - t0)
                else:
                    _copy_block(cols, r0, 0, buf[f], r0 + oh, t0, nr, t1 - t0)


@njit(cache=True)
def _pad_phases(buf, src, oh, ow):
    """buf = the zero-padded plane ``padded[h + oh, v + ow] = src[h, v]``, split into column phases.
    Only the border that the copy does not cover is zeroed."""
    S, HB, WB = buf.shape
    r0, r1, c0, c1 = _overlap(buf, src, oh, ow)
    if r1 <= r0 or c1 <= c0:
        buf[:] = 0
        return
    R0, R1 = r0 + oh, r1 + oh
    for f in range(S):
        t0 = max(0, (c0 + ow - f + S - 1) // S)  # the phase-f columns the copy fills
        t1 = min(WB, (c1 - 1 + ow - f) // S + 1) if c1 - 1 + ow - f >= 0 else 0
        t1 = max(t0, t1)
        buf[f, :R0, :] = 0
        buf[f, R1:, :] = 0
        buf[f, R0:R1, :t0] = 0
        buf[f, R0:R1, t1:] = 0
    _phase_copy(buf, src, oh, ow, True)


@njit(cache=True)
def _unpad_phases(dst, buf, oh, ow):
    """The inverse of _pad_phases: dst[h, v] = padded[h + oh, v + ow] (0 where outside)."""
    r0, r1, c0, c1 = _overlap(buf, dst, oh, ow)
    if r1 <= r0 or c1 <= c0:
        dst[:, :] = 0
        return
    dst[:r0, :] = 0
    dst[r1:, :] = 0
    dst[r0:r1, :c0] = 0
    dst[r0:r1, c1:] = 0
    _phase_copy(buf, dst, oh, ow, False)


@njit(cache=True)
def _corr3x3(out, P3, wk, sh, sw, dh, dw):
    """out[i, j] = sum_{p,q<3} wk[p, q] * padded[i*sh + p*dh, j*sw + q*dw], fused: nine loads and
    one store per output instead of nine read-modify-writes. P3 (sw, HP, WPs) column phases."""
    OH, OW = out.shape
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    Q0, Q1, Q2 = P3[0], P3[dw % sw], P3[(2 * dw) % sw]  # the phase each kernel column reads
    e1, e2 = dw // sw, (2 * dw) // sw  # and its first column there
    for i in range(OH):
        r0 = i * sh
        r1, r2 = r0 + dh, r0 + 2 * dh
        a0, a1, a2 = Q0[r0, 0:OW], Q1[r0, e1:e1 + OW], Q2[r0, e2:e2 + OW]
        b0, b1, b2 = Q0[r1, 0:OW], Q1[r1, e1:e1 + OW], Q2[r1, e2:e2 + OW]
        c0, c1, c2 = Q0[r2, 0:OW], Q1[r2, e1:e1 + OW], Q2[r2, e2:e2 + OW]
        o = out[i]
        for j in range(OW):
            o[j] = ((w00 * a0[j] + w01 * a1[j] + w02 * a2[j])
                    + (w10 * b0[j] + w11 * b1[j] + w12 * b2[j])
                    + (w20 * c0[j] + w21 * c1[j] + w22 * c2[j]))


@njit(cache=True)
def _corr_general(out, P3, wk, sh, sw, dh, dw):
    """out[i, j] = sum_{p,q} wk[p, q] * padded[i*sh + p*dh, j*sw + q*dw], any kernel size: one
    vectorised multiply-add of a row per tap."""
    OH, OW = out.shape
    KH, KW = wk.shape
    out[:, :] = 0
    for i in range(OH):
        o = out[i]
        for p in range(KH):
            r = i * sh + p * dh
            for q in range(KW):
                wv = wk[p, q]
                e = (q * dw) // sw
                xs = P3[(q * dw) % sw, r, e:e + OW]
                for j in range(OW):
                    o[j] += wv * xs[j]


@njit(cache=True)
def _corr_plane(out, P3, wk, sh, sw, dh, dw):
    """A "valid" correlation of a padded, phase-split plane into out (OH, OW)."""
    if wk.shape[0] == 3 and wk.shape[1] == 3:
        _corr3x3(out, P3, wk, sh, sw, dh, dw)
    else:
        _corr_general(out, P3, wk, sh, sw, dh, dw)


@njit(cache=True)
def _backward_input_plane_strided(g, gyn, w, c, m, CO, sh, sw, ph, pw, dh, dw, Gp, G3):
    """Input-gradient plane g (H, W) of channel c for stride > 1, as a polyphase gather.

    In padded coordinates the input pixel (R, V) = (a + sh*u, b + sw*t) is read by tap (p, q)
    exactly when p*dh = a (mod sh) and q*dw = b (mod sw), from output (u - ap, t - bq) with
    ap = (p*dh) // sh, bq = (q*dw) // sw. So each phase (a, b) of the padded gradient is a
    stride-1 correlation of the output gradient with the taps of that phase: every element is
    computed once, as the sum of the outputs that read it, with contiguous rows throughout.
    Gp: the output gradient shifted by (A, B) = (max ap, max bq) into zeros, (1, ., .);
    G3 (sw, HP, WPs): the padded input gradient, phase-split like the forward's input.
    """
    KH, KW = w.shape[2], w.shape[3]
    _, HB, T = G3.shape
    A, B = ((KH - 1) * dh) // sh, ((KW - 1) * dw) // sw
    G3[:] = 0
    for k in range(m):
        o = c * m + k
        if o >= CO:
            break
        _pad_phases(Gp, gyn[o], A, B)
        Q = Gp[0]
        for p in range(KH):
            a, ap = (p * dh) % sh, (p * dh) // sh
            U = (HB - a + sh - 1) // sh  # padded rows a, a + sh, ... below HB
            for q in range(KW):
                b, bq = (q * dw) % sw, (q * dw) // sw
                wv = w[o, 0, p, q]
                for u in range(U):
                    dst = G3[b, a + sh * u]
                    xs = Q[u + A - ap, B - bq:B - bq + T]
                    for j in range(T):
                        dst[j] += wv * xs[j]
    _unpad_phases(g, G3, ph, pw)  # crop the padding away, undo the phase split


@njit(cache=True)
def _tap_products(acc, P3, g, KH, KW, sh, sw, dh, dw):
    """acc[p*KW + q, j] = sum_i padded[i*sh + p*dh, j*sw + q*dw] * g[i, j]: per-tap row
    accumulators (an elementwise multiply-add vectorises where a running scalar sum would not:
    LLVM may not reorder float additions). acc (KH*KW, OW), P3 phase-split plane, g (OH, OW)."""
    OH, OW = g.shape
    acc[:, :] = 0
    for i in range(OH):
        gyr = g[i]
        for p in range(KH):
            r = i * sh + p * dh
            for q in range(KW):
                a = acc[p * KW + q]
                e = (q * dw) // sw
                xs = P3[(q * dw) % sw, r, e:e + OW]
                for j in range(OW):
                    a[j] += xs[j] * gyr[j]


@njit(cache=True)
def _zero(a):
    a[:, :] = 0


# Per-plane tasks. The prange bodies below only call these: array expressions inside a prange
# become nested parfors, which made the parallel functions several times slower to compile.
@njit(cache=True)
def _forward_plane(yn, xp, w, c, m, sh, sw, ph, pw, dh, dw, P3):
    """Output planes c*m .. c*m+m-1 of one image yn (CO, OH, OW) from its input plane xp (H, W)."""
    _pad_phases(P3, xp, ph, pw)
    for k in range(m):  # the padded plane serves all m output channels that read it
        o = c * m + k
        if o < yn.shape[0]:
            _corr_plane(yn[o], P3, w[o, 0], sh, sw, dh, dw)


@njit(cache=True)
def _backward_input_plane_s1(g, gyn, wf, c, m, CO, ph, pw, dh, dw, B, T):
    """Stride 1: g[h, v] = sum_{p,q} wf[p, q] * B[h + p*dh, v + q*dw], the forward correlation
    with the flipped kernel wf over the output gradient padded into B: a pure gather."""
    KH, KW = wf.shape[2], wf.shape[3]
    g[:, :] = 0
    for k in range(m):
        o = c * m + k
        if o >= CO:
            break
        _pad_phases(B, gyn[o], (KH - 1) * dh - ph, (KW - 1) * dw - pw)
        if m == 1:
            _corr_plane(g, B, wf[o, 0], 1, 1, dh, dw)
        else:  # m > 1: each output channel's share goes through T
            _corr_plane(T, B, wf[o, 0], 1, 1, dh, dw)
            for h in range(g.shape[0]):
                gr, tr = g[h], T[h]
                for v in range(g.shape[1]):
                    gr[v] += tr[v]


@njit(cache=True)
def _backward_weight_plane(part, P3, acc, xp, gyn, c, m, CC, sh, sw, ph, pw, dh, dw):
    """part[o, p, q] = one image's share of gw for the output channels that read plane xp."""
    KH, KW = part.shape[1], part.shape[2]
    _pad_phases(P3, xp, ph, pw)
    for k in range(m):
        o = c * m + k
        if o >= CC:
            break
        _tap_products(acc, P3, gyn[o], KH, KW, sh, sw, dh, dw)
        for p in range(KH):
            for q in range(KW):
                part[o, p, q] = acc[p * KW + q].sum()


@parallel_njit(cache=True)
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
        P3 = np.empty((sw, HP, (WP + sw - 1) // sw), dtype=x.dtype)  # padded plane, phase-split
        for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
            n, c = t // C, t % C
            _forward_plane(y[n], x[n, c], w, c, m, sh, sw, ph, pw, dh, dw, P3)


@parallel_njit(cache=True)
def _backward_input_numba(gy, w, wf, gx, sh, sw, ph, pw, dh, dw, nthreads):
    N, C, H, W = gx.shape
    CO = min(w.shape[0], gy.shape[1])
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = gy.shape[2], gy.shape[3]
    m = max(w.shape[0] // C, 1)
    NN = min(N, gy.shape[0])
    ntask = N * C
    nchunk = max(min(ntask, 4 * nthreads), 1)
    unit = sh == 1 and sw == 1
    # Stride 1: the flipped-kernel correlation over a padded copy B of the output gradient.
    HB, WB = (H + (KH - 1) * dh, W + (KW - 1) * dw) if unit else (0, 0)
    # Stride > 1: the polyphase gather; G3 is the padded input gradient (the forward's padded
    # input plane, phase-split), Gp the shifted output gradient.
    HP = (OH - 1) * sh + (KH - 1) * dh + 1 if not unit and OH > 0 else 0
    WP = (OW - 1) * sw + (KW - 1) * dw + 1 if not unit and OW > 0 else 0
    WPs = (WP + sw - 1) // sw
    A, B = ((KH - 1) * dh) // sh, ((KW - 1) * dw) // sw
    for ch in prange(nchunk):
        Bu = np.empty((1, HB, WB), dtype=gy.dtype)
        T = np.empty((H, W) if unit and m > 1 else (0, 0), dtype=gy.dtype)
        G3 = np.empty((sw, HP, WPs), dtype=gy.dtype)
        Gp = np.empty((1, (HP + sh - 1) // sh + A, WPs + B) if HP > 0 else (1, 0, 0),
                      dtype=gy.dtype)
        for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
            n, c = t // C, t % C
            if n >= NN or (not unit and HP == 0):
                _zero(gx[n, c])
            elif unit:
                _backward_input_plane_s1(gx[n, c], gy[n], wf, c, m, CO, ph, pw, dh, dw, Bu, T)
            else:
                _backward_input_plane_strided(gx[n, c], gy[n], w, c, m, CO, sh, sw, ph, pw,
                                              dh, dw, Gp, G3)


@parallel_njit(cache=True)
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
        ntask = NN * C
        nchunk = min(ntask, 4 * nthreads)
        for ch in prange(nchunk):
            P3 = np.empty((sw, HP, (WP + sw - 1) // sw), dtype=x.dtype)
            acc = np.empty((KH * KW, OW), dtype=gw.dtype)
            for t in range(ch * ntask // nchunk, (ch + 1) * ntask // nchunk):
                n, c = t // C, t % C
                _backward_weight_plane(partial[n], P3, acc, x[n, c], gy[n], c, m, CC,
                                       sh, sw, ph, pw, dh, dw)
    for o in range(CO):  # CO*KH*KW*N additions: not worth a second parallel region
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
    a = float_array(4, dtype)  # x / w / y style (N, C, H, W) arrays
    return (a, a, a, a.dtype) + (types.int64,) * 6  # ..., zero, sh, sw, ph, pw, dh, dw


PTX = [
    (_forward_cuda, [_sig(np.float32), _sig(np.float64)]),
    (_backward_input_cuda, [_sig(np.float32), _sig(np.float64)]),
    (_backward_weight_cuda, [_sig(np.float32), _sig(np.float64)]),
]
