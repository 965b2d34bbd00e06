"""max_unpool2d: put each value back where its max-pool index says (SegNet's decoder), and back.

Formula (per (n, c) plane; the output plane has OH*OW pixels, default
``OH = (H - 1)*sh - 2*ph + kh``, chosen by the functional layer)::

    out[n, c] = zeros(OH, OW);  out[n, c].flat[idx[n, c, i, j]] = x[n, c, i, j]
    for (i, j) in row-major order: with repeated indices the LAST write wins

Backward (the brief's and PyTorch's rule; the exact adjoint when the indices of a plane are
distinct, which is always the case for indices from a non-overlapping max pool)::

    gx[n, c, i, j] = gy[n, c].flat[idx[n, c, i, j]]

Indices outside [0, OH*OW) are a ValueError in the functional layer; the kernels skip them (the
forward writes nothing, the backward gives 0) so they never touch memory out of bounds.

Shapes: x (N, C, H, W) float32/float64, idx (N, C, H, W) int64 -> out (N, C, OH, OW);
gy (N, C, OH, OW), idx -> gx (N, C, H, W).

Versions in this file (every one checked against the reference by tests/test_max_unpool2d.py):

* reference: Python loops from the formula (the oracle).
* numpy: one flat fancy-index assignment (NumPy assigns 1-D fancy indices in order, so the
  last repeated index wins) and one ``take_along_axis`` for the backward.
* numba: one prange iteration per (n, c) plane: zero the plane, scatter in order (the last write
  wins); the backward is a branch-free per-element gather.
* cuda: the scatter is made deterministic without float atomics: (1) one thread per input
  element does an *integer* ``atomic.max`` of its flat position into an int32 "owner" map of the
  output (so the owner of each pixel is its last writer in row-major order, as on the CPU);
  (2) one thread per output pixel gathers ``x`` of its owner, or 0. The backward is a gather.

Benchmark: ``python benchmarks/bench_max_pool2d.py`` times it in the pool -> unpool chain (N=8,
C=64, 128x128, 2x2 stride 2, float32, forward and forward+backward) against PyTorch.
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

Pair = tuple[int, int]

# =============================================================================================
# reference
# =============================================================================================


def max_unpool2d_reference(x: np.ndarray, idx: np.ndarray, output_size: Pair) -> np.ndarray:
    """out (N, C, OH, OW): zeros, then out[n, c].flat[idx] = x in row-major order."""
    N, C, H, W = x.shape
    OH, OW = output_size
    out = np.zeros((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    k = idx[n, c, i, j]
                    if 0 <= k < OH * OW:
                        out[n, c, k // OW, k % OW] = x[n, c, i, j]
    return out


def max_unpool2d_backward_reference(gy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """gx (N, C, H, W) = gy[n, c].flat[idx[n, c, i, j]] (0 for an index outside the plane)."""
    N, C, OH, OW = gy.shape
    gx = np.zeros(idx.shape, gy.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(idx.shape[2]):
                for j in range(idx.shape[3]):
                    k = idx[n, c, i, j]
                    if 0 <= k < OH * OW:
                        gx[n, c, i, j] = gy[n, c, k // OW, k % OW]
    return gx


# =============================================================================================
# shared per-element helpers (CPU and CUDA), on plane-flat (N*C, plane) views
# =============================================================================================


@numba.njit(inline="always", cache=True)
def _unpool_grad_at(gyf, idxf, gxf, p, t):
    """gxf[p, t] = gyf[p, idxf[p, t]] (0 when the index is outside the plane)."""
    k = idxf[p, t]
    if k >= 0 and k < gyf.shape[1]:
        gxf[p, t] = gyf[p, k]
    else:
        gxf[p, t] = 0


# =============================================================================================
# numpy
# =============================================================================================


def max_unpool2d_numpy(x: np.ndarray, idx: np.ndarray, output_size: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    OH, OW = output_size
    out = np.zeros(N * C * OH * OW, x.dtype)
    flat = idx.reshape(N * C, H * W)  # (N*C, H*W)
    ok = (flat >= 0) & (flat < OH * OW)
    where = flat + (np.arange(N * C) * (OH * OW))[:, None]  # (N*C, H*W) into out
    out[where[ok]] = x.reshape(N * C, H * W)[ok]  # 1-D fancy assignment: the last write wins
    return out.reshape(N, C, OH, OW)


def max_unpool2d_backward_numpy(gy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    N, C, OH, OW = gy.shape
    flat = idx.reshape(N * C, -1)  # (N*C, H*W)
    ok = (flat >= 0) & (flat < OH * OW)
    g = np.take_along_axis(gy.reshape(N * C, OH * OW), np.where(ok, flat, 0), axis=1)
    return np.where(ok, g, 0).astype(gy.dtype).reshape(idx.shape)


# =============================================================================================
# numba (CPU)
# =============================================================================================

_U = np.uint64  # unsigned offsets: no wraparound test per access (see kernels/max_pool2d.py)


@parallel_njit(cache=True)
def _max_unpool2d_numba(xf, idxf, outf):
    NC, HW = xf.shape
    OHW = outf.shape[1]
    for p in prange(NC):  # planes are independent; in order within a plane (last write wins)
        o = outf[p]
        a = idxf[p]
        v = xf[p]
        o[:] = 0
        for t in range(_U(HW)):
            k = a[t]
            if k >= 0 and k < OHW:
                o[_U(k)] = v[t]


@parallel_njit(cache=True)
def _max_unpool2d_backward_numba(gyf, idxf, gxf):
    NC, HW = gxf.shape
    OHW = gyf.shape[1]
    for p in prange(NC):
        g = gxf[p]
        a = idxf[p]
        d = gyf[p]
        for t in range(_U(HW)):
            # _unpool_grad_at, branch-free: a negative index turns into a huge unsigned one, so
            # one unsigned compare checks both ends; out-of-plane indices read d[0] and give 0.
            k = _U(a[t])
            ok = k < _U(OHW)
            g[t] = d[k if ok else _U(0)] if ok else 0


def max_unpool2d_numba(x: np.ndarray, idx: np.ndarray, output_size: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    OH, OW = output_size
    out = np.empty((N, C, OH, OW), x.dtype)
    if out.size:
        _max_unpool2d_numba(np.ascontiguousarray(x).reshape(N * C, H * W),  # (N*C, H*W)
                            np.ascontiguousarray(idx).reshape(N * C, H * W),
                            out.reshape(N * C, OH * OW))  # (N*C, OH*OW)
    return out


def max_unpool2d_backward_numba(gy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    N, C, OH, OW = gy.shape
    if OH * OW == 0:  # nothing to gather from (and the branch-free loop reads element 0)
        return np.zeros(idx.shape, gy.dtype)
    gx = np.empty(idx.shape, gy.dtype)
    if gx.size:
        _max_unpool2d_backward_numba(np.ascontiguousarray(gy).reshape(N * C, OH * OW),
                                     np.ascontiguousarray(idx).reshape(N * C, -1),
                                     gx.reshape(N * C, -1))  # (N*C, H*W)
    return gx


# =============================================================================================
# cuda
# =============================================================================================

_unpool_grad_at_dev = _unpool_grad_at.py_func if SIMULATOR else _unpool_grad_at


def _unpool_owner_cuda(idxf, owner):
    """owner[p, k] = max input position t with idxf[p, t] == k: the last writer (int atomics)."""
    i = cuda.grid(1)
    NC, HW = idxf.shape
    if i >= NC * HW:
        return
    p = i // HW
    t = i % HW
    k = idxf[p, t]
    if k >= 0 and k < owner.shape[1]:
        cuda.atomic.max(owner, (p, k), np.int32(t))


def _unpool_gather_cuda(xf, owner, outf):
    """outf[p, k] = xf[p, owner[p, k]] or 0 where nothing was written."""
    i = cuda.grid(1)
    NC, OHW = outf.shape
    if i >= NC * OHW:
        return
    p = i // OHW
    k = i % OHW
    t = owner[p, k]
    if t >= 0 and t < xf.shape[1]:
        outf[p, k] = xf[p, t]
    else:
        outf[p, k] = 0


def _max_unpool2d_backward_cuda(gyf, idxf, gxf):
    i = cuda.grid(1)
    NC, HW = gxf.shape
    if i >= NC * HW:
        return
    _unpool_grad_at_dev(gyf, idxf, gxf, i // HW, i % HW)


unpool_owner_cuda_kernel = cuda.jit(_unpool_owner_cuda)
unpool_gather_cuda_kernel = cuda.jit(_unpool_gather_cuda)
max_unpool2d_backward_cuda_kernel = cuda.jit(_max_unpool2d_backward_cuda)


def max_unpool2d_cuda(x, idx, output_size: Pair):
    N, C, H, W = x.shape
    OH, OW = output_size
    if xp_of(x) is not np:
        xp = xp_of(x)
        x, idx = xp.ascontiguousarray(x), xp.ascontiguousarray(idx)
    xf = to_dev(x).reshape(N * C, H * W)  # (N*C, H*W)
    idxf = to_dev(idx).reshape(N * C, H * W)
    owner = dev_empty(x, (N * C, OH * OW), np.int32, fill=-1)  # (N*C, OH*OW)
    out = dev_empty(x, (N, C, OH, OW), x.dtype)
    launch(unpool_owner_cuda_kernel, N * C * H * W, idxf, owner)
    launch(unpool_gather_cuda_kernel, N * C * OH * OW, xf, owner, out.reshape(N * C, OH * OW))
    return to_host_like(x, out)


def max_unpool2d_backward_cuda(gy, idx):
    N, C, OH, OW = gy.shape
    if xp_of(gy) is not np:
        xp = xp_of(gy)
        gy, idx = xp.ascontiguousarray(gy), xp.ascontiguousarray(idx)
    gx = dev_empty(gy, tuple(idx.shape), gy.dtype)
    launch(max_unpool2d_backward_cuda_kernel, gx.size,
           to_dev(gy).reshape(N * C, OH * OW), to_dev(idx).reshape(N * C, -1),
           gx.reshape(N * C, -1))
    return to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "max_unpool2d": {
        "reference": max_unpool2d_reference,
        "numpy": max_unpool2d_numpy,
        "numba": max_unpool2d_numba,
        "cuda": max_unpool2d_cuda,
    },
    "max_unpool2d_backward": {
        "reference": max_unpool2d_backward_reference,
        "numpy": max_unpool2d_backward_numpy,
        "numba": max_unpool2d_backward_numba,
        "cuda": max_unpool2d_backward_cuda,
    },
}



_IDX2 = types.Array(types.int64, 2, "C")
_OWN2 = types.Array(types.int32, 2, "C")
PTX = [
    (_unpool_owner_cuda, [(_IDX2, _OWN2)]),  # dtype-free: one signature
    (_unpool_gather_cuda,
     [(float_array(2, dt), _OWN2, float_array(2, dt)) for dt in FLOAT_DTYPES]),
    (_max_unpool2d_backward_cuda,
     [(float_array(2, dt), _IDX2, float_array(2, dt)) for dt in FLOAT_DTYPES]),
]
