"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017): the pyramid pooling module on a dilated backbone.

A dilated ResNet keeps the features at 1/8 of the input (output stride 8). The pyramid pooling
module then averages them over 1x1, 2x2, 3x3 and 6x6 grids of bins (``adaptive_avg_pool2d``),
reduces each pooled map to C/4 channels with a 1x1 conv, upsamples it back bilinearly and
concatenates all four with the features: every position sees the whole image, its quadrant, its
ninth and its 1/36th. A 3x3 conv, a 1x1 classifier and bilinear upsampling give the scores.

Shapes for a 3 x 473 x 473 image (the paper's crop), K classes, ``width`` w = 32::

    x                                  (N,    3, 473, 473)
    backbone (AtrousBackbone, os 8)    (N, 8w=256, 60, 60)
    pyramid_pooling
        bin 1: avg pool (N, 256, 1, 1) -> 1x1 conv (N, 64, 1, 1) -> upsample (N, 64, 60, 60)
        bin 2: avg pool (N, 256, 2, 2) -> ...                        (N, 64, 60, 60)
        bin 3, bin 6 likewise;  concat with the features ->         (N, 512, 60, 60)
    bottleneck 3x3 conv + BN + ReLU    (N,  256, 60, 60)
    classifier 1x1                     (N,    K, 60, 60)
    bilinear upsampling                (N,    K, 473, 473)

The pooled branches have a bias and no BatchNorm (the paper has BN there): a 1x1 bin holds one
value per channel per image, so batch statistics would be meaningless at batch size 1 and break
training on single large images. The paper's auxiliary loss on layer3 is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import functional as F
from .. import nn
from ..tensor import Tensor
from ._blocks import AtrousBackbone, check_input, check_positive, conv_bn_relu

__all__ = ["PSPNet", "PyramidPooling"]


class PyramidPooling(nn.Module):
    """Concatenate x with, per bin b, ``upsample(relu(conv1x1(adaptive_avg_pool2d(x, b))))``.

    (N, C, h, w) -> (N, C + len(bins) * (C // len(bins)), h, w); the upsampling is bilinear
    (align_corners=False) back to (h, w).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        if len(bins) == 0 or any(not isinstance(b, int) or b <= 0 for b in bins):
            raise ValueError(f"bins: must be positive ints, got {bins!r}")
        self.bins = tuple(bins)
        reduced = max(in_channels // len(bins), 1)
        self.stages = nn.ModuleList([nn.Conv2d(in_channels, reduced, 1) for _ in bins])
        self.out_channels = in_channels + len(bins) * reduced

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pooled = [F.interpolate(F.relu(conv(F.adaptive_avg_pool2d(x, b))), size=size,
                                mode="bilinear")                  # (N, C/len(bins), h, w)
                  for b, conv in zip(self.bins, self.stages, strict=True)]
        return F.cat([x, *pooled], dim=1)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"


class PSPNet(nn.Module):
    """PSPNet: AtrousBackbone (output stride 8) -> pyramid_pooling -> bottleneck -> classifier.

    ``width`` scales the backbone (channels w, 2w, 4w, 8w, 8w; 32 by default). ``dropout``
    (0.1, as the paper) before the classifier. Maps (N, in_channels, H, W) to
    (N, num_classes, H, W) for any H, W (the logits are upsampled to the input's exact size).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, bins: Sequence[int] = (1, 2, 3, 6),
                 width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        K = check_positive("num_classes", num_classes)
        self.in_channels = check_positive("in_channels", in_channels)
        self.backbone = AtrousBackbone(in_channels, width, output_stride=8)
        c = self.backbone.channels[1]
        self.pyramid_pooling = PyramidPooling(c, bins)
        self.bottleneck = conv_bn_relu(self.pyramid_pooling.out_channels, c, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, K, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = check_input("PSPNet", x, self.in_channels)
        _, features = self.backbone(x)                        # (N, 8w, H/8, W/8)
        h = self.bottleneck(self.pyramid_pooling(features))   # (N, 8w, H/8, W/8)
        logits = self.classifier(self.dropout(h))             # (N, K, H/8, W/8)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear")

