"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015): the network, overlap-tile inference and the
border weight map that makes the network separate touching cells.

* :class:`UNet`              the contracting path, the bottleneck and the expanding path with
                             up-convolutions and crop-and-concat skips; ``padding="valid"`` is the
                             paper's network, ``padding="same"`` the everyday one (any input size)
* :func:`predict_tiled`      overlap-tile inference of an image of any size
* :func:`weight_map`         ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` from instance labels
* :func:`separate_touching`  carve a background gap between touching instances (done before the
                             weight map, as the authors prepare their training labels)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from .. import functional as F
from .. import nn
from ..backend import get_array_module, to_device, to_numpy
from ..random import default_rng
from ..tensor import Tensor, as_tensor, cat, no_grad

__all__ = ["UNet", "predict_tiled", "tile_plan", "weight_map", "separate_touching", "weight_cutoff"]

Size = tuple[int, int]


# --------------------------------------------------------------------------------------------
# The network


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by ReLU (and batch norm before it when asked).

    ``padding=0`` (valid) loses one pixel per side per conv, as in the paper; ``padding=1`` (same)
    keeps the size. With batch norm the convs carry no bias (the norm's shift replaces it), and
    ``bn1`` / ``bn2`` are ``relu(batch_norm(.))`` fused into the norm's own passes over the data
    (``nn.BatchNorm2d(activation="relu")``); in the paper's network they are the ReLU alone.
    """

    def __init__(self, cin: int, cout: int, padding: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=padding, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(cout, activation="relu") if batch_norm else nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=padding, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(cout, activation="relu") if batch_norm else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))  # relu(bn1(conv1(x)))
        return self.bn2(self.conv2(x))


class ExpandingBlock(ConvBlock):
    """One step of the expanding path: ``upconv`` (2x2, stride 2, halving the channels), then the
    skip from the contracting path, centre-cropped to the upsampled size, is concatenated in front
    of it (``cat([skip, up])``, 2c channels) and two 3x3 convs bring it to c channels."""

    def __init__(self, cin: int, padding: int, batch_norm: bool) -> None:
        super().__init__(cin, cin // 2, padding, batch_norm)
        self.upconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2, bias=not batch_norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.upconv(x)  # (N, c, 2h, 2w)
        return super().forward(cat([center_crop(skip, x.shape[2:]), x], dim=1))  # (N, 2c, 2h, 2w)


def center_crop(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """The centre ``size`` (h, w) window of (N, C, H, W) ``x`` (U-Net's "copy and crop")."""
    H, W = x.shape[2:]
    h, w = size
    if (H, W) == (h, w):
        return x
    top, left = (H - h) // 2, (W - w) // 2
    return x[:, :, top : top + h, left : left + w]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return int(value)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015): (N, in_channels, H, W) -> (N, num_classes, H', W') logits.

    ``padding="valid"`` is the paper's network: unpadded 3x3 convs, so every conv loses a pixel
    per side and the skips are centre-cropped. ``UNet(1, 2, padding="valid", batch_norm=False)``
    (base 64, depth 4) has the paper's 31,030,658 parameters and maps 572 x 572 to 388 x 388::

        level  contracting: 2 convs (sizes)   pool  expanding: up-conv, crop and concat, 2 convs
        0      1 -> 64:      572  570  568    284   392 (568 cropped);  128 -> 64:    390  388
        1      64 -> 128:    284  282  280    140   200 (280 cropped);  256 -> 128:   198  196
        2      128 -> 256:   140  138  136     68   104 (136 cropped);  512 -> 256:   102  100
        3      256 -> 512:    68   66   64     32    56 (64 cropped);   1024 -> 512:   54   52
        bottleneck  512 -> 1024: 32 30 28, then the up-conv to 512 channels: 28 -> 56 (level 3)
        final  1x1 conv 64 -> num_classes: 388 x 388

    An input passes only if every max-pool sees an even size: for depth 4 the valid sizes are
    188, 204, ..., 572, ... (188 + 16k); any other size is a ValueError naming the nearest valid
    ones, and ``input_size_for`` finds the one an output needs. ``halo`` (92) pixels per side are
    lost, which overlap-tile inference (:func:`predict_tiled`) fills by mirroring the border.

    ``padding="same"`` (with batch norm: the everyday network) pads every conv by 1, so the path
    keeps the sizes 2^-level of the input; any input size works: it is mirror-padded (reflect) at
    the bottom and right to a multiple of 2^depth and the output is cropped back to H x W.

    Channels are ``base_channels * 2^level`` (the bottleneck ``base_channels * 2^depth``). Conv and
    up-conv weights start as in the paper, Gaussian with std sqrt(2 / fan-in), biases at 0. With
    batch norm no conv feeding a norm has a bias (the norm's shift would cancel it).
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64, depth: int = 4,
                 padding: str = "same", batch_norm: bool = True) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.base_channels = _positive_int(base_channels, "base_channels")
        self.depth = _positive_int(depth, "depth")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding: must be 'same' or 'valid', got {padding!r}")
        if not isinstance(batch_norm, (bool, np.bool_)):
            raise TypeError(f"batch_norm: must be a bool, got {batch_norm!r}")
        self.padding, self.batch_norm = padding, bool(batch_norm)
        p = 1 if padding == "same" else 0
        widths = [self.base_channels * 2**i for i in range(self.depth + 1)]  # 64 .. 1024

        self.contracting = nn.ModuleList(
            [ConvBlock(cin, cout, p, self.batch_norm)
             for cin, cout in zip([self.in_channels] + widths[:-2], widths[:-1])]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], p, self.batch_norm)
        # expanding[0] is the deepest step (1024 -> 512), expanding[-1] the last (128 -> 64).
        self.expanding = nn.ModuleList(
            [ExpandingBlock(c, p, self.batch_norm) for c in reversed(widths[1:])]
        )
        self.final = nn.Conv2d(widths[0], self.num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper: "a Gaussian distribution with a standard deviation of sqrt(2/N), where N
        # denotes the number of incoming nodes of one neuron" (9 * 64 = 576 for a 3x3 conv over 64
        # channels; C_in for the 2x2 stride-2 up-conv, whose outputs each see one input pixel).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight.data
                if isinstance(m, nn.Conv2d):
                    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                else:
                    fan_in = w.shape[0] * w.shape[2] * w.shape[3] // (m.stride[0] * m.stride[1])
                m.weight.data = (default_rng().standard_normal(w.shape) * math.sqrt(2.0 / fan_in)
                                 ).astype(w.dtype)
                if m.bias is not None:
                    m.bias.data = np.zeros_like(m.bias.data)

    # ---- the forward pass: the figure, left to right ---------------------------------------
    def forward(self, x: Any) -> Tensor:
        x = self._check_input(x, "x")
        H, W = x.shape[2:]
        if self.padding == "same":
            step = 2**self.depth
            x = mirror_pad(x, -H % step, -W % step)  # (N, C, H', W'), multiples of 2^depth
        skips = []
        for block in self.contracting:
            x = block(x)
            skips.append(x)  # copied (and cropped) across to the expanding path
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.expanding, reversed(skips)):
            x = block(x, skip)
        x = self.final(x)  # (N, num_classes, H', W')
        if self.padding == "same":
            x = x[:, :, :H, :W]
        return x

    def _check_input(self, x: Any, name: str) -> Tensor:
        x = as_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: UNet(in_channels={self.in_channels}) expects "
                f"(N, {self.in_channels}, H, W), got shape {x.shape}"
            )
        if self.padding == "valid":
            self._valid_output(x.shape[2], x.shape[3], name)
        return x

    # ---- geometry --------------------------------------------------------------------------
    def _out_1d(self, s: int) -> int | None:
        """The valid-mode output length for input length s, or None if s does not pass."""
        for _ in range(self.depth):
            s -= 4  # two unpadded 3x3 convs
            if s < 2 or s % 2:
                return None  # the 2x2 max-pool needs an even size
            s //= 2
        s -= 4  # bottleneck
        for _ in range(self.depth):
            if s < 1:
                return None
            s = 2 * s - 4  # up-conv doubles, two convs lose 4
        return s if s >= 1 else None

    @property
    def _min_valid(self) -> int:
        """The smallest valid-mode input length; valid lengths are this plus multiples of 2^depth
        (every pool halves an even length, so all of them share one residue mod 2^depth)."""
        if "_min_valid_len" not in self.__dict__:
            s = 1
            while self._out_1d(s) is None:
                s += 1
            self._min_valid_len = s
        return self._min_valid_len

    @property
    def halo(self) -> int:
        """Input pixels lost per side: ``(input - output) / 2``, 92 for the paper's net
        (``6 * 2^depth - 4``: each 3x3 conv at level l costs 2^l input pixels); 0 when
        same-padded."""
        if self.padding == "same":
            return 0
        s = self._min_valid
        return (s - self._out_1d(s)) // 2

    def _nearest_valid(self, s: int) -> tuple[int | None, int]:
        s0, step = self._min_valid, 2**self.depth
        if s <= s0:
            return (s0 if s == s0 else None), s0
        below = s0 + (s - s0) // step * step
        return below, (below if below == s else below + step)

    def _valid_output(self, h: int, w: int, name: str) -> Size:
        out = []
        for axis, s in (("height", h), ("width", w)):
            o = self._out_1d(int(s))
            if o is None:
                below, above = self._nearest_valid(int(s))
                near = (f"the nearest valid {axis}s are {below} and {above}" if below is not None
                        else f"the smallest valid {axis} is {above}")
                raise ValueError(
                    f"{name}: input {axis} {s} (of {h} x {w}) does not pass the valid-padded U-Net "
                    f"of depth {self.depth} (every max-pool needs an even size, every conv 3 "
                    f"pixels); {near}"
                )
            out.append(o)
        return out[0], out[1]

    def output_size(self, h: int, w: int) -> Size:
        """The output (h', w') for an (h, w) input: ``h - 2 * halo`` when valid-padded (572 -> 388),
        ``(h, w)`` when same-padded. An invalid valid-mode size is a ValueError naming the nearest
        valid sizes below and above."""
        h, w = _positive_int(h, "h"), _positive_int(w, "w")
        if self.padding == "same":
            return h, w
        return self._valid_output(h, w, "h, w")

    def input_size_for(self, h: int, w: int) -> Size:
        """The smallest valid input whose output covers (h, w) (388 -> 572 for the paper's net;
        ``(h, w)`` itself when same-padded)."""
        h, w = _positive_int(h, "h"), _positive_int(w, "w")
        if self.padding == "same":
            return h, w
        return self._nearest_valid(h + 2 * self.halo)[1], self._nearest_valid(w + 2 * self.halo)[1]

    def _context(self) -> int:
        """Same-padded: how far (input pixels) a tile's zero-padded border changes the output,
        rounded up to the 2^depth grid. Each 3x3 conv at level l reaches 1 pixel further, a pool
        halves the reach (rounding up), an up-conv doubles it: 94 -> 96 for depth 4."""
        c = 0
        for _ in range(self.depth):
            c = -(-(c + 2) // 2)
        c += 2
        for _ in range(self.depth):
            c = 2 * c + 2
        step = 2**self.depth
        return -(-c // step) * step

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"base_channels={self.base_channels}, depth={self.depth}, "
                f"padding={self.padding!r}, batch_norm={self.batch_norm}")


def mirror_pad(x: Tensor, bottom: int, right: int) -> Tensor:
    """Reflect-pad (N, C, H, W) at the bottom and right, as ``np.pad(mode="reflect")`` does: a
    width beyond the image reflects the reflection again; a 1-pixel dimension repeats."""
    if bottom == 0 and right == 0:
        return x
    H, W = x.shape[2:]
    if bottom < H and right < W and min(H, W) > 1:
        return F.pad(x, (0, right, 0, bottom), mode="reflect")
    rows = np.pad(np.arange(H), (0, bottom), mode="reflect")
    cols = np.pad(np.arange(W), (0, right), mode="reflect")
    return x[:, :, rows][:, :, :, cols]  # gathers; their backward accumulates repeated pixels


# --------------------------------------------------------------------------------------------
# Overlap-tile inference

# A tile's forward pass is estimated at 96 * base_channels bytes per input pixel (float32
# activations of the widest level-0 maps plus an im2col buffer); None picks tiles within this.
_TILE_BUDGET_BYTES = 1 << 30


def _tile_pair(tile: Any) -> Size:
    if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
        tile = (tile, tile)
    def bad(t: Any) -> bool:
        return isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t <= 0

    if not isinstance(tile, (tuple, list)) or len(tile) != 2 or any(bad(t) for t in tile):
        raise ValueError(f"tile: must be a positive int or an (h, w) pair of them, got {tile!r}")
    return int(tile[0]), int(tile[1])


def check_image(img: Any, model: UNet) -> Any:
    """``img`` (NumPy or dask) as (C, H, W) for ``model``: (H, W) is taken for one channel; a
    non-real dtype is a TypeError, any other shape a ValueError naming ``image``."""
    if img.dtype.kind not in "fiu":
        raise TypeError(f"image: needs a real-valued array, got dtype {img.dtype}")
    if img.ndim == 2 and model.in_channels == 1:
        img = img[None]
    if img.ndim != 3 or img.shape[0] != model.in_channels or min(img.shape) == 0:
        accepted = "(H, W) or " if model.in_channels == 1 else ""
        raise ValueError(
            f"image: expected {accepted}({model.in_channels}, H, W) for UNet(in_channels="
            f"{model.in_channels}), got shape {tuple(img.shape)}"
        )
    return img


def tile_plan(model: UNet, H: int, W: int, tile: int | Size | None = None) -> Size:
    """The output tile (h, w) that :func:`predict_tiled` runs on an (H, W) image.

    ``tile`` (an int or (h, w)) is rounded down to what the network can tile with: for a
    valid-padded net a valid output size whose step is on the 2^depth grid (390 -> 388 for the
    paper's net), for a same-padded one a multiple of 2^depth; never larger than the image needs
    (one tile covering the image). None: the largest tile whose forward pass stays near 1 GiB
    (96 * base_channels bytes per input pixel); a same-padded image within that budget is one
    tile. A tile too small to step on the grid is a ValueError naming ``tile``. Tiles start at
    0, s, 2s, ... with s = the tile rounded down to 2^depth (the last one may overhang)::

        valid, tile 388 on a 1000 x 1000 image: origins 0, 384, 768; each reads 388 + 2 * halo
    """
    step, per_pixel = 2**model.depth, 96 * model.base_channels
    if model.padding == "valid":
        halo = model.halo
        o_min = model._out_1d(model._min_valid)
        smallest = o_min + -(-(step - o_min) // step) * step if o_min < step else o_min
        if tile is None:
            side = int(math.sqrt(_TILE_BUDGET_BYTES / per_pixel)) - 2 * halo
            tile = max(side, smallest)
        sizes = []
        for name, t, n in (("height", _tile_pair(tile)[0], H), ("width", _tile_pair(tile)[1], W)):
            if t < smallest:
                raise ValueError(f"tile: the {name} {t} is below the smallest output tile of this "
                                 f"U-Net that can step on the 2^{model.depth} grid, {smallest}")
            cover = model.input_size_for(n, n)[0] - 2 * halo  # one tile of this covers the image
            t = min(t, max(cover, smallest))
            sizes.append(o_min + (t - o_min) // step * step)  # round down to a valid output size
        return sizes[0], sizes[1]
    P, Q = H + -H % step, W + -W % step  # the image mirrored to the grid, as the forward pads
    if tile is None:
        side = int(math.sqrt(_TILE_BUDGET_BYTES / per_pixel))
        tile = (P, Q) if P * Q <= side * side else max(side - 2 * model._context(), step)
    th, tw = _tile_pair(tile)
    if min(th, tw) < step:
        raise ValueError(f"tile: {(th, tw)} is below the 2^depth = {step} grid of this U-Net")
    return min(th - th % step, P), min(tw - tw % step, Q)


def predict_tiled(model: UNet, image: Any, tile: int | Size | None = None) -> np.ndarray:
    """Overlap-tile inference (the paper's Fig. 2): logits (K, H, W) of a (C, H, W) image, any size.

    ``tile`` is the output-tile size (an int or (h, w)); None picks the largest that keeps a tile's
    forward pass near 1 GiB, no larger than the image needs. Runs under ``no_grad`` in ``eval``
    mode (the model's mode is restored after); tiles go to the model's device.

    **Valid-padded** model: the image is mirrored (reflect) by ``halo`` on every side, and further
    at the bottom/right so the last tile is full. Output tiles of a valid output size T (the tile
    asked for, rounded down to one: 388, 372, ... for the paper's net) start on the 2^depth grid,
    every ``T - T mod 2^depth`` pixels, and each reads the T + 2 * halo input pixels around it.
    Because pools see the same grid in every tile, the result equals one pass of the model over
    the whole mirrored image ``np.pad(image, halo (+ extra at the bottom/right), "reflect")`` up to
    float rounding (conv sums of other lengths), and labels (argmax) agree exactly. An image
    smaller than the halo is mirrored repeatedly (``np.pad``'s reflect: the mirror image is itself
    mirrored, a periodic even extension).

    **Same-padded** model: the reference is ``model(image)`` (mirrored at the bottom/right to the
    2^depth grid). Output tiles of T (a multiple of 2^depth) read the input around them by a
    margin that covers how far a tile's zero-padded border reaches into its output (96 pixels for
    depth 4, see ``UNet._context``), clipped to the image, so the result again equals the whole
    pass up to float rounding; an image that fits in one tile is run whole.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model: predict_tiled needs a UNet, got {type(model).__name__}")
    img = image.data if isinstance(image, Tensor) else image
    img = to_numpy(img) if get_array_module(img) is not np else np.asarray(img)
    img = check_image(img, model)
    dtype = next(iter(model.parameters())).dtype
    img = img.astype(dtype, copy=False)
    _, H, W = img.shape
    step, K = 2**model.depth, model.num_classes
    th, tw = tile_plan(model, H, W, tile)
    if model.padding == "valid":
        halo = model.halo
        sh, sw = th - th % step, tw - tw % step
        # Origins 0, s, 2s, ... on the grid, as many as it takes for the last tile to reach H.
        ys = [i * sh for i in range(1 + -(-max(H - th, 0) // sh))]
        xs = [i * sw for i in range(1 + -(-max(W - tw, 0) // sw))]
        ext_h, ext_w = ys[-1] + th - H, xs[-1] + tw - W
        src = np.pad(img, ((0, 0), (halo, halo + ext_h), (halo, halo + ext_w)), mode="reflect")
        # (output origin, input window rows a:b and columns c:d, offset of the output in it)
        windows = [((y, x), (y, y + th + 2 * halo, x, x + tw + 2 * halo), (0, 0))
                   for y in ys for x in xs]
    else:
        ph, pw = -H % step, -W % step
        src = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect")  # as the forward pads
        P, Q = H + ph, W + pw
        m = model._context()
        windows = []
        for y in range(0, P, th):
            for x in range(0, Q, tw):
                y0, x0 = max(y - m, 0), max(x - m, 0)
                window = (y0, min(y + th + m, P), x0, min(x + tw + m, Q))
                windows.append(((y, x), window, (y - y0, x - x0)))

    out = np.empty((K, H, W), dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for (y, x), (a, b, c, d), (oy, ox) in windows:
                inp = to_device(np.ascontiguousarray(src[None, :, a:b, c:d]), model.device)
                logits = model(Tensor(inp)).data[0]  # (K, h, w)
                hh, ww = min(th, H - y), min(tw, W - x)
                out[:, y : y + hh, x : x + ww] = to_numpy(logits[:, oy : oy + hh, ox : ox + ww])
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# Instance labels: separation gaps and the border weight map


def _instance_labels(instances: Any, fn: str) -> np.ndarray:
    """Check an (H, W) integer instance label image (0 = background) and return it as NumPy."""
    if hasattr(instances, "get") and type(instances).__module__.startswith("cupy"):
        instances = instances.get()  # a CuPy array: this is host-side label preparation
    a = np.asarray(instances)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(
            f"instances: {fn} needs an integer instance label image (0 = background, one id per "
            f"object), got dtype {a.dtype}; label a binary mask first (scipy.ndimage.label), but "
            f"note that labelling merges touching objects"
        )
    if a.ndim != 2:
        raise ValueError(f"instances: {fn} needs a 2-D (H, W) label image, got shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"instances: ids must be non-negative (0 = background), got min {a.min()}")
    return a


def _compact(a: np.ndarray) -> np.ndarray:
    """int32 labels, 0 = background, at most H*W: sparse or huge ids are renumbered 1..n (in order),
    so that find_objects returns a short list and the filters never see a 64-bit id."""
    if a.size == 0 or a.max() <= a.size:
        return a.astype(np.int32)
    ids, inverse = np.unique(a, return_inverse=True)
    lab = inverse.reshape(a.shape).astype(np.int32)
    return lab if ids[0] == 0 else lab + 1


def separate_touching(instances: Any, gap: int = 1) -> np.ndarray:
    """Carve background between touching instances: pixels within ``gap`` of another id become 0.

    A pixel of instance ``a`` is removed when some pixel of a *different* instance ``b`` lies in
    the (2 gap + 1) x (2 gap + 1) square around it (Chebyshev distance <= gap; gap 1 is the
    8-neighbourhood). Both sides of a contact are carved, so afterwards any two pixels of different
    instances are more than ``gap`` apart (at least ``gap`` background pixels between them, no two
    instances 8-adjacent for gap 1), and only pixels that touched another instance are removed.
    This is how the U-Net authors prepare their cell labels: the carved gap is background the
    network must learn, and :func:`weight_map` gives it a large weight.

    instances: (H, W) integer ids, 0 = background (ids need not be consecutive). Returns a copy
    of the same dtype.
    """
    a = _instance_labels(instances, "separate_touching")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap: must be a non-negative int, got {gap!r}")
    if gap == 0 or a.size == 0:
        return a.copy()
    size = 2 * int(gap) + 1
    lab = _compact(a)
    top = np.int32(lab.max() + 1)
    # Largest and smallest foreground id in each window (the min sees background as `top`); a
    # pixel touches another instance iff either differs from its id. Small int32 ids because
    # SciPy's rank filters lose 64-bit ids (they pass through doubles); mode="nearest" is exact
    # here (an edge copy in a window is a pixel of that window).
    hi = ndimage.maximum_filter(lab, size=size, mode="nearest")
    lo = ndimage.minimum_filter(np.where(lab == 0, top, lab), size=size, mode="nearest")
    out = a.copy()
    out[(lab > 0) & ((hi != lab) | (lo != lab))] = 0
    return out


def weight_cutoff(w0: float, sigma: float, tol: float = 1e-6) -> float:
    """The distance beyond which an instance cannot change the border term by more than ``tol``.

    If instance ``i`` is farther than ``R`` from pixel x and is x's nearest or second-nearest
    instance, then ``d1 + d2 >= d2 > R`` and the term is below ``w0 exp(-R^2 / (2 sigma^2))``.
    Solving that for ``tol`` gives ``R = sigma sqrt(2 ln(w0 / tol))`` (28.4 px for w0 = 10,
    sigma = 5, tol = 1e-6), so each instance only needs its distances within R of its box.
    """
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def weight_map(
    instances: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Any = "balanced",
) -> np.ndarray:
    """U-Net's per-pixel loss weight ``w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    instances: (H, W) integer instance ids, 0 = background, ids need not be consecutive. Use
    instance labels, not a labelled binary mask: labelling merges the touching cells this term
    exists for. ``d1``/``d2`` are the Euclidean distances (pixel centre to pixel centre) to the
    nearest and second-nearest instance. The exponential term is added on background pixels only,
    as the authors' own implementation does: it weights the thin background gaps between touching
    cells (carve them with :func:`separate_touching` first). ``w_c`` weights the classes:

    * ``"balanced"``: ``w_c = N / (2 n_c)`` for background and foreground (``n_c`` pixels of each
      among N), so both classes carry the same total weight; 1 everywhere if only one is present;
    * a per-class array ``[w_background, w_foreground]``;
    * ``None``: 1.

    Returns float32 (H, W). Memory is a few H x W arrays whatever the number of instances: the
    nearest and second-nearest distances are running minima, updated per instance from a distance
    transform of a crop around it (its box grown by :func:`weight_cutoff`, beyond which the term
    is below 1e-6), never an (H, W, N) stack. The 512 x 512 DSB2018 nuclei image (125 instances,
    separated) took 33-66 ms here (2 shared cores; separate_touching 7-12 ms).

        inst = separate_touching(instances)
        w = weight_map(inst)              # pass as cross_entropy(..., weight=w[None])
    """
    a = _instance_labels(instances, "weight_map")
    if not (isinstance(w0, (int, float, np.number)) and w0 >= 0):
        raise ValueError(f"w0: must be a non-negative number, got {w0!r}")
    if not (isinstance(sigma, (int, float, np.number)) and sigma > 0):
        raise ValueError(f"sigma: must be a positive number, got {sigma!r}")
    fg = a > 0
    wc = _class_weight_map(fg, class_weights)
    if w0 == 0 or not fg.any() or fg.all():
        return wc  # the term lives on background pixels near instances

    lab = _compact(a)
    H, W = a.shape
    r = int(math.ceil(weight_cutoff(float(w0), float(sigma))))
    d1 = np.full(a.shape, np.inf)  # nearest instance distance, running minimum
    d2 = np.full(a.shape, np.inf)  # second nearest
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        ys, xs = box
        sl = (slice(max(ys.start - r, 0), min(ys.stop + r, H)),
              slice(max(xs.start - r, 0), min(xs.stop + r, W)))
        # The crop holds all of instance k, so distances in it are the full-image distances.
        d = ndimage.distance_transform_edt(lab[sl] != k)
        c1, c2 = d1[sl], d2[sl]
        c2[...] = np.minimum(c2, np.maximum(c1, d))  # old c1 still in place: order matters
        np.minimum(c1, d, out=c1)

    s = d1 + d2
    s *= s
    s *= -1.0 / (2.0 * float(sigma) ** 2)
    np.exp(s, out=s)  # inf -> 0: pixels no crop reached
    s *= float(w0)
    s[fg] = 0.0
    return (wc + s).astype(np.float32)


def _class_weight_map(fg: np.ndarray, class_weights: Any) -> np.ndarray:
    if class_weights is None:
        return np.ones(fg.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights: must be 'balanced', None or [w_background, w_foreground], "
                f"got {class_weights!r}"
            )
        n, n_fg = fg.size, int(fg.sum())
        n_bg = n - n_fg
        if n_fg == 0 or n_bg == 0:
            return np.ones(fg.shape, np.float32)
        cw = np.array([n / (2.0 * n_bg), n / (2.0 * n_fg)])
    else:
        cw = np.asarray(class_weights, dtype=np.float64)
        if cw.shape != (2,) or not np.all(np.isfinite(cw)) or np.any(cw < 0):
            raise ValueError(
                f"class_weights: a per-class array must be [w_background, w_foreground], finite "
                f"and non-negative, got {class_weights!r} (shape {cw.shape})"
            )
    return cw[fg.astype(np.intp)].astype(np.float32)
