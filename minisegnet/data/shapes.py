"""shapes: seeded synthetic circles, rectangles and triangles on noisy backgrounds (NumPy only).

Each RGB image has a random background colour with a linear shading across it, 1 to
``max_objects`` objects of random class, colour, size and position, and Gaussian noise (std
``noise``) over everything. Objects may touch and overlap; a later object is drawn on top, and an
object is only placed if every object already there keeps at least half of its visible area and
stays one connected piece, so each instance id is one visible region. ``labels`` are the visible
class, ``instances`` the visible object (1..n per image, in drawing order).

The class of an object is its shape, never its colour: colours are random (at least 0.3 away from
the background in some channel). Image ``i`` depends only on (``seed``, split, ``i``): asking for
more images appends to the set. Train and test come from different seed streams.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .dataset import Dataset

CLASS_NAMES = ("background", "circle", "rectangle", "triangle")
NORMALIZATION = {"method": "range", "low": 0.0, "high": 1.0, "clip": True}
SPLIT_STREAM = {"train": 0, "test": 1}


def _shape_mask(r: np.random.Generator, cls: int, size: int, yy: np.ndarray,
                xx: np.ndarray) -> np.ndarray:
    """(size, size) bool mask of one random object of class ``cls`` (1 circle, 2 rect, 3 tri)."""
    lo, hi = max(size / 12, 3.0), max(size / 5, 4.0)
    cy, cx = r.uniform(hi, size - hi, size=2)
    if cls == 1:
        rad = r.uniform(lo, hi)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
    if cls == 2:
        h, w = r.uniform(lo, hi, size=2)
        return (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w)
    # a triangle: three vertices on a circle, each angle jittered around the equilateral one
    rad = r.uniform(lo * 1.2, hi * 1.2)
    ang = r.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + r.uniform(-0.3, 0.3, size=3)
    vy, vx = cy + rad * np.sin(ang), cx + rad * np.cos(ang)
    inside = np.ones_like(yy, dtype=bool)
    for k in range(3):  # counter-clockwise vertices: inside = left of every edge
        ay, ax, by, bx = vy[k], vx[k], vy[(k + 1) % 3], vx[(k + 1) % 3]
        inside &= (bx - ax) * (yy - ay) - (by - ay) * (xx - ax) >= 0
    return inside


def _image(r: np.random.Generator, size: int, max_objects: int, noise: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    bg = r.uniform(0.0, 1.0, size=3)
    direction = r.uniform(0, 2 * np.pi)
    shade = ((np.cos(direction) * xx + np.sin(direction) * yy) / size - 0.5) * r.uniform(0, 0.3)
    img = np.clip(bg[:, None, None] + shade[None], 0, 1)  # (3, size, size)
    inst = np.zeros((size, size), np.int32)
    cls_of = [0]
    for _ in range(r.integers(1, max_objects + 1)):
        for _try in range(20):
            cls = int(r.integers(1, 4))
            m = _shape_mask(r, cls, size, yy, xx)
            if m.sum() < 9:
                continue
            after = np.where(m, len(cls_of), inst)
            ok = all(  # only the objects the new one covers can lose area or split
                (after == k).sum() * 2 >= (inst == k).sum()
                and ndimage.label(after == k)[1] == 1
                for k in np.unique(inst[m]) if k > 0
            )
            if ok:
                break
        else:
            continue  # no room for another object
        while True:  # a colour that stands out from the background
            colour = r.uniform(0.0, 1.0, size=3)
            if np.abs(colour - bg).max() >= 0.3:
                break
        img[:, m] = colour[:, None]
        inst = after
        cls_of.append(cls)
    img += r.normal(0.0, noise, size=img.shape)
    labels = np.asarray(cls_of, np.int64)[inst]
    return np.clip(img, 0, 1).astype(np.float32), labels, inst


def load(split: str = "train", n: int | None = None, size: int = 64, seed: int = 0,
         max_objects: int = 4, noise: float = 0.05, weights: bool = False,
         separate: bool | None = None, w0: float = 10.0, sigma: float = 5.0) -> Dataset:
    """``n`` images (default 256 train, 64 test) of ``size`` x ``size``; see the module docstring.

    weights / separate: as for "nuclei" (U-Net's weight map from the instances; carved gaps
    between touching objects in the train labels), off by default here.
    """
    n = (256 if split == "train" else 64) if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size: must be an int >= 16, got {size!r}")
    if isinstance(max_objects, bool) or not isinstance(max_objects, (int, np.integer)) \
            or max_objects < 1:
        raise ValueError(f"max_objects: must be a positive int, got {max_objects!r}")
    streams = np.random.SeedSequence([int(seed), SPLIT_STREAM[split]]).spawn(int(n))
    images, labels, instances = zip(*(
        _image(np.random.default_rng(s), int(size), int(max_objects), float(noise))
        for s in streams
    ))
    images, labels, instances = np.stack(images), np.stack(labels), np.stack(instances)
    if separate is None:
        separate = bool(weights) and split == "train"
    w = None
    if separate or weights:
        from ..models.unet import separate_touching, weight_map

        targets = [separate_touching(i) if separate else i for i in instances]
        if separate:
            labels = np.where(np.stack(targets) > 0, labels, 0)
        if weights:
            w = np.stack([weight_map(t, w0=w0, sigma=sigma) for t in targets])
    info = {"n": int(n), "size": int(size), "seed": int(seed), "max_objects": int(max_objects),
            "noise": float(noise), "separate": bool(separate)}
    return Dataset("shapes", split, images, labels, instances, CLASS_NAMES, dict(NORMALIZATION),
                   weights=w, info=info)
