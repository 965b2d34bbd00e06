# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 — DeepLabV3+ and PSPNet: context at several scales
#
# FCN and U-Net shrink the image to 1/32 or 1/16 and grow it back. DeepLab and PSPNet keep the
# features larger (output stride 8 or 16, with dilated convolutions instead of the last strides)
# and then look at them at several scales at once. You will learn:
#
# 1. **output stride**: what replacing strides by dilation does to the feature sizes (513 -> 33 at
#    stride 16, 65 at stride 8) and why ASPP's rates double at stride 8;
# 2. **ASPP** (atrous spatial pyramid pooling, DeepLabv3/v3+): a 1x1 conv, 3x3 atrous convs at rates
#    6, 12, 18 and image pooling, side by side;
# 3. **the pyramid pooling module** (PSPNet): averages over 1x1, 2x2, 3x3 and 6x6 bins;
# 4. **what each branch sees**: the effective receptive field of one output pixel, the gradient
#    of that pixel with respect to the input image, per ASPP branch and per pyramid bin (drawn);
#    on a 33x33 map the rate-18 branch sees no more than the 1x1 one, and image pooling sees all.
#
# Both networks are built at a small width and left untrained: receptive fields are a property of
# the architecture (which pixels *can* influence an output), not of the weights. Everything is
# small; `MINISEGNET_FAST` changes nothing (run it with `pytest tests/test_notebooks.py -k 09_`).

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from skimage import data as skdata

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import Tensor, models

np.set_printoptions(precision=4, suppress=True, linewidth=120)
msn.manual_seed(0)
WIDTH = 4  # channels w, 2w, 4w, 8w: small, the geometry does not depend on it

photo = skdata.astronaut().astype(np.float32).transpose(2, 0, 1) / 255  # (3, 512, 512)
photo = np.pad(photo, ((0, 0), (0, 1), (0, 1)), mode="reflect")  # (3, 513, 513): DeepLab's crop
# receptive fields are measured on noise (a flat patch of a photo can switch off every ReLU that
# reads it, which hides pixels the architecture does connect)
noise = np.random.default_rng(0).random((3, 513, 513)).astype(np.float32)

# %% [markdown]
# ## 1. Output stride 16 or 8
#
# The backbone (`AtrousBackbone`, a small ResNet) halves the size four times at output stride 32.
# DeepLab keeps stride 16 by replacing layer4's stride 2 with dilation 2, and stride 8 by doing the
# same to layer3 (dilations 2 and 4). A 3x3 stride-2 conv with padding 1 maps `n` to `ceil(n/2)`:

# %%
def feature_size(n, output_stride):
    for _ in range(int(math.log2(output_stride))):
        n = -(-n // 2)  # ceil(n / 2)
    return n


x = Tensor(photo[None])
nets = {os_: models.create("deeplabv3plus", 21, width=WIDTH, output_stride=os_).eval() for os_ in (16, 8)}
for os_, net in nets.items():
    with msn.no_grad():
        low, feats = net.backbone(x)
        out = net(x)
    print(f"output stride {os_:2d}: low-level {low.shape[2:]}, features {feats.shape[2:]} "
          f"({feats.shape[2] * feats.shape[3]} positions), ASPP rates {net.aspp.rates}, output {out.shape[2:]}")
    assert feats.shape[2] == feature_size(513, os_) and low.shape[2] == feature_size(513, 4)
    assert out.shape[2:] == (513, 513)
    # a rate-r tap at stride os is r * os image pixels away: the same at both strides
    print("   tap distances in image pixels:", [r * os_ for r in net.aspp.rates])
assert [r * 16 for r in nets[16].aspp.rates] == [r * 8 for r in nets[8].aspp.rates] == [96, 192, 288]
assert feature_size(513, 16) == 33 and feature_size(513, 8) == 65

# %% [markdown]
# At stride 8 the feature map holds 65^2 = 4225 positions against 33^2 = 1089: layer3, layer4 and
# ASPP cost about four times as much, and in exchange the decoder starts from a finer map. The
# rates double so that every branch still looks the same distance into the image. Both share all
# parameters (only dilations and strides change), so a net trained at 16 can be run at 8:

# %%
n16, n8 = (sum(p.data.size for p in n.parameters()) for n in nets.values())
print("parameters at stride 16 and 8:", n16, n8)
assert n16 == n8
nets[8].load_state_dict(nets[16].state_dict())  # the stride-16 weights, run at stride 8
assert all(np.array_equal(a.data, b.data) for a, b in zip(nets[8].parameters(), nets[16].parameters()))

# %% [markdown]
# ## 2. ASPP, branch by branch
#
# `ASPP.forward` concatenates five branches and projects them with a 1x1 conv. We rebuild the
# branches from the module's parts, so that each can be looked at alone, and check that together
# they give the module's own output.

# %%
net = nets[16]
aspp = net.aspp


def aspp_branches(f):
    pooled = F.relu(aspp.image_pooling(F.adaptive_avg_pool2d(f, 1)))  # (N, C', 1, 1)
    return {"1x1 conv": aspp.conv1x1(f),
            **{f"3x3 rate {r}": conv(f) for r, conv in zip(aspp.rates, aspp.atrous)},
            "image pooling": F.interpolate(pooled, size=f.shape[2:], mode="bilinear")}


with msn.no_grad():
    _, feats = net.backbone(x)
    branches = aspp_branches(feats)
    rebuilt = aspp.project(F.cat(list(branches.values()), dim=1))
    assert np.allclose(rebuilt.numpy(), aspp(feats).numpy(), atol=1e-5)  # eval: dropout is off
print({k: v.shape for k, v in branches.items()})

# image pooling: one vector per image (a 1x1 conv of the mean feature), the same at every position
ip = branches["image pooling"].numpy()[0]
mean_feature = feats.numpy()[0].mean(axis=(1, 2))  # (C,)
by_hand = np.maximum(aspp.image_pooling.weight.data[:, :, 0, 0] @ mean_feature + aspp.image_pooling.bias.data, 0)
assert np.allclose(ip, ip[:, :1, :1]) and np.allclose(ip[:, 0, 0], by_hand, atol=1e-5)
print("image pooling: constant over the 33x33 map, = relu(W @ mean(features) + b)")

# %% [markdown]
# Which of the nine taps of each atrous branch land inside the 33x33 map at its centre pixel
# (16, 16)? The others read the zero padding and carry nothing.

# %%
for r in aspp.rates:
    inside = [16 + r * d for d in (-1, 0, 1) if 0 <= 16 + r * d < 33]
    print(f"rate {r:2d}: the taps at offsets -{r}, 0, +{r} land on {[16 + r * d for d in (-1, 0, 1)]}; "
          f"inside: {inside} -> {len(inside) ** 2} of 9 taps")
assert all(not 0 <= 16 + 18 * d < 33 for d in (-1, 1))  # rate 18: only the centre tap

# %% [markdown]
# ## 3. What each branch sees: effective receptive fields
#
# The input pixels that can change an output pixel are those where the gradient of that output
# with respect to the input is non-zero, and its size says how much they matter (Luo et al. 2016,
# "the effective receptive field"). We back-propagate a one at the centre pixel of every channel
# of one branch, in eval mode (batch norm with fixed statistics: otherwise the batch mean would
# tie every pixel to every other), and draw `|d output / d image|` summed over colours.

# %%
def erf(backbone, branch_fns, image):
    """|d (centre pixel of each branch) / d image| (H, W) per branch, one forward pass."""
    xg = Tensor(image[None], requires_grad=True)
    _, f = backbone(xg)
    outs = branch_fns(f)
    fields = {}
    for name, o in outs.items():
        g = np.zeros(o.shape, np.float32)
        g[0, :, o.shape[2] // 2, o.shape[3] // 2] = 1.0
        xg.grad = None
        o.backward(g, retain_graph=True)
        fields[name] = np.abs(xg.grad[0]).sum(0)
    return fields


def span(field):
    """Rows spanned by the non-zero gradient (first, last, length)."""
    rows = np.flatnonzero(field.any(1))
    return rows[0], rows[-1], rows[-1] - rows[0] + 1


fields_aspp = erf(net.backbone, aspp_branches, noise)
for name, g in fields_aspp.items():
    a, b, n = span(g)
    print(f"{name:14s}: rows {a:3d}..{b:3d} ({n:3d} px), {100 * (g > 0).mean():5.1f}% of the image")

s = {k: span(g)[2] for k, g in fields_aspp.items()}
backbone_rf = s["1x1 conv"]  # a 1x1 conv adds nothing: the backbone's own field at the centre
assert s["3x3 rate 6"] == backbone_rf + 2 * 6 * 16  # the outer taps, 96 px either side
assert s["3x3 rate 18"] == backbone_rf  # all taps but the centre fall in the padding
assert s["3x3 rate 12"] == s["image pooling"] == 513
assert (fields_aspp["image pooling"] > 0).mean() > 0.99

# %% [markdown]
# The rate-6 field is the backbone's field copied to the nine tap positions, 96 pixels apart;
# at rate 12 the outer copies (192 pixels out) reach the image border; at rate 18 they fall
# outside it, and the branch is a 1x1 conv in disguise. That is why DeepLabv3 added image pooling:
# the only branch that reliably sees the whole image, whatever its size.

# %%
def draw(fields, title, marks=None):
    fig, axes = plt.subplots(1, len(fields), figsize=(3.1 * len(fields), 3.6))
    for ax, (name, g) in zip(axes, fields.items()):
        ax.imshow(np.log10(g / g.max() + 1e-6), cmap="magma", vmin=-6, vmax=0)
        ax.set_title(f"{name}\nspan {span(g)[2]} px", fontsize=10)
        if marks and name in marks:
            ax.plot(*marks[name], "c+", ms=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


centre = 256
marks = {}
for r in aspp.rates:
    taps = [centre + 16 * r * d for d in (-1, 0, 1)]
    pts = [(u, v) for u in taps for v in taps if 0 <= u < 513 and 0 <= v < 513]
    marks[f"3x3 rate {r}"] = np.array(pts).T
draw(fields_aspp, "ASPP at output stride 16 on 513x513: log10 |d centre output / d image| (+: tap centres)", marks);

# %% [markdown]
# ## 4. PSPNet's pyramid pooling module
#
# PSPNet runs its backbone at output stride 8 (473 -> 60x60), then averages the features over a
# 1x1, 2x2, 3x3 and 6x6 grid of bins (`adaptive_avg_pool2d`), reduces each to C/4 channels with a
# 1x1 conv, upsamples it back bilinearly and concatenates all four with the features. First the
# pooling itself: with 60 divisible by 1, 2, 3 and 6, every bin is a plain block average.

# %%
psp = models.create("pspnet", 21, width=WIDTH).eval()
pp = psp.pyramid_pooling
crop = photo[:, 20:493, 20:493]  # (3, 473, 473): PSPNet's crop
with msn.no_grad():
    _, f = psp.backbone(Tensor(crop[None]))
print("features", f.shape, " bins", pp.bins, " module output channels", pp.out_channels)
assert f.shape[2:] == (60, 60)
fa = f.numpy()[0]
for b in pp.bins:
    pooled = F.adaptive_avg_pool2d(f, b).numpy()[0]  # (C, b, b)
    k = 60 // b
    blocks = fa.reshape(fa.shape[0], b, k, b, k).mean(axis=(2, 4))
    assert np.allclose(pooled, blocks, atol=1e-5)
print("every bin = the mean of its 60/b x 60/b block of features")


def psp_branches(f):
    size = f.shape[2:]
    outs = {"features": f}
    for b, conv in zip(pp.bins, pp.stages):
        outs[f"bin {b}x{b}"] = F.interpolate(F.relu(conv(F.adaptive_avg_pool2d(f, b))), size=size, mode="bilinear")
    return outs


with msn.no_grad():
    assert np.allclose(F.cat(list(psp_branches(f).values()), dim=1).numpy(), pp(f).numpy(), atol=1e-6)

fields_psp = erf(psp.backbone, psp_branches, noise[:, 20:493, 20:493])
area = {k: (g > 0).mean() for k, g in fields_psp.items()}
for name, g in fields_psp.items():
    print(f"{name:9s}: span {span(g)[2]:3d} px, {100 * area[name]:5.1f}% of the image")
assert area["bin 1x1"] > 0.99  # the global average: (nearly) every pixel
assert area["features"] < area["bin 6x6"] < area["bin 3x3"] <= area["bin 2x2"] <= area["bin 1x1"]
draw(fields_psp, "PSPNet on 473x473: log10 |d centre output / d image|, per pyramid level");

# %% [markdown]
# Which bins does the centre pixel (30, 30) read? Bilinear upsampling (`align_corners=False`) puts
# output pixel `i` at bin coordinate `(i + 0.5) * b / 60 - 0.5` and blends the two bins around it:

# %%
for b in pp.bins:
    c = (30 + 0.5) * b / 60 - 0.5
    lo, hi = max(math.floor(c), 0), min(math.floor(c) + 1, b - 1)
    print(f"bin {b}x{b}: coordinate {c:.3f} -> bins {lo} and {hi} of 0..{b - 1} per axis, "
          f"features {lo * 60 // b}..{(hi + 1) * 60 // b - 1} of 0..59")

# %% [markdown]
# So even the 2x2 branch reads all four quadrants, the 3x3 branch the middle and the last third
# (the field is lopsided), the 6x6 branch the middle third, each widened by the backbone's own
# field; the features themselves only that field. PSPNet's claim is in the picture: each position
# gets the global average, its quadrant's, its ninth's and its 1/36th's, at the cost of four 1x1
# convs on tiny maps.

# %% [markdown]
# ## Exercises
#
# 1. Repeat section 3 at output stride 8 (`nets[8]`, rates 12, 24, 36). Are the spans the same as at
#    stride 16? Explain with the tap distances of section 1.
# 2. Feed a 257x257 image to the stride-16 net. Which ASPP branches are then 1x1 convs in disguise?
#    At which input size does the rate-18 branch see all nine taps at the centre?
# 3. Train-mode batch norm ties pixels together: redo one field with `net.train()` and compare the
#    share of non-zero pixels with the eval-mode one.
# 4. Replace PSPNet's bins by (1, 2, 4, 8) on a 473 crop. Is every bin still a plain block average
#    (60 is not divisible by 8)? Check with `adaptive_avg_pool2d` against the block means.
# 5. The fields here are of untrained networks. Train DeepLabV3+ briefly on `shapes` and redraw:
#    which branches' fields change shape, and which only in intensity?
