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
# # 10 — Metrics: from pixel accuracy to the DSB score
#
# A segmentation is only as good as the number that judges it, and each number hides a choice.
# You will learn, computing each by hand and then with `minisegnet.metrics`:
#
# 1. **pixel accuracy** on a 4x4 example (15/16), and why it flatters a model that ignores small
#    objects;
# 2. the **confusion matrix**, **per-class IoU** and **mIoU**;
# 3. **mask IoU** and Dice of two masks;
# 4. **average precision** at an IoU threshold, detection by detection;
# 5. **non-maximum suppression**, step by step;
# 6. the 2018 Data Science Bowl's **instance score** on touching nuclei, merged or split.
#
# Everything here is tiny; `MINISEGNET_FAST` changes nothing (run it with
# `pytest tests/test_notebooks.py -k 10_`).

# %%
import matplotlib.pyplot as plt
import numpy as np

import minisegnet.functional as F
from minisegnet import Tensor, metrics

np.set_printoptions(precision=3, suppress=True, linewidth=120)

# %% [markdown]
# ## 1. Pixel accuracy: 15 of 16
#
# Three classes (0 background, 1 road, 2 car) on a 4x4 image; the prediction gets one pixel
# wrong. Pixel accuracy is the fraction of pixels whose predicted class equals the true one.

# %%
target = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 1, 1],
                   [2, 2, 1, 1]])
pred = target.copy()
pred[2, 1] = 1  # one car pixel called road
acc = metrics.pixel_accuracy(pred, target)
print("pixel accuracy:", acc, "=", f"{(pred == target).sum()}/{target.size}")
assert acc == 15 / 16 == (pred == target).mean()

# %% [markdown]
# The same 15/16 comes from a model that never finds the small object at all: one "car" pixel in a
# background image, predicted as background everywhere.

# %%
target_small = np.zeros((4, 4), int)
target_small[1, 2] = 2
lazy = np.zeros((4, 4), int)
print("lazy model's pixel accuracy:", metrics.pixel_accuracy(lazy, target_small))
assert metrics.pixel_accuracy(lazy, target_small) == 15 / 16

# %% [markdown]
# ## 2. The confusion matrix, per-class IoU and mIoU
#
# `N[i, j]` counts the pixels of true class `i` predicted as `j`: the diagonal holds the hits, the
# row sums the true areas, the column sums the predicted areas. Per class,
#
# `IoU_i = N_ii / (row_i + column_i - N_ii)` (intersection over union of the true and predicted
# regions of class i), and mIoU is their mean over the classes that occur.

# %%
cm = metrics.confusion_matrix(pred, target, 3)
cm_hand = np.zeros((3, 3), int)
for t, p in zip(target.ravel(), pred.ravel()):
    cm_hand[t, p] += 1
print("confusion matrix (rows: truth, columns: prediction):\n", cm)
assert np.array_equal(cm, cm_hand)
assert np.trace(cm) / cm.sum() == 15 / 16

iou_hand = np.array([cm[i, i] / (cm[i].sum() + cm[:, i].sum() - cm[i, i]) for i in range(3)])
iou = metrics.iou_per_class(pred, target, 3)
print("IoU per class:", iou, " mIoU:", metrics.mean_iou(pred, target, 3))
assert np.allclose(iou, iou_hand) and np.allclose(iou, [1.0, 8 / 9, 3 / 4])
assert np.isclose(metrics.mean_iou(pred, target, 3), (1 + 8 / 9 + 3 / 4) / 3)

# %% [markdown]
# For the lazy model, class 1 occurs in neither image: its IoU is NaN and mIoU skips it. The car's
# IoU is 0, and mIoU drops to about 0.47 where pixel accuracy said 0.94.

# %%
iou_lazy = metrics.iou_per_class(lazy, target_small, 3)
miou_lazy = metrics.mean_iou(lazy, target_small, 3)
print("lazy model: IoU per class", iou_lazy, " mIoU", round(miou_lazy, 4))
assert np.isnan(iou_lazy[1]) and iou_lazy[2] == 0 and np.isclose(miou_lazy, (15 / 16 + 0) / 2)

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
for ax, img, title in [(axes[0], target, "truth"), (axes[1], pred, "prediction")]:
    ax.imshow(img, cmap="viridis", vmin=0, vmax=2)
    ax.set_title(title), ax.set_xticks([]), ax.set_yticks([])
axes[1].add_patch(plt.Rectangle((0.5, 1.5), 1, 1, fill=False, ec="r", lw=3))
axes[2].imshow(cm, cmap="Blues")
for i in range(3):
    for j in range(3):
        axes[2].text(j, i, cm[i, j], ha="center", va="center")
axes[2].set_xlabel("predicted"), axes[2].set_ylabel("true")
axes[2].set_xticks(range(3), ["bg", "road", "car"]), axes[2].set_yticks(range(3), ["bg", "road", "car"])
axes[2].set_title("confusion matrix")
fig.tight_layout()

# %% [markdown]
# ## 3. Mask IoU and Dice
#
# For two boolean masks, IoU = |A and B| / |A or B| and Dice = 2 |A and B| / (|A| + |B|). Two 4x4
# squares offset by (2, 2) share 4 pixels out of 28: IoU 1/7, Dice 1/4. Dice is a monotone function
# of IoU, `Dice = 2 IoU / (1 + IoU)`, so both rank predictions alike; Dice is the larger.

# %%
A = np.zeros((8, 8), bool)
B = np.zeros((8, 8), bool)
A[0:4, 0:4] = True
B[2:6, 2:6] = True
m_iou, m_dice = metrics.mask_iou(A, B), metrics.dice(A, B)
print(f"mask IoU {m_iou:.4f} (1/7 = {1 / 7:.4f}), Dice {m_dice:.4f}")
assert np.isclose(m_iou, 1 / 7) and np.isclose(m_dice, 1 / 4)
assert np.isclose(m_dice, 2 * m_iou / (1 + m_iou))

# %% [markdown]
# ## 4. Average precision at an IoU threshold
#
# A detector returns scored boxes. Walk them in descending score: a detection is a **true
# positive** when its best IoU with a ground truth *not yet matched* is at least the threshold
# (0.5 here), otherwise a **false positive** (a second detection of a matched object is one).
# After each detection, precision = TP / detections so far and recall = TP / ground truths. AP is
# the area under the precision-recall curve after replacing each precision by the best precision
# at any higher recall (the monotone envelope).

# %%
gt = np.array([[10, 10, 50, 50], [60, 20, 90, 60], [20, 60, 60, 95]], float)
det = np.array([[12, 8, 52, 48],    # object 0, good
                [58, 22, 92, 58],   # object 1, good
                [14, 12, 48, 50],   # object 0 again: a duplicate
                [70, 70, 95, 95],   # nothing there
                [22, 64, 58, 100]], float)  # object 2, a loose fit
scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
ious = F.box_iou(Tensor(det), Tensor(gt)).numpy()  # (detections, ground truths)

matched = np.zeros(len(gt), bool)
tp = []
print(" rank score  best free IoU  TP  precision  recall")
for rank, d in enumerate(np.argsort(-scores, kind="stable")):
    free = np.where(matched, -1.0, ious[d])
    g = int(np.argmax(free))
    hit = free[g] >= 0.5
    matched[g] |= hit
    tp.append(int(hit))
    prec, rec = np.sum(tp) / (rank + 1), np.sum(tp) / len(gt)
    print(f" {rank + 1:4d} {scores[d]:5.2f}  {max(free[g], 0):13.3f}  {int(hit):2d}  {prec:9.3f}  {rec:6.3f}")

tp = np.array(tp)
precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
recall = np.cumsum(tp) / len(gt)
envelope = np.maximum.accumulate(precision[::-1])[::-1]
ap_hand = float(np.sum(np.diff(np.concatenate([[0], recall])) * envelope))
ap = metrics.average_precision(det, scores, gt, iou_threshold=0.5)
print(f"\nAP@0.5 by hand {ap_hand:.4f}, metrics.average_precision {ap:.4f}")
assert tp.tolist() == [1, 1, 0, 0, 1]
assert np.isclose(ap, ap_hand) and np.isclose(ap, (1 + 1 + 0.6) / 3)

# %% [markdown]
# At a stricter threshold the loose box of object 2 stops counting:

# %%
print(f"IoU of the loose box with object 2: {ious[4, 2]:.3f}")
for t in (0.5, 0.75):
    print(f"AP@{t}: {metrics.average_precision(det, scores, gt, iou_threshold=t):.4f}")
assert metrics.average_precision(det, scores, gt, iou_threshold=0.75) < ap
assert np.isclose(metrics.average_precision(det, scores, gt, iou_threshold=0.75), 2 / 3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
ax = axes[0]
for b in gt:
    ax.add_patch(plt.Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="k", lw=2))
for b, s, hit in zip(det[np.argsort(-scores)], np.sort(scores)[::-1], tp):
    ax.add_patch(plt.Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="g" if hit else "r", ls="--"))
    ax.text(b[0] + 1, b[1] + 5, f"{s:.2f}", color="g" if hit else "r", fontsize=8)
ax.set_xlim(0, 100), ax.set_ylim(105, 0), ax.set_aspect("equal")
ax.set_title("truth (black), TP (green), FP (red)")
ax = axes[1]
ax.plot(recall, precision, "o-", label="precision")
ax.step(np.concatenate([[0], recall]), np.concatenate([[envelope[0]], envelope]), where="pre",
        label="envelope (area = AP)")
ax.fill_between(np.concatenate([[0], recall]), np.concatenate([[envelope[0]], envelope]),
                step="pre", alpha=0.2)
ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_xlim(0, 1.05), ax.set_ylim(0, 1.05)
ax.legend(loc="lower left")
ax.set_title(f"AP@0.5 = {ap:.3f}")
fig.tight_layout()

# %% [markdown]
# ## 5. Non-maximum suppression, step by step
#
# A detector fires several boxes on each object. Greedy NMS keeps the best-scoring box, drops every
# remaining box whose IoU with it is *above* the threshold, and repeats with what is left.

# %%
boxes = np.array([[10, 10, 50, 50], [12, 14, 52, 52], [8, 6, 46, 48],   # one object
                  [60, 60, 95, 90], [62, 58, 92, 92],                    # another
                  [30, 30, 70, 70]], float)                               # in between
box_scores = np.array([0.9, 0.85, 0.7, 0.8, 0.75, 0.6])
thr = 0.5
iou_all = F.box_iou(Tensor(boxes), Tensor(boxes)).numpy()
left = list(np.argsort(-box_scores, kind="stable"))
keep, steps = [], []
while left:
    best, rest = left[0], left[1:]
    keep.append(int(best))
    dropped = [int(j) for j in rest if iou_all[best, j] > thr]
    print(f"keep box {best} (score {box_scores[best]:.2f}); IoU with the rest "
          f"{dict((int(j), round(float(iou_all[best, j]), 2)) for j in rest)} -> drop {dropped}")
    steps.append((int(best), dropped))
    left = [j for j in rest if iou_all[best, j] <= thr]
kept = F.nms(Tensor(boxes), Tensor(box_scores), thr).numpy()
print("kept by hand:", keep, " F.nms:", kept.tolist())
assert kept.tolist() == keep == [0, 3, 5]

# %%
fig, axes = plt.subplots(1, len(steps) + 1, figsize=(3.2 * (len(steps) + 1), 3.3))
alive = set(range(len(boxes)))
for k, ax in enumerate(axes):
    for j in sorted(alive):
        b = boxes[j]
        color = "tab:green" if j in keep[:k] else "0.4"
        ax.add_patch(plt.Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec=color, lw=2))
        ax.text(b[0] + 1, b[1] + 6 + 7 * (j % 3), f"{j}:{box_scores[j]:.2f}", fontsize=7, color=color)
    if k < len(steps):
        best, dropped = steps[k]
        for j in dropped:
            b = boxes[j]
            ax.add_patch(plt.Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="r", lw=2, ls="--"))
        b = boxes[best]
        ax.add_patch(plt.Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="tab:green", lw=3))
        ax.set_title(f"step {k + 1}: keep {best}, drop {dropped}", fontsize=9)
        alive -= set(dropped)
    else:
        ax.set_title(f"kept {keep}", fontsize=9)
    ax.set_xlim(0, 100), ax.set_ylim(100, 0), ax.set_aspect("equal")
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# ## 6. Instances: matching and the DSB score on touching nuclei
#
# Semantic metrics cannot tell one nucleus from two touching ones: both are "nucleus" pixels.
# Instance metrics first **match** predicted objects to true ones (one to one, a pair needing
# IoU >= t), then count TP, FP and FN. The 2018 Data Science Bowl scored an image by
# `accuracy(t) = TP / (TP + FP + FN)`, averaged over t = 0.5, 0.55, ..., 0.95.
#
# Two touching nuclei of radius 10 and 7. One model merges them into one blob; another separates
# them but draws both one pixel too small.

# %%
yy, xx = np.mgrid[0:40, 0:48]
big = (yy - 20) ** 2 + (xx - 18) ** 2 <= 10 ** 2
small = ((yy - 20) ** 2 + (xx - 33) ** 2 <= 7 ** 2) & ~big  # pressed into the big one
truth = np.zeros((40, 48), np.int32)
truth[big], truth[small] = 1, 2
merged = np.where(truth > 0, 1, 0).astype(np.int32)
split = np.zeros_like(truth)
split[(yy - 20) ** 2 + (xx - 18) ** 2 <= 9 ** 2] = 1
split[((yy - 20) ** 2 + (xx - 33) ** 2 <= 6 ** 2) & (split == 0)] = 2
assert np.count_nonzero(big & np.roll(small, -1, axis=1)) >= 5  # the nuclei touch along a border


def dsb_by_hand(true, pred):
    """Per threshold: TP = pairs with IoU >= t (one to one: above 0.5 a pair is unique)."""
    t_ids, p_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    table = np.array([[metrics.mask_iou(true == a, pred == b) for b in p_ids] for a in t_ids])
    accs = []
    for t in np.round(np.arange(0.5, 1.0, 0.05), 2):
        tp = int((table >= t).sum())
        fp, fn = len(p_ids) - tp, len(t_ids) - tp
        accs.append(tp / (tp + fp + fn))
    return table, np.array(accs)


for name, p in [("merged", merged), ("split, 1 px small", split)]:
    table, accs = dsb_by_hand(truth, p)
    m = metrics.matching(truth, p, threshold=0.5)
    print(f"{name:18s} IoU table (true x pred) {table.round(3).tolist()}")
    print(f"{'':18s} at 0.5: TP {m['tp']} FP {m['fp']} FN {m['fn']} accuracy {m['accuracy']:.3f}; "
          f"DSB score {metrics.dsb_score(truth, p):.3f}")
    assert np.isclose(metrics.dsb_score(truth, p), accs.mean())
    assert np.isclose(m["accuracy"], accs[0])
    if name == "merged":
        merged_accs = accs
        assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)  # the blob matches the big nucleus only
    else:
        split_accs = accs
assert metrics.dsb_score(truth, split) > metrics.dsb_score(truth, merged)

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3))
for ax, img, title in [(axes[0], truth, "truth: two touching nuclei"), (axes[1], merged, "merged"),
                       (axes[2], split, "split, 1 px small")]:
    ax.imshow(img, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    ax.set_title(title, fontsize=9), ax.set_xticks([]), ax.set_yticks([])
ts = np.round(np.arange(0.5, 1.0, 0.05), 2)
axes[3].plot(ts, merged_accs, "o-", label=f"merged (DSB {merged_accs.mean():.2f})")
axes[3].plot(ts, split_accs, "s-", label=f"split (DSB {split_accs.mean():.2f})")
axes[3].set_xlabel("IoU threshold t"), axes[3].set_ylabel("TP / (TP + FP + FN)")
axes[3].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The merged blob still matches the big nucleus at loose thresholds, but the small one is lost at
# every threshold; the split prediction finds both and loses them only where one pixel of erosion
# costs more IoU than t allows. That is why U-Net's border weights (notebook 08) pay off in this
# score while barely moving pixel accuracy.

# %% [markdown]
# ## Exercises
#
# 1. Make the prediction of section 1 wrong on one *background* pixel instead. Which IoUs change?
# 2. Add a sixth detection with score 0.99 and no object under it. By how much does AP@0.5 fall?
#    Does it matter where in the ranking the false positive sits?
# 3. Run NMS on the boxes of section 5 with thresholds 0.3 and 0.7. Which boxes survive?
# 4. Grow the split prediction by one pixel instead of shrinking it (two disks of radius 11 and 8,
#    overlapping each other). What does the matching do with the overlap?
