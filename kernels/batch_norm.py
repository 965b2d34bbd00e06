"""Batch normalisation, fused: one pass over the data for the statistics, one for the output.

Formula (per channel c, over the m = N*L values x[n, c, l], L = the product of the trailing axes)::

    mean[c] = sum x / m,   var[c] = sum (x - mean)^2 / m          (biased; training only)
    y       = (x - mean) * scale[c] + shift[c]                     scale = gamma / sqrt(var + eps)
                                                                    shift = beta

In evaluation mean/var are the running statistics: the same ``apply`` with other constants.
Backward (training), with ``xhat = (x - mean) * invstd`` and the two fused reductions::

    S_g  = sum gy,   S_gx = sum gy * (x - mean)                    (one pass over gy and x)
    gbeta = S_g,     ggamma = invstd * S_gx
    gx    = a*gy + b*(x - mean) + k,   a = gamma*invstd,  b = -a*invstd^2*S_gx/m,  k = -a*S_g/m

which is ``invstd/m * (m*g - sum g - xhat*sum(g*xhat))`` with g = gamma*gy, rearranged so that
the second pass is one multiply-add per element with three per-channel constants (in evaluation
b = k = 0). The per-channel constants are C numbers, computed by the caller in float64
(``minisegnet/functional/batch_norm.py``); the kernels do the O(N*C*L) passes. Nothing of size x
is kept between forward and backward except x itself (xhat is recomputed from it, as PyTorch does).

Batch norm + ReLU, fused (``relu=True``; U-Net's and ResNet's conv -> BN -> ReLU): the output
pass writes ``max(y, 0)`` and the backward passes take that output and use ``gy * (y > 0)`` (the
gradient with respect to the pre-activation) wherever gy appears above, so S_g, S_gx, gbeta,
ggamma and gx are those of BN for that masked gradient. No pass of its own for the ReLU either
way, and nothing more is kept: the ReLU's output is the next conv's input, held anyway.

Shapes: x, gy, y, gx (N, C, ...) of float32/float64, viewed as (N, C, L); the statistics and
reductions are float64 (C,); the constants given to ``apply`` / ``backward_apply`` are (C,).

Kernels (every implementation has these signatures)::

    batch_norm_stats(x) -> (mean, var)                  float64 (C,), var biased
    batch_norm_apply(x, mean, scale, shift, relu=False) -> y
    batch_norm_backward_reduce(gy, x, mean, y=None) -> (S_g, S_gx)   float64 (C,)
    batch_norm_backward_apply(gy, x, mean, a, b, k, y=None) -> gx

(``y`` given: the output of a ``relu=True`` apply, and gy is masked by ``y > 0``.)

Versions in this file:

* ``reference``: Python loops straight from the formulas (two passes for the variance, float64
  scalars). The oracle; keep shapes tiny.
* ``numpy``: vectorised NumPy (float64 sums via ``dtype=``), what ``nn.BatchNorm2d`` ran before
  the kernels, with its temporaries.
* ``numba``: ``@parallel_njit`` (``kernels/_parallel.py``: parallel, thread-safe), one prange
  iteration per (n, c) row: the statistics of a row in one pass as float64 sums of ``x - K`` and
  ``(x - K)^2`` with K = x[0, c, 0] (the shifted-data algorithm: no cancellation when the mean is
  large against the spread), the rows of a channel then added in a fixed order, so the result does
  not depend on the thread count. ``fastmath`` reassociation lets LLVM vectorise those sums. The
  two output passes are one fused multiply-add per element per row.
* ``cuda``: one block per channel for the reductions (one kernel for both: the statistics and the
  backward's S_g, S_gx; the block strides over the channel's values, float64 accumulators, then
  a tree reduction in shared memory in a fixed order: deterministic), one thread per element for
  the output passes.

How to benchmark: ``python benchmarks/bench_batch_norm.py`` (against PyTorch and the numpy
version), or ``python benchmarks/bench_train_step.py --what bn`` (issue 16's figure).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import cuda, prange, types

from ._cuda import FLOAT_DTYPES, SIMULATOR, empty_like_module, float_array, launch, xp_of
from ._parallel import parallel_njit


def _rows(a: Any) -> Any:
    """``a`` (N, C, ...) as a C-contiguous (N, C, L) view (a copy only if not contiguous)."""
    a = xp_of(a).ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)  # (N, C, L)


# ============================================================================================
# reference: loops straight from the formulas
# ============================================================================================


def batch_norm_stats_reference(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased var), float64 (C,): two passes over each channel."""
    r = _rows(x)
    N, C, L = r.shape
    mean, var = np.zeros(C), np.zeros(C)
    for c in range(C):
        s = 0.0
        for n in range(N):
            for i in range(L):
                s += float(r[n, c, i])
        mean[c] = s / (N * L)
        s = 0.0
        for n in range(N):
            for i in range(L):
                s += (float(r[n, c, i]) - mean[c]) ** 2
        var[c] = s / (N * L)
    return mean, var


def batch_norm_apply_reference(x: Any, mean: Any, scale: Any, shift: Any,
                               relu: bool = False) -> np.ndarray:
    """y = (x - mean[c]) * scale[c] + shift[c] (then max(y, 0) when relu), in x's dtype."""
    r = _rows(x)
    N, C, L = r.shape
    y = np.empty(r.shape, dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(L):
                v = (float(r[n, c, i]) - float(mean[c])) * float(scale[c]) + float(shift[c])
                y[n, c, i] = max(v, 0.0) if relu else v
    return y.reshape(x.shape)


def _masked_reference(g: np.ndarray, y: Any, n: int, c: int, i: int) -> float:
    """gy at one element, times (y > 0) when the output y of a fused ReLU is given."""
    return float(g[n, c, i]) if y is None or y[n, c, i] > 0 else 0.0


def batch_norm_backward_reduce_reference(gy: Any, x: Any, mean: Any,
                                         y: Any = None) -> tuple[np.ndarray, ...]:
    """(sum g, sum g * (x - mean)) per channel, float64 (C,); g = gy, or gy * (y > 0)."""
    g, r = _rows(gy), _rows(x)
    y = None if y is None else _rows(y)
    N, C, L = r.shape
    s_g, s_gx = np.zeros(C), np.zeros(C)
    for c in range(C):
        for n in range(N):
            for i in range(L):
                gi = _masked_reference(g, y, n, c, i)
                s_g[c] += gi
                s_gx[c] += gi * (float(r[n, c, i]) - float(mean[c]))
    return s_g, s_gx


def batch_norm_backward_apply_reference(gy: Any, x: Any, mean: Any, a: Any, b: Any, k: Any,
                                        y: Any = None) -> np.ndarray:
    """gx = a[c]*g + b[c]*(x - mean[c]) + k[c], in x's dtype; g = gy, or gy * (y > 0)."""
    g, r = _rows(gy), _rows(x)
    y = None if y is None else _rows(y)
    N, C, L = r.shape
    gx = np.empty(r.shape, dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(L):
                gx[n, c, i] = (float(a[c]) * _masked_reference(g, y, n, c, i)
                               + float(b[c]) * (float(r[n, c, i]) - float(mean[c])) + float(k[c]))
    return gx.reshape(x.shape)


# ============================================================================================
# numpy: vectorised, with the temporaries
# ============================================================================================


def _per_channel(v: Any, dtype: Any) -> Any:
    return xp_of(v).asarray(v, dtype=dtype).reshape(1, -1, 1)  # (1, C, 1)


def batch_norm_stats_numpy(x: Any) -> tuple[Any, Any]:
    r = _rows(x)
    mean = r.mean(axis=(0, 2), dtype=np.float64)
    d = r - mean.astype(r.dtype).reshape(1, -1, 1)  # exact: x and the mean are close
    var = np.square(d, dtype=np.float64).mean(axis=(0, 2))
    # d was centred on the rounded mean: correct for the rounding (one-pass form, tiny term)
    off = d.mean(axis=(0, 2), dtype=np.float64)
    return mean, np.maximum(var - off * off, 0.0)


def batch_norm_apply_numpy(x: Any, mean: Any, scale: Any, shift: Any, relu: bool = False) -> Any:
    r = _rows(x)
    dt = r.dtype
    y = (r - _per_channel(mean, dt)) * _per_channel(scale, dt) + _per_channel(shift, dt)
    if relu:
        xp_of(y).maximum(y, 0, out=y)
    return y.reshape(x.shape)


def _masked_numpy(gy: Any, y: Any) -> Any:
    g = _rows(gy)
    return g if y is None else g * (_rows(y) > 0)


def batch_norm_backward_reduce_numpy(gy: Any, x: Any, mean: Any, y: Any = None) -> tuple[Any, Any]:
    g, r = _masked_numpy(gy, y), _rows(x)
    d = r - _per_channel(mean, np.float64)  # (N, C, L) float64: the mean is not rounded
    return g.sum(axis=(0, 2), dtype=np.float64), (g * d).sum(axis=(0, 2))


def batch_norm_backward_apply_numpy(gy: Any, x: Any, mean: Any, a: Any, b: Any, k: Any,
                                    y: Any = None) -> Any:
    g, r = _masked_numpy(gy, y), _rows(x)
    dt = r.dtype
    gx = (_per_channel(a, dt) * g + _per_channel(b, dt) * (r - _per_channel(mean, dt))
          + _per_channel(k, dt))
    return gx.reshape(x.shape)


# ============================================================================================
# numba: one prange iteration per (n, c) row; rows of a channel combined in a fixed order
# ============================================================================================

# Reassociation lets LLVM split each float64 sum over SIMD lanes (the same split on every run:
# the result is deterministic, and the serial twin compiles the same loop).
_FAST = {"reassoc", "contract", "nsz"}


@parallel_njit(cache=True, fastmath=_FAST)
def _stats_rows(x, shift, s1, s2):
    N, C, L = x.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        k = shift[c]
        a = 0.0
        b = 0.0
        for i in range(L):
            d = np.float64(x[n, c, i]) - k
            a += d
            b += d * d
        s1[n, c] = a
        s2[n, c] = b


# ``relu`` is a loop-invariant flag (LLVM unswitches the loop on it); ``y`` is the fused ReLU's
# output when it is set, and any array of gy's shape (gy itself) when not.


@parallel_njit(cache=True, fastmath=_FAST)
def _apply_rows(x, mean, scale, shift, relu, y):
    N, C, L = x.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        m, s, b = mean[c], scale[c], shift[c]
        for i in range(L):
            v = (x[n, c, i] - m) * s + b
            if relu and v < 0:
                v = 0
            y[n, c, i] = v


@parallel_njit(cache=True, fastmath=_FAST)
def _backward_reduce_rows(gy, x, mean, relu, y, s1, s2):
    N, C, L = x.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        m = mean[c]
        a = 0.0
        b = 0.0
        for i in range(L):
            g = np.float64(gy[n, c, i])
            if relu and not y[n, c, i] > 0:
                g = 0.0
            a += g
            b += g * (np.float64(x[n, c, i]) - m)
        s1[n, c] = a
        s2[n, c] = b


@parallel_njit(cache=True, fastmath=_FAST)
def _backward_apply_rows(gy, x, mean, a, b, k, relu, y, gx):
    N, C, L = x.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        m, ac, bc, kc = mean[c], a[c], b[c], k[c]
        for i in range(L):
            g = gy[n, c, i]
            if relu and not y[n, c, i] > 0:
                g = 0
            gx[n, c, i] = ac * g + bc * (x[n, c, i] - m) + kc


def _const(v: Any, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=dtype)  # (C,)


def batch_norm_stats_numba(x: Any) -> tuple[np.ndarray, np.ndarray]:
    r = _rows(x)
    N, C, L = r.shape
    shift = r[0, :, 0].astype(np.float64)  # K per channel: one of its values
    s1, s2 = np.empty((N, C)), np.empty((N, C))
    _stats_rows(r, shift, s1, s2)
    m = N * L
    d = s1.sum(axis=0) / m  # mean - K; NumPy sums the N rows in a fixed order
    return shift + d, np.maximum(s2.sum(axis=0) / m - d * d, 0.0)


def batch_norm_apply_numba(x: Any, mean: Any, scale: Any, shift: Any,
                           relu: bool = False) -> np.ndarray:
    r = _rows(x)
    y = np.empty(r.shape, dtype=r.dtype)
    _apply_rows(r, _const(mean, r.dtype), _const(scale, r.dtype), _const(shift, r.dtype),
                bool(relu), y)
    return y.reshape(x.shape)


def _mask_arg(g: Any, y: Any) -> tuple[bool, Any]:
    """(relu flag, mask source) for the backward kernels: gy itself stands in when no y."""
    return (False, g) if y is None else (True, _rows(y))


def batch_norm_backward_reduce_numba(gy: Any, x: Any, mean: Any,
                                     y: Any = None) -> tuple[np.ndarray, ...]:
    g, r = _rows(gy), _rows(x)
    N, C, _ = r.shape
    s1, s2 = np.empty((N, C)), np.empty((N, C))
    _backward_reduce_rows(g, r, _const(mean, np.float64), *_mask_arg(g, y), s1, s2)
    return s1.sum(axis=0), s2.sum(axis=0)


def batch_norm_backward_apply_numba(gy: Any, x: Any, mean: Any, a: Any, b: Any, k: Any,
                                    y: Any = None) -> np.ndarray:
    g, r = _rows(gy), _rows(x)
    dt = r.dtype
    gx = np.empty(r.shape, dtype=dt)
    _backward_apply_rows(g, r, _const(mean, dt), _const(a, dt), _const(b, dt), _const(k, dt),
                         *_mask_arg(g, y), gx)
    return gx.reshape(x.shape)


# ============================================================================================
# cuda: one block per channel for the sums (tree reduction), one thread per element otherwise
# ============================================================================================

RED = 32 if SIMULATOR else 256  # threads of a reducing block (a power of two)


def _channel_sums_cuda(u, x, center, stats, relu, y, s1, s2):
    """Per channel c (one block): s1 = sum f and s2 = sum f * d over the channel's values, with
    d = x - center[c] and f = d for the statistics (``stats``; u unused), f = u masked by
    ``y > 0`` when ``relu`` for the backward reduction (u = gy). One kernel, one tree reduction."""
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    N, C, L = x.shape
    a = 0.0
    b = 0.0
    if c < C:
        k = center[c]
        for e in range(t, N * L, RED):  # consecutive threads read consecutive values
            n, i = e // L, e % L
            d = float(x[n, c, i]) - k
            f = d
            if not stats:
                f = float(u[n, c, i])
                if relu and not y[n, c, i] > 0:
                    f = 0.0
            a += f
            b += f * d
    pa = cuda.shared.array(RED, dtype=numba.float64)
    pb = cuda.shared.array(RED, dtype=numba.float64)
    pa[t] = a
    pb[t] = b
    cuda.syncthreads()
    s = RED // 2
    while s > 0:  # tree reduction in a fixed order: the same bits every run
        if t < s:
            pa[t] += pa[t + s]
            pb[t] += pb[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0 and c < C:
        s1[c] = pa[0]
        s2[c] = pb[0]


def _apply_cuda(x, mean, scale, shift, relu, y, total):
    e = cuda.grid(1)
    if e >= total:
        return
    N, C, L = x.shape
    c = (e // L) % C
    n = e // (L * C)
    i = e % L
    v = (x[n, c, i] - mean[c]) * scale[c] + shift[c]
    if relu and v < 0:
        v = 0
    y[n, c, i] = v


def _backward_apply_cuda(gy, x, mean, a, b, k, relu, y, gx, total):
    e = cuda.grid(1)
    if e >= total:
        return
    N, C, L = x.shape
    c = (e // L) % C
    n = e // (L * C)
    i = e % L
    g = gy[n, c, i]
    if relu and not y[n, c, i] > 0:
        g = 0
    gx[n, c, i] = a[c] * g + b[c] * (x[n, c, i] - mean[c]) + k[c]


_channel_sums_cuda_kernel = cuda.jit(_channel_sums_cuda)
_apply_cuda_kernel = cuda.jit(_apply_cuda)
_backward_apply_cuda_kernel = cuda.jit(_backward_apply_cuda)


def _dev_const(like: Any, v: Any, dtype: Any) -> Any:
    return xp_of(like).ascontiguousarray(xp_of(like).asarray(v, dtype=dtype))  # (C,)


def batch_norm_stats_cuda(x: Any) -> tuple[Any, Any]:
    r = _rows(x)
    xp = xp_of(r)
    N, C, L = r.shape
    shift = r[0, :, 0].astype(np.float64)
    s1 = empty_like_module(r, (C,), np.float64)
    s2 = empty_like_module(r, (C,), np.float64)
    _channel_sums_cuda_kernel[C, RED](r, r, shift, True, False, r, s1, s2)
    d = s1 / (N * L)
    return shift + d, xp.maximum(s2 / (N * L) - d * d, 0.0)


def batch_norm_apply_cuda(x: Any, mean: Any, scale: Any, shift: Any, relu: bool = False) -> Any:
    r = _rows(x)
    dt = r.dtype
    y = empty_like_module(r, r.shape)
    launch(_apply_cuda_kernel, r.size, r, _dev_const(r, mean, dt), _dev_const(r, scale, dt),
           _dev_const(r, shift, dt), bool(relu), y, r.size)
    return y.reshape(x.shape)


def batch_norm_backward_reduce_cuda(gy: Any, x: Any, mean: Any, y: Any = None) -> tuple[Any, Any]:
    g, r = _rows(gy), _rows(x)
    C = r.shape[1]
    s1 = empty_like_module(r, (C,), np.float64)
    s2 = empty_like_module(r, (C,), np.float64)
    _channel_sums_cuda_kernel[C, RED](g, r, _dev_const(r, mean, np.float64), False,
                                      *_mask_arg(g, y), s1, s2)
    return s1, s2


def batch_norm_backward_apply_cuda(gy: Any, x: Any, mean: Any, a: Any, b: Any, k: Any,
                                   y: Any = None) -> Any:
    g, r = _rows(gy), _rows(x)
    dt = r.dtype
    gx = empty_like_module(r, r.shape)
    launch(_backward_apply_cuda_kernel, r.size, g, r, _dev_const(r, mean, dt),
           _dev_const(r, a, dt), _dev_const(r, b, dt), _dev_const(r, k, dt), *_mask_arg(g, y), gx,
           r.size)
    return gx.reshape(x.shape)


# ============================================================================================
# tables
# ============================================================================================

IMPLS = {
    "batch_norm_stats": {
        "reference": batch_norm_stats_reference,
        "numpy": batch_norm_stats_numpy,
        "numba": batch_norm_stats_numba,
        "cuda": batch_norm_stats_cuda,
    },
    "batch_norm_apply": {
        "reference": batch_norm_apply_reference,
        "numpy": batch_norm_apply_numpy,
        "numba": batch_norm_apply_numba,
        "cuda": batch_norm_apply_cuda,
    },
    "batch_norm_backward_reduce": {
        "reference": batch_norm_backward_reduce_reference,
        "numpy": batch_norm_backward_reduce_numpy,
        "numba": batch_norm_backward_reduce_numba,
        "cuda": batch_norm_backward_reduce_cuda,
    },
    "batch_norm_backward_apply": {
        "reference": batch_norm_backward_apply_reference,
        "numpy": batch_norm_backward_apply_numpy,
        "numba": batch_norm_backward_apply_numba,
        "cuda": batch_norm_backward_apply_cuda,
    },
}

_I = types.int64
_B = types.boolean
_F64 = types.Array(types.float64, 1, "C")
PTX = [
    (_channel_sums_cuda, [(float_array(3, dt), float_array(3, dt), _F64, _B, _B,
                           float_array(3, dt), _F64, _F64) for dt in FLOAT_DTYPES]),
    (_apply_cuda, [(float_array(3, dt), *[float_array(1, dt)] * 3, _B, float_array(3, dt), _I)
                   for dt in FLOAT_DTYPES]),
    (_backward_apply_cuda, [(float_array(3, dt), float_array(3, dt), *[float_array(1, dt)] * 4,
                             _B, float_array(3, dt), float_array(3, dt), _I)
                            for dt in FLOAT_DTYPES]),
]
