"""Upsampling layers: ``Upsample`` (PyTorch's ``nn.Upsample``) and ``BedOfNails``.

Neither has parameters; each checks its configuration when built and calls the functional op.
"""

from __future__ import annotations

from ..functional import upsample as _U
from ..tensor import Tensor
from .module import Module

__all__ = ["Upsample", "BedOfNails"]


class Upsample(Module):
    """``F.interpolate(x, size, scale_factor, mode, align_corners)`` as a layer.

    Give exactly one of ``size`` (int or (OH, OW)) and ``scale_factor`` (number or pair);
    ``mode`` is "nearest" (default) or "bilinear"; ``align_corners`` only with "bilinear".
    (N, C, H, W) -> (N, C, OH, OW).
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale_factor: float | tuple[float, float] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        _U.check_interpolate_args(size, scale_factor, mode, align_corners)
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        return _U.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self) -> str:
        what = f"size={self.size!r}" if self.size is not None else (
            f"scale_factor={self.scale_factor!r}")
        extra = f", align_corners={self.align_corners}" if self.align_corners is not None else ""
        return f"{what}, mode={self.mode!r}{extra}"


class BedOfNails(Module):
    """Zero-insertion upsampling, ``F.bed_of_nails(x, scale)``.

    (N, C, H, W) -> (N, C, H*sh, W*sw); ``scale`` is a positive int or a pair (sh, sw).
    """

    def __init__(self, scale: int | tuple[int, int]) -> None:
        super().__init__()
        _U.check_bed_of_nails_scale(scale)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return _U.bed_of_nails(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"
