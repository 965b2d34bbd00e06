"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015): the network, overlap-tile inference and the
border weight map that makes the network separate touching cells.

* :func:`weight_map`         ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` from instance labels
* :func:`separate_touching`  carve a background gap between touching instances (done before the
                             weight map, as the authors prepare their training labels)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["weight_map", "separate_touching"]


# --------------------------------------------------------------------------------------------
# Instance labels: separation gaps and the border weight map


def _instance_labels(instances: Any, fn: str) -> np.ndarray:
    """Check an (H, W) integer instance label image (0 = background) and return it as NumPy."""
    if hasattr(instances, "get") and type(instances).__module__.startswith("cupy"):
        instances = instances.get()  # a CuPy array: this is host-side label preparation
    a = np.asarray(instances)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(
            f"instances: {fn} needs an integer instance label image (0 = background, one id per "
            f"object), got dtype {a.dtype}; label a binary mask first (scipy.ndimage.label), but "
            f"note that labelling merges touching objects"
        )
    if a.ndim != 2:
        raise ValueError(f"instances: {fn} needs a 2-D (H, W) label image, got shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"instances: ids must be non-negative (0 = background), got min {a.min()}")
    return a


def _compact(a: np.ndarray) -> np.ndarray:
    """int32 labels, 0 = background, at most H*W: sparse or huge ids are renumbered 1..n (in order),
    so that find_objects returns a short list and the filters never see a 64-bit id."""
    if a.size == 0 or a.max() <= a.size:
        return a.astype(np.int32)
    ids, inverse = np.unique(a, return_inverse=True)
    lab = inverse.reshape(a.shape).astype(np.int32)
    return lab if ids[0] == 0 else lab + 1


def separate_touching(instances: Any, gap: int = 1) -> np.ndarray:
    """Carve background between touching instances: pixels within ``gap`` of another id become 0.

    A pixel of instance ``a`` is removed when some pixel of a *different* instance ``b`` lies in
    the (2 gap + 1) x (2 gap + 1) square around it (Chebyshev distance <= gap; gap 1 is the
    8-neighbourhood). Both sides of a contact are carved, so afterwards any two pixels of different
    instances are more than ``gap`` apart (at least ``gap`` background pixels between them, no two
    instances 8-adjacent for gap 1), and only pixels that touched another instance are removed.
    This is how the U-Net authors prepare their cell labels: the carved gap is background the
    network must learn, and :func:`weight_map` gives it a large weight.

    instances: (H, W) integer ids, 0 = background (ids need not be consecutive). Returns a copy
    of the same dtype.
    """
    a = _instance_labels(instances, "separate_touching")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap: must be a non-negative int, got {gap!r}")
    if gap == 0 or a.size == 0:
        return a.copy()
    size = 2 * int(gap) + 1
    lab = _compact(a)
    top = np.int32(lab.max() + 1)
    # Largest and smallest foreground id in each window (the min sees background as `top`); a
    # pixel touches another instance iff either differs from its id. Small int32 ids because
    # SciPy's rank filters lose 64-bit ids (they pass through doubles); mode="nearest" is exact
    # here (an edge copy in a window is a pixel of that window).
    hi = ndimage.maximum_filter(lab, size=size, mode="nearest")
    lo = ndimage.minimum_filter(np.where(lab == 0, top, lab), size=size, mode="nearest")
    out = a.copy()
    out[(lab > 0) & ((hi != lab) | (lo != lab))] = 0
    return out


def weight_cutoff(w0: float, sigma: float, tol: float = 1e-6) -> float:
    """The distance beyond which an instance cannot change the border term by more than ``tol``.

    If instance ``i`` is farther than ``R`` from pixel x and is x's nearest or second-nearest
    instance, then ``d1 + d2 >= d2 > R`` and the term is below ``w0 exp(-R^2 / (2 sigma^2))``.
    Solving that for ``tol`` gives ``R = sigma sqrt(2 ln(w0 / tol))`` (28.4 px for w0 = 10,
    sigma = 5, tol = 1e-6), so each instance only needs its distances within R of its box.
    """
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def weight_map(
    instances: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Any = "balanced",
) -> np.ndarray:
    """U-Net's per-pixel loss weight: ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    instances: (H, W) integer instance ids, 0 = background, ids need not be consecutive. Use
    instance labels, not a labelled binary mask: labelling merges the touching cells this term
    exists for. ``d1``/``d2`` are the Euclidean distances (pixel centre to pixel centre) to the
    nearest and second-nearest instance. The exponential term is added on background pixels only,
    as the authors' own implementation does: it weights the thin background gaps between touching
    cells (carve them with :func:`separate_touching` first). ``w_c`` weights the classes:

    * ``"balanced"``: ``w_c = N / (2 n_c)`` for background and foreground (``n_c`` pixels of each
      among N), so both classes carry the same total weight; 1 everywhere if only one is present;
    * a per-class array ``[w_background, w_foreground]``;
    * ``None``: 1.

    Returns float32 (H, W). Memory is a few H x W arrays whatever the number of instances: the
    nearest and second-nearest distances are running minima, updated per instance from a distance
    transform of a crop around it (its box grown by :func:`weight_cutoff`, beyond which the term
    is below 1e-6), never an (H, W, N) stack. The 512 x 512 DSB2018 nuclei image (125 instances)
    takes about 40 ms on one core here.

        inst = separate_touching(instances)
        w = weight_map(inst)              # pass as cross_entropy(..., weight=w[None])
    """
    a = _instance_labels(instances, "weight_map")
    if not (isinstance(w0, (int, float, np.number)) and w0 >= 0):
        raise ValueError(f"w0: must be a non-negative number, got {w0!r}")
    if not (isinstance(sigma, (int, float, np.number)) and sigma > 0):
        raise ValueError(f"sigma: must be a positive number, got {sigma!r}")
    fg = a > 0
    wc = _class_weight_map(fg, class_weights)
    if w0 == 0 or not fg.any() or fg.all():
        return wc  # the term lives on background pixels near instances

    lab = _compact(a)
    H, W = a.shape
    r = int(math.ceil(weight_cutoff(float(w0), float(sigma))))
    d1 = np.full(a.shape, np.inf)  # nearest instance distance, running minimum
    d2 = np.full(a.shape, np.inf)  # second nearest
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        ys, xs = box
        sl = (slice(max(ys.start - r, 0), min(ys.stop + r, H)),
              slice(max(xs.start - r, 0), min(xs.stop + r, W)))
        # The crop holds all of instance k, so distances in it are the full-image distances.
        d = ndimage.distance_transform_edt(lab[sl] != k)
        c1, c2 = d1[sl], d2[sl]
        c2[...] = np.minimum(c2, np.maximum(c1, d))  # old c1 still in place: order matters
        np.minimum(c1, d, out=c1)

    s = d1 + d2
    s *= s
    s *= -1.0 / (2.0 * float(sigma) ** 2)
    np.exp(s, out=s)  # inf -> 0: pixels no crop reached
    s *= float(w0)
    s[fg] = 0.0
    return (wc + s).astype(np.float32)


def _class_weight_map(fg: np.ndarray, class_weights: Any) -> np.ndarray:
    if class_weights is None:
        return np.ones(fg.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights: must be 'balanced', None or [w_background, w_foreground], "
                f"got {class_weights!r}"
            )
        n, n_fg = fg.size, int(fg.sum())
        n_bg = n - n_fg
        if n_fg == 0 or n_bg == 0:
            return np.ones(fg.shape, np.float32)
        cw = np.array([n / (2.0 * n_bg), n / (2.0 * n_fg)])
    else:
        cw = np.asarray(class_weights, dtype=np.float64)
        if cw.shape != (2,) or not np.all(np.isfinite(cw)) or np.any(cw < 0):
            raise ValueError(
                f"class_weights: a per-class array must be [w_background, w_foreground], finite "
                f"and non-negative, got {class_weights!r} (shape {cw.shape})"
            )
    return cw[fg.astype(np.intp)].astype(np.float32)
