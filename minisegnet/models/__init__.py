"""minisegnet.models: the segmentation networks the field teaches, from ``nn`` / ``functional``.

One file per family, blocks named as the papers name them:

* ``fcn``            FCN-32s / 16s / 8s (Long, Shelhamer and Darrell 2015) and ``convolutionalize``
* ``unet``           U-Net (Ronneberger, Fischer and Brox 2015), overlap-tile ``predict_tiled``,
                     the border ``weight_map`` and ``separate_touching``
* ``deeplabv3plus``  DeepLabV3+ (Chen et al. 2018): atrous backbone, ASPP, decoder
* ``pspnet``         PSPNet (Zhao et al. 2017): dilated backbone, pyramid pooling module
* ``segnet``         SegNet (Badrinarayanan et al. 2017): decoder upsampled with pooling indices
* ``mask_head``      Mask R-CNN's mask branch (He et al. 2017) on RoIAlign, and ``paste_masks``

``models.create(name, num_classes, in_channels=3, **kwargs)`` builds any of them by name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["create", "list_models"]

# name -> (module, class, fixed keyword arguments). Modules load on first use.
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "fcn32s": ("fcn", "FCN", {"variant": "32s"}),
    "fcn16s": ("fcn", "FCN", {"variant": "16s"}),
    "fcn8s": ("fcn", "FCN", {"variant": "8s"}),
    "unet": ("unet", "UNet", {"padding": "same"}),
    "unet-valid": ("unet", "UNet", {"padding": "valid", "batch_norm": False}),
    "deeplabv3plus": ("deeplabv3plus", "DeepLabV3Plus", {}),
    "pspnet": ("pspnet", "PSPNet", {}),
    "segnet": ("segnet", "SegNet", {}),
}


def list_models() -> list[str]:
    """The names ``create`` accepts, in the order the course meets them."""
    return list(_REGISTRY)


def create(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> Any:
    """Build the model called ``name`` mapping (N, in_channels, H, W) to (N, num_classes, H', W').

    ``kwargs`` go to the model's constructor (width arguments such as ``base_channels`` or
    ``width`` scale it down); they override the name's fixed settings ("unet-valid" is
    ``UNet(padding="valid", batch_norm=False)``, which ``batch_norm=True`` overrides).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; valid names are {', '.join(_REGISTRY)}")
    module, cls, fixed = _REGISTRY[name]
    model_cls = getattr(importlib.import_module(f".{module}", __name__), cls)
    return model_cls(num_classes=num_classes, in_channels=in_channels, **{**fixed, **kwargs})


def __getattr__(name: str) -> Any:
    # `models.unet`, `models.UNet`, ... load their family's file on first use.
    families = {"fcn", "unet", "deeplabv3plus", "pspnet", "segnet", "mask_head"}
    classes = {"FCN": "fcn", "UNet": "unet", "DeepLabV3Plus": "deeplabv3plus", "PSPNet": "pspnet",
               "SegNet": "segnet", "MaskHead": "mask_head"}
    if name in families:
        return importlib.import_module(f".{name}", __name__)
    if name in classes:
        return getattr(importlib.import_module(f".{classes[name]}", __name__), name)
    raise AttributeError(f"module 'minisegnet.models' has no attribute {name!r}")
