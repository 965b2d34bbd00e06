"""bed_of_nails: zero-insertion upsampling ("bed of nails" unpooling), and its backward.

Formula (NCHW, per (n, c) plane; integer scales sh, sw >= 1)::

    y[n, c, sh*i + a, sw*j + b] = x[n, c, i, j]  if a == 0 and b == 0,  else 0
                                  (0 <= a < sh, 0 <= b < sw)

each input value sits at the top-left of its sh x sw block. The op is linear and its adjoint is a
strided read::

    gx[n, c, i, j] = gy[n, c, sh*i, sw*j]

Shapes: x (N, C, H, W) float32/float64 -> y (N, C, H*sh, W*sw) same dtype; gy (N, C, H*sh, W*sw)
-> gx (N, C, H, W). (The backward reads the input size from gy: OH // sh, OW // sw.)

Versions in this file (all checked against the reference by tests/test_bed_of_nails.py):

* reference: Python loops straight from the formula (the oracle).
* numpy: zeros then a strided slice assignment ``y[..., ::sh, ::sw] = x``; backward the strided
  slice ``gy[..., ::sh, ::sw]``.
* numba: one prange iteration per (n, c) plane; each output row is zeroed and then, on nail rows,
  its nails are written while the row is still in cache.
* cuda: forward one thread per *output* pixel (it writes the value or the zero, so no separate
  zero fill); backward one thread per input pixel: a strided gather, deterministic, no atomics.

Benchmark: none in benchmarks/ yet.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import dev_empty, float_array, launch, to_dev, to_host_like
from ._parallel import parallel_njit

Pair = tuple[int, int]


# =============================================================================================
# reference
# =============================================================================================


def bed_of_nails_reference(x: np.ndarray, scale: Pair) -> np.ndarray:
    """y[n,c,sh*i+a,sw*j+b] = x[n,c,i,j] if a == b == 0 else 0: plain loops over the output."""
    N, C, H, W = x.shape
    sh, sw = scale
    y = np.empty((N, C, H * sh, W * sw), x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(H * sh):
                for ow in range(W * sw):
                    nail = oh % sh == 0 and ow % sw == 0
                    y[n, c, oh, ow] = x[n, c, oh // sh, ow // sw] if nail else 0
    return y


def bed_of_nails_backward_reference(gy: np.ndarray, scale: Pair) -> np.ndarray:
    """gx[n,c,i,j] = gy[n,c,sh*i,sw*j]: plain loops over the input."""
    N, C, OH, OW = gy.shape
    sh, sw = scale
    H, W = OH // sh, OW // sw
    gx = np.empty((N, C, H, W), gy.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    gx[n, c, i, j] = gy[n, c, sh * i, sw * j]
    return gx


# =============================================================================================
# shared per-element helpers (called from the numba CPU kernels and the CUDA kernels)
# =============================================================================================


# Scalars only: under the CUDA simulator an @njit helper given the kernel's (fake) device arrays
# failed with "can't unbox array", so the shared helper works on indices.
@numba.njit(inline="always", cache=True)
def nail_source(oh, ow, sh, sw):
    """(i, j, is_nail): output (oh, ow) holds x[i, j] when is_nail, else 0."""
    return oh // sh, ow // sw, (oh % sh == 0) and (ow % sw == 0)


# =============================================================================================
# numpy
# =============================================================================================


def bed_of_nails_numpy(x: np.ndarray, scale: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    sh, sw = scale
    y = np.zeros((N, C, H * sh, W * sw), x.dtype)
    y[:, :, ::sh, ::sw] = x
    return y


def bed_of_nails_backward_numpy(gy: np.ndarray, scale: Pair) -> np.ndarray:
    sh, sw = scale
    H, W = gy.shape[2] // sh, gy.shape[3] // sw
    return np.ascontiguousarray(gy[:, :, : H * sh : sh, : W * sw : sw])  # (N, C, H, W)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@parallel_njit(cache=True)
def _bed_of_nails_numba(x, y, sh, sw):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):  # independent planes
        for oh in range(OH):
            out = y[p, oh]
            out[:] = 0
            i, _, nail = nail_source(oh, 0, sh, sw)
            if nail and i < H:
                src = x[p, i]
                for j in range(min(W, (OW + sw - 1) // sw)):
                    out[j * sw] = src[j]


@parallel_njit(cache=True)
def _bed_of_nails_backward_numba(gy, gx, sh, sw):
    P, H, W = gx.shape
    for p in prange(P):
        for i in range(H):
            src = gy[p, i * sh]
            out = gx[p, i]
            for j in range(W):
                out[j] = src[j * sw]


def bed_of_nails_numba(x: np.ndarray, scale: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    sh, sw = scale
    y = np.empty((N, C, H * sh, W * sw), x.dtype)
    if y.size:
        _bed_of_nails_numba(np.ascontiguousarray(x).reshape(N * C, H, W),  # (N*C, H, W)
                            y.reshape(N * C, H * sh, W * sw), sh, sw)  # (N*C, OH, OW)
    return y


def bed_of_nails_backward_numba(gy: np.ndarray, scale: Pair) -> np.ndarray:
    N, C, OH, OW = gy.shape
    sh, sw = scale
    H, W = OH // sh, OW // sw
    gx = np.empty((N, C, H, W), gy.dtype)
    if gx.size:
        _bed_of_nails_backward_numba(np.ascontiguousarray(gy).reshape(N * C, OH, OW),  # (N*C,OH,OW)
                                     gx.reshape(N * C, H, W), sh, sw)  # (N*C, H, W)
    return gx


# =============================================================================================
# cuda
# =============================================================================================


def _bed_of_nails_cuda(x, y, sh, sw):
    t = cuda.grid(1)
    P, OH, OW = y.shape
    if t >= P * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    p = t // (OW * OH)
    i, j, nail = nail_source(oh, ow, sh, sw)
    if nail and i < x.shape[1] and j < x.shape[2]:  # in bounds for any shapes given
        y[p, oh, ow] = x[p, i, j]
    else:
        y[p, oh, ow] = 0


def _bed_of_nails_backward_cuda(gy, gx, sh, sw):
    t = cuda.grid(1)
    P, H, W = gx.shape
    if t >= P * H * W:
        return
    j = t % W
    i = (t // W) % H
    p = t // (W * H)
    if i * sh < gy.shape[1] and j * sw < gy.shape[2]:
        gx[p, i, j] = gy[p, i * sh, j * sw]
    else:  # only for a gy smaller than (H*sh, W*sw), which the callers never pass
        gx[p, i, j] = 0


bed_of_nails_cuda_kernel = cuda.jit(_bed_of_nails_cuda)
bed_of_nails_backward_cuda_kernel = cuda.jit(_bed_of_nails_backward_cuda)





def bed_of_nails_cuda(x, scale: Pair):
    N, C, H, W = x.shape
    sh, sw = scale
    OH, OW = H * sh, W * sw
    y = dev_empty(x, (N * C, OH, OW), x.dtype)  # (N*C, OH, OW)
    if y.size:
        launch(bed_of_nails_cuda_kernel, N * C * OH * OW,
               to_dev(x.reshape(N * C, H, W)), y, sh, sw)  # x as (N*C, H, W)
    return to_host_like(x, y).reshape(N, C, OH, OW)


def bed_of_nails_backward_cuda(gy, scale: Pair):
    N, C, OH, OW = gy.shape
    sh, sw = scale
    H, W = OH // sh, OW // sw
    gx = dev_empty(gy, (N * C, H, W), gy.dtype)  # (N*C, H, W)
    if gx.size:
        launch(bed_of_nails_backward_cuda_kernel, N * C * H * W,
               to_dev(gy.reshape(N * C, OH, OW)), gx, sh, sw)  # gy as (N*C, OH, OW)
    return to_host_like(gy, gx).reshape(N, C, H, W)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "bed_of_nails": {
        "reference": bed_of_nails_reference,
        "numpy": bed_of_nails_numpy,
        "numba": bed_of_nails_numba,
        "cuda": bed_of_nails_cuda,
    },
    "bed_of_nails_backward": {
        "reference": bed_of_nails_backward_reference,
        "numpy": bed_of_nails_backward_numpy,
        "numba": bed_of_nails_backward_numba,
        "cuda": bed_of_nails_backward_cuda,
    },
}



PTX = [
    (fn, [(float_array(3, dt), float_array(3, dt), types.int64, types.int64)
          for dt in (np.float32, np.float64)])
    for fn in (_bed_of_nails_cuda, _bed_of_nails_backward_cuda)
]
