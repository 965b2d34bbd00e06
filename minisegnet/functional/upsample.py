"""Upsampling ops: ``interpolate`` (nearest, bilinear; PyTorch's semantics) and ``bed_of_nails``.

Both are linear maps of the input, so each backward is the adjoint map (kernels/interpolate.py and
kernels/bed_of_nails.py hold the formulas and every implementation).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import kernel, register
from ..kernels import bed_of_nails as _bed_of_nails_kernels
from ..kernels import interpolate as _interpolate_kernels
from ..tensor import Function, Tensor, as_tensor

__all__ = ["interpolate", "bed_of_nails"]

register(_interpolate_kernels.IMPLS)
register(_bed_of_nails_kernels.IMPLS)

MODES = ("nearest", "bilinear")


# --------------------------------------------------------------------------------------------
# argument checks (shared with minisegnet.nn.Upsample / BedOfNails)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _pair(name: str, value: Any, check: Any, kind: str) -> tuple[Any, Any]:
    """``value`` as an (h, w) pair: a single ``kind`` or a sequence of two."""
    if check(value):
        return value, value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
        check(v) for v in value
    ):
        return value[0], value[1]
    raise TypeError(f"{name}: expected {kind} or a pair of them (h, w), got {value!r}")


def _check_4d(op: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x: {op} expects a 4-D input (N, C, H, W), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: {op} works on float32 or float64 tensors, got dtype {x.dtype}")


def check_interpolate_args(size: Any, scale_factor: Any, mode: Any, align_corners: Any) -> None:
    """Everything about ``interpolate``'s arguments that can be checked without the input."""
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected a string, one of {MODES}, got {mode!r}")
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if align_corners is not None:
        if mode != "bilinear":
            raise ValueError(
                f"align_corners: can only be set with mode='bilinear', got "
                f"align_corners={align_corners!r} with mode={mode!r}"
            )
        if not isinstance(align_corners, (bool, np.bool_)):
            raise TypeError(f"align_corners: expected True, False or None, got {align_corners!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError(
            "size, scale_factor: give exactly one of them, got "
            f"size={size!r} and scale_factor={scale_factor!r}"
        )
    if size is not None:
        sh, sw = _pair("size", size, _is_int, "an int")
        if sh <= 0 or sw <= 0:
            raise ValueError(f"size: output sizes must be positive, got {size!r}")
    else:
        fh, fw = _pair("scale_factor", scale_factor, _is_real, "a number")
        if not (math.isfinite(fh) and math.isfinite(fw) and fh > 0 and fw > 0):
            raise ValueError(f"scale_factor: must be positive and finite, got {scale_factor!r}")


def interpolate_geometry(in_size: tuple[int, int], size: Any, scale_factor: Any, mode: str
                         ) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output size (OH, OW) and the per-axis coordinate scales (in/out, or 1/scale_factor)."""
    H, W = in_size
    if size is not None:
        OH, OW = (int(v) for v in _pair("size", size, _is_int, "an int"))
        return (OH, OW), (
            _interpolate_kernels.source_scale(H, OH, None, mode),
            _interpolate_kernels.source_scale(W, OW, None, mode),
        )
    fh, fw = (float(v) for v in _pair("scale_factor", scale_factor, _is_real, "a number"))
    # PyTorch: out = floor(in * scale_factor) in double; coordinates use 1 / scale_factor.
    OH, OW = math.floor(H * fh), math.floor(W * fw)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"scale_factor: {scale_factor!r} on an input of spatial size {(H, W)} gives an empty "
            f"output of size {(OH, OW)}"
        )
    return (OH, OW), (
        _interpolate_kernels.source_scale(H, OH, fh, mode),
        _interpolate_kernels.source_scale(W, OW, fw, mode),
    )


def check_bed_of_nails_scale(scale: Any) -> tuple[int, int]:
    """``scale`` as a pair of positive ints."""
    sh, sw = _pair("scale", scale, _is_int, "an int")
    if sh < 1 or sw < 1:
        raise ValueError(f"scale: must be positive, got {scale!r}")
    return int(sh), int(sw)


# --------------------------------------------------------------------------------------------
# interpolate


class Interpolate(Function):
    """Nearest or bilinear resampling of (N, C, H, W) to (N, C, OH, OW); backward = the adjoint."""

    def __init__(self, mode: str, out_size: tuple[int, int], scale: tuple[float, float],
                 align_corners: bool) -> None:
        self.mode, self.out_size, self.scale = mode, out_size, scale
        self.align_corners = align_corners

    def _args(self) -> tuple[Any, ...]:
        return (self.scale,) if self.mode == "nearest" else (self.scale, self.align_corners)

    def forward(self, x):
        self.in_size, self.dtype = tuple(x.shape[2:]), x.dtype
        name = f"interpolate_{self.mode}"
        return kernel(name, x)(x, self.out_size, *self._args())

    def backward(self, gy):
        gy = gy.astype(self.dtype, copy=False)
        name = f"interpolate_{self.mode}_backward"
        return kernel(name, gy)(gy, self.in_size, *self._args())


def interpolate(
    x: Tensor,
    size: int | tuple[int, int] | None = None,
    scale_factor: float | tuple[float, float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> Tensor:
    """Resize (N, C, H, W) to (N, C, OH, OW) like ``torch.nn.functional.interpolate``.

    Give exactly one of ``size`` (OH, OW; an int means both) and ``scale_factor`` (a number or a
    pair: OH = floor(H * scale_factor)). Per axis, ``scale = in/out`` or ``1/scale_factor``:

    * ``mode="nearest"``: ``src = min(floor(dst * scale), in - 1)``.
    * ``mode="bilinear"``, ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``;
      ``align_corners=False`` (the default): ``src = max(scale * (dst + 0.5) - 0.5, 0)``; then
      ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``l = src - i0`` and the value is
      ``(1 - l) * x[i0] + l * x[i1]``, along H then along W.

    Downsampling works too (no antialiasing, as in PyTorch). Differentiable in ``x``.
    """
    x = as_tensor(x)
    _check_4d("interpolate", x)
    check_interpolate_args(size, scale_factor, mode, align_corners)
    N, C, H, W = x.shape
    if H < 1 or W < 1:
        raise ValueError(f"x: interpolate needs a non-empty spatial size, got shape {x.shape}")
    out_size, scale = interpolate_geometry((H, W), size, scale_factor, mode)
    return Interpolate(mode, out_size, scale, bool(align_corners))(x)


# --------------------------------------------------------------------------------------------
# bed of nails


class BedOfNails(Function):
    """Zero-insertion upsampling by integer (sh, sw); backward = the strided read."""

    def __init__(self, scale: tuple[int, int]) -> None:
        self.scale = scale

    def forward(self, x):
        self.dtype = x.dtype
        return kernel("bed_of_nails", x)(x, self.scale)

    def backward(self, gy):
        gy = gy.astype(self.dtype, copy=False)
        return kernel("bed_of_nails_backward", gy)(gy, self.scale)


def bed_of_nails(x: Tensor, scale: int | tuple[int, int]) -> Tensor:
    """Place each input value at the top-left of its scale x scale block, zeros elsewhere.

    ``y[n, c, sh*i, sw*j] = x[n, c, i, j]`` and every other output is 0: (N, C, H, W) ->
    (N, C, H*sh, W*sw). ``scale`` is a positive int or a pair (sh, sw). Differentiable in ``x``
    (the gradient is ``gy[..., ::sh, ::sw]``).
    """
    x = as_tensor(x)
    _check_4d("bed_of_nails", x)
    return BedOfNails(check_bed_of_nails_scale(scale))(x)
