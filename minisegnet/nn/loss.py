"""Loss modules over :mod:`minisegnet.functional.loss`: ``criterion(logits, target)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from ..functional import loss as FL
from ..tensor import Tensor, as_tensor
from .module import Module

__all__ = ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "DiceLoss"]


def _array(a: Any) -> Any:
    return None if a is None else (a.data if isinstance(a, Tensor) else np.asarray(a))


class CrossEntropyLoss(Module):
    """:func:`~minisegnet.functional.cross_entropy` with fixed class weights (K,).

    ``criterion(logits, target, weight=None)``: the optional call-time ``weight`` is a per-pixel
    map with the target's shape (U-Net's border weighting, which changes every batch); when the
    module also has class weights the two multiply.
    """

    def __init__(
        self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        FL._check_reduction(reduction)
        self.class_weight = _array(weight)
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, input: Tensor, target: Any, weight: Any = None) -> Tensor:
        w = self.class_weight
        if weight is not None:
            pixel = weight.data if isinstance(weight, Tensor) else weight
            if w is not None:
                xp = get_array_module(as_tensor(input).data)
                t = xp.asarray(target.data if isinstance(target, Tensor) else target)
                k = w.shape[0]
                # class weight of each pixel's label (ignored/out-of-range labels are validated
                # and zeroed by cross_entropy itself; clip only to look them up safely)
                pixel = xp.asarray(pixel) * xp.asarray(w)[xp.clip(t, 0, k - 1)]
            w = pixel
        return FL.cross_entropy(input, target, w, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class NLLLoss(Module):
    """:func:`~minisegnet.functional.nll_loss` on log-probabilities."""

    def __init__(
        self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        FL._check_reduction(reduction)
        self.class_weight = _array(weight)
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return FL.nll_loss(input, target, self.class_weight, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class BCEWithLogitsLoss(Module):
    """:func:`~minisegnet.functional.binary_cross_entropy_with_logits` with fixed weights."""

    def __init__(self, weight: Any = None, pos_weight: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        FL._check_reduction(reduction)
        self.weight_array, self.pos_weight = _array(weight), _array(pos_weight)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return FL.binary_cross_entropy_with_logits(
            input, target, self.weight_array, self.pos_weight, self.reduction
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class DiceLoss(Module):
    """Soft Dice loss (:func:`~minisegnet.functional.dice_loss`) on *logits* by default.

    With ``from_logits=True`` the input is turned into probabilities first: softmax over the class
    axis, or sigmoid when there is a single channel (binary segmentation, labels 0/1). Pass
    ``from_logits=False`` to give probabilities directly.
    """

    def __init__(
        self,
        eps: float = 1.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        FL._check_reduction(reduction)
        self.eps, self.reduction, self.ignore_index = eps, reduction, ignore_index
        self.from_logits = from_logits

    def forward(self, input: Tensor, target: Any) -> Tensor:
        probs = FL._softmax_or_sigmoid(input) if self.from_logits else input
        return FL.dice_loss(probs, target, self.eps, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, from_logits={self.from_logits}"
