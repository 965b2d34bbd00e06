"""im2col / col2im: turn a convolution into one matrix product, and back.

Formula. For an input ``x`` of shape (N, C, H, W), a KH x KW window, stride (sh, sw), padding
(ph, pw), dilation (dh, dw) and an output grid of OH x OW positions::

    cols[n, (c*KH + p)*KW + q, i*OW + j] = x[n, c, i*sh - ph + p*dh, j*sw - pw + q*dw]

with reads outside the input giving 0 (that *is* the zero padding). ``col2im`` is the adjoint
(transpose) of that linear map: every column entry is added back to the input pixel it was read
from, and entries that read padding are dropped::

    x[n, c, h, w] = sum over (p, q, i, j) with i*sh - ph + p*dh == h and j*sw - pw + q*dw == w
                    of cols[n, (c*KH + p)*KW + q, i*OW + j]

Layout, and why. ``cols`` is (N, C*KH*KW, OH*OW): one row per (channel, tap), one column per
output pixel. Then conv2d is a batched GEMM whose result is *already* NCHW::

    y = W.reshape(O, C*KH*KW) @ cols                      # (O, C*KH*KW) @ (N, C*KH*KW, OH*OW)
                                                          #   -> (N, O, OH*OW) = (N, O, OH, OW)

and no transpose of the (large) output or of the (larger) columns is ever needed: the textbook
layout (N*OH*OW, C*KH*KW) needs a transpose of y back to NCHW. Each row of ``cols`` is written
as one contiguous stream, and the GEMM reads ``cols`` row-major, the order BLAS packs it in.
Groups cost nothing: c is the slowest-varying part of the row index, so
``cols.reshape(N, G, C/G*KH*KW, OH*OW)`` puts group g's rows together, and
``W.reshape(G, O/G, C/G*KH*KW) @ that`` is the grouped conv, (N, G, O/G, OH*OW) = NCHW again.

The output grid (OH, OW) is an argument rather than computed from the conv2d formula: a
transposed convolution with ``output_padding`` (or with dilation > stride) is the adjoint of a
conv2d restricted to the first OH x OW outputs, and both directions must agree on the grid.

Row blocks. ``rows=(r0, r1)`` restricts both kernels to output rows r0 <= i < r1: im2col then
returns (N, C*KH*KW, (r1-r0)*OW), the block of columns those rows need, and col2im adds that block
back. With ``acc=`` col2im adds into an existing image instead of a zeroed one, so a convolution
can walk over row blocks whose columns fit in cache (``kernels/conv2d.py``'s driver does this
on the CPU): the full column matrix, 9x the input for a 3x3 kernel, never exists in memory.
im2col's ``out=`` takes the array to write into, so those blocks can reuse one scratch buffer.

Kernels (every implementation has these signatures; pairs are (h, w) tuples of ints)::

    im2col(x, kernel_size, stride, padding, dilation, out_size, rows=None, out=None) -> cols
    col2im(cols, x_shape, kernel_size, stride, padding, dilation, out_size, rows=None, acc=None)
        -> x

Versions in this file (one table ``IMPLS`` maps names to them, same signature for each):

* ``reference``: plain Python loops over every (n, c, p, q, i, j), straight from the formula.
  The oracle. Slow on purpose; keep shapes tiny.
* ``numpy``: the classic vectorised textbook im2col (one strided slice of the padded input per
  kernel tap, as in CS231n and "Deep Learning from Scratch"), and col2im as its adjoint (the same
  slices, accumulated with ``+=``). Also the baseline the benchmarks compare against.
* ``numba``: ``@parallel_njit(cache=True)``, one thread per (n, c) plane. im2col copies each
  input row segment into its column row (the in-range span of each row is computed once, so the
  inner loop is a branch-free copy between 1-D views, which LLVM vectorises); col2im zeroes a
  plane (unless accumulating) and adds each tap's rows into it; one thread owns one plane, so the
  sums are race-free and deterministic. With stride 1 on a full-width grid (3x3 "same" convs,
  dilated or not) the in-range rows of a tap are one shifted run of the input plane: im2col
  copies it flat and then zeroes the few padding entries, about 2x faster again.
  ``parallel=False`` (registered as ``im2col_serial`` / ``col2im_serial``) runs the same plane
  loop on the calling thread with the GIL released: the CPU conv2d gives each core its own
  blocks, im2col then GEMM, instead of alternating two thread pools.
* ``cuda``: ``@cuda.jit``, one thread per output element. im2col: one thread per column entry.
  col2im is a *gather*: one thread per input pixel sums the taps that read it (no atomics,
  deterministic). Launchers accept NumPy or CuPy arrays.

How to benchmark: conv2d is built on these kernels; ``benchmarks/`` times conv2d forward and
backward against PyTorch and against the ``numpy`` version here (the textbook baseline).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import FLOAT_DTYPES, empty_like_module, float_array, launch
from ._parallel import parallel_njit

Pair = tuple[int, int]


def _into(out: Any, cols: np.ndarray) -> np.ndarray:
    """``cols``, or ``out`` filled with it when the caller passed an output array."""
    if out is None:
        return cols
    out[...] = cols
    return out

# ============================================================================================
# reference: loops straight from the formula
# ============================================================================================


def im2col_reference(
    x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, out_size: Pair,
    rows: Pair | None = None, out: Any = None,
) -> np.ndarray:
    """cols (N, C*KH*KW, R*OW) from x (N, C, H, W) for output rows [r0, r1) (default: all OH),
    written into ``out`` when given."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (
        kernel_size, stride, padding, dilation, out_size)
    r0, r1 = rows or (0, oh)
    cols = np.zeros((N, C * kh * kw, (r1 - r0) * ow), dtype=x.dtype)  # (N, C*KH*KW, R*OW)
    for n in range(N):
        for c in range(C):
            for p in range(kh):
                for q in range(kw):
                    for i in range(r0, r1):
                        for j in range(ow):
                            h = i * sh - ph + p * dh
                            w = j * sw - pw + q * dw
                            if 0 <= h < H and 0 <= w < W:
                                cols[n, (c * kh + p) * kw + q, (i - r0) * ow + j] = x[n, c, h, w]
    return _into(out, cols)


def col2im_reference(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Pair, stride: Pair,
    padding: Pair, dilation: Pair, out_size: Pair, rows: Pair | None = None, acc: Any = None,
) -> np.ndarray:
    """x (N, C, H, W) = the adjoint of im2col applied to cols (N, C*KH*KW, R*OW), added to
    ``acc`` when given (and returned), else to zeros."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (
        kernel_size, stride, padding, dilation, out_size)
    r0, r1 = rows or (0, oh)
    x = np.zeros((N, C, H, W), dtype=cols.dtype) if acc is None else acc
    for n in range(N):
        for c in range(C):
            for p in range(kh):
                for q in range(kw):
                    for i in range(r0, r1):
                        for j in range(ow):
                            h = i * sh - ph + p * dh
                            w = j * sw - pw + q * dw
                            if 0 <= h < H and 0 <= w < W:
                                x[n, c, h, w] += cols[n, (c * kh + p) * kw + q, (i - r0) * ow + j]
    return x


# ============================================================================================
# shared per-element helpers (called from both the @njit CPU kernels and the @cuda.jit kernels)
# ============================================================================================


@numba.njit(cache=True, inline="always")
def _src(i: int, k: int, s: int, pad: int, d: int) -> int:
    """Input coordinate read by output position i through kernel tap k: i*s - pad + k*d."""
    return i * s - pad + k * d


@numba.njit(cache=True, inline="always")
def _dst(h: int, k: int, s: int, pad: int, d: int, n_out: int) -> int:
    """The output position i whose tap k reads input coordinate h, or -1 if there is none."""
    t = h + pad - k * d
    if t < 0 or t % s != 0:
        return -1
    i = t // s
    return i if i < n_out else -1


@numba.njit(cache=True, inline="always")
def _valid_range(k: int, s: int, pad: int, d: int, size: int, n_out: int) -> tuple[int, int]:
    """[lo, hi): the output positions i in [0, n_out) whose tap k reads inside [0, size)."""
    off = k * d - pad  # the input coordinate is i*s + off
    lo = 0 if off >= 0 else (-off + s - 1) // s  # ceil(-off / s)
    hi = (size - 1 - off) // s + 1  # floor division: <= 0 when the tap never lands inside
    hi = min(max(hi, 0), n_out)
    return min(lo, hi), hi


# ============================================================================================
# numpy: the textbook vectorised im2col (one strided slice per kernel tap)
# ============================================================================================


def im2col_numpy(
    x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, out_size: Pair,
    rows: Pair | None = None, out: Any = None,
) -> np.ndarray:
    """cols (N, C*KH*KW, R*OW): pad once, then copy one strided slice per tap (p, q)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (
        kernel_size, stride, padding, dilation, out_size)
    r0, r1 = rows or (0, oh)
    R = r1 - r0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H+2ph, W+2pw)
    cols = np.empty((N, C, kh, kw, R, ow), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            h0, w0 = p * dh + r0 * sh, q * dw
            cols[:, :, p, q] = xp[:, :, h0:h0 + sh * (R - 1) + 1:sh, w0:w0 + sw * (ow - 1) + 1:sw]
    return _into(out, cols.reshape(N, C * kh * kw, R * ow))  # (N, C*KH*KW, R*OW), free reshape


def col2im_numpy(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Pair, stride: Pair,
    padding: Pair, dilation: Pair, out_size: Pair, rows: Pair | None = None, acc: Any = None,
) -> np.ndarray:
    """The adjoint of im2col_numpy: add each tap's slice back into a padded image, then crop."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (
        kernel_size, stride, padding, dilation, out_size)
    r0, r1 = rows or (0, oh)
    R = r1 - r0
    c6 = cols.reshape(N, C, kh, kw, R, ow)  # (N, C, KH, KW, R, OW)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(kh):
        for q in range(kw):
            h0, w0 = p * dh + r0 * sh, q * dw
            xp[:, :, h0:h0 + sh * (R - 1) + 1:sh, w0:w0 + sw * (ow - 1) + 1:sw] += c6[:, :, p, q]
    if acc is None:
        return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])
    acc += xp[:, :, ph:ph + H, pw:pw + W]
    return acc


# ============================================================================================
# numba: CPU kernels, one thread per (n, c) plane
# ============================================================================================


@numba.njit(cache=True)
def _im2col_plane(x, n, c, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols):
    """The KH*KW rows of cols that plane (n, c) of x feeds: the work of one thread."""
    H, W = x.shape[2], x.shape[3]
    R = cols.shape[2] // ow  # output rows r0 .. r0+R-1
    for p in range(kh):
        i0, i1 = _valid_range(p, sh, ph, dh, H, r0 + R)
        for q in range(kw):
            j0, j1 = _valid_range(q, sw, pw, dw, W, ow)
            m = j1 - j0
            w0 = _src(j0, q, sw, pw, dw)
            row = cols[n, (c * kh + p) * kw + q]  # (R*OW,) one contiguous stream
            a0, a1 = max(i0, r0), min(i1, r0 + R)
            if sh == 1 and sw == 1 and ow == W and a1 > a0 and m > 0:
                # Stride 1 on a full-width grid (e.g. 3x3 "same"): the in-range rows are one
                # run of x shifted by a constant, so copy it flat (long vectorised runs), then
                # zero the runs' edges and the padding-only rows.
                flat = x[n, c].reshape(H * W)
                d0 = (a0 - r0) * ow + j0
                s0 = _src(a0, p, sh, ph, dh) * W + w0
                span = (a1 - a0 - 1) * ow + m
                dst = row[d0:d0 + span]
                src = flat[s0:s0 + span]
                for t in range(span):
                    dst[t] = src[t]
                for i in range(r0, r0 + R):
                    seg = row[(i - r0) * ow:(i - r0 + 1) * ow]
                    if i < a0 or i >= a1:
                        for j in range(ow):
                            seg[j] = 0
                    else:
                        for j in range(j0):
                            seg[j] = 0
                        for j in range(j1, ow):
                            seg[j] = 0
                continue
            for i in range(r0, r0 + R):
                # 1-D views indexed from 0 let LLVM drop the negative-index checks and
                # vectorise the copies (about 4x faster than indexing row[base + j]).
                dst = row[(i - r0) * ow:(i - r0 + 1) * ow]
                if i < i0 or i >= i1:  # this output row's tap reads padding only
                    for j in range(ow):
                        dst[j] = 0
                    continue
                src = x[n, c, _src(i, p, sh, ph, dh), w0:w0 + (m - 1) * sw + 1:sw]
                mid = dst[j0:j1]
                for j in range(j0):
                    dst[j] = 0
                for j in range(m):
                    mid[j] = src[j]
                for j in range(j1, ow):
                    dst[j] = 0


@numba.njit(cache=True)
def _col2im_plane(cols, n, c, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, accumulate):
    """Plane (n, c) of x from its KH*KW rows of cols. Only this call writes the plane, so the
    += below is race-free and the sum order fixed (deterministic)."""
    H, W = x.shape[2], x.shape[3]
    R = cols.shape[2] // ow
    plane = x[n, c]  # (H, W)
    if not accumulate:
        plane[:, :] = 0
    for p in range(kh):
        i0, i1 = _valid_range(p, sh, ph, dh, H, r0 + R)
        for q in range(kw):
            j0, j1 = _valid_range(q, sw, pw, dw, W, ow)
            m = j1 - j0
            w0 = _src(j0, q, sw, pw, dw)
            row = cols[n, (c * kh + p) * kw + q]  # (R*OW,)
            for i in range(max(i0, r0), i1):
                dst = plane[_src(i, p, sh, ph, dh), w0:w0 + (m - 1) * sw + 1:sw]
                src = row[(i - r0) * ow + j0:(i - r0) * ow + j1]
                for j in range(m):
                    dst[j] += src[j]


# Two drivers for each plane function: one thread per (n, c) plane on all cores (parallel=True),
# and a single-threaded one that releases the GIL (nogil=True), for callers that run one block per
# core themselves (the CPU conv2d: see minisegnet/_cpu_pool.py for why).
@parallel_njit(cache=True)
def _im2col_numba_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols):
    C = x.shape[1]
    for nc in prange(x.shape[0] * C):
        _im2col_plane(x, nc // C, nc % C, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols)


@numba.njit(nogil=True, cache=True)
def _im2col_serial_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols):
    C = x.shape[1]
    for nc in range(x.shape[0] * C):
        _im2col_plane(x, nc // C, nc % C, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols)


@parallel_njit(cache=True)
def _col2im_numba_kernel(cols, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, accumulate):
    C = x.shape[1]
    for nc in prange(x.shape[0] * C):
        _col2im_plane(cols, nc // C, nc % C, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, accumulate)


@numba.njit(nogil=True, cache=True)
def _col2im_serial_kernel(cols, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, accumulate):
    C = x.shape[1]
    for nc in range(x.shape[0] * C):
        _col2im_plane(cols, nc // C, nc % C, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, accumulate)


def im2col_numba(
    x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, out_size: Pair,
    rows: Pair | None = None, out: Any = None, *, parallel: bool = True,
) -> np.ndarray:
    """cols (N, C*KH*KW, R*OW), Numba CPU, parallel over (n, c) planes; into ``out`` if given
    (a C-contiguous array of that shape: the CPU conv passes a reused scratch buffer).
    ``parallel=False`` runs on the calling thread alone, without holding the GIL."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    (kh, kw), (oh, ow) = kernel_size, out_size
    r0, r1 = rows or (0, oh)
    cols = np.empty((N, C * kh * kw, (r1 - r0) * ow), dtype=x.dtype) if out is None else out
    run = _im2col_numba_kernel if parallel else _im2col_serial_kernel
    run(x, kh, kw, *stride, *padding, *dilation, r0, ow, cols)
    return cols


def col2im_numba(
    cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Pair, stride: Pair,
    padding: Pair, dilation: Pair, out_size: Pair, rows: Pair | None = None, acc: Any = None,
    *, parallel: bool = True,
) -> np.ndarray:
    """x (N, C, H, W) = col2im(cols) (+ acc), Numba CPU, one thread per (n, c) plane.
    ``parallel=False`` runs on the calling thread alone, without holding the GIL."""
    cols = np.ascontiguousarray(cols)
    (kh, kw), ow = kernel_size, out_size[1]
    r0 = rows[0] if rows else 0
    x = np.empty(tuple(x_shape), dtype=cols.dtype) if acc is None else acc
    run = _col2im_numba_kernel if parallel else _col2im_serial_kernel
    run(cols, kh, kw, *stride, *padding, *dilation, r0, ow, x, acc is not None)
    return x


def im2col_serial(*args: Any, **kwargs: Any) -> np.ndarray:
    """im2col_numba on the calling thread only (GIL released): one block of a per-core loop."""
    return im2col_numba(*args, **kwargs, parallel=False)


def col2im_serial(*args: Any, **kwargs: Any) -> np.ndarray:
    """col2im_numba on the calling thread only (GIL released): one block of a per-core loop."""
    return col2im_numba(*args, **kwargs, parallel=False)


# ============================================================================================
# cuda: one thread per output element; col2im is a gather
# ============================================================================================


def _im2col_cuda(x, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, cols, total):
    t = cuda.grid(1)
    if t >= total:
        return
    # t enumerates cols in memory order (j fastest), so neighbouring threads write neighbours.
    R = cols.shape[2] // ow
    j = t % ow
    r = t // ow
    i = r % R
    r = r // R
    row = r % cols.shape[1]
    n = r // cols.shape[1]
    q = row % kw
    p = (row // kw) % kh
    c = row // (kh * kw)
    h = _src(i + r0, p, sh, ph, dh)
    w = _src(j, q, sw, pw, dw)
    v = x.dtype.type(0)
    if 0 <= h < x.shape[2] and 0 <= w < x.shape[3]:
        v = x[n, c, h, w]
    cols[n, row, i * ow + j] = v


def _col2im_cuda(cols, kh, kw, sh, sw, ph, pw, dh, dw, r0, ow, x, total, accumulate):
    t = cuda.grid(1)
    if t >= total:
        return
    W = x.shape[3]
    H = x.shape[2]
    C = x.shape[1]
    R = cols.shape[2] // ow
    w = t % W
    r = t // W
    h = r % H
    r = r // H
    c = r % C
    n = r // C
    # Gather: sum every column entry (of output rows r0 .. r0+R-1) that im2col copied from (h, w).
    acc = x.dtype.type(0)
    for p in range(kh):
        i = _dst(h, p, sh, ph, dh, r0 + R)
        if i < r0:  # no such output row in this block (-1 included)
            continue
        for q in range(kw):
            j = _dst(w, q, sw, pw, dw, ow)
            if j >= 0:
                acc += cols[n, (c * kh + p) * kw + q, (i - r0) * ow + j]
    if accumulate:
        x[n, c, h, w] += acc
    else:
        x[n, c, h, w] = acc


im2col_cuda_kernel = cuda.jit(_im2col_cuda)
col2im_cuda_kernel = cuda.jit(_col2im_cuda)


def im2col_cuda(
    x: Any, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, out_size: Pair,
    rows: Pair | None = None, out: Any = None,
) -> Any:
    """cols (N, C*KH*KW, R*OW) on the GPU (or the simulator for NumPy input); into ``out`` if
    given (an array of that shape on the same side as x)."""
    N, C = x.shape[:2]
    (kh, kw), (oh, ow) = kernel_size, out_size
    r0, r1 = rows or (0, oh)
    cols = empty_like_module(x, (N, C * kh * kw, (r1 - r0) * ow)) if out is None else out
    total = cols.size
    launch(im2col_cuda_kernel, total, x, kh, kw, *stride, *padding, *dilation, r0, ow, cols, total)
    return cols


def col2im_cuda(
    cols: Any, x_shape: tuple[int, int, int, int], kernel_size: Pair, stride: Pair,
    padding: Pair, dilation: Pair, out_size: Pair, rows: Pair | None = None, acc: Any = None,
) -> Any:
    """x (N, C, H, W) = col2im(cols) (+ acc) as a per-pixel gather on the GPU: deterministic."""
    (kh, kw), ow = kernel_size, out_size[1]
    r0 = rows[0] if rows else 0
    x = empty_like_module(cols, tuple(x_shape)) if acc is None else acc
    total = x.size
    launch(col2im_cuda_kernel, total, cols, kh, kw, *stride, *padding, *dilation, r0, ow, x, total,
           acc is not None)
    return x


# ============================================================================================
# tables
# ============================================================================================

IMPLS = {
    "im2col": {
        "reference": im2col_reference,
        "numpy": im2col_numpy,
        "numba": im2col_numba,
        "cuda": im2col_cuda,
    },
    "col2im": {
        "reference": col2im_reference,
        "numpy": col2im_numpy,
        "numba": col2im_numba,
        "cuda": col2im_cuda,
    },
    # Single-threaded, GIL-free versions, registered only where they exist: the CPU conv runs one
    # per core on its own blocks (minisegnet/_cpu_pool.py) when the implementation has them.
    "im2col_serial": {"numba": im2col_serial},
    "col2im_serial": {"numba": col2im_serial},
}

_I = types.int64
PTX = [
    (_im2col_cuda, [(float_array(4, dt), *[_I] * 10, float_array(3, dt), _I)
                    for dt in FLOAT_DTYPES]),
    (_col2im_cuda, [(float_array(3, dt), *[_I] * 10, float_array(4, dt), _I, types.boolean)
                    for dt in FLOAT_DTYPES]),
]
