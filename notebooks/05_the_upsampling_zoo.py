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
# # 05 — The upsampling zoo, on one real image
#
# A segmentation network shrinks its feature maps and must grow them back to the size of the
# image. Every decoder picks one of a handful of ways to do so, and each is a small formula whose
# half-pixel conventions decide where the mask edges land. This notebook runs all of them on the
# same photograph:
#
# 1. **nearest**: `src = floor(dst * in/out)`;
# 2. **bilinear** with `align_corners=True` and `False`: two different coordinate maps, with the
#    sample grids drawn;
# 3. **bed of nails**: each value in the corner of its block, zeros elsewhere (a transposed conv
#    with a one-hot kernel);
# 4. **max-unpooling** (SegNet): each value back where the encoder's max-pool found it;
# 5. a **learned transposed conv** (FCN), initialised to bilinear upsampling and then trained.
#
# Run at full size with `MINISEGNET_FAST=0 pytest tests/test_notebooks.py -k 05_` (CI's fast mode
# uses a smaller crop and fewer training steps).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from skimage import data as skdata

import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor, optim

FAST = os.environ.get("MINISEGNET_FAST", "0") == "1"
np.set_printoptions(precision=3, suppress=True, linewidth=120)

# %% [markdown]
# ## The image
#
# scikit-image's `camera` (512x512, bundled with the package). We crop the centre, shrink it 4x by
# average pooling and then try to grow it back with each method; the original crop is the truth.

# %%
CROP = 128 if FAST else 256
S = 4  # upsampling factor
cam = skdata.camera().astype(np.float32) / 255.0
top = (cam.shape[0] - CROP) // 2
hi = cam[top - 60:top - 60 + CROP, top:top + CROP].reshape(1, 1, CROP, CROP)  # the cameraman
hi_t = Tensor(hi)
lo = F.avg_pool2d(hi_t, S)  # (1, 1, CROP/4, CROP/4)
print("original", hi.shape, "-> shrunk", lo.shape)
assert lo.shape == (1, 1, CROP // S, CROP // S)
# average pooling: each small pixel is the mean of its 4x4 block
assert np.isclose(lo.numpy()[0, 0, 1, 2], hi[0, 0, 4:8, 8:12].mean())

# %% [markdown]
# ## 1. Nearest: copy the pixel you land in
#
# Output pixel `dst` reads input pixel `floor(dst * in / out)`. For an integer factor that is
# plain repetition.

# %%
near = F.interpolate(lo, scale_factor=S, mode="nearest")
assert np.array_equal(near.numpy(), lo.numpy().repeat(S, 2).repeat(S, 3))

# %% [markdown]
# ## 2. Bilinear: two coordinate maps
#
# To compute output pixel `dst`, bilinear upsampling reads the input at a real coordinate `src`:
#
# * `align_corners=True`: `src = dst * (in - 1) / (out - 1)` — the *centres* of the corner pixels
#   of input and output coincide;
# * `align_corners=False` (the default): `src = max((dst + 0.5) * in / out - 0.5, 0)` — the
#   *edges* of the images coincide, and pixel centres sit at half-integer positions.

# %%
n_in, n_out = 4, 8
dst = np.arange(n_out)
src_true = dst * (n_in - 1) / (n_out - 1)
src_false = np.maximum((dst + 0.5) * n_in / n_out - 0.5, 0)
print("align_corners=True :", src_true)
print("align_corners=False:", src_false)

ramp = np.arange(n_in, dtype=np.float64).reshape(1, 1, 1, n_in)  # value = coordinate
for ac, src in [(True, src_true), (False, src_false)]:
    got = F.interpolate(Tensor(ramp), size=(1, n_out), mode="bilinear", align_corners=ac)
    # on a linear ramp, bilinear interpolation returns the source coordinate itself
    assert np.allclose(got.numpy().ravel(), np.minimum(src, n_in - 1))

# %% [markdown]
# The same in 2-D: a 4x4 input (grey squares, centres at the black dots) sampled onto an 8x8
# output. With `align_corners=True` the outer samples sit on the outer pixel *centres*, so the
# output's pixels are not evenly spread over the image's area; with `False` each output pixel
# samples at its own centre, mapped back into the input, and the samples closest to the border are
# clamped onto the first and last centres.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, ac, src in [(axes[0], True, src_true), (axes[1], False, src_false)]:
    for i in range(n_in):
        for j in range(n_in):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fc="0.92", ec="0.6"))
    gi, gj = np.meshgrid(np.arange(n_in), np.arange(n_in), indexing="ij")
    ax.plot(gj.ravel(), gi.ravel(), "k.", ms=10, label="input pixel centres")
    sy, sx = np.meshgrid(src, src, indexing="ij")
    ax.plot(sx.ravel(), sy.ravel(), "o", mfc="none", mec="tab:red", ms=7, label="8x8 output samples")
    ax.set_xlim(-0.7, n_in - 0.3), ax.set_ylim(n_in - 0.3, -0.7)
    ax.set_aspect("equal")
    ax.set_title(f"align_corners={ac}")
axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
fig.tight_layout()

# %%
bil_f = F.interpolate(lo, scale_factor=S, mode="bilinear", align_corners=False)
bil_t = F.interpolate(lo, scale_factor=S, mode="bilinear", align_corners=True)
# align_corners=True keeps the corner pixels exactly; False does not need to
assert np.isclose(bil_t.numpy()[0, 0, -1, -1], lo.numpy()[0, 0, -1, -1])
# the two maps differ: by how much, on this image?
print(f"mean |bilinear(True) - bilinear(False)| = {np.abs(bil_t.numpy() - bil_f.numpy()).mean():.4f}")

# %% [markdown]
# ## 3. Bed of nails
#
# `y[s*i, s*j] = x[i, j]`, zeros elsewhere: the upsampling of the oldest "unpooling" papers. It is
# a transposed convolution with stride `s` and an `s x s` kernel that is 1 in its top-left corner
# and 0 elsewhere (the kernel each input pixel "paints", notebook 04).

# %%
nails = F.bed_of_nails(lo, S)
one_hot = np.zeros((1, 1, S, S), np.float32)
one_hot[0, 0, 0, 0] = 1
assert np.array_equal(nails.numpy(), F.conv_transpose2d(lo, Tensor(one_hot), stride=S).numpy())
assert np.array_equal(nails.numpy()[..., ::S, ::S], lo.numpy())
print(f"non-zero fraction of the bed of nails: {np.count_nonzero(nails.numpy()) / nails.numpy().size:.4f}"
      f" = 1/{S * S}")

# %% [markdown]
# ## 4. Max-pooling remembers where the maximum was; max-unpooling puts it back
#
# `max_pool2d(..., return_indices=True)` returns, for each window, the flat index `h*W + w` of its
# maximum in the input plane. SegNet's decoder puts each value back at that index
# (`max_unpool2d`) and leaves zeros elsewhere: a sparse map with the *locations* of the encoder's
# strongest responses. First on a 4x4 example:

# %%
x = np.array([[1, 5, 2, 0],
              [3, 4, 8, 1],
              [0, 2, 6, 7],
              [9, 1, 3, 2]], dtype=np.float32).reshape(1, 1, 4, 4)
pooled, idx = F.max_pool2d(Tensor(x), 2, return_indices=True)
print("pooled:\n", pooled.numpy()[0, 0])
print("indices (h*W + w):\n", idx.numpy()[0, 0])
up = F.max_unpool2d(pooled, idx, 2).numpy()[0, 0]
print("unpooled:\n", up)
assert idx.numpy()[0, 0].tolist() == [[1, 6], [12, 11]]  # 5 at (0,1), 8 at (1,2), 9 at (3,0), 7 at (2,3)
# every window keeps exactly its maximum, in place
for i in range(2):
    for j in range(2):
        win, back = x[0, 0, 2*i:2*i+2, 2*j:2*j+2], up[2*i:2*i+2, 2*j:2*j+2]
        assert back.max() == win.max() and np.count_nonzero(back) == 1

# %% [markdown]
# On the photograph: the encoder max-pools the original 4x4, the decoder unpools with the same
# indices. Bright pixels come back exactly where they were, at the cost of zeros everywhere else
# (SegNet follows each unpooling with convolutions that fill them in).

# %%
mx, mx_idx = F.max_pool2d(hi_t, S, return_indices=True)
unpooled = F.max_unpool2d(mx, mx_idx, S)
u = unpooled.numpy()
assert np.count_nonzero(u) <= u.size // (S * S)
assert np.all((u == 0) | (u == hi))  # every non-zero value sits where it came from

# %% [markdown]
# ## 5. A learned transposed convolution
#
# FCN upsamples with `ConvTranspose2d(kernel_size=2s, stride=s, padding=s/2)` whose kernel starts
# as the bilinear filter (for s = 4: the taps `1 - |t - 3.5| / 4`). Away from the border that *is*
# bilinear interpolation with `align_corners=False`; at the border the transposed conv sees zero
# padding where `interpolate` clamps.

# %%
deconv = nn.ConvTranspose2d(1, 1, 2 * S, stride=S, padding=S // 2, init="bilinear")
print("bilinear taps along one axis:", nn.bilinear_kernel(1, 2 * S)[0])
with_init = deconv(lo)
b = S  # border pixels affected by the zero padding
assert np.allclose(with_init.numpy()[..., b:-b, b:-b], bil_f.numpy()[..., b:-b, b:-b], atol=1e-6)

# %% [markdown]
# Now train it: the kernel (64 weights) and the bias learn to map the shrunk image back to the
# original, by Adam on the mean squared error. Since the output is linear in the weights, this is
# a least-squares fit; it can only improve on its bilinear start.

# %%
def mse(a, b=hi):
    return float(np.mean((np.asarray(a) - b) ** 2))


STEPS = 40 if FAST else 300
opt = optim.Adam(deconv.parameters(), lr=2e-3)
losses = []
for step in range(STEPS):
    diff = deconv(lo) - hi_t
    loss = (diff * diff).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.numpy()))
learned = deconv(lo).numpy()
print(f"MSE: bilinear init {losses[0]:.5f} -> after {STEPS} steps {mse(learned):.5f}")
assert mse(learned) < losses[0]

# %% [markdown]
# ## All of them side by side
#
# The error of each against the original (PSNR in dB, higher is better). Bed of nails and
# unpooling are not meant to stand alone: they place values, and the convolutions after them fill
# the gaps.

# %%
results = {
    "original": hi,
    f"shrunk {S}x (avg pool)": lo.numpy(),
    "nearest": near.numpy(),
    "bilinear, align_corners=False": bil_f.numpy(),
    "bilinear, align_corners=True": bil_t.numpy(),
    "bed of nails": nails.numpy(),
    "max-unpool (pooling indices)": u,
    "transposed conv, bilinear init": with_init.numpy(),
    f"transposed conv, trained {STEPS} steps": learned,
}
psnr = {}
for name, img in results.items():
    if img.shape == hi.shape and name != "original":
        psnr[name] = 10 * np.log10(1.0 / mse(img))
        print(f"{name:38s} PSNR {psnr[name]:6.2f} dB")
# on a photograph, interpolating beats copying, and both beat placing values into zeros
assert psnr["bilinear, align_corners=False"] > psnr["nearest"] > psnr["bed of nails"]

fig, axes = plt.subplots(3, 3, figsize=(9, 9.6))
for ax, (name, img) in zip(axes.ravel(), results.items()):
    ax.imshow(img[0, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(name + (f"\n{psnr[name]:.1f} dB" if name in psnr else ""), fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# Look closely at the trained transposed conv: a faint grid with a period of 4 pixels. Its kernel
# size is a multiple of its stride, yet as soon as training moves the kernel away from its
# bilinear start, the taps that serve different output phases no longer sum alike: notebook 04's
# checkerboard, appearing in a real model.

# %%
zoom = (slice(CROP // 4, CROP // 4 + 24), slice(CROP // 2 - 12, CROP // 2 + 12))
fig, axes = plt.subplots(1, 5, figsize=(12, 2.8))
for ax, name in zip(axes, ["original", "nearest", "bilinear, align_corners=False",
                           "max-unpool (pooling indices)", f"transposed conv, trained {STEPS} steps"]):
    ax.imshow(results[name][0, 0][zoom], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(name, fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("a 24x24 detail")
fig.tight_layout()

# %%
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(losses)
ax.set_xlabel("Adam step"), ax.set_ylabel("MSE")
ax.set_title("training the transposed conv from its bilinear start")
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# 1. Print the trained kernel next to the bilinear one (`deconv.weight.data[0, 0]`). What did the
#    training change, and why is the result still (nearly) symmetric?
# 2. Upsample a 3-pixel image to 7 pixels with `align_corners=True`: which source coordinates are
#    read? Which output size makes the two conventions read the same coordinates?
# 3. Max-unpool with the indices of a *different* image. What do you see, and what does it tell you
#    about the information SegNet passes from encoder to decoder?
# 4. Replace the transposed conv by nearest upsampling followed by a trained 3x3 conv (notebook 04's
#    remedy) and compare the PSNR after the same number of steps.
