"""Convolutions: ``conv2d`` and ``conv_transpose2d``, with autograd.

Both ops are built from two array-level functions of ``kernels/conv2d.py``, and each op's backward
is the *other* op:

* ``conv2d_array(x, w, gy=None)``: y = C_w x, the cross-correlation, as im2col then a GEMM
  ``W (O, C*KH*KW) @ cols (N, C*KH*KW, OH*OW) -> (N, O, OH*OW)``, already NCHW. Given ``gy`` it
  also returns the weight gradient ``sum_n gy[n] @ cols[n]^T`` from the *same* columns.
* ``conv_transpose2d_array(gy, w)``: C_w^T gy, the adjoint, as ``W^T @ gy`` then col2im. It is
  conv_transpose2d's forward *and* conv2d's input gradient: one function.

So (as in DeZero's ``functions_conv.py``)::

    conv2d.backward(gy)           = (conv_transpose2d(gy, w),  weight grad from im2col(x)  & gy)
    conv_transpose2d.backward(gy) = (conv2d(gy, w),            weight grad from im2col(gy) & x)

and conv_transpose2d's backward gets both gradients from one pass over the columns of gy.

The array-level functions, the blocked CPU driver behind them (per-core blocks of im2col + GEMM, the
rotated kernel for stride-1 adjoints, the one-pass backward) and the plain-loop reference all live
in ``kernels/conv2d.py``; this module is the autograd layer: argument checks, two Functions, two
public functions. 3x3 stride-1 convs may run as Winograd F(2x2, 3x3) there;
``F.conv2d_algorithm("winograd" | "im2col" | "auto")`` forces either path (see that file).

Output sizes (SPEC): conv2d ``H_out = floor((H + 2p - d(k-1) - 1) / s) + 1``; conv_transpose2d
``H_out = (H - 1)s - 2p + d(k-1) + output_padding + 1`` with ``output_padding < max(s, d)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import is_cupy_array, register
from ..kernels import conv2d as _conv_kernels
from ..kernels import im2col as _im2col_kernels
from ..kernels.conv2d import conv2d_algorithm, conv_output_size
from ..tensor import Function, Tensor, as_tensor

__all__ = ["conv2d", "conv_transpose2d", "conv_output_size", "conv_transpose_output_size",
           "conv2d_algorithm"]

register(_im2col_kernels.IMPLS)
register(_conv_kernels.IMPLS)
try:  # the direct depthwise kernels are optional: without them the grouped im2col path runs
    from ..kernels import depthwise_conv2d as _depthwise_kernels

    register(_depthwise_kernels.IMPLS)
except ImportError:  # pragma: no cover - only while that module is absent
    pass

Pair = tuple[int, int]


# ============================================================================================
# argument handling
# ============================================================================================


def _pair(value: Any, name: str) -> Pair:
    """``value`` as an (h, w) pair of ints: an int, or a tuple/list of two ints."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
        if all(is_int(v) for v in value):
            return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """conv_transpose2d output length ``(size - 1)s - 2p + d(k-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _check_tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor) and not (isinstance(t, np.ndarray) or is_cupy_array(t)):
        raise TypeError(f"{name} must be a Tensor or an array, got {type(t).__name__}")
    t = as_tensor(t)
    if t.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {t.dtype}")
    return t


def _check_common(op: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                  dilation: Any, groups: Any):
    """Shared validation; returns tensors and (h, w) pairs. Raises per SPEC "Bad input"."""
    x = _check_tensor(x, "input")
    weight = _check_tensor(weight, "weight")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    if x.device != weight.device:
        raise TypeError(f"{op}: input is on {x.device} but weight is on {weight.device}")
    if bias is not None:
        bias = _check_tensor(bias, "bias")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"{op}: bias ({bias.dtype}, {bias.device}) does not match input "
                            f"({x.dtype}, {x.device})")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(s) <= 0:
        raise ValueError(f"{op}: stride must be positive, got {s}")
    if min(d) <= 0:
        raise ValueError(f"{op}: dilation must be positive, got {d}")
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {p}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"{op}: groups must be positive, got {groups}")
    if min(weight.shape[2:]) <= 0:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {weight.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{op}: input has an empty batch or channel axis: shape {x.shape}")
    return x, weight, bias, s, p, d, groups


# ============================================================================================
# autograd Functions
# ============================================================================================


class Conv2d(Function):
    """conv2d as a Function: forward(x, w[, b]) -> y; backward via conv_transpose2d."""

    def __init__(self, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                 out_hw: Pair) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_hw = out_hw

    def forward(self, x, w, b=None):
        y, _ = _conv_kernels.conv2d_array(x, w, self.stride, self.padding, self.dilation,
                                          self.groups, self.out_hw)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = x, w
        return y

    def backward(self, gy):
        need = self.needs_input_grad
        # stride 1 (numba): both gradients from one conv of gy with the rotated kernel
        gx, gw = _conv_kernels.conv2d_backward_array(
            gy, self.x, self.w, self.stride, self.padding, self.dilation, self.groups,
            self.out_hw, need[0], need[1])
        if len(need) == 2:
            return gx, gw
        return gx, gw, (gy.sum(axis=(0, 2, 3)) if need[2] else None)


class ConvTranspose2d(Function):
    """conv_transpose2d as a Function: forward(x, w[, b]) -> y; backward via conv2d."""

    def __init__(self, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                 out_shape: tuple) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_shape = out_shape

    def forward(self, x, w, b=None):
        # conv_transpose2d with weight (C_in, O/G, KH, KW) is the adjoint of the conv2d that maps
        # (N, O, H_out, W_out) to (N, C_in, H, W) with that same weight.
        y = _conv_kernels.conv_transpose2d_array(x, w, self.out_shape, self.stride,
                                                 self.padding, self.dilation, self.groups)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = x, w
        return y

    def backward(self, gy):
        x, w = self.x, self.w
        geo = (self.stride, self.padding, self.dilation, self.groups)
        need = self.needs_input_grad
        # Input gradient = conv2d(gy); weight gradient = conv2d's weight gradient with the roles
        # of input (gy) and output gradient (x) swapped, from the same columns of gy.
        gx, gw = _conv_kernels.conv2d_array(gy, w if need[0] else None, *geo,
                                            tuple(x.shape[2:]), gy=x if need[1] else None,
                                            w_shape=w.shape)
        if len(need) == 2:
            return gx, gw
        return gx, gw, (gy.sum(axis=(0, 2, 3)) if need[2] else None)


# ============================================================================================
# public functions
# ============================================================================================


def conv2d(x: Any, weight: Any, bias: Any = None, stride: int | Pair = 1,
           padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation, PyTorch's ``conv2d``.

    ``y[n, o, i, j] = b[o] + sum_{c in group(o), p, q} x[n, c, i*s - pad + p*d, j*s - pad + q*d]
    * weight[o, c - c0(o), p, q]``, reads outside the input being 0.

    Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,) or None -> y (N, O, OH, OW)
    with ``OH = floor((H + 2p - d(KH-1) - 1) / s) + 1`` (likewise OW). stride, padding and
    dilation take an int or an (h, w) pair. ``groups = C`` with ``O = m*C`` is depthwise.
    Differentiable in x, weight and bias.
    """
    x, weight, bias, s, p, d, g = _check_common("conv2d", x, weight, bias, stride, padding,
                                                dilation, groups)
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    if C % g != 0 or O % g != 0:
        raise ValueError(f"conv2d: groups={g} must divide input channels {C} and output "
                         f"channels {O} (input {x.shape}, weight {weight.shape})")
    if Cg * g != C:
        raise ValueError(f"conv2d: weight.shape[1] * groups must equal input channels: "
                         f"{Cg} * {g} != {C} (input {x.shape}, weight {weight.shape})")
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"conv2d: bias must have shape ({O},), got {bias.shape}")
    oh, ow = (conv_output_size(H, kh, s[0], p[0], d[0]), conv_output_size(W, kw, s[1], p[1], d[1]))
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"conv2d: empty output {(N, O, oh, ow)}: input {x.shape} is smaller than the dilated "
            f"kernel ({d[0] * (kh - 1) + 1}, {d[1] * (kw - 1) + 1}) plus padding {p}")
    fn = Conv2d(s, p, d, g, (oh, ow))
    return fn(x, weight) if bias is None else fn(x, weight, bias)


def conv_transpose2d(x: Any, weight: Any, bias: Any = None, stride: int | Pair = 1,
                     padding: int | Pair = 0, output_padding: int | Pair = 0, groups: int = 1,
                     dilation: int | Pair = 1) -> Tensor:
    """2-D transposed convolution, PyTorch's ``conv_transpose2d``: the adjoint of conv2d.

    If ``A`` is the matrix of ``conv2d(., weight, stride, padding, dilation, groups)`` mapping
    (N, O, H_out, W_out) to (N, C_in, H, W), this computes ``A^T x`` (plus bias). Equivalently each
    input pixel scatters ``x[n, c, i, j] * weight[c, o', p, q]`` to output
    ``(i*s - pad + p*d, j*s - pad + q*d)``.

    Shapes: x (N, C_in, H, W), weight (C_in, O/groups, KH, KW), bias (O,) or None ->
    y (N, O, H_out, W_out) with ``H_out = (H - 1)s - 2p + d(KH-1) + output_padding + 1``;
    ``output_padding < max(s, d)`` and the rows it adds are computed, not zero-filled.
    Differentiable in x, weight and bias.
    """
    x, weight, bias, s, p, d, g = _check_common("conv_transpose2d", x, weight, bias, stride,
                                                padding, dilation, groups)
    op = _pair(output_padding, "output_padding")
    N, C, H, W = x.shape
    Cw, Og, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(f"conv_transpose2d: weight.shape[0] must equal input channels: "
                         f"{Cw} != {C} (input {x.shape}, weight {weight.shape})")
    if C % g != 0:
        raise ValueError(f"conv_transpose2d: groups={g} must divide input channels {C} "
                         f"(input {x.shape}, weight {weight.shape})")
    O = Og * g
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"conv_transpose2d: bias must have shape ({O},), got {bias.shape}")
    for k in range(2):
        if op[k] < 0 or op[k] >= max(s[k], d[k]):
            raise ValueError(f"conv_transpose2d: output_padding {op} must be non-negative and "
                             f"smaller than max(stride, dilation) = "
                             f"{(max(s[0], d[0]), max(s[1], d[1]))}")
    oh = conv_transpose_output_size(H, kh, s[0], p[0], op[0], d[0])
    ow = conv_transpose_output_size(W, kw, s[1], p[1], op[1], d[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f"conv_transpose2d: empty output {(N, O, oh, ow)} for input {x.shape}, "
                         f"weight {weight.shape}, stride {s}, padding {p}, dilation {d}")
    fn = ConvTranspose2d(s, p, d, g, (N, O, oh, ow))
    return fn(x, weight) if bias is None else fn(x, weight, bias)
