"""PyTorch twins of minisegnet's models (FCN, U-Net, SegNet, PSPNet, DeepLabV3+, MaskHead).

Each twin is the same network written in plain PyTorch, with the same module names, so that
``load_from(twin, ours)`` copies minisegnet's ``state_dict`` into it key for key (strictly: a
renamed or missing layer fails). The parity tests (``tests/test_{fcn,segnet,pspnet,
deeplabv3plus,mask_head}.py``) compare outputs and every parameter gradient with them, and
``bench_models.py`` times one training step of each against them.

Written independently of minisegnet's code where it matters: FCN's crops are the authors'
numbers from their Caffe prototxts (not computed), its pools use ``ceil_mode=True`` (Caffe's
rounding), RoIAlign is a direct PyTorch transcription of torchvision's aligned RoIAlign
(torchvision is not a dependency).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ============================================================================================
# FCN
# ============================================================================================

# offsets of the crop layers in the authors' voc-fcn{32,16,8}s/train.prototxt
FCN_CROPS = {
    "32s": {"score": 19},
    "16s": {"score_pool4c": 5, "score": 27},
    "8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}


def _vgg_stage(stage: int, cin: int, cout: int, convs: int,
               first_padding: int = 1) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, convs + 1):
        layers[f"conv{stage}_{i}"] = nn.Conv2d(cin if i == 1 else cout, cout, 3,
                                               padding=first_padding if i == 1 else 1)
        layers[f"relu{stage}_{i}"] = nn.ReLU()
    return nn.Sequential(layers)


class FCN(nn.Module):
    def __init__(self, num_classes: int, variant: str = "32s", in_channels: int = 3,
                 width: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        K, w = num_classes, width
        self.variant, self.crops = variant, FCN_CROPS[variant]
        self.conv1 = _vgg_stage(1, in_channels, w, 2, first_padding=100)
        self.conv2 = _vgg_stage(2, w, 2 * w, 2)
        self.conv3 = _vgg_stage(3, 2 * w, 4 * w, 3)
        self.conv4 = _vgg_stage(4, 4 * w, 8 * w, 3)
        self.conv5 = _vgg_stage(5, 8 * w, 8 * w, 3)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc6, self.drop6 = nn.Conv2d(8 * w, 64 * w, 7), nn.Dropout(dropout)
        self.fc7, self.drop7 = nn.Conv2d(64 * w, 64 * w, 1), nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(64 * w, K, 1)

        def up(k: int, s: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(K, K, k, stride=s, bias=False)

        if variant == "32s":
            self.upscore = up(64, 32)
        else:
            self.upscore2, self.score_pool4 = up(4, 2), nn.Conv2d(8 * w, K, 1)
            if variant == "16s":
                self.upscore16 = up(32, 16)
            else:
                self.upscore_pool4, self.score_pool3 = up(4, 2), nn.Conv2d(4 * w, K, 1)
                self.upscore8 = up(16, 8)

    @staticmethod
    def _crop(t: torch.Tensor, o: int, size: Any) -> torch.Tensor:
        return t[:, :, o:o + size[0], o:o + size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pool3 = self.pool(self.conv3(self.pool(self.conv2(self.pool(self.conv1(x))))))
        pool4 = self.pool(self.conv4(pool3))
        h = self.drop6(F.relu(self.fc6(self.pool(self.conv5(pool4)))))
        score_fr = self.score_fr(self.drop7(F.relu(self.fc7(h))))
        c = self.crops
        if self.variant == "32s":
            return self._crop(self.upscore(score_fr), c["score"], size)
        up2 = self.upscore2(score_fr)
        fuse = up2 + self._crop(self.score_pool4(pool4), c["score_pool4c"], up2.shape[2:])
        if self.variant == "16s":
            return self._crop(self.upscore16(fuse), c["score"], size)
        up4 = self.upscore_pool4(fuse)
        fuse = up4 + self._crop(self.score_pool3(pool3), c["score_pool3c"], up4.shape[2:])
        return self._crop(self.upscore8(fuse), c["score"], size)


# ============================================================================================
# U-Net
# ============================================================================================


class UNetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, p: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=p, bias=not bn)
        self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=p, bias=not bn)
        self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class UNetUp(UNetBlock):
    def __init__(self, cin: int, p: int, bn: bool) -> None:
        super().__init__(cin, cin // 2, p, bn)
        self.upconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2, bias=not bn)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.upconv(x)
        dh, dw = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
        skip = skip[:, :, dh:dh + x.shape[2], dw:dw + x.shape[3]]
        return super().forward(torch.cat([skip, x], 1))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net; "same" mirror-pads (np.pad's reflect) to 2^depth and crops."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64,
                 depth: int = 4, padding: str = "same", batch_norm: bool = True) -> None:
        super().__init__()
        p = 1 if padding == "same" else 0
        self.step, self.same = 2 ** depth, padding == "same"
        w = [base_channels * 2 ** i for i in range(depth + 1)]
        self.contracting = nn.ModuleList([UNetBlock(a, b, p, batch_norm)
                                          for a, b in zip([in_channels] + w[:-2], w[:-1],
                                                          strict=True)])
        self.bottleneck = UNetBlock(w[-2], w[-1], p, batch_norm)
        self.expanding = nn.ModuleList([UNetUp(c, p, batch_norm) for c in reversed(w[1:])])
        self.final = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        if self.same:
            rows = np.pad(np.arange(H), (0, -H % self.step), mode="reflect")
            cols = np.pad(np.arange(W), (0, -W % self.step), mode="reflect")
            x = x[:, :, torch.from_numpy(rows)][:, :, :, torch.from_numpy(cols)]
        skips = []
        for block in self.contracting:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.expanding, reversed(skips), strict=True):
            x = block(x, skip)
        return self.final(x)[:, :, :H, :W]


# ============================================================================================
# SegNet
# ============================================================================================


def _conv_bn(cin: int, cout: int, k: int, relu: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), bn=nn.BatchNorm2d(cout))
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class SegNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, depth: int = 4,
                 kernel_size: int = 7) -> None:
        super().__init__()
        w, k = width, kernel_size
        self.encoder = nn.ModuleDict({f"conv{i + 1}": _conv_bn(in_channels if i == 0 else w, w, k,
                                                               True) for i in range(depth)})
        self.decoder = nn.ModuleDict({f"conv_decode{i}": _conv_bn(w, w, k, False)
                                      for i in range(depth, 0, -1)})
        self.classifier = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, saved = x, []
        for i in range(1, len(self.encoder) + 1):
            h = self.encoder[f"conv{i}"](h)
            size = h.shape[2:]
            h, idx = F.max_pool2d(h, 2, return_indices=True)
            saved.append((idx, size))
        for i in range(len(self.decoder), 0, -1):
            idx, size = saved[i - 1]
            h = self.decoder[f"conv_decode{i}"](F.max_unpool2d(h, idx, 2, output_size=size))
        return self.classifier(h)


# ============================================================================================
# the atrous backbone, PSPNet, DeepLabV3+
# ============================================================================================


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1,
                 dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, bias=False),
        bn=nn.BatchNorm2d(cout), relu=nn.ReLU()))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(cin, cout, 1, stride, bias=False), bn=nn.BatchNorm2d(cout)))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class AtrousBackbone(nn.Module):
    def __init__(self, in_channels: int, width: int, output_stride: int) -> None:
        super().__init__()
        w = width
        s3, d3, d4 = (2, 1, 2) if output_stride == 16 else (1, 2, 4)
        self.stem = nn.Sequential(OrderedDict(conv1=conv_bn_relu(in_channels, w, 3, 2),
                                              conv2=conv_bn_relu(w, w, 3)))
        self.layer1 = ResidualBlock(w, 2 * w, 2)
        self.layer2 = ResidualBlock(2 * w, 4 * w, 2)
        self.layer3 = ResidualBlock(4 * w, 8 * w, s3, d3)
        self.layer4 = ResidualBlock(8 * w, 8 * w, 1, d4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _up(t: torch.Tensor, size: Any) -> torch.Tensor:
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    def __init__(self, c: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.bins = bins
        self.stages = nn.ModuleList([nn.Conv2d(c, max(c // len(bins), 1), 1) for _ in bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [_up(F.relu(conv(F.adaptive_avg_pool2d(x, b))), x.shape[2:])
                                for b, conv in zip(self.bins, self.stages, strict=True)],
                         dim=1)


class PSPNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, bins: tuple[int, ...] = (1, 2, 3, 6),
                 width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        c = 8 * width
        self.backbone = AtrousBackbone(in_channels, width, 8)
        self.pyramid_pooling = PyramidPooling(c, tuple(bins))
        self.bottleneck = conv_bn_relu(c + len(bins) * max(c // len(bins), 1), c, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, f = self.backbone(x)
        return _up(self.classifier(self.dropout(self.bottleneck(self.pyramid_pooling(f)))),
                   x.shape[2:])


class SeparableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, 1, dilation, dilation, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def sep_conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=SeparableConv2d(cin, cout, dilation),
                                     bn=nn.BatchNorm2d(cout), relu=nn.ReLU()))


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.conv1x1 = conv_bn_relu(cin, cout, 1)
        self.atrous = nn.ModuleList([sep_conv_bn_relu(cin, cout, r) for r in rates])
        self.image_pooling = nn.Conv2d(cin, cout, 1)
        self.project = conv_bn_relu((2 + len(rates)) * cout, cout, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.image_pooling(F.adaptive_avg_pool2d(x, 1)))
        branches = [self.conv1x1(x)] + [conv(x) for conv in self.atrous]
        branches.append(pooled.expand(-1, -1, *x.shape[2:]))
        return self.dropout(self.project(torch.cat(branches, dim=1)))


class Decoder(nn.Module):
    def __init__(self, low_c: int, reduced: int, c: int, num_classes: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_c, reduced, 1)
        self.refine = nn.Sequential(OrderedDict(sep1=sep_conv_bn_relu(c + reduced, c),
                                                sep2=sep_conv_bn_relu(c, c)))
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.refine(torch.cat([_up(aspp, low.shape[2:]),
                                                      self.reduce(low)], dim=1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, output_stride: int = 16,
                 width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        c = 8 * width
        self.backbone = AtrousBackbone(in_channels, width, output_stride)
        self.aspp = ASPP(c, c, (6, 12, 18) if output_stride == 16 else (12, 24, 36), dropout)
        self.decoder = Decoder(2 * width, max(3 * width // 2, 1), c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, f = self.backbone(x)
        return _up(self.decoder(self.aspp(f), low), x.shape[2:])


# ============================================================================================
# Mask R-CNN's mask head
# ============================================================================================


def roi_align(x: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int) -> torch.Tensor:
    """torchvision's ``roi_align(..., aligned=True)`` with a fixed sampling ratio, in PyTorch ops.

    rois (K, 5) [batch_index, x1, y1, x2, y2]; -> (K, C, P, P). Per axis: ``start = x1*scale -
    0.5``, ``bin = (x2 - x1)*scale / P``; samples at ``start + (p + (i + 0.5)/sr) * bin``; a
    sample beyond [-1, size] adds 0; otherwise it is clamped at 0 and bilinearly interpolated
    (the upper neighbour clamped at size - 1); each bin averages its sr x sr samples.
    """
    P, sr = output_size, sampling_ratio
    _, _, H, W = x.shape
    steps = (torch.arange(P * sr, dtype=x.dtype) // sr + (torch.arange(P * sr) % sr + 0.5) / sr)

    def axis(lo: torch.Tensor, hi: torch.Tensor, n: int):
        start = lo * spatial_scale - 0.5
        pos = start + steps * (hi - lo) * spatial_scale / P          # (P*sr,)
        valid = (pos >= -1) & (pos <= n)
        pos = pos.clamp(min=0)
        low = pos.floor().long()
        edge = low >= n - 1
        low = torch.where(edge, torch.full_like(low, n - 1), low)
        high = torch.where(edge, low, low + 1)
        pos = torch.where(edge, low.to(pos.dtype), pos)
        frac = pos - low.to(pos.dtype)
        return low, high, frac, valid

    out = []
    for r in rois:
        f = x[int(r[0])]                                              # (C, H, W)
        yl, yh, ly, vy = axis(r[2], r[4], H)
        xl, xh, lx, vx = axis(r[1], r[3], W)
        hy, hx = (1 - ly)[:, None], (1 - lx)[None, :]
        ly, lx = ly[:, None], lx[None, :]
        v = (hy * hx * f[:, yl[:, None], xl[None, :]] + hy * lx * f[:, yl[:, None], xh[None, :]]
             + ly * hx * f[:, yh[:, None], xl[None, :]] + ly * lx * f[:, yh[:, None], xh[None, :]])
        v = v * (vy[:, None] & vx[None, :]).to(v.dtype)                # (C, P*sr, P*sr)
        out.append(v.reshape(v.shape[0], P, sr, P, sr).mean(dim=(2, 4)))
    return torch.stack(out)


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, roi_size: int = 14,
                 spatial_scale: float = 1.0, width: int = 256) -> None:
        super().__init__()
        self.roi_size, self.spatial_scale = roi_size, spatial_scale
        w = width
        self.mask_fcn1 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.mask_fcn2 = nn.Conv2d(w, w, 3, padding=1)
        self.mask_fcn3 = nn.Conv2d(w, w, 3, padding=1)
        self.mask_fcn4 = nn.Conv2d(w, w, 3, padding=1)
        self.deconv = nn.ConvTranspose2d(w, w, 2, stride=2)
        self.predictor = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        h = roi_align(x, rois, self.roi_size, self.spatial_scale, 2)
        for conv in (self.mask_fcn1, self.mask_fcn2, self.mask_fcn3, self.mask_fcn4):
            h = F.relu(conv(h))
        return self.predictor(F.relu(self.deconv(h)))


# ============================================================================================
# building and copying
# ============================================================================================

_TWINS = {
    "fcn32s": (FCN, {"variant": "32s"}), "fcn16s": (FCN, {"variant": "16s"}),
    "fcn8s": (FCN, {"variant": "8s"}), "unet": (UNet, {"padding": "same"}),
    "unet-valid": (UNet, {"padding": "valid", "batch_norm": False}),
    "segnet": (SegNet, {}), "pspnet": (PSPNet, {}),
    "deeplabv3plus": (DeepLabV3Plus, {}),
}


def has_twin(name: str) -> bool:
    return name in _TWINS


def create(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """The twin of ``minisegnet.models.create(name, ...)`` (same arguments)."""
    cls, fixed = _TWINS[name]
    return cls(num_classes=num_classes, in_channels=in_channels, **{**fixed, **kwargs})


def load_from(twin: nn.Module, ours: Any) -> nn.Module:
    """Copy the minisegnet model's ``state_dict`` into ``twin`` (strict: same keys and shapes);
    the twin takes the dtype of our parameters. Returns ``twin``."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours.state_dict().items()}
    dtype = next(iter(ours.parameters())).data.dtype
    twin.to(torch.float64 if dtype == np.float64 else torch.float32)
    twin.load_state_dict(state, strict=True)
    return twin
