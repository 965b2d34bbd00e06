"""digits: scikit-learn's real handwritten digits (UCI, 1797 8 x 8 images) placed on canvases.

Each ``size`` x ``size`` grey canvas gets 1 to ``max_digits`` digits, each upscaled ``scale``
times bilinearly (8 x 8 -> 24 x 24 by default) and placed at a random position without overlapping
another (a 1-pixel margin between their boxes), plus Gaussian noise (std ``noise``). 11 classes:
background and the digits 0-9; a pixel is labelled with its digit's class where the upscaled
digit's intensity is at least ``threshold`` (of the full scale 16), else background.

The 1797 digits are split once, by a fixed permutation, into 1437 for train and 360 for test, so
the two splits never share a handwritten sample whatever ``seed`` is. No instance labels: this
is a semantic set (a thresholded digit need not be one connected piece).
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .dataset import Dataset, require

CLASS_NAMES = ("background",) + tuple(str(d) for d in range(10))
NORMALIZATION = {"method": "range", "low": 0.0, "high": 1.0, "clip": True}
SPLIT_STREAM = {"train": 0, "test": 1}
N_TOTAL, N_TRAIN = 1797, 1437  # the rest (360) are test digits


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) images 0..16 and (1797,) targets: ``sklearn.datasets.load_digits``'s data,
    read straight from the file it reads (importing sklearn.datasets takes seconds)."""
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") \
        if spec and spec.origin else ""
    if os.path.exists(path):
        a = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels, then the digit
        return a[:, :-1].reshape(-1, 8, 8), a[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` of the split's digits (a fixed permutation, whatever the
    seed: 1437 train, 360 test, disjoint)."""
    order = np.random.default_rng(2018).permutation(N_TOTAL)
    return order[:N_TRAIN] if split == "train" else order[N_TRAIN:]


@lru_cache(maxsize=None)
def _digits(split: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    images, target = _load_digits()
    idx = split_indices(split)
    # (K, 8 s, 8 s) in [0, 1]: bilinear upscaling of the 8 x 8 digits (0..16)
    big = ndimage.zoom(images[idx] / 16.0, (1, scale, scale), order=1, grid_mode=True,
                       mode="grid-constant")
    big = np.clip(big, 0, 1)
    big.setflags(write=False)
    return big, target[idx]


def load(split: str = "train", n: int | None = None, size: int = 64, seed: int = 0,
         scale: int = 3, max_digits: int = 3, threshold: float = 0.3, noise: float = 0.05,
         weights: bool = False) -> Dataset:
    """``n`` canvases (default 256 train, 64 test); see the module docstring.

    weights: accepted for a uniform ``load`` call, but this set has no instances, so no U-Net
    weight map (``weights`` is None).
    """
    if importlib.util.find_spec("sklearn") is None:
        require("sklearn", "digits")  # raises the ImportError that names the extra
    n = (256 if split == "train" else 64) if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale: must be a positive int, got {scale!r}")
    d = 8 * int(scale)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < d:
        raise ValueError(f"size: must be an int >= 8 * scale = {d}, got {size!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold!r}")
    big, target = _digits(split, int(scale))
    streams = np.random.SeedSequence([int(seed), SPLIT_STREAM[split]]).spawn(int(n))
    images = np.zeros((n, 1, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    for i, s in enumerate(streams):
        r = np.random.default_rng(s)
        canvas = np.zeros((size, size))
        taken = np.zeros((size, size), bool)  # digit boxes grown by the margin
        for _ in range(r.integers(1, max_digits + 1)):
            for _try in range(30):
                y, x = r.integers(0, size - d + 1, size=2)
                if not taken[y:y + d, x:x + d].any():
                    break
            else:
                continue  # canvas full
            k = r.integers(len(big))
            canvas[y:y + d, x:x + d] = big[k]
            labels[i, y:y + d, x:x + d][big[k] >= threshold] = target[k] + 1
            taken[max(y - 1, 0):y + d + 1, max(x - 1, 0):x + d + 1] = True
        images[i, 0] = np.clip(canvas + r.normal(0.0, noise, size=canvas.shape), 0, 1)
    info = {"n": int(n), "size": int(size), "seed": int(seed), "scale": int(scale),
            "max_digits": int(max_digits), "threshold": float(threshold), "noise": float(noise),
            "source": "sklearn.datasets.load_digits"}
    return Dataset("digits", split, images, labels, None, CLASS_NAMES, dict(NORMALIZATION),
                   weights=None, info=info)
