"""nuclei: the DSB2018 fluorescence image that ships inside the ``stardist`` wheel, 125 nuclei.

One 512 x 512 uint16 image (Caicedo et al., "Nucleus segmentation across imaging experiments: the
2018 Data Science Bowl", Nature Methods 2019) with hand-drawn instance labels whose ids are not
consecutive (125 nuclei, ids up to 183). Split by rows: train = rows 0-255 (64 nuclei),
test = rows 256-511 (67 nuclei; the bottom half holds many touching nuclei). A nucleus cut by the
boundary is kept in both halves, each half relabelled 1..n on its own (so 131 instances in all).

Each half is normalised on its own, percentiles (1, 99.8) to [0, 1] and clipped, exactly what
``minisegnet predict`` does to a raw image (``normalization`` records it).

Training targets (U-Net, Ronneberger et al. 2015): with ``weights=True`` (the default) the set
carries the per-pixel weight map ``w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``
(:func:`minisegnet.models.unet.weight_map`). With ``separate=True`` (default: on for the train
split when ``weights`` is on, off for the test split) touching nuclei are first pulled apart by
:func:`~minisegnet.models.unet.separate_touching`: the carved pixels are background in ``labels``
(and the weight map, computed from the carved instances, weights them heavily), so the network
learns to leave a gap that connected components can split. ``instances`` are always the original
annotation: evaluation scores against what the annotator drew.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .dataset import Dataset, normalize, require

CLASS_NAMES = ("background", "nucleus")
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": True}
ROWS = {"train": slice(0, 256), "test": slice(256, 512)}


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from stardist.data import test_image_nuclei_2d

    image, mask = test_image_nuclei_2d(return_mask=True)  # (512, 512) uint16 each
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def relabel(instances: np.ndarray) -> np.ndarray:
    """Instance ids renumbered 1..n in increasing order of the old ids (0 stays background)."""
    ids, inverse = np.unique(instances, return_inverse=True)
    out = inverse.reshape(instances.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1


def load(split: str = "train", weights: bool = True, separate: bool | None = None,
         w0: float = 10.0, sigma: float = 5.0, gap: int = 1) -> Dataset:
    """The train (rows 0-255) or test (rows 256-511) half; see the module docstring.

    weights: attach U-Net's weight map (``w0``, ``sigma``). separate: carve ``gap``-pixel
    background between touching nuclei in ``labels`` (default: ``weights and split == "train"``).
    """
    require("stardist.data", "nuclei")
    require("tifffile", "nuclei")
    raw, mask = _raw()
    raw, mask = raw[ROWS[split]], mask[ROWS[split]]
    instances = relabel(mask)  # (256, 512) int32, 1..n
    images = normalize(raw, NORMALIZATION)[None, None]  # (1, 1, 256, 512)
    if separate is None:
        separate = bool(weights) and split == "train"
    target = instances
    w = None
    if separate or weights:
        from ..models.unet import separate_touching, weight_map

        if separate:
            target = separate_touching(instances, gap=gap)
        if weights:
            w = weight_map(target, w0=w0, sigma=sigma)[None]  # (1, 256, 512)
    labels = (target > 0).astype(np.int64)[None]  # (1, 256, 512)
    info: dict[str, Any] = {
        "source": "stardist.data.test_image_nuclei_2d (DSB2018)",
        "rows": [ROWS[split].start, ROWS[split].stop],
        "separate": bool(separate), "gap": gap, "w0": w0, "sigma": sigma,
        "raw_percentiles": [float(v) for v in np.percentile(raw, [1.0, 99.8])],
    }
    return Dataset("nuclei", split, images, labels, instances[None], CLASS_NAMES,
                   dict(NORMALIZATION), weights=w, info=info)
