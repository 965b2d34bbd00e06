"""The training patch sampler: random crops, flips, 90-degree rotations, elastic deformation.

Per patch: pick an image (uniformly), a crop position (uniformly, the label crop inside the image),
then

* elastic deformation (optional), the U-Net paper's: a displacement vector at each point of a
  coarse 3 x 3 grid over the patch, drawn from N(0, sigma^2) with sigma = 10 px, smoothly
  interpolated to every pixel (a cubic B-spline through the 9 points, i.e. bicubic); the patch
  samples the image at ``pixel + displacement`` (images and weights bilinearly, labels nearest),
  from the whole image, so deformed patches pull in real context rather than the crop's edge;
* one of the 8 flips/rotations of the square (``np.rot90`` k = 0..3, then a horizontal flip or
  not), the same for image, labels and weights.

Outside the image (small images, the valid U-Net's context, displaced samples near the border)
images are mirrored (``np.pad(mode="reflect")``, as U-Net's overlap-tile strategy) but labels are
-1 (ignored by the loss) and weights 0: a patch never trains on pixels the data does not have.

Valid U-Net: ``label_size`` < ``size`` gives image crops of ``size`` and the centred label crops
of ``label_size`` the unpadded network's output covers (``size - label_size`` must be even).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

Batch = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


@lru_cache(maxsize=16)
def _spline_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) A with A @ g = the cubic spline through ``points`` values evenly spread
    over ``size`` pixels (first and last on the end pixels), so the per-pixel field of a coarse
    (points, points) grid G is A G A^T (the 2-D spline is the tensor product of 1-D ones)."""
    pos = np.linspace(0, points - 1, size)
    eye = np.eye(points)
    return np.stack([ndimage.map_coordinates(eye[k], [pos], order=3, mode="mirror")
                     for k in range(points)], axis=1)


def elastic_displacement(rng: np.random.Generator, size: int, sigma: float = 10.0,
                         points: int = 3) -> np.ndarray:
    """(2, size, size) per-pixel (dy, dx): N(0, sigma^2) vectors on a ``points`` x ``points``
    grid, spline-interpolated (the U-Net paper's elastic deformation)."""
    a = _spline_matrix(size, points)  # (size, points)
    g = rng.normal(0.0, sigma, size=(2, points, points))
    return a @ g @ a.T  # (2, size, size)


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into [0, n) about the end pixels (np.pad "reflect", scipy "mirror")."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def _taps(c: np.ndarray, n: int, mirror: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: lower and upper indices (mirrored or clamped) and the
    upper tap's weight."""
    lo = np.floor(c)
    frac = (c - lo).astype(np.float32)
    lo = lo.astype(np.intp)
    hi = lo + 1
    if lo.min() >= 0 and hi.max() < n:  # the usual case: every tap inside, nothing to fix
        return lo, hi, frac
    if mirror:
        return _mirror(lo, n), _mirror(hi, n), frac
    return np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1), frac


def _bilinear(planes: np.ndarray, cy: np.ndarray, cx: np.ndarray, mirror: bool) -> np.ndarray:
    """(C, h, w) samples of (C, H, W) ``planes`` at fractional (cy, cx), each (h, w).

    Mirrored beyond the border (images) or edge-extended (weights). At integer coordinates the
    result is the pixel itself, bit for bit (the other taps get weight 0)."""
    C, H, W = planes.shape
    y0, y1, fy = _taps(cy, H, mirror)
    x0, x1, fx = _taps(cx, W, mirror)
    flat = planes.reshape(C, H * W)
    top = flat[:, y0 * W + x0] * (1 - fx) + flat[:, y0 * W + x1] * fx
    bottom = flat[:, y1 * W + x0] * (1 - fx) + flat[:, y1 * W + x1] * fx
    return top * (1 - fy) + bottom * fy


def _nearest(labels: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Labels (H, W) at the nearest pixel to (cy, cx); -1 where that pixel is outside."""
    H, W = labels.shape
    ry, rx = np.floor(cy + 0.5).astype(np.intp), np.floor(cx + 0.5).astype(np.intp)
    inside = (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
    return np.where(inside, labels[np.clip(ry, 0, H - 1), np.clip(rx, 0, W - 1)], -1)


def _check_int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")
    return int(value)


def patches(
    dataset: Any,
    size: int,
    batch_size: int,
    augment: bool = True,
    seed: int | list[int] | None = 0,
    elastic: bool | float = False,
    weights: bool = True,
    label_size: int | None = None,
    elastic_points: int = 3,
) -> Iterator[Batch]:
    """An endless iterator of training batches ``(images, labels, weights)``.

    images (B, C, size, size) float32; labels (B, L, L) int64, -1 = ignore; weights (B, L, L)
    float32 or None, L = ``label_size`` (default ``size``). See the module docstring for the
    sampling.

    dataset: a :class:`~minisegnet.data.Dataset` (or anything with ``images`` (N, C, H, W),
        ``labels`` (N, H, W) and ``weights`` (N, H, W) or None).
    augment: random flips and 90-degree rotations (crops are always random).
    seed: an int or a list of ints (``np.random.SeedSequence``): the same seed gives the same
        batches. Elastic displacements come from their own stream, so switching elastic
        deformation on or off leaves the crops and flips unchanged.
    elastic: False, True (sigma 10 px, the paper's) or the displacement sigma in pixels (0 runs
        the deformation path with zero displacement: the identity).
    weights: yield crops of the dataset's weight map; None in the batch where it has none (or
        ``weights=False``).
    label_size: the label crop for a valid (unpadded) U-Net, centred in the image crop.
    """
    images = np.asarray(dataset.images)
    labels = np.asarray(dataset.labels)
    wmap = getattr(dataset, "weights", None) if weights else None
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"dataset: images must be (N, C, H, W) with N > 0, got {images.shape}")
    N, C, H, W = images.shape
    if labels.shape != (N, H, W):
        raise ValueError(f"dataset: labels {labels.shape} do not match images {images.shape}")
    if wmap is not None and np.shape(wmap) != (N, H, W):
        raise ValueError(f"dataset: weights {np.shape(wmap)} do not match images {images.shape}")
    size = _check_int(size, "size")
    batch_size = _check_int(batch_size, "batch_size")
    ls = size if label_size is None else _check_int(label_size, "label_size")
    if ls > size or (size - ls) % 2:
        raise ValueError(f"label_size: must be <= size ({size}) with size - label_size even, "
                         f"got {ls}")
    if elastic is True:
        sigma = 10.0
    elif elastic is False or elastic is None:
        sigma = None
    elif isinstance(elastic, (int, float, np.number)) and elastic >= 0:
        sigma = float(elastic)
    else:
        raise ValueError(f"elastic: must be a bool or a sigma >= 0 in pixels, got {elastic!r}")
    points = _check_int(elastic_points, "elastic_points", 2)
    halo = (size - ls) // 2

    # Padded copies for the plain crops, made once: pad P around each image so that any label
    # crop position (inside the image, or covering a too-small image) plus the halo fits.
    py, px = halo + max(ls - H, 0), halo + max(ls - W, 0)
    img_p = np.pad(images, ((0, 0), (0, 0), (py, py), (px, px)), mode="reflect") \
        if (py or px) else images
    lab_p = np.pad(labels, ((0, 0), (py, py), (px, px)), constant_values=-1) \
        if (py or px) else labels
    w_p = None
    if wmap is not None:
        wmap = np.asarray(wmap, np.float32)
        w_p = np.pad(wmap, ((0, 0), (py, py), (px, px))) if (py or px) else wmap

    crop_seq, elastic_seq = np.random.SeedSequence(seed).spawn(2)
    rng, rng_el = np.random.default_rng(crop_seq), np.random.default_rng(elastic_seq)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)  # (size, size) image-crop grid
    inner = (slice(halo, halo + ls), slice(halo, halo + ls))

    def origin(extent: int) -> int:
        # label crop origin: inside the image, or anywhere the image fits inside a larger crop
        return int(rng.integers(min(0, extent - ls), max(0, extent - ls) + 1))

    def batches() -> Iterator[Batch]:
        while True:
            xb = np.empty((batch_size, C, size, size), np.float32)
            yb = np.empty((batch_size, ls, ls), np.int64)
            wb = None if wmap is None else np.empty((batch_size, ls, ls), np.float32)
            for b in range(batch_size):
                i = int(rng.integers(N))
                y0, x0 = origin(H), origin(W)  # label crop origin in image coordinates
                k, flip = (int(rng.integers(4)), bool(rng.integers(2))) if augment else (0, False)
                if sigma is None:
                    ys, xs = y0 + py - halo, x0 + px - halo  # image crop in padded coordinates
                    x = img_p[i, :, ys:ys + size, xs:xs + size]
                    y = lab_p[i, ys + halo:ys + halo + ls, xs + halo:xs + halo + ls]
                    w = None if w_p is None else w_p[i, ys + halo:ys + halo + ls,
                                                     xs + halo:xs + halo + ls]
                else:
                    d = elastic_displacement(rng_el, size, sigma, points)  # (2, size, size)
                    cy = yy + (y0 - halo) + d[0]  # where each patch pixel samples the image
                    cx = xx + (x0 - halo) + d[1]
                    x = _bilinear(images[i], cy, cx, mirror=True)  # (C, size, size)
                    cy, cx = cy[inner], cx[inner]  # (ls, ls): the label crop's samples
                    y = _nearest(labels[i], cy, cx)
                    w = None
                    if wmap is not None:
                        w = _bilinear(wmap[i][None], cy, cx, mirror=False)[0]
                        w[y < 0] = 0.0
                if k:
                    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
                    w = None if w is None else np.rot90(w, k)
                if flip:
                    x, y = x[..., ::-1], y[..., ::-1]
                    w = None if w is None else w[..., ::-1]
                xb[b], yb[b] = x, y
                if wb is not None:
                    wb[b] = w
            yield xb, yb, wb

    return batches()  # a generator made here: bad arguments fail at the call, not at next()
