"""The in-memory dataset every loader returns, and the intensity normalisation it records."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Dataset", "normalize", "require"]


@dataclass(repr=False)
class Dataset:
    """One split of a dataset, all in memory.

    images:     (N, C, H, W) float32 in [0, 1]
    labels:     (N, H, W) int64 class ids, -1 = ignore
    instances:  (N, H, W) int32 instance ids, 0 = background, 1..n per image; or None
    weights:    (N, H, W) float32 per-pixel loss weights (U-Net's weight map); or None
    class_names: one name per class id
    normalization: how raw images became ``images`` (see :func:`normalize`), so new raw images
        (``minisegnet predict``) are normalised the same way
    info: free-form description (source, the loader's arguments)
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None
    class_names: tuple[str, ...]
    normalization: dict[str, Any]
    weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        def shape(a: np.ndarray | None) -> str:
            return "None" if a is None else f"{a.dtype}{list(a.shape)}"

        return (f"Dataset({self.name!r}, split={self.split!r}, images={shape(self.images)}, "
                f"labels={shape(self.labels)}, instances={shape(self.instances)}, "
                f"weights={shape(self.weights)}, classes={list(self.class_names)})")


def require(module: str, dataset: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0].replace("sklearn", "scikit-learn")
        raise ImportError(
            f"dataset {dataset!r} needs the optional package {package!r}: "
            f"pip install 'minisegnet[data]'"
        ) from e


def normalize(raw: Any, normalization: dict[str, Any]) -> np.ndarray:
    """Map one raw image to float32 in [0, 1] the way a dataset's images were made.

    ``raw``: one image, (H, W) or (C, H, W), any numeric dtype (as read from a file). Statistics
    are taken over the whole array, so pass one image at a time. Methods:

    * ``{"method": "percentile", "low": 1.0, "high": 99.8, "clip": True}``: the image's own
      ``low`` and ``high`` percentiles go to 0 and 1 (fluorescence microscopy's usual
      normalisation, as in CSBDeep/StarDist: robust to the instrument's gain and offset);
    * ``{"method": "range", "low": 0.0, "high": 1.0, "clip": True}``: fixed bounds on the
      intensity scale where integer images are first divided by their dtype's maximum (uint8 by
      255, uint16 by 65535, as ``skimage.img_as_float``) and floats are taken as they are.

    Returns float32 of ``raw``'s shape.
    """
    if not isinstance(normalization, dict) or "method" not in normalization:
        raise TypeError(f"normalization: expected a dict with a 'method', got {normalization!r}")
    a = np.asarray(getattr(raw, "data", raw))
    if a.dtype == bool:
        a = a.astype(np.float64)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"raw: expected a numeric image, got dtype {a.dtype}")
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"raw: expected one image (H, W) or (C, H, W), got shape {a.shape}")
    method = normalization["method"]
    clip = normalization.get("clip", True)
    if method == "percentile":
        x = a.astype(np.float64)
        lo, hi = np.percentile(x, [normalization["low"], normalization["high"]])
    elif method == "range":
        x = a.astype(np.float64)
        if a.dtype.kind in "iu":
            x /= np.iinfo(a.dtype).max
        lo, hi = normalization["low"], normalization["high"]
    else:
        raise ValueError(f"normalization: unknown method {method!r} (expected 'percentile' or "
                         f"'range')")
    x = (x - lo) / max(hi - lo, 1e-12)  # a constant image maps to 0, not NaN
    if clip:
        np.clip(x, 0.0, 1.0, out=x)
    return x.astype(np.float32)
