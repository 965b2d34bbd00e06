"""minisegnet.data: real and synthetic segmentation datasets, nothing downloaded at run time.

    from minisegnet import data
    train = data.load("nuclei")                     # the default: 256 x 512 train half
    train.images, train.labels, train.instances, train.weights, train.class_names
    for images, labels, weights in data.patches(train, 128, 8, elastic=True, seed=0): ...

Datasets (:func:`list_datasets`), each a module with the details in its docstring:

* ``"nuclei"``: the DSB2018 fluorescence image in the ``stardist`` wheel, 125 hand-drawn nuclei;
  train = rows 0-255, test = rows 256-511; U-Net weight maps and (train) carved gaps between
  touching nuclei. Needs ``pip install 'minisegnet[data]'``.
* ``"shapes"``: seeded circles / rectangles / triangles on noisy backgrounds, with instances;
  NumPy only, always available. kwargs ``n``, ``size``, ``seed``, ...
* ``"digits"``: scikit-learn's handwritten digits on canvases, 11 classes (background + 0-9).
  Needs ``pip install 'minisegnet[data]'``.

:func:`load` returns a :class:`Dataset`; :func:`normalize` maps a raw image the way a dataset's
images were made (its ``normalization`` record); :func:`patches` samples augmented training
batches.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .dataset import Dataset, normalize
from .patches import elastic_displacement, patches

__all__ = ["Dataset", "load", "list_datasets", "normalize", "patches", "elastic_displacement"]

_LOADERS = {"nuclei": "nuclei", "shapes": "shapes", "digits": "digits"}
SPLITS = ("train", "test")


def list_datasets() -> list[str]:
    """The dataset names :func:`load` accepts (the first is the default)."""
    return list(_LOADERS)


def load(name: str = "nuclei", split: str = "train", **kwargs: Any) -> Dataset:
    """Load one split of a dataset by name: ``images`` (N, C, H, W) float32 in [0, 1], ``labels``
    (N, H, W) int64 (-1 = ignore), ``instances`` (N, H, W) int32 (0 = background) or None,
    ``weights`` (N, H, W) float32 or None, ``class_names``, ``normalization``.

    kwargs go to the dataset's loader (``minisegnet.data.<name>.load``); every loader accepts
    ``weights`` (U-Net weight maps where the set has instances).
    """
    if name not in _LOADERS:
        raise ValueError(f"name: unknown dataset {name!r}; valid names: {', '.join(_LOADERS)}")
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    loader = importlib.import_module(f".{_LOADERS[name]}", __name__).load
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = [p for p in params if p != "split"]
        raise TypeError(f"load({name!r}): unknown keyword argument(s) {unknown}; "
                        f"valid: {valid}")
    return loader(split=split, **kwargs)
