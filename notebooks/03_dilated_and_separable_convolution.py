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
# # 03 — Dilated (atrous) and depthwise separable convolution
#
# DeepLab's two tricks for seeing far without paying for it. You will learn:
#
# 1. a dilated convolution is an ordinary one with zeros inserted into the kernel:
#    `[[1, 2, 3]]` at rate 4 *is* `[[1, 0, 0, 0, 2, 0, 0, 0, 3]]`;
# 2. how the receptive field grows when dilated convs are stacked (`1 + sum d_i (k - 1)`), found
#    by autograd and drawn, and why equal rates leave holes ("gridding");
# 3. what ASPP's rates 6, 12 and 18 see on a 33x33 feature map: near the size of the map, a 3x3
#    atrous conv degenerates into a 1x1 conv;
# 4. a depthwise separable conv (depthwise kxk, then 1x1) costs `k*k*C + C*O` weights instead of
#    `k*k*C*O`: 75 against 432 for 3x3, 3 -> 16 channels, and is a plain conv with a factored kernel.
#
# Everything here is small; `MINISEGNET_FAST` changes nothing (run it with
# `pytest tests/test_notebooks.py -k 03_`).

# %%
import matplotlib.pyplot as plt
import numpy as np

import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor

np.set_printoptions(linewidth=140, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. [[1, 2, 3]] at rate 4 is a kernel with zeros in it
#
# With dilation `d`, tap `q` of the kernel reads input column `j*s - p + q*d` instead of
# `j*s - p + q`: the taps are spread `d` apart. The same result comes from an undilated conv whose
# kernel has `d - 1` zeros between the taps. Its width is the *effective* kernel size
# `d(k - 1) + 1 = 4*2 + 1 = 9`.

# %%
k = np.array([[1.0, 2.0, 3.0]]).reshape(1, 1, 1, 3)  # (O, C, kh, kw)
rate = 4
k_zero = np.zeros((1, 1, 1, rate * (3 - 1) + 1))
k_zero[..., ::rate] = k  # zeros inserted between the taps
print("zero-dilated kernel:", k_zero.ravel())
assert k_zero.ravel().tolist() == [1, 0, 0, 0, 2, 0, 0, 0, 3]

x = rng.standard_normal((1, 1, 1, 20))
y_dilated = F.conv2d(Tensor(x), Tensor(k), dilation=(1, rate)).numpy()
y_zeros = F.conv2d(Tensor(x), Tensor(k_zero)).numpy()
print("dilated conv output width:", y_dilated.shape[-1], "(20 - 9 + 1 = 12)")
assert y_dilated.shape[-1] == 12 and np.allclose(y_dilated, y_zeros)
# each output is x[j] + 2 x[j+4] + 3 x[j+8]
assert np.allclose(y_dilated.ravel(), x[0, 0, 0, :12] + 2 * x[0, 0, 0, 4:16] + 3 * x[0, 0, 0, 8:20])

# %% [markdown]
# ## 2. Receptive fields, found by autograd
#
# Which input pixels can change one output pixel? Exactly those where the gradient of that output
# with respect to the input is non-zero. So: stack convs with all-ones 3x3 kernels (positive, so
# nothing cancels), back-propagate from the centre output pixel, and look at `x.grad`.
#
# For stride 1 the receptive field spans `1 + sum_i d_i (k - 1)` pixels.

# %%
S = 33


def receptive_field(rates, size=S):
    x = Tensor(np.zeros((1, 1, size, size)), requires_grad=True)
    h = x
    for d in rates:
        h = F.conv2d(h, Tensor(np.ones((1, 1, 3, 3))), padding=d, dilation=d)  # 'same' size
    g = np.zeros(h.shape)
    g[0, 0, size // 2, size // 2] = 1.0  # d(centre output) / d(input)
    h.backward(g)
    return x.grad[0, 0]


stacks = {"1, 1, 1": (1, 1, 1), "1, 2, 4": (1, 2, 4), "2, 2, 2": (2, 2, 2), "1, 2, 4, 8": (1, 2, 4, 8)}
fields = {name: receptive_field(r) for name, r in stacks.items()}
for name, rates in stacks.items():
    rows = np.flatnonzero(fields[name].any(1))
    span = rows[-1] - rows[0] + 1
    touched = np.count_nonzero(fields[name])
    print(f"rates {name:10s}: span {span:2d} x {span:2d}, pixels that matter {touched:4d}")
    assert span == 1 + sum(d * (3 - 1) for d in rates)

# rates 1, 2, 4 reach every pixel of their 15x15 span; 2, 2, 2 only the even offsets: holes
assert np.count_nonzero(fields["1, 2, 4"]) == 15 * 15
assert np.count_nonzero(fields["2, 2, 2"]) == 7 * 7

# %%
fig, axes = plt.subplots(1, len(fields), figsize=(13, 3.4))
for ax, (name, g) in zip(axes, fields.items()):
    ax.imshow(g, cmap="magma")
    ax.set_title(f"dilations {name}\nspan {1 + 2 * sum(stacks[name])}")
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("input pixels feeding the centre output (gradient magnitude)")
fig.tight_layout()

# %% [markdown]
# The gradient is not flat: centre pixels are reached by more paths than the edge ones. The
# *effective* receptive field is smaller than the theoretical span, and the "gridding" of equal
# rates (2, 2, 2) leaves pixels that the output never sees. DeepLab's multi-grid and the HDC rule
# (rates without a common factor, such as 1, 2, 4 or 1, 2, 3) avoid it.
#
# ## 3. What ASPP's rates see
#
# DeepLabv3 runs on 513x513 crops with output stride 16: the feature map is 33x33. ASPP puts three
# 3x3 atrous convs side by side at rates 6, 12 and 18, each zero-padded to keep the size. For every
# output pixel, how many of the nine taps fall *inside* the map? The padding zeros contribute
# nothing, so only those taps carry information. Convolving a map of ones with a kernel of ones
# counts them.

# %%
def taps_inside(size, rate):
    ones = Tensor(np.ones((1, 1, size, size)))
    return F.conv2d(ones, Tensor(np.ones((1, 1, 3, 3))), padding=rate, dilation=rate).numpy()[0, 0]


def taps_inside_formula(size, rate):
    # per axis: how many of the offsets -rate, 0, +rate stay inside [0, size)
    i = np.arange(size)
    per_axis = sum(((i + t >= 0) & (i + t < size)).astype(int) for t in (-rate, 0, rate))
    return np.outer(per_axis, per_axis)


size = 33
counts = {r: taps_inside(size, r) for r in (6, 12, 18)}
for r, c in counts.items():
    assert np.array_equal(c, taps_inside_formula(size, r))
    full = (c == 9).mean()
    print(f"rate {r:2d}: centre pixel sees {int(c[size // 2, size // 2])} of 9 taps, "
          f"mean {c.mean():.2f} of 9, all nine inside for {100 * full:4.1f}% of pixels")
# at rate 18 on 33x33 the centre's other taps land at 16 +- 18 = -2 and 34: outside. A 1x1 conv.
assert counts[18][16, 16] == 1 and counts[12][16, 16] == 9 and (counts[18] < 9).all()

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
for ax, (r, c) in zip(axes, counts.items()):
    im = ax.imshow(c, cmap="viridis", vmin=1, vmax=9)
    for py, px in [(16, 16), (3, 3)]:  # the taps of two output pixels
        ty = [py + t for t in (-r, 0, r)]
        tx = [px + t for t in (-r, 0, r)]
        for yy in ty:
            for xx in tx:
                inside = 0 <= yy < size and 0 <= xx < size
                if inside:
                    ax.plot(xx, yy, "o", ms=5, mec="w", mfc="r" if (py, px) == (16, 16) else "orange")
    ax.set_title(f"rate {r}")
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes[:3], shrink=0.8)
rates = np.arange(1, 33)
ax = axes[3]
for s_ in (33, 65):
    ax.plot(rates, [taps_inside_formula(s_, r).mean() / 9 for r in rates], label=f"{s_}x{s_} map")
ax.axvline(6, ls=":", c="gray"), ax.axvline(12, ls=":", c="gray"), ax.axvline(18, ls=":", c="gray")
ax.set_xlabel("rate"), ax.set_ylabel("mean fraction of taps inside")
ax.legend(fontsize=8)
ax.set_title("mean taps inside / 9")
fig.suptitle("taps of a 3x3 atrous conv that fall inside a 33x33 map (colour: count, 1..9)");

# %% [markdown]
# Red dots: the taps of the centre pixel that land inside the map; orange: those of pixel (3, 3).
# This is why DeepLabv3 adds an *image pooling* branch (global average, a 1x1 conv, upsampled):
# it gives the global context that the largest rate fails to deliver, and why the rates double
# (12, 24, 36) when the output stride halves to 8 (a 65x65 map).
#
# ## 4. Depthwise separable convolution: 432 weights against 75
#
# A plain 3x3 conv from C = 3 to O = 16 channels has `3*3*3*16 = 432` weights: every output
# channel has its own 3x3 filter for every input channel. The separable version factors that:
#
# * **depthwise**: one 3x3 filter per input channel (`groups=C`): `3*3*3 = 27` weights;
# * **pointwise**: a 1x1 conv mixing channels: `3*16 = 48` weights.

# %%
def n_weights(module):
    return sum(p.data.size for p in module.parameters())


plain = nn.Conv2d(3, 16, 3, padding=1, bias=False)
sep = nn.SeparableConv2d(3, 16, 3, padding=1, bias=False)
print(sep)
print("plain:", n_weights(plain), " separable:", n_weights(sep.depthwise), "+",
      n_weights(sep.pointwise), "=", n_weights(sep))
assert n_weights(plain) == 432 and n_weights(sep) == 75 == 3 * 3 * 3 + 3 * 16

# %% [markdown]
# The multiply-adds per output pixel are the same numbers (432 against 75), a ratio of
# `1/O + 1/k^2`. At DeepLab's widths (256 -> 256 channels) the saving is about 9x:

# %%
for C, O in [(3, 16), (256, 256), (728, 728)]:
    ratio = (9 * C + C * O) / (9 * C * O)
    assert np.isclose(ratio, 1 / O + 1 / 9)
    print(f"C={C:4d} O={O:4d}: separable / plain = {ratio:.3f}")

# %% [markdown]
# A separable conv *is* a plain conv whose kernel factors as
# `K[o, c, p, q] = pointwise[o, c] * depthwise[c, p, q]`: the same output, computed from that
# 432-weight kernel by `F.conv2d`. It can express only those rank-restricted kernels, which is the
# bet Xception and DeepLabv3+ make.

# %%
x = Tensor(rng.standard_normal((2, 3, 12, 12)).astype(np.float32))
dw = sep.depthwise.weight.data  # (C, 1, 3, 3)
pw = sep.pointwise.weight.data  # (O, C, 1, 1)
K = pw[:, :, 0, 0][:, :, None, None] * dw[:, 0][None]  # (O, C, 3, 3)
assert K.shape == (16, 3, 3, 3)
assert np.allclose(sep(x).numpy(), F.conv2d(x, Tensor(K), padding=1).numpy(), atol=1e-5)
# and the two steps, written with F.conv2d: groups=C, then 1x1
two_steps = F.conv2d(F.conv2d(x, Tensor(dw), padding=1, groups=3), Tensor(pw))
assert np.allclose(sep(x).numpy(), two_steps.numpy(), atol=1e-5)
print("SeparableConv2d == conv2d with the factored 16x3x3x3 kernel == depthwise then pointwise")

# %% [markdown]
# ## Exercises
#
# 1. Find the receptive field of rates 1, 2, 5, 9 (HDC's choice) with `receptive_field`. Is every
#    pixel of its span reached?
# 2. At output stride 8 the map of a 513 crop is 65x65 and ASPP uses rates 12, 24, 36. Use
#    `taps_inside` to check that the centre pixel of rate 36 again sees a single tap.
# 3. How many weights does `nn.SeparableConv2d(256, 256, 3)` have with `bias=True`? Check with
#    `n_weights`.
# 4. Write the dilated conv of section 1 as a conv matrix (`minisegnet.kernels.conv_matrix`) and
#    find the zeros of the kernel in its rows.
