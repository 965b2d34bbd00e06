"""The PNGs a run writes: prediction figures and training curves (matplotlib, Agg)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["save_prediction_figure", "save_curves", "label_colors"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_colors(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) float image giving each non-zero label its own random colour (0 = black)."""
    labels = np.asarray(labels)
    n = int(labels.max()) + 1 if labels.size else 1
    palette = np.random.default_rng(seed).uniform(0.25, 1.0, (max(n, 1), 3))
    palette[0] = 0
    return palette[np.clip(labels, 0, None)]


def _image2d(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3:  # (C, H, W): grey for one channel, RGB for three, the mean otherwise
        if img.shape[0] == 1:
            return img[0]
        img = img[:3].transpose(1, 2, 0) if img.shape[0] == 3 else img.mean(0)
    return img


def save_prediction_figure(path: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                           title: str, truth_instances: np.ndarray | None = None,
                           pred_instances: np.ndarray | None = None) -> None:
    """Image | ground truth | prediction | errors side by side, as a PNG.

    Errors: green = correct foreground, red = false positive, blue = false negative (ignored
    pixels grey). With instance labels, the truth and prediction panels colour each instance.
    """
    plt = _pyplot()
    truth, pred = np.asarray(truth), np.asarray(pred)
    valid = truth >= 0
    err = np.zeros(truth.shape + (3,))
    err[valid & (truth == pred) & (truth > 0)] = (0.1, 0.75, 0.2)
    err[valid & (truth != pred) & (pred > 0)] = (0.9, 0.15, 0.1)
    err[valid & (truth != pred) & (pred == 0)] = (0.2, 0.35, 1.0)
    err[~valid] = 0.5
    K = max(int(truth.max()), int(pred.max()), 1)
    panels = [
        ("image", _image2d(image), dict(cmap="gray")),
        ("ground truth", label_colors(truth_instances) if truth_instances is not None else truth,
         dict(cmap="viridis", vmin=0, vmax=K)),
        ("prediction", label_colors(pred_instances) if pred_instances is not None else pred,
         dict(cmap="viridis", vmin=0, vmax=K)),
        ("errors (red FP, blue FN)", err, {}),
    ]
    h, w = truth.shape
    if w > 1.5 * h:  # wide images (the nuclei halves are 256 x 512): two rows of two
        fig, axes = plt.subplots(2, 2, figsize=(13, 13 * h / w + 1.2))
    else:
        fig, axes = plt.subplots(1, 4, figsize=(16, 4.4 * h / w + 0.8))
    for ax, (name, a, kw) in zip(axes.ravel(), panels, strict=True):
        ax.imshow(a, interpolation="nearest", **(kw if np.asarray(a).ndim == 2 else {}))
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_curves(path: str, losses: list[float], history: list[dict[str, Any]]) -> None:
    """Training loss per step (and its running mean) beside the test metrics per evaluation."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, len(losses) + 1)
    a.plot(steps, losses, lw=0.6, alpha=0.45, label="loss per step")
    if len(losses) >= 5:
        k = max(len(losses) // 25, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        a.plot(steps[k - 1:], smooth, lw=1.8, label=f"running mean of {k}")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_yscale("log")
    a.legend()
    a.grid(alpha=0.3)
    at = [r["step"] for r in history]
    for key, name in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"),
                      ("instance_accuracy_50", "instance accuracy @ IoU 0.5"),
                      ("dsb_score", "DSB score"),
                      ("mask_ap", "mask AP @ [.5:.95]"), ("mask_ap50", "mask AP @ 0.5"),
                      ("gt_mask_ap50", "mask AP @ 0.5, ground-truth boxes")):
        if history and key in history[0]:  # the maskhead's rows carry the mask AP keys
            values = [np.nan if r.get(key) is None else r[key] for r in history]
            b.plot(at, values, marker="o", label=name)
    b.set_xlabel("step")
    b.set_ylabel("test split")
    b.set_ylim(0, 1)
    b.legend(loc="best")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
