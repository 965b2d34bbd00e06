"""The ``minisegnet`` command.

``minisegnet demo`` (also what a bare ``minisegnet`` runs, until the model zoo and datasets land)
trains a small fully-convolutional segmenter on a real fluorescence-microscopy image of cell
nuclei that ships inside the ``stardist`` package (install ``minisegnet[data]``): it learns on the
left half of the image and is evaluated on the unseen right half. It shows a progress bar, writes
a checkpoint, a PNG of the prediction beside the ground truth and ``metrics.json`` with ``miou``,
``pixel_accuracy``, ``per_class_iou`` and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's 2-D nuclei test image (512x512) and its foreground mask, as float32 / int64."""
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the demo's real data ships in the 'stardist' package: pip install 'minisegnet[data]'"
        ) from e
    img, labels = test_image_nuclei_2d(return_mask=True)
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))  # the usual percentile normalisation for microscopy
    img = np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32)
    return img, (labels > 0).astype(np.int64)


def build_demo_model(width: int = 16) -> Any:
    """conv3x3 -> BN -> ReLU -> dilated conv3x3 (rate 2) -> BN -> ReLU -> dilated (rate 4) -> 1x1.

    Receptive field 15x15 at full resolution: big enough to see a nucleus and its border.
    """
    from . import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=2, dilation=2, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=4, dilation=4, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2, 1),
    )


def _crops(img: np.ndarray, mask: np.ndarray, n: int, size: int, rng: np.random.Generator):
    H, W = img.shape
    xs, ys = [], []
    for _ in range(n):
        i, j = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
        a, b = img[i : i + size, j : j + size], mask[i : i + size, j : j + size]
        if rng.random() < 0.5:  # flips: cheap augmentation that respects the labels
            a, b = a[:, ::-1], b[:, ::-1]
        if rng.random() < 0.5:
            a, b = a[::-1], b[::-1]
        xs.append(a)
        ys.append(b)
    return np.stack(xs)[:, None].copy(), np.stack(ys).copy()  # (n, 1, s, s), (n, s, s)


def save_figure(path: str, img: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str) -> None:
    """Image | ground truth | prediction, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, a, name in zip(axes, (img, truth, pred), ("image", "ground truth", "prediction")):
        ax.imshow(a, cmap="gray" if name == "image" else "viridis", interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def demo(epochs: int = 4, steps: int = 30, batch: int = 8, crop: int = 64, lr: float = 0.01,
         out: str = "runs/demo", device: str = "cpu", seed: int = 0, quiet: bool = False) -> dict:
    """Train the demo segmenter; returns the metrics it also writes to ``out/metrics.json``."""
    from tqdm import tqdm

    import minisegnet as msn
    import minisegnet.functional as F
    from minisegnet import metrics, optim

    msn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    img, mask = load_nuclei()
    W = img.shape[1]
    train_img, train_mask = img[:, : W // 2], mask[:, : W // 2]
    test_img, test_mask = img[:, W // 2 :], mask[:, W // 2 :]

    model = build_demo_model().to(device)
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs * steps)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=quiet, leave=True)
        for _ in bar:
            xb, yb = _crops(train_img, train_mask, batch, crop, rng)
            x = msn.Tensor(xb).to(device)
            y = msn.Tensor(yb).to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        msn.save(model, os.path.join(out, "checkpoint.npz"))

    model.eval()
    with msn.no_grad():
        logits = model(msn.Tensor(test_img[None, None]).to(device))
    pred = logits.numpy()[0].argmax(0)
    meter = metrics.SegmentationMeter(2)
    meter.update(pred, test_mask)
    result = meter.summary()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["data"] = "stardist test_image_nuclei_2d (train: left half, test: right half)"
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    save_figure(
        os.path.join(out, "prediction.png"), test_img, test_mask, pred,
        f"nuclei, held-out half: mIoU {result['miou']:.3f}, pixel accuracy "
        f"{result['pixel_accuracy']:.3f}",
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minisegnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="train a small segmenter on real nuclei images (default)")
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--steps", type=int, default=30, help="optimizer steps per epoch")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--crop", type=int, default=64)
    d.add_argument("--lr", type=float, default=0.01)
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `minisegnet` runs the main job
        args = parser.parse_args(["demo"])
    kw = {k: v for k, v in vars(args).items() if k != "command"}
    result = demo(**kw)
    print(
        f"held-out mIoU {result['miou']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f}, "
        f"{result['seconds']:.1f} s; wrote {args.out}/metrics.json, prediction.png, checkpoint.npz"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
