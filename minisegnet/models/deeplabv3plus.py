"""DeepLabV3+ (Chen, Zhu, Papandreou, Schroff & Adam, ECCV 2018): ASPP and a light decoder.

An atrous backbone keeps the features at 1/16 (or 1/8) of the input by trading the last strides
for dilation. Atrous spatial pyramid pooling (``aspp``) looks at them through five branches at
once: a 1x1 conv, three 3x3 depthwise-separable convs with dilation rates 6, 12 and 18 (doubled
at output stride 8, so they cover the same part of the image) and image pooling (the global
average, a 1x1 conv, broadcast back). A 1x1 conv projects the concatenation. The ``decoder``
upsamples that (x4) to the stride-4 low-level features, concatenates their 1x1-reduced version,
refines with two separable 3x3 convs and classifies; a last bilinear upsampling (x4) restores the
input size.

Shapes for a 3 x 513 x 513 image (the paper's crop), K classes, ``width`` w = 32, output stride 16::

    x                                   (N,   3, 513, 513)
    backbone   low-level (layer1)       (N,  2w=64, 129, 129)
               features  (layer4)       (N, 8w=256,  33,  33)
    aspp       1x1                      (N, 256, 33, 33)
               sep 3x3 rate 6, 12, 18   (N, 256, 33, 33) each
               image pooling            (N, 256,  1,  1) -> broadcast (N, 256, 33, 33)
               concat -> 1x1 project    (N, 1280, 33, 33) -> (N, 256, 33, 33)
    decoder    upsample to low-level    (N, 256, 129, 129)
               low-level 1x1 reduce     (N,  48, 129, 129)   (48 = 1.5 w)
               concat -> 2 x sep 3x3    (N, 304, 129, 129) -> (N, 256, 129, 129)
               classifier 1x1           (N,   K, 129, 129)
    bilinear upsampling                 (N,   K, 513, 513)

Every upsampling goes to the exact size of its target (not a fixed factor), so odd sizes and sizes
that are not multiples of 16 keep their size. The image-pooling branch has a bias and no
BatchNorm: it holds one value per channel per image, so batch statistics would break batch size 1.
Even so, train on batches of two or more images: with one, the BatchNorm after the projection
subtracts each channel's mean over the image, which removes the image-pooling branch (constant over
the image) entirely, and its parameters get a zero gradient. Evaluation mode has no such effect.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import functional as F
from .. import nn
from ..tensor import Tensor
from ._blocks import AtrousBackbone, check_input, check_positive, conv_bn_relu

__all__ = ["DeepLabV3Plus", "ASPP"]


def sep_conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise-separable 3x3 conv (``nn.SeparableConv2d``, no bias) + BatchNorm + ReLU."""
    return nn.Sequential(OrderedDict(
        conv=nn.SeparableConv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        bn=nn.BatchNorm2d(cout),
        relu=nn.ReLU(),
    ))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three separable atrous 3x3, image pooling; 1x1 project.

    (N, C, h, w) -> (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, int, int],
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.conv1x1 = conv_bn_relu(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList([sep_conv_bn_relu(in_channels, out_channels, r) for r in rates])
        self.image_pooling = nn.Conv2d(in_channels, out_channels, 1)
        self.project = conv_bn_relu((2 + len(rates)) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.image_pooling(F.adaptive_avg_pool2d(x, 1)))      # (N, C', 1, 1)
        branches = [self.conv1x1(x), *(conv(x) for conv in self.atrous),
                    F.interpolate(pooled, size=x.shape[2:], mode="bilinear")]  # a broadcast
        return self.dropout(self.project(F.cat(branches, dim=1)))

    def extra_repr(self) -> str:
        return f"rates={self.rates}"


class Decoder(nn.Module):
    """Decoder: ASPP upsampled to the low-level size, concat its 1x1 reduction, refine."""

    def __init__(self, low_channels: int, reduced: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_channels, reduced, 1)
        self.refine = nn.Sequential(OrderedDict(
            sep1=sep_conv_bn_relu(channels + reduced, channels),
            sep2=sep_conv_bn_relu(channels, channels)))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp: Tensor, low: Tensor) -> Tensor:
        up = F.interpolate(aspp, size=low.shape[2:], mode="bilinear")          # x4
        return self.classifier(self.refine(F.cat([up, self.reduce(low)], dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: AtrousBackbone -> aspp -> decoder (with the stride-4 skip) -> upsampling.

    ``output_stride`` 16 (ASPP rates 6, 12, 18) or 8 (12, 24, 36). ``width`` scales the backbone
    (channels w .. 8w, 32 by default); ASPP and decoder have 8w channels, the reduced skip 1.5w
    (256 and 48 in the paper's w = 32 terms). Maps (N, in_channels, H, W) to
    (N, num_classes, H, W) for any H, W.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, output_stride: int = 16,
                 width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        K = check_positive("num_classes", num_classes)
        self.in_channels = check_positive("in_channels", in_channels)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride: must be 8 or 16, got {output_stride!r}")
        self.output_stride = output_stride
        self.backbone = AtrousBackbone(in_channels, width, output_stride)
        low_c, c = self.backbone.channels
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(c, c, rates, dropout)
        self.decoder = Decoder(low_c, max(3 * width // 2, 1), c, K)

    def forward(self, x: Tensor) -> Tensor:
        x = check_input("DeepLabV3Plus", x, self.in_channels)
        low, features = self.backbone(x)                  # (N, 2w, H/4, W/4), (N, 8w, H/os, W/os)
        logits = self.decoder(self.aspp(features), low)   # (N, K, H/4, W/4)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear")
