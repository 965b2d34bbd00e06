"""Pooling layers over :mod:`minisegnet.functional.pooling` (PyTorch's API).

``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False)``,
``MaxUnpool2d(kernel_size, stride=None, padding=0)`` (called as ``unpool(x, indices,
output_size=None)``: SegNet's decoder), ``AvgPool2d(kernel_size, stride=None, padding=0)`` and
``AdaptiveAvgPool2d(output_size)`` (PSPNet's pyramid bins). None of them has parameters; the
hyper-parameters are checked when the layer is built, the shapes when it is called.

    pool = nn.MaxPool2d(2, return_indices=True)
    unpool = nn.MaxUnpool2d(2)
    y, idx = pool(x)                                   # (N, C, H/2, W/2), int64 indices
    x_up = unpool(y, idx, output_size=x.shape)         # (N, C, H, W): maxima in place, zeros
"""

from __future__ import annotations

from typing import Any

from ..functional import pooling as P
from ..tensor import Tensor
from .module import Module

__all__ = ["MaxPool2d", "MaxUnpool2d", "AvgPool2d", "AdaptiveAvgPool2d"]

IntOrPair = int | tuple[int, int]


def _check(layer: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any = 1) -> None:
    """Early errors for bad hyper-parameters (the functional op checks them again with shapes)."""
    k = P._pair(kernel_size, "kernel_size", layer)
    s = k if stride is None else P._pair(stride, "stride", layer)
    p = P._pair(padding, "padding", layer)
    d = P._pair(dilation, "dilation", layer)
    if min(k) <= 0:
        raise ValueError(f"{layer}: kernel_size must be positive, got {k}")
    if min(s) <= 0:
        raise ValueError(f"{layer}: stride must be positive, got {s}")
    if min(p) < 0:
        raise ValueError(f"{layer}: padding must be non-negative, got {p}")
    if min(d) <= 0:
        raise ValueError(f"{layer}: dilation must be positive, got {d}")


class MaxPool2d(Module):
    """Max pooling; with ``return_indices=True`` returns (values, int64 indices) for MaxUnpool2d."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                 padding: IntOrPair = 0, dilation: IntOrPair = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        _check("MaxPool2d", kernel_size, stride, padding, dilation)
        if ceil_mode:
            raise NotImplementedError("MaxPool2d: ceil_mode=True is not supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices

    def forward(self, x: Any) -> Tensor | tuple[Tensor, Tensor]:
        return P.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            return_indices=self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, return_indices={self.return_indices}")


class MaxUnpool2d(Module):
    """Partial inverse of MaxPool2d: ``unpool(x, indices, output_size=None)``."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                 padding: IntOrPair = 0) -> None:
        super().__init__()
        _check("MaxUnpool2d", kernel_size, stride, padding)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, x: Any, indices: Any, output_size: Any = None) -> Tensor:
        return P.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding,
                              output_size=output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling (``count_include_pad=True``, ``ceil_mode=False``, as PyTorch's defaults)."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                 padding: IntOrPair = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        _check("AvgPool2d", kernel_size, stride, padding)
        if ceil_mode or not count_include_pad:
            raise NotImplementedError("AvgPool2d: only ceil_mode=False, count_include_pad=True "
                                      "are supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, x: Any) -> Tensor:
        return P.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Mean over an output_size grid of bins (int, or pair with None = keep that size)."""

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Any) -> Tensor:
        return P.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
