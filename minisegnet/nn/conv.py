"""Convolution layers: ``Conv2d``, ``ConvTranspose2d`` and ``SeparableConv2d`` (PyTorch's API).

Initialisation follows PyTorch: weights kaiming-uniform with ``a = sqrt(5)``, that is
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, where
``fan_in = weight.shape[1] * KH * KW`` (for a transposed conv that is ``out_channels/groups * KH *
KW``, as in PyTorch). ``ConvTranspose2d(..., init="bilinear")`` instead starts as bilinear
upsampling, the fixed-then-learned upsampling filter of FCN (Long, Shelhamer & Darrell, 2015).
Random draws come from ``minisegnet.random.default_rng()`` (seed with ``msn.manual_seed``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..functional.conv import _pair
from ..random import default_rng
from ..tensor import Tensor
from .layers import kaiming_uniform
from .module import Module, Parameter

__all__ = ["Conv2d", "ConvTranspose2d", "SeparableConv2d", "bilinear_kernel"]

IntPair = int | tuple[int, int]


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_channels(layer: str, in_channels: Any, out_channels: Any, groups: Any) -> tuple:
    cin = _positive(in_channels, "in_channels")
    cout = _positive(out_channels, "out_channels")
    g = _positive(groups, "groups")
    if cin % g or cout % g:
        raise ValueError(f"{layer}: groups={g} must divide in_channels={cin} and "
                         f"out_channels={cout}")
    return cin, cout, g


def _kernel_pair(kernel_size: Any) -> tuple[int, int]:
    k = _pair(kernel_size, "kernel_size")
    if min(k) <= 0:
        raise ValueError(f"kernel_size must be positive, got {k}")
    return k


def _uniform(shape: tuple[int, ...], fan_in: int, dtype: Any) -> np.ndarray:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return default_rng().uniform(-bound, bound, size=shape).astype(dtype)


def bilinear_kernel(kh: int, kw: int, dtype: Any = np.float32) -> np.ndarray:
    """The (kh, kw) bilinear interpolation filter used to initialise FCN's upsampling layers.

    ``f[i, j] = (1 - |i - c_h| / s_h) * (1 - |j - c_w| / s_w)`` with ``s = ceil(k / 2)`` and
    ``c = s - 1`` for odd k, ``s - 0.5`` for even k. With ``kernel_size = 2*stride`` and
    ``padding = stride // 2`` a transposed conv with this filter doubles (for stride 2) an image
    by linear interpolation, e.g. k = 4 gives the taps ``[1, 3, 3, 1] / 4`` along each axis.
    """
    def taps(k: int) -> np.ndarray:
        s = (k + 1) // 2
        c = s - 1 if k % 2 == 1 else s - 0.5
        return 1 - np.abs(np.arange(k) - c) / s

    return np.outer(taps(kh), taps(kw)).astype(dtype)


class Conv2d(Module):
    """2-D convolution layer: ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    weight (out_channels, in_channels/groups, KH, KW), bias (out_channels,) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        cin, cout, g = _check_channels("Conv2d", in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = cin, cout, g
        self.kernel_size = _kernel_pair(kernel_size)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        kh, kw = self.kernel_size
        fan_in = cin // g * kh * kw
        self.weight = Parameter(kaiming_uniform((cout, cin // g, kh, kw), fan_in, dtype=dtype))
        if bias:
            self.bias = Parameter(_uniform((cout,), fan_in, dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class ConvTranspose2d(Module):
    """2-D transposed convolution layer: ``F.conv_transpose2d`` (the adjoint of a conv2d).

    weight (in_channels, out_channels/groups, KH, KW), bias (out_channels,) or None.
    ``init="bilinear"`` sets the weight to per-channel bilinear upsampling (channel c of the
    input feeds only channel c of the output, through :func:`bilinear_kernel`) and the bias to
    zero; it needs ``in_channels == out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                 groups: int = 1, bias: bool = True, dilation: IntPair = 1,
                 init: str = "default", dtype: Any = np.float32) -> None:
        super().__init__()
        cin, cout, g = _check_channels("ConvTranspose2d", in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = cin, cout, g
        self.kernel_size = _kernel_pair(kernel_size)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        kh, kw = self.kernel_size
        shape = (cin, cout // g, kh, kw)
        fan_in = cout // g * kh * kw  # PyTorch takes fan_in from weight.shape[1] here too
        if init == "default":
            weight = kaiming_uniform(shape, fan_in, dtype=dtype)
            b = _uniform((cout,), fan_in, dtype) if bias else None
        elif init == "bilinear":
            if cin != cout:
                raise ValueError(f"ConvTranspose2d: init='bilinear' upsamples each channel on its "
                                 f"own and needs in_channels == out_channels, got {cin} and {cout}")
            weight = np.zeros(shape, dtype=dtype)
            per_group = cout // g
            for c in range(cin):  # input channel c -> output channel c (local index c % per_group)
                weight[c, c % per_group] = bilinear_kernel(kh, kw, dtype)
            b = np.zeros((cout,), dtype=dtype) if bias else None
        else:
            raise ValueError(f"init must be 'default' or 'bilinear', got {init!r}")
        self.weight = Parameter(weight)
        if b is not None:
            self.bias = Parameter(b)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class SeparableConv2d(Module):
    """Depthwise separable convolution (Xception, DeepLabv3+): a depthwise KxK conv, then 1x1.

    ``depthwise``: Conv2d(C, C, k, stride, padding, dilation, groups=C, bias=False);
    ``pointwise``: Conv2d(C, O, 1, bias=bias). Parameters: ``k*k*C + C*O`` (+ O for the bias),
    e.g. 3x3, C=3, O=16: 27 + 48 = 75 weights against 432 for a plain 3x3 conv. Only the
    pointwise conv has a bias: a depthwise bias would pass linearly through the 1x1 conv and
    could be folded into it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 bias: bool = True, dtype: Any = np.float32) -> None:
        super().__init__()
        cin = _positive(in_channels, "in_channels")
        cout = _positive(out_channels, "out_channels")
        self.in_channels, self.out_channels = cin, cout
        self.depthwise = Conv2d(cin, cin, kernel_size, stride, padding, dilation, groups=cin,
                                bias=False, dtype=dtype)
        self.pointwise = Conv2d(cin, cout, 1, bias=bias, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def extra_repr(self) -> str:
        d = self.depthwise
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={d.kernel_size}, "
                f"stride={d.stride}, padding={d.padding}, dilation={d.dilation}")
