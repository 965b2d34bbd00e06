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
# # 06 — RoIPool against RoIAlign
#
# A two-stage detector cuts a fixed-size feature patch (7x7, 14x14) out of the backbone's map for
# every proposed box. Fast R-CNN's **RoIPool** snaps the box to the feature grid and max-pools
# integer bins; Mask R-CNN's **RoIAlign** keeps the box real-valued and averages bilinear samples.
# On a map with stride 16, one snap moves a box edge by up to 8 image pixels: harmless for a class
# score, ruinous for a mask. You will learn:
#
# 1. where RoIPool's bins and RoIAlign's sample points fall on a feature-map grid (drawn);
# 2. how large the quantization loss is, measured over many random boxes;
# 3. both formulas, checked value by value on a map whose value is its own column coordinate;
# 4. what RoIAlign's `aligned` flag (the half-pixel fix of Detectron2) changes;
# 5. the masks each gives for a round object.
#
# Run at full size with `MINISEGNET_FAST=0 pytest tests/test_notebooks.py -k 06_` (fast mode
# measures fewer random boxes).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.metrics import mask_iou

FAST = os.environ.get("MINISEGNET_FAST", "0") == "1"
np.set_printoptions(precision=3, suppress=True, linewidth=120)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. One box on a stride-16 feature map
#
# A 128x128 image gives an 8x8 feature map at stride 16 (`spatial_scale = 1/16`). The box
# `[x1, y1, x2, y2] = [21, 30, 99, 83]` in image pixels is `[1.31, 1.88, 6.19, 5.19]` in feature
# cells. We pool it to 2x2.
#
# * **RoIPool** rounds each coordinate, `x1' = round(x1 * scale)`, treats the box as the
#   *inclusive* cell range `x1' .. x2'` (so `roi_w = x2' - x1' + 1`), and splits it into bins
#   `[floor(pw * roi_w / PW), ceil((pw + 1) * roi_w / PW))` cells from `x1'`: bins can overlap
#   or differ in size. Each bin outputs the maximum of its cells.
# * **RoIAlign** (`aligned=True`) keeps `x1 * scale` as it is, divides the box into equal bins
#   and averages `sampling_ratio x sampling_ratio` bilinear samples at regular points inside each.
#
# Below, the feature cell `(h, w)` covers `[w, w + 1) x [h, h + 1)`, centre `(w + 0.5, h + 0.5)`.

# %%
scale, P = 1 / 16, 2
box_img = np.array([21.0, 30.0, 99.0, 83.0])
x1, y1, x2, y2 = box_img * scale
print("box in feature cells:", box_img * scale)


def roipool_bins(lo, hi, n_bins):
    """RoIPool's bins along one axis as half-open cell ranges (SPEC roi_pool)."""
    q_lo, q_hi = int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5))  # round half away (positive)
    roi = max(q_hi - q_lo + 1, 1)
    return [(int(np.floor(p * roi / n_bins)) + q_lo, int(np.ceil((p + 1) * roi / n_bins)) + q_lo)
            for p in range(n_bins)]


def roialign_points(lo, hi, n_bins, ratio):
    """RoIAlign's sample coordinates along one axis, in cell-edge coordinates (aligned=True)."""
    bin_w = (hi - lo) / n_bins
    return np.array([[lo + p * bin_w + (i + 0.5) * bin_w / ratio for i in range(ratio)]
                     for p in range(n_bins)])  # (bins, ratio)


bins_x, bins_y = roipool_bins(x1, x2, P), roipool_bins(y1, y2, P)
pts_x, pts_y = roialign_points(x1, x2, P, 2), roialign_points(y1, y2, P, 2)
print("RoIPool column bins:", bins_x, " row bins:", bins_y)
print("RoIAlign sample columns per bin:\n", pts_x)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
for ax, title in zip(axes, ["RoIPool: snapped box, integer bins", "RoIAlign: exact box, bilinear samples"]):
    for k in range(9):
        ax.axhline(k, c="0.8", lw=0.8), ax.axvline(k, c="0.8", lw=0.8)
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="k", lw=2,
                               label="the box (x scale)"))
    ax.set_xlim(0, 8), ax.set_ylim(8, 0), ax.set_aspect("equal")
    ax.set_title(title)
colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
for by, (r0, r1) in enumerate(bins_y):
    for bx, (c0, c1) in enumerate(bins_x):
        axes[0].add_patch(plt.Rectangle((c0 + 0.06 * bx, r0 + 0.06 * by), c1 - c0 - 0.12, r1 - r0 - 0.12,
                                        alpha=0.25, color=colors[by * 2 + bx]))
for by in range(P):
    for bx in range(P):
        yy, xx = np.meshgrid(pts_y[by], pts_x[bx], indexing="ij")
        axes[1].plot(xx.ravel(), yy.ravel(), "o", c=colors[by * 2 + bx], ms=7)
bw, bh = (x2 - x1) / P, (y2 - y1) / P
for k in range(1, P):
    axes[1].axvline(x1 + k * bw, ymin=1 - y2 / 8, ymax=1 - y1 / 8, c="k", ls="--", lw=1)
    axes[1].axhline(y1 + k * bh, xmin=x1 / 8, xmax=x2 / 8, c="k", ls="--", lw=1)
axes[0].legend(loc="lower right", fontsize=8)
fig.tight_layout()

# %% [markdown]
# RoIPool's bins are whole cells, of unequal size when `roi_w` is not a multiple of the output
# size, and they reach past the true box (the right edge the most, because the snapped range is
# inclusive); RoIAlign's samples sit inside the exact bins. In numbers:

# %%
reach = {"left": x1 - bins_x[0][0], "right": bins_x[-1][1] - x2,
         "top": y1 - bins_y[0][0], "bottom": bins_y[-1][1] - y2}
for side, cells in reach.items():
    print(f"RoIPool reads {cells:+.3f} cells = {cells / scale:+5.1f} image px beyond the {side} edge")
print(f"RoIPool bins: {[c1 - c0 for c0, c1 in bins_x]} x {[r1 - r0 for r0, r1 in bins_y]} cells; "
      f"RoIAlign bins: {(x2 - x1) / P:.3f} x {(y2 - y1) / P:.3f} cells")
assert bins_x == [(1, 4), (4, 7)] and bins_y == [(2, 4), (4, 6)]
assert np.isclose(reach["right"] / scale, 7 * 16 - 99)  # cells 1..6 end at 7 cells = 112 px

# %% [markdown]
# ## 2. How much does the snapping cost?
#
# Take random boxes in a 512x512 image, stride 16. RoIPool effectively reads the region
# `[x1' / scale, (x2' + 1) / scale)`; compare it with the true box by IoU and by how far its edges
# moved, in image pixels.

# %%
n_boxes = 500 if FAST else 20000
xy = rng.uniform(0, 400, (n_boxes, 2))
wh = rng.uniform(16, 112, (n_boxes, 2))
boxes = np.concatenate([xy, xy + wh], 1)  # (K, 4) xyxy in image pixels
snapped = np.floor(boxes * scale + 0.5)
region = np.concatenate([snapped[:, :2], snapped[:, 2:] + 1], 1) / scale  # what RoIPool reads
edge_shift = np.abs(region - boxes)
inter = np.prod(np.minimum(boxes[:, 2:], region[:, 2:]) - np.maximum(boxes[:, :2], region[:, :2]), 1)
area = lambda b: np.prod(b[:, 2:] - b[:, :2], 1)  # noqa: E731
iou = inter / (area(boxes) + area(region) - inter)  # pairwise: box k with its own region k
assert np.allclose(iou[:100], np.diag(F.box_iou(Tensor(boxes[:100]), Tensor(region[:100])).numpy()))
print(f"{n_boxes} boxes, stride 16: edges move {edge_shift.mean():.1f} px on average "
      f"(max {edge_shift.max():.1f}); IoU(true box, RoIPool's region) mean {iou.mean():.3f}, "
      f"min {iou.min():.3f}")
# the left/top edges move at most half a cell; the right/bottom ones up to one and a half cells
assert edge_shift[:, :2].max() <= 8 + 1e-9 and edge_shift[:, 2:].max() <= 24 + 1e-9
assert iou.mean() < 0.95

# %%
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.hist(iou, bins=40, color="tab:blue")
ax.set_xlabel("IoU of the true box with the region RoIPool reads"), ax.set_ylabel("boxes")
ax.set_title("RoIPool's quantization loss (RoIAlign: IoU 1 by construction)", fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## 3. Both formulas, value by value
#
# On a map whose value is its column index, every pooled number tells *where* it was read.
# RoIAlign with one sample per bin (`sampling_ratio=1`) returns the bin centres in index
# coordinates (pixel centres at integers, hence the `- 0.5` of `aligned=True`); RoIPool returns the
# last column of each bin.

# %%
H = W = 8
cols = np.tile(np.arange(W, dtype=np.float64), (H, 1)).reshape(1, 1, H, W)
rois = np.array([[0, *box_img]])  # [batch_index, x1, y1, x2, y2]
align1 = F.roi_align(Tensor(cols), rois, P, spatial_scale=scale, sampling_ratio=1, aligned=True).numpy()
centres = x1 - 0.5 + (np.arange(P) + 0.5) * (x2 - x1) / P
print("RoIAlign, one sample per bin:", align1[0, 0, 0], " bin centres:", centres)
assert np.allclose(align1[0, 0, 0], centres)

align2 = F.roi_align(Tensor(cols), rois, P, spatial_scale=scale, sampling_ratio=2, aligned=True).numpy()
assert np.allclose(align2[0, 0, 0], pts_x.mean(1) - 0.5)  # the mean of each bin's samples

pool = F.roi_pool(Tensor(cols), rois, P, spatial_scale=scale).numpy()
print("RoIPool:", pool[0, 0, 0], " last column of each bin:", [c1 - 1 for _, c1 in bins_x])
assert np.allclose(pool[0, 0, 0], [c1 - 1 for _, c1 in bins_x])

# %% [markdown]
# ## 4. The `aligned` flag: half a pixel
#
# `aligned=False` is the original Mask R-CNN code: it forgets that pixel centres sit at integer +
# 0.5 in box coordinates, so the same box reads values half a feature cell further right and down.
# At stride 16 that is 8 image pixels: the same size as RoIPool's snapping error, just constant.

# %%
box8 = np.array([[0, 1.3, 1.3, 5.7, 5.7]])
align = F.roi_align(Tensor(cols), box8, output_size=2, sampling_ratio=2, aligned=True).numpy()
legacy = F.roi_align(Tensor(cols), box8, output_size=2, sampling_ratio=2, aligned=False).numpy()
print("aligned=False minus aligned=True:\n", legacy[0, 0] - align[0, 0])
assert np.allclose(legacy - align, 0.5)

# %% [markdown]
# ## 5. The masks each gives
#
# Mask R-CNN predicts a 28x28 mask per box from a 14x14 RoI feature. Here the "feature map" is the
# exact answer itself: the fraction of each 8x8 cell covered by a disk (a stride-8 map), so any
# error comes from the pooling alone. Cut 14x14 patches with both operators, threshold at 0.5, and
# compare with the disk sampled at the 14x14 bin centres of the true box.

# %%
Hi, stride = 128, 8
yy, xx = np.mgrid[0:Hi, 0:Hi] + 0.5
masks = {}
for cy, cx, r in [(57.3, 61.7, 21.4), (40.2, 80.9, 15.3), (70.6, 50.1, 30.2)]:
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float64).reshape(1, 1, Hi, Hi)
    feat = F.avg_pool2d(Tensor(disk), stride)  # (1, 1, 16, 16): cell coverage
    bx = np.array([[0, cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2]])
    ra = F.roi_align(feat, bx, 14, spatial_scale=1 / stride, sampling_ratio=2, aligned=True)
    rp = F.roi_pool(feat, bx, 14, spatial_scale=1 / stride)
    px = bx[0, 1] + (np.arange(14) + 0.5) * (bx[0, 3] - bx[0, 1]) / 14
    py = bx[0, 2] + (np.arange(14) + 0.5) * (bx[0, 4] - bx[0, 2]) / 14
    truth = (py[:, None] - cy) ** 2 + (px[None] - cx) ** 2 <= r * r
    m_align, m_pool = ra.numpy()[0, 0] > 0.5, rp.numpy()[0, 0] > 0.5
    masks[r] = (truth, m_align, m_pool)
    iou_a, iou_p = mask_iou(m_align, truth), mask_iou(m_pool, truth)
    print(f"disk r={r:4.1f}: mask IoU RoIAlign {iou_a:.3f}  RoIPool {iou_p:.3f}")
    assert iou_a > iou_p and iou_a > 0.9

# %%
fig, axes = plt.subplots(len(masks), 3, figsize=(6.5, 2.2 * len(masks)))
for row, (r, trio) in zip(axes, masks.items()):
    for ax, m, name in zip(row, trio, ["truth at bin centres", "RoIAlign > 0.5", "RoIPool > 0.5"]):
        ax.imshow(m, cmap="gray")
        ax.set_title(f"{name} (r={r})", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# RoIPool's masks are blocky (max over whole cells) and the disk in them sits too far up and to
# the left: the region RoIPool reads reaches further right and down than the box (the inclusive
# `x2'`), so the object fills less of the patch's bottom-right. RoIAlign's masks follow the disk. The full story — a trained mask head on nuclei, masks pasted back
# into the image and scored by mask AP — is notebook 12 (instance segmentation).

# %% [markdown]
# ## Exercises
#
# 1. Change `box_img` until two of RoIPool's column bins overlap. Which `roi_w` and `PW` cause it?
# 2. Repeat section 2 at stride 4 and stride 32. How does the mean IoU scale with the stride?
# 3. With `sampling_ratio=-1` (adaptive), how many samples does each bin of the box in section 1
#    take? Check your answer against the SPEC's `ceil(roi_w / PW)`.
# 4. Compute the gradient of `roi_align(...).sum()` with respect to the feature map for the box of
#    section 1 and draw it: which cells receive gradient, and with what weights?
