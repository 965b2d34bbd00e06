"""SegNet-Basic (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): upsampling by pooling indices.

The encoder's 2x2 max-pools remember *where* each maximum was; the decoder's unpooling puts every
value back at that position and zeros elsewhere (``F.max_unpool2d``), and the following 7x7
convs fill in the zeros. The decoder learns no upsampling and stores no encoder features, only
the indices. This is the paper's compact SegNet-Basic (four 7x7 encoder and decoder stages of
64 channels, BatchNorm, ReLU in the encoder only), as ChainerCV's ``SegNetBasic`` builds it
(without its input local response normalisation, which minisegnet has no op for).

Shapes for a 3 x 360 x 480 CamVid image, K classes (``width`` = 64)::

    x                 (N,  3, 360, 480)
    encoder  conv1 -> (N, 64, 360, 480)  pool1 -> (N, 64, 180, 240) + indices1
             conv2 -> (N, 64, 180, 240)  pool2 -> (N, 64,  90, 120) + indices2
             conv3 -> (N, 64,  90, 120)  pool3 -> (N, 64,  45,  60) + indices3
             conv4 -> (N, 64,  45,  60)  pool4 -> (N, 64,  22,  30) + indices4
    decoder  unpool4 (indices4, to 45 x 60) -> conv_decode4 -> (N, 64,  45,  60)
             unpool3 -> conv_decode3 -> (N, 64,  90, 120)
             unpool2 -> conv_decode2 -> (N, 64, 180, 240)
             unpool1 -> conv_decode1 -> (N, 64, 360, 480)
    classifier 1x1 -> (N,  K, 360, 480)

An odd size (45 above) pools down by floor and unpools back to exactly the size the encoder had
(``output_size``), so any input of at least 2^depth pixels per side keeps its size.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import nn
from ..tensor import Tensor
from ._blocks import check_input, check_positive

__all__ = ["SegNet"]


def _conv_bn(cin: int, cout: int, k: int, relu: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), bn=nn.BatchNorm2d(cout))
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class SegNet(nn.Module):
    """SegNet-Basic: ``depth`` encoder stages (conv k x k + BN + ReLU, 2x2 max-pool with indices),
    ``depth`` decoder stages (unpool with those indices, conv k x k + BN), a 1x1 classifier.

    ``width`` channels everywhere (64 in the paper), ``kernel_size`` 7. Maps
    (N, in_channels, H, W) to (N, num_classes, H, W) for H, W >= 2**depth.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, depth: int = 4,
                 kernel_size: int = 7) -> None:
        super().__init__()
        K = check_positive("num_classes", num_classes)
        self.in_channels = check_positive("in_channels", in_channels)
        w = check_positive("width", width)
        self.depth = check_positive("depth", depth)
        k = check_positive("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size: must be odd to keep the size, got {k}")
        self.encoder = nn.ModuleDict({f"conv{i + 1}": _conv_bn(w if i else in_channels, w, k, True)
                                      for i in range(depth)})
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        # conv_decode{i} follows the unpooling of pool{i}; they run from depth down to 1
        self.decoder = nn.ModuleDict({f"conv_decode{i + 1}": _conv_bn(w, w, k, False)
                                      for i in reversed(range(depth))})
        self.classifier = nn.Conv2d(w, K, 1)

    def forward(self, x: Tensor) -> Tensor:
        m = 2 ** self.depth
        x = check_input("SegNet", x, self.in_channels, (m, m))
        h, indices, sizes = x, [], []
        for conv in self.encoder.values():                   # conv1 .. conv{depth}
            h = conv(h)
            sizes.append(h.shape[2:])                        # the size unpooling restores
            h, idx = self.pool(h)                            # (N, w, H/2, W/2), argmax indices
            indices.append(idx)
        for conv_decode in self.decoder.values():            # conv_decode{depth} .. conv_decode1
            h = conv_decode(self.unpool(h, indices.pop(), output_size=sizes.pop()))
        return self.classifier(h)

    def extra_repr(self) -> str:
        return f"depth={self.depth}"

