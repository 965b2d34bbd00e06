"""Pooling and unpooling with autograd: max_pool2d, max_unpool2d, avg_pool2d, adaptive_avg_pool2d.

Each op is a :class:`~minisegnet.tensor.Function` whose forward and backward call the kernels of
``kernels/<op>.py`` through the registry (``kernel(name, *arrays)``), so the implementation follows
the array type and ``msn.use_impl``. Semantics (SPEC):

* ``max_pool2d``: windows start at ``o*s - p``; only taps inside the input count (padding acts as
  -inf); the index is ``h*W + w`` within the unpadded (n, c) plane; the first maximum in row-major
  order wins and NaN wins (the first NaN: PyTorch returns the last one). ``ceil_mode=False``.
  Backward: ``gx.flat[idx] += gy``.
* ``max_unpool2d``: zeros of size ``(H - 1)s - 2p + k`` (or ``output_size``), then
  ``out.flat[idx] = x`` per plane; with repeated indices the last one in row-major order wins,
  on every implementation. Backward: ``gx = gy.flat[idx]`` (PyTorch's rule; the exact gradient
  when a plane's indices are distinct, as with indices from a non-overlapping max pool).
* ``avg_pool2d``: PyTorch's defaults ``count_include_pad=True``, ``ceil_mode=False``.
* ``adaptive_avg_pool2d``: bin i covers rows ``[floor(i*H/o), ceil((i+1)*H/o))``, likewise columns.

Bad input (SPEC): ValueError naming the argument and the shapes or values, TypeError for a
wrong type; checked here, before any kernel runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import is_cupy_array, kernel, register
from ..kernels import adaptive_avg_pool2d as _adaptive_kernels
from ..kernels import avg_pool2d as _avg_kernels
from ..kernels import max_pool2d as _max_kernels
from ..kernels import max_unpool2d as _unpool_kernels
from ..tensor import Function, Tensor, as_tensor

__all__ = [
    "max_pool2d",
    "max_unpool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "pool_output_size",
    "unpool_output_size",
]

for _k in (_max_kernels, _unpool_kernels, _avg_kernels, _adaptive_kernels):
    register(_k.IMPLS)

Pair = tuple[int, int]
IntOrPair = int | tuple[int, int]


# ============================================================================================
# argument handling
# ============================================================================================


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(value: Any, name: str, op: str) -> Pair:
    """``value`` as an (h, w) pair of ints: an int, or a tuple/list of two ints."""
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        raise ValueError(f"{op}: {name} must be an int or an (h, w) pair, got {value!r}")
    raise TypeError(f"{op}: {name} must be an int or an (h, w) pair of ints, got {value!r}")


def _float_input(x: Any, op: str, name: str = "input") -> Tensor:
    if not isinstance(x, Tensor) and not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(x).__name__}")
    x = as_tensor(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"{op}: {name} is empty: shape {tuple(x.shape)}")
    return x


def pool_output_size(size: int, kernel_size: int, stride: int, padding: int = 0,
                     dilation: int = 1) -> int:
    """max/avg pool output length ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (may be <= 0)."""
    return _max_kernels.output_size(size, kernel_size, stride, padding, dilation)


def unpool_output_size(size: int, kernel_size: int, stride: int, padding: int = 0) -> int:
    """max_unpool2d default output length ``(size - 1)s - 2p + k``."""
    return (size - 1) * stride - 2 * padding + kernel_size


def _pool_params(op: str, x: Tensor, kernel_size: Any, stride: Any, padding: Any,
                 dilation: Any = 1) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    """Validated (kernel, stride, padding, dilation, output size) pairs; SPEC "Bad input"."""
    k = _pair(kernel_size, "kernel_size", op)
    s = k if stride is None else _pair(stride, "stride", op)
    p = _pair(padding, "padding", op)
    d = _pair(dilation, "dilation", op)
    if min(k) <= 0:
        raise ValueError(f"{op}: kernel_size must be positive, got {k}")
    if min(s) <= 0:
        raise ValueError(f"{op}: stride must be positive, got {s}")
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {p}")
    if min(d) <= 0:
        raise ValueError(f"{op}: dilation must be positive, got {d}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding must be at most half the kernel size (as in PyTorch), "
                         f"got padding={p} for kernel_size={k}")
    H, W = x.shape[2:]
    out = (pool_output_size(H, k[0], s[0], p[0], d[0]), pool_output_size(W, k[1], s[1], p[1], d[1]))
    if min(out) <= 0:
        raise ValueError(
            f"{op}: empty output: input {tuple(x.shape)} with kernel_size={k}, stride={s}, "
            f"padding={p}, dilation={d} gives output size {out}")
    return k, s, p, d, out


def _check_windows_hit_input(op: str, x: Tensor, k: Pair, s: Pair, p: Pair, d: Pair,
                             out: Pair) -> None:
    """With dilation a window can fall entirely into the padding (its max would be -inf with no
    index): refuse such parameters instead of returning an index outside the plane."""
    for axis, name in ((0, "rows"), (1, "columns")):
        n = x.shape[2 + axis]
        start = np.arange(out[axis]) * s[axis] - p[axis]  # (O,) first tap of each window
        first = np.where(start < 0, (-start + d[axis] - 1) // d[axis], 0)  # first tap inside
        ok = (first < k[axis]) & (start + first * d[axis] < n)
        if not ok.all():
            o = int(np.argmin(ok))
            raise ValueError(
                f"{op}: window {o} along the {name} covers no input {name[:-1]}: input "
                f"{tuple(x.shape)}, kernel_size={k}, stride={s}, padding={p}, dilation={d}")


# ============================================================================================
# max_pool2d
# ============================================================================================


class MaxPool2d(Function):
    """y, idx = max_pool2d(x); backward scatters gy to the argmax positions."""

    def __init__(self, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> None:
        self.args = (kernel_size, stride, padding, dilation)

    def forward(self, x: Any) -> tuple[Any, Any]:
        y, idx = kernel("max_pool2d", x)(x, *self.args)
        self.idx, self.in_size = idx, x.shape[2:]
        return y, idx

    def backward(self, gy: Any, gidx: Any) -> Any:
        return kernel("max_pool2d_backward", gy)(gy, self.idx, self.in_size, *self.args)


def max_pool2d(input: Any, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, dilation: IntOrPair = 1, return_indices: bool = False,
               *, ceil_mode: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling over (N, C, H, W) -> (N, C, OH, OW), ``OH = floor((H + 2p - d(k-1) - 1)/s) + 1``.

    ``y[n,c,oh,ow] = max_{i,j} x[n, c, oh*s - p + i*d, ow*s - p + j*d]`` over taps inside the
    input (padding acts as -inf). ``stride`` defaults to ``kernel_size``; ``padding`` may be at
    most half the kernel. With ``return_indices`` also returns the int64 indices ``h*W + w``
    within each (n, c) plane (first maximum in row-major order; NaN wins), which
    :func:`max_unpool2d` takes. ``ceil_mode=True`` is not supported.
    """
    op = "max_pool2d"
    if ceil_mode:
        raise NotImplementedError(f"{op}: ceil_mode=True is not supported (ceil_mode=False only)")
    x = _float_input(input, op)
    k, s, p, d, out = _pool_params(op, x, kernel_size, stride, padding, dilation)
    if max(d) > 1:
        _check_windows_hit_input(op, x, k, s, p, d, out)
    y, idx = MaxPool2d(k, s, p, d)(x)
    return (y, idx) if return_indices else y


# ============================================================================================
# max_unpool2d
# ============================================================================================


class MaxUnpool2d(Function):
    """out = zeros, out.flat[idx] = x per plane; backward gathers gx = gy.flat[idx]."""

    def __init__(self, output_size: Pair) -> None:
        self.output_size = output_size

    def forward(self, x: Any, idx: Any) -> Any:
        self.idx = idx
        return kernel("max_unpool2d", x)(x, idx, self.output_size)

    def backward(self, gy: Any) -> tuple[Any, None]:
        return kernel("max_unpool2d_backward", gy)(gy, self.idx), None


def max_unpool2d(input: Any, indices: Any, kernel_size: IntOrPair,
                 stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 output_size: Any = None) -> Tensor:
    """Partial inverse of max_pool2d: (N, C, H, W) values and indices -> (N, C, OH, OW).

    ``out[n, c].flat[indices[n, c, i, j]] = input[n, c, i, j]`` into zeros (the last write wins
    for repeated indices). ``OH = (H - 1)*s - 2p + k`` unless ``output_size`` ((OH, OW) or the
    full (N, C, OH, OW)) is given; like PyTorch it must lie strictly within ``stride`` of that
    default. Differentiable in ``input``: ``grad_input = grad_out.flat[indices]``.
    """
    op = "max_unpool2d"
    x = _float_input(input, op)
    if not isinstance(indices, Tensor) and not (isinstance(indices, np.ndarray)
                                                or is_cupy_array(indices)):
        raise TypeError(f"{op}: indices must be a Tensor or an array, got "
                        f"{type(indices).__name__}")
    it = as_tensor(indices)
    if it.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array (int64), got dtype {it.dtype}")
    if tuple(it.shape) != tuple(x.shape):
        raise ValueError(f"{op}: indices shape {tuple(it.shape)} must equal input shape "
                         f"{tuple(x.shape)}")
    if it.device != x.device:
        raise TypeError(f"{op}: input is on {x.device} but indices are on {it.device}")
    k = _pair(kernel_size, "kernel_size", op)
    s = k if stride is None else _pair(stride, "stride", op)
    p = _pair(padding, "padding", op)
    if min(k) <= 0:
        raise ValueError(f"{op}: kernel_size must be positive, got {k}")
    if min(s) <= 0:
        raise ValueError(f"{op}: stride must be positive, got {s}")
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {p}")
    H, W = x.shape[2:]
    default = (unpool_output_size(H, k[0], s[0], p[0]), unpool_output_size(W, k[1], s[1], p[1]))
    if output_size is None:
        out = default
    else:
        if isinstance(output_size, Tensor) or not isinstance(output_size, (tuple, list)) or \
                not all(_is_int(v) for v in output_size):
            raise TypeError(f"{op}: output_size must be a tuple of ints, got {output_size!r}")
        size = tuple(int(v) for v in output_size)
        if len(size) == 4:
            size = size[2:]
        if len(size) != 2:
            raise ValueError(f"{op}: output_size must have 2 or 4 elements, got {output_size!r}")
        for a in range(2):
            lo, hi = default[a] - s[a], default[a] + s[a]
            if not lo < size[a] < hi:
                raise ValueError(
                    f"{op}: invalid output_size {size}: dim {a} must be strictly between {lo} "
                    f"and {hi} (default {default} for input {tuple(x.shape)}, "
                    f"kernel_size={k}, stride={s}, padding={p})")
        out = size
    if min(out) <= 0:
        raise ValueError(f"{op}: empty output: input {tuple(x.shape)} with kernel_size={k}, "
                         f"stride={s}, padding={p} gives output size {out}")
    plane = out[0] * out[1]
    if it.data.size:
        lo_i, hi_i = int(it.data.min()), int(it.data.max())  # NumPy or CuPy
        if lo_i < 0 or hi_i >= plane:
            bad = lo_i if lo_i < 0 else hi_i
            raise ValueError(
                f"{op}: indices must lie in [0, {plane}) for output planes {out}, found {bad} "
                f"(indices range [{lo_i}, {hi_i}], input {tuple(x.shape)})")
    idx = it.data if it.dtype == np.int64 else it.data.astype(np.int64)
    return MaxUnpool2d(out)(x, idx)


# ============================================================================================
# avg_pool2d
# ============================================================================================


class AvgPool2d(Function):
    """y = windowed mean (padding counted as zeros); backward is its adjoint, a gather."""

    def __init__(self, kernel_size: Pair, stride: Pair, padding: Pair) -> None:
        self.args = (kernel_size, stride, padding)

    def forward(self, x: Any) -> Any:
        self.in_size = x.shape[2:]
        return kernel("avg_pool2d", x)(x, *self.args)

    def backward(self, gy: Any) -> Any:
        return kernel("avg_pool2d_backward", gy)(gy, self.in_size, *self.args)


def avg_pool2d(input: Any, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, *, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Average pooling (N, C, H, W) -> (N, C, OH, OW), ``OH = floor((H + 2p - k)/s) + 1``.

    ``y[n,c,oh,ow] = sum_{i,j} x[n, c, oh*s - p + i, ow*s - p + j] / (kh*kw)`` with the padding
    read as zeros (PyTorch's ``count_include_pad=True``, ``ceil_mode=False``: the only modes
    supported). ``stride`` defaults to ``kernel_size``; ``padding`` at most half the kernel.
    """
    op = "avg_pool2d"
    if ceil_mode or not count_include_pad:
        raise NotImplementedError(
            f"{op}: only ceil_mode=False, count_include_pad=True are supported, got "
            f"ceil_mode={ceil_mode}, count_include_pad={count_include_pad}")
    x = _float_input(input, op)
    k, s, p, _, _ = _pool_params(op, x, kernel_size, stride, padding)
    return AvgPool2d(k, s, p)(x)


# ============================================================================================
# adaptive_avg_pool2d
# ============================================================================================


class AdaptiveAvgPool2d(Function):
    """y = bin means; backward is its adjoint, a gather."""

    def __init__(self, output_size: Pair) -> None:
        self.output_size = output_size

    def forward(self, x: Any) -> Any:
        self.in_size = x.shape[2:]
        return kernel("adaptive_avg_pool2d", x)(x, self.output_size)

    def backward(self, gy: Any) -> Any:
        return kernel("adaptive_avg_pool2d_backward", gy)(gy, self.in_size)


def adaptive_avg_pool2d(input: Any, output_size: int | tuple[int | None, int | None]) -> Tensor:
    """Average over an OH x OW grid of bins: (N, C, H, W) -> (N, C, OH, OW).

    Bin i covers rows ``[floor(i*H/OH), ceil((i+1)*H/OH))``, likewise columns, and
    ``y[n,c,i,j]`` is the mean of x over bin (i, j). ``output_size`` is an int or an (OH, OW)
    pair whose None entries keep the input's size (PyTorch's convention).
    """
    op = "adaptive_avg_pool2d"
    x = _float_input(input, op)
    if _is_int(output_size) or output_size is None:
        size = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        size = tuple(output_size)
    elif isinstance(output_size, (tuple, list)):
        raise ValueError(f"{op}: output_size must be an int or an (h, w) pair, got "
                         f"{output_size!r}")
    else:
        raise TypeError(f"{op}: output_size must be an int or an (h, w) pair, got "
                        f"{output_size!r}")
    out = []
    for a, v in enumerate(size):
        if v is None:
            out.append(int(x.shape[2 + a]))
        elif _is_int(v):
            out.append(int(v))
        else:
            raise TypeError(f"{op}: output_size entries must be ints or None, got "
                            f"{output_size!r}")
    if min(out) <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {tuple(out)} for input "
                         f"{tuple(x.shape)}")
    return AdaptiveAvgPool2d(tuple(out))(x)
