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
# # 03 — Down and back up, to the half pixel
#
# Segmentation networks shrink a feature map and grow it back. Each way of doing so is a small
# formula, and getting it wrong by half a pixel shifts every mask. This notebook steps through:
#
# 1. max-pooling with indices and SegNet's max-unpooling;
# 2. bilinear upsampling with `align_corners=True` and `False`: two different coordinate maps;
# 3. RoIPool's quantization against RoIAlign's bilinear sampling, and RoIAlign's `aligned` flag.

# %%
import matplotlib.pyplot as plt
import numpy as np

import minisegnet.functional as F
from minisegnet import Tensor

np.set_printoptions(precision=3, suppress=True, linewidth=120)

# %% [markdown]
# ## 1. Max-pooling remembers where the maximum was
#
# `max_pool2d(..., return_indices=True)` returns, for each window, the flat index `h*W + w` of
# its maximum in the input plane. SegNet's decoder puts each value back at that index
# (`max_unpool2d`) and leaves zeros elsewhere: a sparse map with the *locations* of the encoder's
# strongest responses.

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
# every window keeps exactly its maximum, in place
for i in range(2):
    for j in range(2):
        win, back = x[0, 0, 2*i:2*i+2, 2*j:2*j+2], up[2*i:2*i+2, 2*j:2*j+2]
        assert back.max() == win.max() and np.count_nonzero(back) == 1

# %% [markdown]
# ## 2. Two coordinate maps for bilinear upsampling
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

# %%
fig, ax = plt.subplots(figsize=(7, 2.2))
ax.scatter(src_true, np.ones(n_out), label="align_corners=True")
ax.scatter(src_false, np.zeros(n_out), label="align_corners=False")
ax.scatter(np.arange(n_in), np.full(n_in, 0.5), marker="s", color="k", label="input pixel centres")
ax.set_yticks([])
ax.set_xlabel("input coordinate read by each output pixel")
ax.legend(loc="upper left", fontsize=8, bbox_to_anchor=(1, 1))
fig.tight_layout()

# %% [markdown]
# ## 3. RoIPool snaps, RoIAlign samples
#
# Fast R-CNN's RoIPool rounds the box to whole pixels and splits it into bins with floor/ceil,
# so bins can overlap or skip rows. Mask R-CNN's RoIAlign keeps the box real-valued and averages
# bilinear samples inside each bin. On a map whose value is its column coordinate, RoIAlign
# returns bin centres exactly; RoIPool returns the maximum of a snapped bin.

# %%
H = W = 8
cols = np.tile(np.arange(W, dtype=np.float64), (H, 1)).reshape(1, 1, H, W)
box = np.array([[0, 1.3, 1.3, 5.7, 5.7]])  # [batch, x1, y1, x2, y2]
align = F.roi_align(Tensor(cols), box, output_size=2, sampling_ratio=2, aligned=True).numpy()
pool = F.roi_pool(Tensor(cols), box, output_size=2).numpy()
print("RoIAlign (aligned):\n", align[0, 0])
print("RoIPool:\n", pool[0, 0])
# aligned=True: pixel centres are at integer + 0.5 in box coordinates, so a bin spanning
# [x1, xm] of the box has its mean value at its centre minus half a pixel
xm = (1.3 + 5.7) / 2
assert np.allclose(align[0, 0, 0], [(1.3 + xm) / 2 - 0.5, (xm + 5.7) / 2 - 0.5])

# %% [markdown]
# `aligned=False` is the original Mask R-CNN code, off by half a pixel: the same box reads values
# half a pixel further right, as if pixel centres were at integers.

# %%
legacy = F.roi_align(Tensor(cols), box, output_size=2, sampling_ratio=2, aligned=False).numpy()
print("aligned=False minus aligned=True:\n", legacy[0, 0] - align[0, 0])
assert np.allclose(legacy - align, 0.5)
