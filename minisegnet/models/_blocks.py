"""Pieces several model families share: the input check, conv-BN-ReLU, and a small atrous ResNet.

``AtrousBackbone`` is the feature extractor of PSPNet and DeepLabV3+ at a size a laptop trains:
a ResNet-style stack whose last strides are replaced by dilation (Chen et al.'s "atrous"
trick, Yu & Koltun's dilated ResNet), so the output stride is 8 or 16 instead of 32 while each
layer keeps the receptive field it would have had::

    x (N, C, H, W)
    stem    conv3x3 s2 + BN + ReLU, conv3x3 + BN + ReLU   -> (N, w,  H/2,  W/2)
    layer1  residual block, stride 2                      -> (N, 2w, H/4,  W/4)   low-level features
    layer2  residual block, stride 2                      -> (N, 4w, H/8,  W/8)
    layer3  residual block, stride 2 | dilation 2         -> (N, 8w, H/16, W/16) | (N, 8w, H/8, W/8)
    layer4  residual block, dilation 2 | 4                -> (N, 8w, same as layer3)

(sizes are ceilings: a 3x3 stride-2 conv with padding 1 maps H to ceil(H/2), so any H >= 1 works).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .. import functional as F
from .. import nn
from ..tensor import Tensor, as_tensor


def check_input(model: str, x: Any, in_channels: int, min_size: tuple[int, int] = (1, 1)) -> Tensor:
    """``x`` as an (N, in_channels, H, W) Tensor with H, W >= ``min_size``, else a ValueError."""
    x = as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"x: {model} expects an (N, C, H, W) input, got shape {x.shape}")
    if x.shape[1] != in_channels:
        raise ValueError(f"x: {model} was built for in_channels={in_channels}, got an input with "
                         f"{x.shape[1]} channels (shape {x.shape})")
    if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
        raise ValueError(f"x: {model} needs an input of at least {min_size[0]}x{min_size[1]} "
                         f"pixels, got {x.shape[2]}x{x.shape[3]} (shape {x.shape})")
    return x


def check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return value


def conv_bn_relu(cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN's shift replaces it) + BatchNorm + ReLU, 'same' padding for odd kernels;
    the ReLU runs fused into the norm's passes (``nn.BatchNorm2d(activation="relu")``)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel_size, stride=stride,
                       padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=False),
        bn=nn.BatchNorm2d(cout, activation="relu"),
    ))


class ResidualBlock(nn.Module):
    """ResNet's basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Both 3x3 convs use ``dilation`` (padding = dilation keeps the size); ``conv1`` carries the
    stride. The shortcut is a 1x1 conv + BN when the stride or the channel count changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(cout, activation="relu")  # relu(bn1(.)), fused
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(cin, cout, 1, stride, bias=False), bn=nn.BatchNorm2d(cout)))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(self.conv1(x))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class AtrousBackbone(nn.Module):
    """The small dilated ResNet above; ``forward`` returns (low-level at stride 4, output features).

    ``output_stride`` 16 replaces layer4's stride by dilation 2; 8 also replaces layer3's
    (dilations 2 and 4). ``channels`` gives the output channel counts (low-level, final).
    """

    def __init__(self, in_channels: int, width: int = 32, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride: must be 8 or 16, got {output_stride!r}")
        w = check_positive("width", width)
        s3, d3, d4 = (2, 1, 2) if output_stride == 16 else (1, 2, 4)
        self.output_stride = output_stride
        self.stem = nn.Sequential(OrderedDict(
            conv1=conv_bn_relu(in_channels, w, 3, stride=2), conv2=conv_bn_relu(w, w, 3)))
        self.layer1 = ResidualBlock(w, 2 * w, stride=2)
        self.layer2 = ResidualBlock(2 * w, 4 * w, stride=2)
        self.layer3 = ResidualBlock(4 * w, 8 * w, stride=s3, dilation=d3)
        self.layer4 = ResidualBlock(8 * w, 8 * w, stride=1, dilation=d4)
        self.channels = (2 * w, 8 * w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.layer1(self.stem(x))                     # (N, 2w, H/4, W/4)
        return low, self.layer4(self.layer3(self.layer2(low)))  # (N, 8w, H/os, W/os)
