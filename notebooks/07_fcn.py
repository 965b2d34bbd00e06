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
# # 07 — FCN: a classifier that slides, and skips that sharpen it
#
# Long, Shelhamer and Darrell's Fully Convolutional Networks (CVPR 2015) turned an image
# classifier into a segmenter with two ideas. You will learn:
#
# 1. **convolutionalization**: a dense layer trained on 7x7 inputs *is* a 7x7 convolution, so on a
#    14x14 input it computes the classifier at every one of the (14 - 7 + 1)^2 = 8x8 windows at
#    once; we check it window by window;
# 2. **where each score sits in the image**: the crop offsets that line the upsampled scores up
#    with the input (19 for FCN-32s; 5 and 27 for 16s; 5, 9 and 31 for 8s) follow from the
#    layers' kernel sizes, strides and paddings, computed here by hand and by the library;
# 3. **skip fusion**: FCN-32s, FCN-16s and FCN-8s trained with the same budget on the `shapes`
#    data, their predictions side by side.
#
# Run at full size with `MINISEGNET_FAST=0 pytest tests/test_notebooks.py -k 07_` (CI's fast mode
# trains tiny networks for a few steps: the section-3 pictures are then only a sketch).

# %%
import os
import time
from fractions import Fraction

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor, data, metrics, models, optim
from minisegnet.models.fcn import FCN, convolutionalize, coord_map, crop_offset

FAST = os.environ.get("MINISEGNET_FAST", "0") == "1"
np.set_printoptions(precision=3, suppress=True, linewidth=120)
msn.manual_seed(0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Convolutionalization: 7x7 -> 14x14 gives 8x8
#
# A real classifier first: logistic regression (one `nn.Linear`) on scikit-learn's handwritten
# digits, shrunk from 8x8 to 7x7 (an adaptive average pool) so that its input is a 1 x 7 x 7
# "feature map", flattened to 49 numbers, as VGG's fc6 reads its 512 x 7 x 7 pool5 features.

# %%
digits = load_digits()
x_all = F.adaptive_avg_pool2d(Tensor(digits.images[:, None].astype(np.float32) / 16), 7).numpy()
y_all = digits.target
perm = rng.permutation(len(y_all))
tr, te = perm[:1400], perm[1400:]
print("digits as 7x7 maps:", x_all.shape, "train", len(tr), "test", len(te))

fc = nn.Linear(1 * 7 * 7, 10)
opt = optim.Adam(fc.parameters(), lr=0.05)
xt, yt = Tensor(x_all[tr].reshape(len(tr), -1)), Tensor(y_all[tr])  # (N, 49): flattened C, h, w
for step in range(150):
    loss = F.cross_entropy(fc(xt), yt)
    opt.zero_grad()
    loss.backward()
    opt.step()
with msn.no_grad():
    pred_test = fc(Tensor(x_all[te].reshape(len(te), -1))).numpy().argmax(1)
acc = (pred_test == y_all[te]).mean()
print(f"dense classifier: final loss {loss.item():.3f}, test accuracy {acc:.3f}")
assert acc > 0.85

# %% [markdown]
# Its weight is a (10, 49) matrix, and 49 = 1 x 7 x 7: reshaped to (10, 1, 7, 7) it is the kernel
# of a 7x7 convolution with 10 output channels. `convolutionalize` does exactly that. On a 7x7
# input the conv gives a 1x1 map holding the dense layer's 10 scores; on a 14x14 input it gives
# an 8x8 map, one score vector per 7x7 window. Below, four test digits tile a 14x14 canvas.

# %%
conv = convolutionalize(fc, (1, 7, 7))
print(conv, "weight", conv.weight.shape)
quad = te[:4]
canvas = np.zeros((1, 1, 14, 14), np.float32)
for (r, c), i in zip([(0, 0), (0, 7), (7, 0), (7, 7)], quad):
    canvas[0, 0, r:r + 7, c:c + 7] = x_all[i, 0]
with msn.no_grad():
    score_map = conv(Tensor(canvas)).numpy()[0]  # (10, 8, 8)
print("14x14 canvas ->", score_map.shape[1:], "score map")
assert score_map.shape == (10, 8, 8)

# the dense layer, run on each of the 64 windows one by one
with msn.no_grad():
    windows = np.stack([canvas[0, :, i:i + 7, j:j + 7].reshape(-1) for i in range(8) for j in range(8)])
    dense = fc(Tensor(windows)).numpy()  # (64, 10)
assert np.allclose(score_map.reshape(10, 64).T, dense, atol=1e-5)
print("max |conv - dense| over the 64 windows:", np.abs(score_map.reshape(10, 64).T - dense).max())

corners = score_map[:, [0, 0, 7, 7], [0, 7, 0, 7]].argmax(0)
print("classes at the four corners:", corners, " truth:", y_all[quad])
assert np.array_equal(corners, pred_test[:4])  # the corners are the four digits, classified

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
axes[0].imshow(canvas[0, 0], cmap="gray")
axes[0].add_patch(plt.Rectangle((-0.5, -0.5), 7, 7, fill=False, ec="r", lw=2))
axes[0].add_patch(plt.Rectangle((0.5, 1.5), 7, 7, fill=False, ec="orange", lw=2, ls="--"))
axes[0].set_title("14x14 input: four 7x7 digits\n(two of the 64 windows)")
im = axes[1].imshow(score_map.argmax(0), cmap="tab10", vmin=0, vmax=9)
for i in range(8):
    for j in range(8):
        axes[1].text(j, i, score_map[:, i, j].argmax(), ha="center", va="center", fontsize=8)
axes[1].set_title("8x8 output: the class of each window")
axes[2].imshow(score_map.max(0), cmap="viridis")
axes[2].set_title("8x8 output: the top score")
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# Only the four corner windows hold a whole digit; the others straddle two to four digits and the
# classifier says something, with a lower top score. That is FCN's starting point: any classifier
# becomes a dense predictor, one class vector per window, at the stride of its features.
#
# ## 2. Where the scores sit: the crop offsets, from the geometry
#
# FCN pads `conv1_1` by 100 (so even a small image leaves fc6 a 7x7 pool5 window), and upsamples
# the score map with a transposed conv. Both shift the scores against the image; a crop removes
# the shift. Which crop? Follow one output pixel through the layers. A conv or pool with kernel
# `k`, stride `s`, padding `p` puts its output pixel `i` at the centre of the input pixels it reads,
# input coordinate `s*i - p + (k-1)/2`; a transposed conv runs the map backwards,
# `(i + p - (k-1)/2) / s`. Composing the maps gives, for every layer, pixel `i` at `scale*i + offset`
# in image coordinates; the crop is the index `i` that lands on image pixel 0.
#
# FCN-32s, layer by layer (VGG16: 3x3 convs with padding 1, 2x2 pools with stride 2, then the
# convolutionalized fc6 (7x7) and fc7 (1x1), the 1x1 scores and the 64x64 stride-32 up-conv):

# %%
fcn32_layers = (
    [("conv1_1", 3, 1, 100), ("conv1_2", 3, 1, 1), ("pool1", 2, 2, 0)]
    + [(f"conv2_{i}", 3, 1, 1) for i in (1, 2)] + [("pool2", 2, 2, 0)]
    + [(f"conv3_{i}", 3, 1, 1) for i in (1, 2, 3)] + [("pool3", 2, 2, 0)]
    + [(f"conv4_{i}", 3, 1, 1) for i in (1, 2, 3)] + [("pool4", 2, 2, 0)]
    + [(f"conv5_{i}", 3, 1, 1) for i in (1, 2, 3)] + [("pool5", 2, 2, 0)]
    + [("fc6", 7, 1, 0), ("fc7", 1, 1, 0), ("score_fr", 1, 1, 0)]
)


def walk(layers, scale=Fraction(1), offset=Fraction(0), transposed=(), show=True):
    """Compose the per-layer maps; returns the (scale, offset) after each layer."""
    out = {}
    for name, k, s, p in layers:
        centre = Fraction(k - 1, 2)
        if name in transposed:  # x_in = (x_out + p - centre) / s
            scale, offset = scale / s, offset + scale * (p - centre) / s
        else:  # x_in = s * x_out - p + centre
            scale, offset = scale * s, offset + scale * (centre - p)
        out[name] = (scale, offset)
        if show:
            print(f"{name:9s} k={k:2d} s={s:2d} p={p:3d}  ->  pixel i at {float(scale):g} * i "
                  f"{'+' if offset >= 0 else '-'} {float(abs(offset)):g}")
    return out


maps = walk(fcn32_layers + [("upscore", 64, 32, 0)], transposed={"upscore"})
scale, offset = maps["upscore"]
print(f"\nupscore pixel i sits at image coordinate i - {-offset}: the crop is {-offset}")
assert scale == 1 and -offset == 19

# %% [markdown]
# The upsampled FCN-32s scores begin 19 pixels before the image, so the crop starts at 19. For
# the skips of FCN-16s and FCN-8s the crop lines up two score maps with each other: `score_pool4`
# (1x1 conv on pool4) against `upscore2` (score_fr upsampled x2 by a 4x4 stride-2 up-conv), and so
# on. The same walk gives all of them:

# %%
upto = {name: i for i, (name, *_ ) in enumerate(fcn32_layers)}
m_pool3 = walk(fcn32_layers[:upto["pool3"] + 1], show=False)["pool3"]
m_pool4 = walk(fcn32_layers[:upto["pool4"] + 1], show=False)["pool4"]
m_fr = maps["score_fr"]
m_up2 = walk([("upscore2", 4, 2, 0)], *m_fr, transposed={"upscore2"}, show=False)["upscore2"]
m_up4 = walk([("upscore_pool4", 4, 2, 0)], *m_up2, transposed={"upscore_pool4"}, show=False)["upscore_pool4"]
m_up16 = walk([("upscore16", 32, 16, 0)], *m_up2, transposed={"upscore16"}, show=False)["upscore16"]
m_up8 = walk([("upscore8", 16, 8, 0)], *m_up4, transposed={"upscore8"}, show=False)["upscore8"]


def crop(cropped, reference):
    """Index of `cropped` that lands on pixel 0 of `reference` (both maps at one scale)."""
    (sc, oc), (sr, orf) = cropped, reference
    assert sc == sr
    return (orf - oc) / sc


by_hand = {
    "32s": {"score": crop(maps["upscore"], (1, 0))},
    "16s": {"score_pool4c": crop(m_pool4, m_up2), "score": crop(m_up16, (1, 0))},
    "8s": {"score_pool4c": crop(m_pool4, m_up2), "score_pool3c": crop(m_pool3, m_up4),
           "score": crop(m_up8, (1, 0))},
}
# the authors' Caffe nets (voc-fcn32s/16s/8s train.prototxt, the Crop layers' offsets)
authors = {"32s": {"score": 19}, "16s": {"score_pool4c": 5, "score": 27},
           "8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31}}
for variant in ("32s", "16s", "8s"):
    net = FCN(2, variant, width=1)  # width does not change the geometry
    lib = {k: v[0] for k, v in net.crops.items()}  # (top, left): equal for square kernels
    print(f"FCN-{variant}: by hand {dict((k, int(v)) for k, v in by_hand[variant].items())}, "
          f"library {lib}, authors {authors[variant]}")
    assert by_hand[variant] == lib == authors[variant]
    assert all(a == b for a, b in net.crops.values())

# the library's own walk (coord_map over the real layers) agrees with the hand one
net = FCN(2, "8s", width=1)
lib_pool4 = coord_map(net.conv1, net.pool1, net.conv2, net.pool2, net.conv3, net.pool3, net.conv4, net.pool4)
assert lib_pool4.scale[0] == m_pool4[0] == 16 and lib_pool4.offset[0] == m_pool4[1] == Fraction(-183, 2)
print("pool4: scale", lib_pool4.scale[0], "offset", float(lib_pool4.offset[0]))

# %% [markdown]
# `pool4` pixel `i` sits at `16 i - 91.5`: the padding of 100 pushed the features far outside
# the image, and the crops bring them back. The fusion adds maps that line up pixel for pixel,
# which is why FCN-8s' offsets must be integers (they are: `crop_offset` would refuse a
# fractional one).
#
# The crops make any input size come back at its own size, which we check on a few odd sizes:

# %%
for hw in [(1, 1), (17, 30), (45, 45)]:
    with msn.no_grad():
        out = FCN(3, "8s", width=1)(Tensor(np.zeros((1, 3, *hw), np.float32)))
    print(hw, "->", out.shape)
    assert out.shape == (1, 3, *hw)

# %% [markdown]
# ## 3. FCN-32s, 16s and 8s, trained alike
#
# The three variants differ only in the head: FCN-32s upsamples the stride-32 scores in one step;
# FCN-16s first adds scores from pool4 (stride 16), FCN-8s also from pool3 (stride 8). The skip
# scores start at zero, so at first each finer net predicts from the stride-32 scores alone, as
# FCN-32s does, and the skips have to earn their keep.
#
# Equal budgets: the same data, seed, width, optimizer (Adam with cosine decay) and number of
# steps. The data are the synthetic `shapes` images (circle / rectangle / triangle; the class is
# the shape, never the colour).
#
# One departure from the paper, and why. The authors fine-tune a VGG16 trained on ImageNet; we
# train from scratch, and from scratch the paper's plain stack of 15 convolutions sits at the
# class prior ("everything is background") for hundreds of steps, whatever the optimizer (Adam
# 1e-4 to 3e-3, SGD with momentum 0.9 at 1e-2; our net and its PyTorch twin trained side by side
# from the same weights give the same loss curve, so it is the recipe, not a bug). With VGG16-BN's
# stages (`batch_norm=True`: a batch norm after every stage conv, the same layers, names and
# crops otherwise) FCN-16s and FCN-8s leave the prior within one to two hundred steps. So section 3
# trains the BN nets, and one plain FCN-8s beside them, for comparison.

# %%
SIZE, WIDTH = (32, 2) if FAST else (64, 4)
STEPS, BATCH = (12, 8) if FAST else (240, 8)
train_set = data.load("shapes", split="train", n=64 if FAST else 256, size=SIZE)
test_set = data.load("shapes", split="test", n=16 if FAST else 64, size=SIZE)
K = train_set.num_classes
print(train_set, test_set, sep="\n")


def train_fcn(variant, batch_norm=True):
    msn.manual_seed(0)
    model = models.create(f"fcn{variant}", K, width=WIDTH, batch_norm=batch_norm)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    sched = optim.CosineAnnealingLR(opt, T_max=STEPS)
    batches = data.patches(train_set, SIZE, BATCH, seed=0, weights=False)
    losses = []
    for step in range(STEPS):
        x, y, _ = next(batches)
        loss = F.cross_entropy(model(Tensor(x)), Tensor(y), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


def predict(model, images):
    model.eval()
    with msn.no_grad():
        return np.concatenate([model(Tensor(images[i:i + 8])).numpy().argmax(1)
                               for i in range(0, len(images), 8)])


runs = {}
for variant in ("32s", "16s", "8s", "8s-plain"):
    t = time.perf_counter()
    model, losses = train_fcn(variant.split("-")[0], batch_norm=not variant.endswith("plain"))
    pred = predict(model, test_set.images)
    runs[variant] = dict(model=model, losses=losses, pred=pred,
                         miou=metrics.mean_iou(pred, test_set.labels, K),
                         acc=metrics.pixel_accuracy(pred, test_set.labels),
                         seconds=time.perf_counter() - t)
    r = runs[variant]
    print(f"FCN-{variant}: {model.num_parameters():,} parameters, {STEPS} steps in {r['seconds']:.0f} s, "
          f"loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}, "
          f"test mIoU {r['miou']:.3f}, pixel accuracy {r['acc']:.3f}")
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert pred.shape == test_set.labels.shape

# %% [markdown]
# The backbone (conv1 to score_fr) is the same in all three. The heads differ: FCN-32s' single
# 64x64 up-conv holds `K*K*64*64` weights, FCN-8s' three up-convs (4x4, 4x4, 16x16) far fewer, plus
# two 1x1 skip convs. So the finer nets are *smaller*, and the budget is equal in steps and data.

# %%
head = {"32s": ["upscore"], "16s": ["upscore2", "score_pool4", "upscore16"],
        "8s": ["upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"]}
c3, c4 = 4 * WIDTH, 8 * WIDTH  # pool3 and pool4 channels
head_by_formula = {"32s": K * K * 64 * 64,
                   "16s": K * K * (4 * 4 + 32 * 32) + (c4 + 1) * K,
                   "8s": K * K * (4 * 4 + 4 * 4 + 16 * 16) + (c4 + 1) * K + (c3 + 1) * K}
backbones = set()
for v in ("32s", "16s", "8s"):
    m = runs[v]["model"]
    n_head = sum(p.data.size for name, p in m.named_parameters() if name.split(".")[0] in head[v])
    backbones.add(m.num_parameters() - n_head)
    print(f"FCN-{v}: head {n_head:,} parameters (formula {head_by_formula[v]:,}), "
          f"backbone {m.num_parameters() - n_head:,}")
    assert n_head == head_by_formula[v]
assert len(backbones) == 1

# %%
show = range(4)
fig, axes = plt.subplots(len(show), 5, figsize=(12, 2.5 * len(show)))
for row, i in enumerate(show):
    panels = [(test_set.images[i].transpose(1, 2, 0), "image"), (test_set.labels[i], "truth")]
    panels += [(runs[v]["pred"][i], f"FCN-{v}") for v in ("32s", "16s", "8s")]
    for ax, (img, title) in zip(axes[row], panels):
        ax.imshow(img, **({} if img.ndim == 3 else dict(cmap="tab10", vmin=0, vmax=9, interpolation="nearest")))
        ax.set_xticks([]), ax.set_yticks([])
        if row == 0:
            ax.set_title(title + (f"\nmIoU {runs[title[4:]]['miou']:.2f}" if title.startswith("FCN") else ""))
fig.tight_layout()

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for v in runs:
    ax.plot(runs[v]["losses"], label=f"FCN-{v}", ls="--" if v.endswith("plain") else "-")
ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.legend()
ax.set_title("equal budgets")
fig.tight_layout()

# %% [markdown]
# What to look for: FCN-32s' scores live on a grid 32 pixels apart, smoothed by a 64x64 bilinear
# kernel; every skip halves that grid, so the finer nets *can* follow corners and thin parts.
# On 64x64 images with objects 10-25 pixels across, FCN-32s' 32-pixel grid holds two or three
# scores per side, too coarse for most objects. And the plain net: a net that paints everything
# background scores the background share as pixel accuracy, which is where the plain FCN-8s
# stays:

# %%
bg_share = (test_set.labels == 0).mean()
for v in runs:
    fg = (runs[v]["pred"] > 0).mean()
    print(f"FCN-{v}: predicts foreground on {100 * fg:.1f}% of the test pixels "
          f"(truth {100 * (1 - bg_share):.1f}%), pixel accuracy {runs[v]['acc']:.3f} vs background share {bg_share:.3f}")

# %% [markdown]
# In fast mode (a dozen steps of width-2 nets on 32x32 images) all four are still at the prior,
# and the mIoU above are not an ordering. At full size, what to expect is what
# `benchmarks/zoo_study.py` measured with the same nets through `minisegnet train` (width 4, batch
# norm, Adam 3e-3 with cosine decay, 8 patches of 64x64 per step; mIoU on the 64 test images,
# mean (min-max) over seeds 0, 1, 2 at 240 steps and over seeds 0-4 at 400; the prior scores
# 0.218):
#
# | steps | FCN-32s | FCN-16s | FCN-8s |
# | --- | --- | --- | --- |
# | 240 | 0.221 (0.218-0.223) | 0.257 (0.237-0.275) | 0.272 (0.228-0.296) |
# | 400 | 0.219 (0.218-0.220) | 0.289 (0.266-0.311) | 0.312 (0.260-0.371) |
#
# FCN-32s stays at the prior on every seed: two or three scores per side of the image are too
# few for objects 10-25 pixels across. FCN-16s beats it on every seed. FCN-8s beats FCN-16s in the
# mean, on two seeds of three at 240 steps and on four of five at 400. Seed 1 is the exception
# both times: the two are close there. The gap grows with the budget. The plain FCN-8s stays at the prior (mIoU 0.218, no foreground pixel) for every
# optimizer we tried within a few hundred steps. These are short, from-scratch budgets, far from
# the paper's fine-tuned numbers (mean IU 59.4, 62.4, 62.7 for 32s, 16s, 8s on a PASCAL VOC 2011
# validation subset, Table 2), but the ordering is the paper's: the skips earn their keep.

# %% [markdown]
# ## Exercises
#
# 1. Convolutionalize the digit classifier and run it on a 28x56 canvas with digits at random
#    positions. At which output positions is the top score highest, and why at exactly those?
# 2. `FCN(2, "8s", width=1).crops` gives 5, 9 and 31. Change conv1_1's padding in the hand walk to
#    96: which offsets change, and does any become fractional? What goes wrong if the padding is 99?
# 3. The walk puts `fc6` pixel `i` at `32 i + 12.5` (see the table). Which image pixels does
#    `fc6` pixel 0 read (its receptive field: extend the walk with each layer's kernel extent)?
# 4. Train the three variants for 4x the steps at full size with two seeds each. Is the ordering
#    the same for both seeds? Does FCN-32s ever leave the prior on 64x64 images? On 128x128?
# 5. Replace the learned transposed convs by fixed bilinear upsampling (freeze `upscore*`). How
#    much does mIoU change?
