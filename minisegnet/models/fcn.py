"""FCN-32s / 16s / 8s: Fully Convolutional Networks (Long, Shelhamer & Darrell, CVPR 2015).

VGG16 with its classifier turned into convolutions, so it maps an image of any size to a coarse
score map, upsampled back to the image by transposed convolutions that start as bilinear
interpolation. FCN-16s and FCN-8s add finer predictions from pool4 and pool3 ("skips") before
upsampling. This is the authors' Caffe net (``voc-fcn{32,16,8}s``) layer for layer, including
``conv1_1``'s padding of 100, which gives fc6 positions even for small inputs, and the crops
that line the upsampled scores up with the input. The crop offsets are *computed* from the
layers' kernel sizes, strides and paddings (:func:`coord_map`, Caffe's ``coord_map.py`` in the
other direction), never typed in; they come out as the authors' 19 (32s), 5 and 27 (16s), 5, 9
and 31 (8s).

Shapes for a 3 x 500 x 500 image (PASCAL VOC's largest side), K classes, FCN-8s::

    x            (N,    3, 500, 500)
    conv1 pad100 (N,   64, 698, 698)  pool1 (N,  64, 349, 349)
    conv2        (N,  128, 349, 349)  pool2 (N, 128, 175, 175)
    conv3        (N,  256, 175, 175)  pool3 (N, 256,  88,  88) -> score_pool3 (N, K, 88, 88)
    conv4        (N,  512,  88,  88)  pool4 (N, 512,  44,  44) -> score_pool4 (N, K, 44, 44)
    conv5        (N,  512,  44,  44)  pool5 (N, 512,  22,  22)
    fc6  7x7     (N, 4096,  16,  16)  fc7   (N, 4096, 16, 16)  score_fr (N, K, 16, 16)
    upscore2      x2 (N, K, 34, 34) + score_pool4 cropped at 5 -> fuse_pool4 (N, K, 34, 34)
    upscore_pool4 x2 (N, K, 70, 70) + score_pool3 cropped at 9 -> fuse_pool3 (N, K, 70, 70)
    upscore8      x8 (N, K, 568, 568), cropped at 31 -> (N, K, 500, 500)

The pools round up, as Caffe's do (:class:`CeilMaxPool2d`). FCN-32s upsamples score_fr by 32 at
once (``upscore``, 64x64 kernel: (N, K, 544, 544), crop 19); FCN-16s fuses pool4 only
(``upscore16``, 32x32 kernel: (N, K, 560, 560), crop 27). With the padding of 100 and the
rounded-up pools every input size works, down to 1x1 (fc6 always has >= 7x7 pool5 features).
As in the paper, the skip scores ``score_pool4`` / ``score_pool3`` start at zero, so a fresh
FCN-16s starts from FCN-32s's scores, only upsampled in two bilinear steps instead of one (the
same where the scores vary linearly), and training refines from there. The convs start with
He's variance (:func:`_he_normal`): the authors fine-tune a trained VGG16 instead; ``score_fr``
keeps ``nn.Conv2d``'s default initialisation (the paper zeroes it, on a trained backbone).
Trained from scratch, the plain net sits at the class prior ("everything is background") for
hundreds of steps; with ``batch_norm=True`` (VGG16-BN stages) FCN-16s and 8s leave it within
one to two hundred (Adam 3e-3 on ``shapes``), and it is what ``minisegnet train`` uses
(``benchmarks/RESULTS_zoo.md``).
``width`` (64 in VGG16) scales every channel count: stages ``w, 2w, 4w, 8w, 8w``, fc ``64w``.
"""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .. import functional as F
from .. import nn
from ..random import default_rng
from ..tensor import Tensor
from ._blocks import check_input, check_positive

__all__ = ["FCN", "convolutionalize", "coord_map", "CoordMap", "crop_offset"]


# ============================================================================================
# geometry: where each pixel of a feature map sits in the input
# ============================================================================================


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class CoordMap(NamedTuple):
    """Per axis (h, w): pixel ``i`` of a feature map is centred at input coordinate
    ``scale*i + offset``.

    Exact fractions: a crop offset must come out an integer, and floats would hide it if not.
    """

    scale: tuple[Fraction, Fraction]
    offset: tuple[Fraction, Fraction]

    @classmethod
    def identity(cls) -> CoordMap:
        return cls((Fraction(1), Fraction(1)), (Fraction(0), Fraction(0)))

    def then(self, *layers: nn.Module) -> CoordMap:
        """The map of the output of ``layers`` applied in order after this map's feature map."""
        m = self
        for layer in layers:
            m = m._through(layer)
        return m

    def _through(self, layer: nn.Module) -> CoordMap:
        if isinstance(layer, nn.Sequential):
            return self.then(*layer)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, CeilMaxPool2d, nn.ConvTranspose2d)):
            k = _pair(layer.kernel_size)
            s = _pair(layer.stride)
            p = _pair(layer.padding)
            d = _pair(layer.dilation)
            scale, offset = [], []
            for a in range(2):
                centre = Fraction(d[a] * (k[a] - 1), 2)  # centre of the (dilated) kernel
                if isinstance(layer, nn.ConvTranspose2d):
                    # the adjoint of a conv: x_in = (x_out + p - centre) / s
                    ls, lo = Fraction(1, s[a]), Fraction(p[a], 1) / s[a] - centre / s[a]
                else:
                    # output i reads inputs i*s - p + (0 .. k-1)*d: centred at i*s - p + centre
                    ls, lo = Fraction(s[a]), centre - p[a]
                scale.append(self.scale[a] * ls)
                offset.append(self.scale[a] * lo + self.offset[a])
            return CoordMap((scale[0], scale[1]), (offset[0], offset[1]))
        if isinstance(layer, (nn.ReLU, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.Identity)):
            return self
        raise TypeError(f"layer: coord_map does not know the geometry of {type(layer).__name__}")


class CeilMaxPool2d(nn.Module):
    """Caffe's 2x2 stride-2 max-pool, which rounds the output size up: H -> ceil(H/2).

    An odd side gets one row (column) of zeros at the bottom (right) first, then
    ``F.max_pool2d(x, 2)``. FCN pools ReLU outputs, which are >= 0, so the zero never beats a
    real value (a tie at 0 goes to the real pixel: it comes first in row-major order). Window
    starts are a floor pool's, so the coordinate map is the same; only the size differs, and the
    authors' crop offsets (19, 27, 31...) assume it. PyTorch's ``MaxPool2d(2, ceil_mode=True)``.
    """

    kernel_size, stride, padding, dilation = 2, 2, 0, 1

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[2:]
        if H % 2 or W % 2:
            x = F.pad(x, (0, W % 2, 0, H % 2))
        return F.max_pool2d(x, 2)


def coord_map(*layers: nn.Module) -> CoordMap:
    """The :class:`CoordMap` of the output of ``layers`` (applied in order) in input coordinates.

    Per layer and axis, with effective kernel ``k' = d(k-1) + 1``: a conv or pooling output pixel
    ``i`` is centred at ``s*i - p + (k'-1)/2`` of its input, a transposed conv's at
    ``(i + p - (k'-1)/2) / s``; maps compose. Caffe's ``coord_map`` is the same in reverse.
    """
    return CoordMap.identity().then(*layers)


def crop_offset(cropped: CoordMap, reference: CoordMap) -> tuple[int, int]:
    """The (top, left) pixel of ``cropped`` that lies on pixel (0, 0) of ``reference``.

    Both maps must have the same scale and the offset must be a non-negative integer (otherwise
    no crop aligns them): ValueError naming both maps.
    """
    out = []
    for a in range(2):
        if cropped.scale[a] != reference.scale[a]:
            raise ValueError(f"cropped/reference: scales differ ({cropped} vs {reference})")
        o = (reference.offset[a] - cropped.offset[a]) / cropped.scale[a]
        if o.denominator != 1 or o < 0:
            raise ValueError(f"cropped/reference: offset {o} is not a non-negative integer "
                             f"({cropped} vs {reference})")
        out.append(int(o))
    return out[0], out[1]


# ============================================================================================
# the convolutionalized classifier
# ============================================================================================


def convolutionalize(linear: nn.Linear, in_shape: tuple[int, int, int]) -> nn.Conv2d:
    """The ``nn.Conv2d`` that computes ``linear`` at every (h, w) window of a feature map.

    ``linear`` was trained on (C, h, w) feature maps flattened in C, h, w order (``x.reshape(N,
    -1)``), so its weight (O, C*h*w) *is* a (O, C, h, w) kernel: on a C x h x w input the conv
    gives the dense layer's O numbers as a 1x1 map, on a larger C x H x W one an
    (H-h+1) x (W-w+1) map of them (VGG's fc6 on 7x7 pool5 features becomes FCN's fc6).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
    if len(in_shape) != 3 or any(not isinstance(v, (int, np.integer)) or v <= 0 for v in in_shape):
        raise ValueError(f"in_shape: expected positive (C, h, w), got {in_shape!r}")
    C, h, w = (int(v) for v in in_shape)
    if C * h * w != linear.in_features:
        raise ValueError(f"in_shape: C*h*w = {C}*{h}*{w} = {C * h * w} must equal the layer's "
                         f"in_features={linear.in_features}")
    W = linear.weight.data
    conv = nn.Conv2d(C, linear.out_features, (h, w), bias=linear.bias is not None, dtype=W.dtype)
    conv.to(linear.weight.device)
    conv.weight.data[...] = W.reshape(linear.out_features, C, h, w)  # (O, C*h*w) -> (O, C, h, w)
    if linear.bias is not None:
        conv.bias.data[...] = linear.bias.data
    return conv


# ============================================================================================
# the network
# ============================================================================================


def _he_normal(conv: nn.Conv2d) -> None:
    """He et al.'s N(0, 2 / fan_in) weights and zero biases, in place.

    FCN fine-tunes a trained VGG16; trained from scratch, 15 layers at PyTorch's default
    initialisation (variance 1/(3 fan_in)) shrink the signal about 2.5x per layer and the
    scores start near zero. With He's variance a ReLU layer keeps the signal's scale.
    """
    fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
    # drawn in the weight's dtype: VGG16's fc6 alone has 103M weights
    w = default_rng().standard_normal(conv.weight.shape, dtype=conv.weight.dtype)
    w *= np.sqrt(2.0 / fan_in)
    conv.weight.data[...] = w
    if conv.bias is not None:
        conv.bias.data[...] = 0


def _vgg_stage(stage: int, cin: int, cout: int, convs: int,
               first_padding: int = 1, batch_norm: bool = False) -> nn.Sequential:
    """VGG stage ``stage``: ``convs`` x (3x3 conv [+ BN] + ReLU), named conv{stage}_{i},
    [bn{stage}_{i},] relu{stage}_{i} (VGG16-BN's layout when ``batch_norm``).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, convs + 1):
        pad = first_padding if i == 1 else 1
        layers[f"conv{stage}_{i}"] = nn.Conv2d(cin if i == 1 else cout, cout, 3, padding=pad,
                                               bias=not batch_norm)
        if batch_norm:
            layers[f"bn{stage}_{i}"] = nn.BatchNorm2d(cout)
        layers[f"relu{stage}_{i}"] = nn.ReLU()
    return nn.Sequential(layers)


class FCN(nn.Module):
    """FCN-32s, 16s or 8s on a VGG16 backbone (see the module docstring for the shapes).

    ``variant``: "32s", "16s" or "8s". ``width``: VGG16's 64 by default; stages have
    ``width * (1, 2, 4, 8, 8)`` channels and fc6/fc7 ``64 * width``. ``dropout``: after fc6 and
    fc7 (0.5 as in VGG16). ``batch_norm``: VGG16-BN's stages (conv + BN + ReLU), not in the
    paper, which fine-tuned an ImageNet VGG16; from scratch the plain net sits at "everything is
    background" for hundreds of steps (Adam 1e-4 to 3e-3, SGD with momentum; its PyTorch twin
    too); with BN, FCN-16s and 8s leave it within one to two hundred steps on ``shapes``.
    Maps (N, in_channels, H, W) to (N, num_classes, H, W) for any H, W.
    """

    def __init__(self, num_classes: int, variant: str = "32s", in_channels: int = 3,
                 width: int = 64, dropout: float = 0.5, batch_norm: bool = False) -> None:
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise ValueError(f"variant: must be '32s', '16s' or '8s', got {variant!r}")
        K = check_positive("num_classes", num_classes)
        self.in_channels = check_positive("in_channels", in_channels)
        w = check_positive("width", width)
        self.variant, self.num_classes = variant, K
        c1, c2, c3, c4, c5, fc = w, 2 * w, 4 * w, 8 * w, 8 * w, 64 * w
        # conv1_1's padding of 100: enough border that fc6 (7x7, unpadded, on pool5) has an
        # output for small inputs; the crops below remove what it adds.
        bn = batch_norm
        self.conv1 = _vgg_stage(1, in_channels, c1, 2, first_padding=100, batch_norm=bn)
        self.pool1 = CeilMaxPool2d()
        self.conv2, self.pool2 = _vgg_stage(2, c1, c2, 2, batch_norm=bn), CeilMaxPool2d()
        self.conv3, self.pool3 = _vgg_stage(3, c2, c3, 3, batch_norm=bn), CeilMaxPool2d()
        self.conv4, self.pool4 = _vgg_stage(4, c3, c4, 3, batch_norm=bn), CeilMaxPool2d()
        self.conv5, self.pool5 = _vgg_stage(5, c4, c5, 3, batch_norm=bn), CeilMaxPool2d()
        # VGG's classifier, convolutionalized: fc6 reads 7x7 pool5 windows
        self.fc6, self.drop6 = nn.Conv2d(c5, fc, 7), nn.Dropout(dropout)
        self.fc7, self.drop7 = nn.Conv2d(fc, fc, 1), nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc, K, 1)
        for conv in [m for m in self.modules() if isinstance(m, nn.Conv2d)][:-1]:
            _he_normal(conv)  # all but score_fr

        def up(k: int, s: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(K, K, k, stride=s, bias=False, init="bilinear")

        def skip_score(c: int) -> nn.Conv2d:
            conv = nn.Conv2d(c, K, 1)
            conv.weight.data[...] = 0  # zero: the finer net starts as the coarser one
            conv.bias.data[...] = 0
            return conv

        to_fr = [self.conv1, self.pool1, self.conv2, self.pool2, self.conv3, self.pool3]
        m_pool3 = coord_map(*to_fr)
        m_pool4 = m_pool3.then(self.conv4, self.pool4)
        m_fr = m_pool4.then(self.conv5, self.pool5, self.fc6, self.fc7, self.score_fr)
        data = CoordMap.identity()
        if variant == "32s":
            self.upscore = up(64, 32)
            self.crops = {"score": crop_offset(m_fr.then(self.upscore), data)}
            return
        self.upscore2 = up(4, 2)
        self.score_pool4 = skip_score(c4)
        m_up2 = m_fr.then(self.upscore2)
        self.crops = {"score_pool4c": crop_offset(m_pool4.then(self.score_pool4), m_up2)}
        if variant == "16s":
            self.upscore16 = up(32, 16)
            self.crops["score"] = crop_offset(m_up2.then(self.upscore16), data)
            return
        self.upscore_pool4 = up(4, 2)
        self.score_pool3 = skip_score(c3)
        self.upscore8 = up(16, 8)
        m_up4 = m_up2.then(self.upscore_pool4)
        self.crops["score_pool3c"] = crop_offset(m_pool3.then(self.score_pool3), m_up4)
        self.crops["score"] = crop_offset(m_up4.then(self.upscore8), data)

    # ---- forward --------------------------------------------------------------------------
    @staticmethod
    def _crop(t: Tensor, offset: tuple[int, int], size: tuple[int, int]) -> Tensor:
        (oy, ox), (h, w) = offset, size
        return t[:, :, oy:oy + h, ox:ox + w]

    def forward(self, x: Tensor) -> Tensor:
        x = check_input(f"FCN-{self.variant}", x, self.in_channels)
        H, W = x.shape[2:]
        pool3 = self.pool3(self.conv3(self.pool2(self.conv2(self.pool1(self.conv1(x))))))
        pool4 = self.pool4(self.conv4(pool3))
        h = self.drop6(F.relu(self.fc6(self.pool5(self.conv5(pool4)))))
        score_fr = self.score_fr(self.drop7(F.relu(self.fc7(h))))
        if self.variant == "32s":
            return self._crop(self.upscore(score_fr), self.crops["score"], (H, W))
        upscore2 = self.upscore2(score_fr)
        fuse_pool4 = upscore2 + self._crop(self.score_pool4(pool4), self.crops["score_pool4c"],
                                           upscore2.shape[2:])
        if self.variant == "16s":
            return self._crop(self.upscore16(fuse_pool4), self.crops["score"], (H, W))
        upscore_pool4 = self.upscore_pool4(fuse_pool4)
        fuse_pool3 = upscore_pool4 + self._crop(self.score_pool3(pool3), self.crops["score_pool3c"],
                                                upscore_pool4.shape[2:])
        return self._crop(self.upscore8(fuse_pool3), self.crops["score"], (H, W))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, crops={self.crops}"
