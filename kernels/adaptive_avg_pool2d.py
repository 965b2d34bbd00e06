"""adaptive_avg_pool2d: mean over OH x OW bins that tile the input (PSPNet's pyramid), and back.

Formula (per (n, c) plane; H, W input, OH, OW output)::

    bin i covers rows    [floor(i*H/OH), ceil((i+1)*H/OH))     (lh_i rows)
    bin j covers columns [floor(j*W/OW), ceil((j+1)*W/OW))     (lw_j columns)
    y[n,c,i,j] = (sum of x over the bin, row-major) / (lh_i * lw_j)

Bins may overlap (H not a multiple of OH) and OH > H is allowed (bins then repeat rows). The
map is linear; its adjoint, as a gather over the bins that contain an input pixel::

    gx[n,c,h,w] = sum over the bins (i, j) containing (h, w), in (i, j) order,
                  of gy[n,c,i,j] / (lh_i*lw_j)
    the bins containing row h are i in [floor(h*OH/H), ceil((h+1)*OH/H))   (exact integer math)

Shapes: x (N, C, H, W) float32/float64 -> y (N, C, OH, OW); gy (N, C, OH, OW) -> gx (N, C, H, W).

Versions in this file (each checked against the reference by tests/test_adaptive_avg_pool2d.py):

* reference: Python loops from the formula; the backward scatters (the oracle).
* numpy: separable, ``y = A_h @ x @ A_w^T`` with averaging matrices A (OH, H) whose row i is
  1/lh_i over bin i; the backward is the transpose ``A_h^T @ gy @ A_w``.
* numba: prange over (n, c) planes; the forward calls the shared per-bin helper, the backward
  the same gather as the per-pixel helper with its bin arithmetic hoisted out of the pixel loop.
* cuda: one thread per output bin (forward) and one per input pixel (backward, a gather):
  deterministic, no atomics.

Benchmark: ``python benchmarks/bench_adaptive_avg_pool2d.py``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda, prange

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


def _bin(i: int, n: int, o: int) -> tuple[int, int]:
    """[start, end) of bin i of o over n: floor(i*n/o), ceil((i+1)*n/o)."""
    return (i * n) // o, -((-(i + 1) * n) // o)


def adaptive_avg_pool2d_reference(x: np.ndarray, output_size: Pair) -> np.ndarray:
    N, C, H, W = x.shape
    OH, OW = output_size
    y = np.empty((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                h0, h1 = _bin(i, H, OH)
                for j in range(OW):
                    w0, w1 = _bin(j, W, OW)
                    s = x.dtype.type(0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            s += x[n, c, h, w]
                    y[n, c, i, j] = s / x.dtype.type((h1 - h0) * (w1 - w0))
    return y


def adaptive_avg_pool2d_backward_reference(gy: np.ndarray, input_size: Pair) -> np.ndarray:
    N, C, OH, OW = gy.shape
    H, W = input_size
    gx = np.zeros((N, C, H, W), gy.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                h0, h1 = _bin(i, H, OH)
                for j in range(OW):
                    w0, w1 = _bin(j, W, OW)
                    g = gy[n, c, i, j] / gy.dtype.type((h1 - h0) * (w1 - w0))
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            gx[n, c, h, w] += g
    return gx


# =============================================================================================
# shared per-element helpers (called from the numba CPU kernels and the CUDA kernels)
# =============================================================================================


@numba.njit(inline="always", cache=True)
def _bin_range(i, n, o):
    """Bin i of o over n covers [floor(i*n/o), ceil((i+1)*n/o))."""
    return (i * n) // o, ((i + 1) * n + o - 1) // o


@numba.njit(inline="always", cache=True)
def _adaptive_at(x, y, n, c, i, j):
    """y[n,c,i,j] = mean of x over bin (i, j), summed row-major."""
    h0, h1 = _bin_range(i, x.shape[2], y.shape[2])
    w0, w1 = _bin_range(j, x.shape[3], y.shape[3])
    acc = y.dtype.type(0)
    for h in range(h0, h1):
        for w in range(w0, w1):
            acc += x[n, c, h, w]
    y[n, c, i, j] = acc / y.dtype.type((h1 - h0) * (w1 - w0))


@numba.njit(inline="always", cache=True)
def _adaptive_grad_at(gy, gx, n, c, h, w):
    """gx[n,c,h,w] = sum over the bins containing (h, w) of gy / bin size, in (i, j) order."""
    H, W = gx.shape[2], gx.shape[3]
    OH, OW = gy.shape[2], gy.shape[3]
    # bin i contains h  <=>  floor(i*H/OH) <= h < ceil((i+1)*H/OH)
    #                   <=>  floor(h*OH/H) <= i < ceil((h+1)*OH/H)
    i0, i1 = _bin_range(h, OH, H)
    j0, j1 = _bin_range(w, OW, W)
    acc = gx.dtype.type(0)
    for i in range(i0, min(i1, OH)):
        h0, h1 = _bin_range(i, H, OH)
        for j in range(j0, min(j1, OW)):
            w0, w1 = _bin_range(j, W, OW)
            acc += gy[n, c, i, j] / gx.dtype.type((h1 - h0) * (w1 - w0))
    gx[n, c, h, w] = acc


# =============================================================================================
# numpy
# =============================================================================================


def averaging_matrix(o: int, n: int, dtype) -> np.ndarray:
    """(o, n): row i is 1/len over bin i of o bins covering n, zero elsewhere."""
    i = np.arange(o)[:, None]  # (o, 1)
    start, end = (i * n) // o, -((-(i + 1) * n) // o)
    k = np.arange(n)[None, :]  # (1, n)
    inside = (k >= start) & (k < end)  # (o, n)
    return (inside / (end - start)).astype(dtype)


def adaptive_avg_pool2d_numpy(x: np.ndarray, output_size: Pair) -> np.ndarray:
    H, W = x.shape[2:]
    Ah = averaging_matrix(output_size[0], H, x.dtype)  # (OH, H)
    Aw = averaging_matrix(output_size[1], W, x.dtype)  # (OW, W)
    return (Ah @ (x @ Aw.T)).astype(x.dtype)  # (OH, H) @ (N, C, H, OW) -> (N, C, OH, OW)


def adaptive_avg_pool2d_backward_numpy(gy: np.ndarray, input_size: Pair) -> np.ndarray:
    OH, OW = gy.shape[2:]
    Ah = averaging_matrix(OH, input_size[0], gy.dtype)  # (OH, H)
    Aw = averaging_matrix(OW, input_size[1], gy.dtype)  # (OW, W)
    return (Ah.T @ (gy @ Aw)).astype(gy.dtype)  # (H, OH) @ (N, C, OH, W) -> (N, C, H, W)


# =============================================================================================
# numba (CPU)
# =============================================================================================


@parallel_njit(cache=True)
def _adaptive_avg_pool2d_numba(x, y):
    N, C, OH, OW = y.shape
    for p in prange(N * C):
        n, c = p // C, p % C
        for i in range(OH):
            for j in range(OW):
                _adaptive_at(x, y, n, c, i, j)


@numba.njit(cache=True)
def _bin_tables(n, o):
    """For o bins over n: per input index k, the bins [first[k], last[k]) that contain it, and
    per bin its length (``_bin_range`` both ways, as tables)."""
    first, last = np.empty(n, np.int64), np.empty(n, np.int64)
    for k in range(n):
        a, b = _bin_range(k, o, n)
        first[k], last[k] = a, min(b, o)
    length = np.empty(o, np.int64)
    for i in range(o):
        a, b = _bin_range(i, n, o)
        length[i] = b - a
    return first, last, length


@parallel_njit(cache=True)
def _adaptive_avg_pool2d_backward_numba(gy, gx):
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    # The same gather as _adaptive_grad_at, with its integer divisions hoisted: which bins hold
    # each row h and column w is the same for every plane, and each bin's gy / size is computed
    # once per plane, not once per pixel it covers (the same terms, summed in the same order).
    i0, i1, lh = _bin_tables(H, OH)
    j0, j1, lw = _bin_tables(W, OW)
    size = np.empty((OH, OW), gx.dtype)  # (OH, OW) bin sizes lh_i * lw_j
    for i in range(OH):
        for j in range(OW):
            size[i, j] = lh[i] * lw[j]
    for p in prange(N * C):
        n, c = p // C, p % C
        g = gy[n, c] / size  # (OH, OW): each bin's share per pixel
        for h in range(H):
            row = gx[n, c, h]
            for w in range(W):
                acc = gx.dtype.type(0)
                for i in range(i0[h], i1[h]):
                    for j in range(j0[w], j1[w]):
                        acc += g[i, j]
                row[w] = acc


def adaptive_avg_pool2d_numba(x: np.ndarray, output_size: Pair) -> np.ndarray:
    N, C = x.shape[:2]
    y = np.empty((N, C) + tuple(output_size), x.dtype)
    if y.size:
        _adaptive_avg_pool2d_numba(np.ascontiguousarray(x), y)
    return y


def adaptive_avg_pool2d_backward_numba(gy: np.ndarray, input_size: Pair) -> np.ndarray:
    N, C = gy.shape[:2]
    gx = np.empty((N, C) + tuple(input_size), gy.dtype)
    if gx.size:
        _adaptive_avg_pool2d_backward_numba(np.ascontiguousarray(gy), gx)
    return gx


# =============================================================================================
# cuda
# =============================================================================================

# The simulator runs kernels as Python on fake arrays, which @njit helpers cannot unbox.
_adaptive_at_dev = _adaptive_at.py_func if SIMULATOR else _adaptive_at
_adaptive_grad_at_dev = _adaptive_grad_at.py_func if SIMULATOR else _adaptive_grad_at


def _adaptive_avg_pool2d_cuda(x, y):
    t = cuda.grid(1)
    N, C, OH, OW = y.shape
    if t >= N * C * OH * OW:
        return
    j = t % OW
    i = (t // OW) % OH
    c = (t // (OW * OH)) % C
    n = t // (OW * OH * C)
    _adaptive_at_dev(x, y, n, c, i, j)


def _adaptive_avg_pool2d_backward_cuda(gy, gx):
    t = cuda.grid(1)
    N, C, H, W = gx.shape
    if t >= N * C * H * W:
        return
    w = t % W
    h = (t // W) % H
    c = (t // (W * H)) % C
    n = t // (W * H * C)
    _adaptive_grad_at_dev(gy, gx, n, c, h, w)


adaptive_avg_pool2d_cuda_kernel = cuda.jit(_adaptive_avg_pool2d_cuda)
adaptive_avg_pool2d_backward_cuda_kernel = cuda.jit(_adaptive_avg_pool2d_backward_cuda)


def adaptive_avg_pool2d_cuda(x, output_size: Pair):
    N, C = x.shape[:2]
    if xp_of(x) is not np:
        x = xp_of(x).ascontiguousarray(x)
    y = dev_empty(x, (N, C) + tuple(output_size), x.dtype)
    launch(adaptive_avg_pool2d_cuda_kernel, y.size, to_dev(x), y)
    return to_host_like(x, y)


def adaptive_avg_pool2d_backward_cuda(gy, input_size: Pair):
    N, C = gy.shape[:2]
    if xp_of(gy) is not np:
        gy = xp_of(gy).ascontiguousarray(gy)
    gx = dev_empty(gy, (N, C) + tuple(input_size), gy.dtype)
    launch(adaptive_avg_pool2d_backward_cuda_kernel, gx.size, to_dev(gy), gx)
    return to_host_like(gy, gx)


# =============================================================================================
# tables
# =============================================================================================

IMPLS = {
    "adaptive_avg_pool2d": {
        "reference": adaptive_avg_pool2d_reference,
        "numpy": adaptive_avg_pool2d_numpy,
        "numba": adaptive_avg_pool2d_numba,
        "cuda": adaptive_avg_pool2d_cuda,
    },
    "adaptive_avg_pool2d_backward": {
        "reference": adaptive_avg_pool2d_backward_reference,
        "numpy": adaptive_avg_pool2d_backward_numpy,
        "numba": adaptive_avg_pool2d_backward_numba,
        "cuda": adaptive_avg_pool2d_backward_cuda,
    },
}



PTX = [
    (_adaptive_avg_pool2d_cuda,
     [(float_array(4, dt), float_array(4, dt)) for dt in FLOAT_DTYPES]),
    (_adaptive_avg_pool2d_backward_cuda,
     [(float_array(4, dt), float_array(4, dt)) for dt in FLOAT_DTYPES]),
]
