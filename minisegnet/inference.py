"""Inference: a model's probabilities for whole images, and instance labels from a semantic map.

``predict_image`` runs one (C, H, W) image through a model: whole, or with U-Net's overlap-tile
scheme (:func:`minisegnet.models.unet.predict_tiled`) where the network needs it (a valid-padded
U-Net always; a same-padded one past ``max_pixels``). ``instances_from_semantic`` turns a class
map into instance labels the way a model trained on U-Net's carved gaps needs: connected
components of each class (4-connected, so a one-pixel diagonal gap separates), tiny specks
dropped, then the gaps between instances filled back from the nearest instance (the pixels
``separate_touching`` removed from the truth were the touching instances' own).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["predict_image", "instances_from_semantic"]


def predict_image(model: Any, image: Any, device: str = "cpu", tile: Any = None,
                  max_pixels: int = 1024 * 1024) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of one image (C, H, W), under ``no_grad`` in eval mode."""
    import minisegnet as msn
    import minisegnet.functional as F
    from minisegnet.models.unet import UNet, predict_tiled

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected (C, H, W), got shape {image.shape}")
    H, W = image.shape[1:]
    if isinstance(model, UNet) and (model.padding == "valid" or H * W > max_pixels or tile is not None):
        logits = msn.Tensor(predict_tiled(model, image, tile=tile))
        return F.softmax(logits, dim=0).numpy().astype(np.float32)
    was_training = model.training
    model.eval()
    try:
        with msn.no_grad():
            logits = model(msn.Tensor(image[None]).to(device))
            return F.softmax(logits, dim=1).numpy()[0].astype(np.float32)
    finally:
        model.train(was_training)


def instances_from_semantic(labels: Any, min_size: int = 8, grow: int = 1) -> np.ndarray:
    """Instance labels (H, W) int32, 0 = background, from a class map (H, W) (0 = background).

    Connected components (4-connectivity) of each foreground class; components under
    ``min_size`` pixels are dropped; then each background pixel that has two different
    instances within ``grow`` pixels (a carved gap) joins the nearest instance.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: expected a 2-D class map, got shape {labels.shape}")
    out = np.zeros(labels.shape, np.int32)
    n = 0
    for c in np.unique(labels[labels > 0]):
        comp, k = ndimage.label(labels == c)
        if k == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=k + 1)
        keep = sizes >= min_size
        keep[0] = False
        ids = np.zeros(k + 1, np.int32)
        ids[keep] = np.arange(n + 1, n + 1 + keep.sum(), dtype=np.int32)
        n += int(keep.sum())
        out = np.where(ids[comp] > 0, ids[comp], out)
    if grow > 0 and n > 0:
        # Gap pixels: background with two different instances within `grow`. Only those were
        # carved from the truth; an instance's outer border was not, so it does not grow there.
        size = 2 * grow + 1
        hi = ndimage.maximum_filter(out, size=size)
        lo = ndimage.minimum_filter(np.where(out > 0, out, np.iinfo(np.int32).max), size=size)
        gap = (out == 0) & (hi > 0) & (lo < hi)
        _, (iy, ix) = ndimage.distance_transform_edt(out == 0, return_indices=True)
        out = np.where(gap, out[iy, ix], out).astype(np.int32)
    return out
