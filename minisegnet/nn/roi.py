"""RoI layers over :mod:`minisegnet.functional.roi` (torchvision.ops' API).

``RoIAlign(output_size, spatial_scale, sampling_ratio=-1, aligned=False)`` and
``RoIPool(output_size, spatial_scale)``, called as ``layer(features, boxes)`` with boxes a (K, 5)
array of rows ``[batch_index, x1, y1, x2, y2]`` or a list of (K_i, 4) boxes per image. Neither has
parameters; the hyper-parameters are checked when the layer is built, the shapes when it is called.

    align = nn.RoIAlign((14, 14), spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    feats = align(fmap, boxes)                  # (K, C, 14, 14), differentiable in fmap
"""

from __future__ import annotations

from typing import Any

from ..functional import roi as R
from ..tensor import Tensor
from .module import Module

__all__ = ["RoIAlign", "RoIPool"]

IntOrPair = int | tuple[int, int]


class RoIAlign(Module):
    """Mask R-CNN's RoIAlign: bilinear samples averaged per bin (see :func:`F.roi_align`)."""

    def __init__(self, output_size: IntOrPair, spatial_scale: float, sampling_ratio: int = -1,
                 aligned: bool = False) -> None:
        super().__init__()
        layer = "RoIAlign"
        self.output_size = R._output_size(output_size, layer)
        self.spatial_scale = R._spatial_scale(spatial_scale, layer)
        if not R._is_int(sampling_ratio):
            raise TypeError(f"{layer}: sampling_ratio must be an int, got {sampling_ratio!r}")
        if sampling_ratio < -1:
            raise ValueError(f"{layer}: sampling_ratio must be positive, or -1 / 0 for the "
                             f"adaptive grid, got {sampling_ratio}")
        if not isinstance(aligned, bool):
            raise TypeError(f"{layer}: aligned must be a bool, got {aligned!r}")
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned

    def forward(self, input: Any, boxes: Any) -> Tensor:
        return R.roi_align(input, boxes, self.output_size, self.spatial_scale,
                           self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(Module):
    """Fast R-CNN's quantized RoIPool: max over integer bins (see :func:`F.roi_pool`)."""

    def __init__(self, output_size: IntOrPair, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = R._output_size(output_size, "RoIPool")
        self.spatial_scale = R._spatial_scale(spatial_scale, "RoIPool")

    def forward(self, input: Any, boxes: Any) -> Tensor:
        return R.roi_pool(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
