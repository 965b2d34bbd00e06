"""Losses: cross-entropy (class weights, per-pixel weight maps, ignore_index), NLL, BCE, soft Dice.

``cross_entropy`` and ``nll_loss`` are single Functions with analytic backward passes (one pass
over the logits forward, one backward), since they run on every pixel of every batch.
``binary_cross_entropy_with_logits`` is a Function too (stable softplus form); ``dice_loss`` is
composed from Tensor ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, is_cupy_array
from ..tensor import Function, Tensor, as_tensor
from .basic import sigmoid, softmax

__all__ = ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "dice_loss"]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# Validation shared by cross_entropy and nll_loss


def _raw(a: Any) -> Any:
    return a.data if isinstance(a, Tensor) else a


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: must be one of {_REDUCTIONS}, got {reduction!r}")


def _prepare_classification(
    name: str, input: Any, target: Any, weight: Any, ignore_index: int
) -> tuple[Tensor, Any, Any, Any]:
    """Validate and return (input tensor, clipped target, per-element weight, valid mask).

    ``input`` (N, K, *spatial), ``target`` (N, *spatial) integer. The returned weight has the
    target's shape and the input's dtype: the class weight of each label, or the per-pixel map,
    with 0 at ignored elements.
    """
    x = as_tensor(input)
    if x.dtype.kind != "f":
        raise TypeError(f"input: {name} needs floating-point logits, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"input: {name} needs (N, K) or (N, K, H, W) input, got shape {x.shape}")
    t = _raw(target)
    xp = get_array_module(x.data)
    if not (isinstance(t, np.ndarray) or is_cupy_array(t)):
        t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target: {name} needs integer class labels, got dtype {t.dtype}")
    n, k = x.shape[0], x.shape[1]
    expected = (n,) + x.shape[2:]
    if tuple(t.shape) != expected:
        raise ValueError(
            f"target: shape {tuple(t.shape)} does not match input of shape {x.shape}; "
            f"expected {expected} (the input without its class dimension)"
        )
    t = xp.asarray(t)
    valid = t != ignore_index
    if t.size:
        bad = valid & ((t < 0) | (t >= k))
        if bool(bad.any()):
            vals = np.unique(
                np.asarray(t.get() if is_cupy_array(t) else t)[
                    np.asarray(bad.get() if is_cupy_array(bad) else bad)
                ]
            )
            raise ValueError(
                f"target: labels must be in [0, {k}) for input with {k} classes (or equal "
                f"ignore_index={ignore_index}); found {vals[:10].tolist()}"
            )
    tc = xp.where(valid, t, 0).astype(np.int64)  # ignored elements read class 0, weighted 0
    if weight is None:
        w = valid.astype(x.dtype)
    else:
        wa = xp.asarray(_raw(weight))
        if wa.dtype.kind not in "biuf":
            raise TypeError(f"weight: must be a numeric array, got dtype {wa.dtype}")
        wa = wa.astype(x.dtype, copy=False)
        if tuple(wa.shape) == (k,):
            w = wa[tc] * valid  # class weights looked up per element
        elif tuple(wa.shape) == expected:
            w = wa * valid  # per-pixel weight map (U-Net's border weighting)
        else:
            raise ValueError(
                f"weight: shape {tuple(wa.shape)} is neither per class ({k},) nor a per-element "
                f"map {expected} for input of shape {x.shape}"
            )
    return x, tc, w, valid


def _reduce(loss: Any, w: Any, reduction: str) -> tuple[Any, Any]:
    """Reduce the per-element loss; return (value, the per-element scale of the upstream grad)."""
    if reduction == "none":
        return loss, None
    total = loss.sum()
    if reduction == "sum":
        return total, None
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = w.sum()
        return total / denom, denom  # 0/0 = NaN when every element is ignored, like PyTorch


class CrossEntropy(Function):
    """``loss_i = -w_i * log_softmax(x)[i, t_i]`` over the class axis 1, then reduced.

    Backward: ``dx[i, :] = g_i * w_i * (softmax(x)[i, :] - onehot(t_i))`` where ``g_i`` is the
    upstream gradient (divided by ``sum w`` for the mean).
    """

    def __init__(self, target: Any, w: Any, reduction: str) -> None:
        self.t, self.w, self.reduction = target, w, reduction

    def forward(self, x):
        xp = get_array_module(x)
        z = x - x.max(axis=1, keepdims=True)  # (N, K, ...) shifted: exp cannot overflow
        zt = xp.take_along_axis(z, self.t[:, None], axis=1)  # (N, 1, ...), a copy
        e = xp.exp(z, out=z)  # (N, K, ...) in place: z is needed only at the targets (zt)
        s = e.sum(axis=1, keepdims=True)  # (N, 1, ...), >= 1 thanks to the shift
        loss = (xp.log(s) - zt)[:, 0] * self.w  # (N, ...)
        # keep exp(z) and its sum: softmax = e / s costs one multiply in backward, no exp
        self.e, self.s = e, s
        out, self.denom = _reduce(loss, self.w, self.reduction)
        return out

    def backward(self, gy):
        xp = get_array_module(gy)
        g = self.w * gy  # (N, ...): gy is a scalar unless reduction is "none"
        if self.reduction == "mean":
            g = g / self.denom
        gi = g[:, None]  # (N, 1, ...)
        gx = self.e * (gi / self.s)  # g_i * softmax, (N, K, ...)
        # subtract g_i at the target class: put_along_axis assigns, so read-modify-write
        cur = xp.take_along_axis(gx, self.t[:, None], axis=1)
        xp.put_along_axis(gx, self.t[:, None], cur - gi, axis=1)
        return gx


class NLLLoss(Function):
    """``loss_i = -w_i * input[i, t_i]``; backward scatters ``-g_i * w_i`` to the target class."""

    def __init__(self, target: Any, w: Any, reduction: str) -> None:
        self.t, self.w, self.reduction = target, w, reduction

    def forward(self, x):
        xp = get_array_module(x)
        self.shape, self.dtype = x.shape, x.dtype
        loss = -xp.take_along_axis(x, self.t[:, None], axis=1)[:, 0] * self.w  # (N, ...)
        out, self.denom = _reduce(loss, self.w, self.reduction)
        return out

    def backward(self, gy):
        xp = get_array_module(gy)
        g = self.w * gy
        if self.reduction == "mean":
            g = g / self.denom
        gx = xp.zeros(self.shape, dtype=self.dtype)
        xp.put_along_axis(gx, self.t[:, None], -g[:, None], axis=1)
        return gx


def cross_entropy(
    input: Tensor,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy of logits ``input`` (N, K) or (N, K, H, W) against labels ``target``.

    ``target`` (N,) or (N, H, W) holds integers in ``[0, K)`` or ``ignore_index`` (such elements
    contribute nothing and are not counted). ``weight`` is either per class, shape (K,), or a
    per-element map with the target's shape (U-Net's border weighting); it is a constant (no
    gradient). With ``w_i`` that weight at element i (0 where ignored)::

        loss_i = -w_i * log(softmax(input)[i, target_i])
        mean = sum_i loss_i / sum_i w_i,  sum = sum_i loss_i,  none = loss_i (target's shape)

    (With (N, K) input and N == K a (K,) weight is read as per class, as in PyTorch.) A mean over
    no counted element is NaN, as in PyTorch. Labels outside ``[0, K)`` other than
    ``ignore_index`` raise ``ValueError``.
    """
    _check_reduction(reduction)
    x, t, w, _ = _prepare_classification("cross_entropy", input, target, weight, ignore_index)
    return CrossEntropy(t, w, reduction)(x)


def nll_loss(
    input: Tensor,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` (N, K, ...) at ``target`` (N, ...).

    ``loss_i = -w_i * input[i, target_i]``; weights, ``ignore_index`` and reductions exactly as in
    :func:`cross_entropy` (``cross_entropy(x, t) == nll_loss(log_softmax(x, 1), t)``).
    """
    _check_reduction(reduction)
    x, t, w, _ = _prepare_classification("nll_loss", input, target, weight, ignore_index)
    return NLLLoss(t, w, reduction)(x)


# --------------------------------------------------------------------------------------------
# Binary cross-entropy on logits


class BCEWithLogits(Function):
    """``loss = w * ((1 - t) x + (1 + (pw - 1) t) softplus(-x))``, PyTorch's stable form.

    ``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))`` never overflows. Gradients (times w and the
    upstream gradient): ``d/dx = (1 - t) - (1 + (pw - 1) t) sigmoid(-x)``,
    ``d/dt = -x + (pw - 1) softplus(-x)``.
    """

    def __init__(self, weight: Any, pos_weight: Any, reduction: str) -> None:
        self.weight, self.pos_weight, self.reduction = weight, pos_weight, reduction

    def forward(self, x, t):
        xp = get_array_module(x)
        self.x, self.t = x, t
        self.sp = xp.maximum(-x, 0) + xp.log1p(xp.exp(-abs(x)))  # softplus(-x)
        self.lw = 1 if self.pos_weight is None else 1 + (self.pos_weight - 1) * t
        loss = (1 - t) * x + self.lw * self.sp
        if self.weight is not None:
            loss = loss * self.weight
        self.n = loss.size  # weights broadcast *to* x (checked), so loss has x's shape
        if self.reduction == "none":
            return loss.astype(x.dtype, copy=False)
        total = loss.sum().astype(x.dtype)
        return total / x.dtype.type(self.n) if self.reduction == "mean" else total

    def backward(self, gy):
        xp = get_array_module(gy)
        g = gy / self.n if self.reduction == "mean" else gy  # a scalar unless reduction="none"
        if self.weight is not None:
            g = g * self.weight
        gx = gt = None
        if self.needs_input_grad[0]:
            sig_neg = xp.exp(-self.x - self.sp)  # sigmoid(-x) = exp(-softplus(x)) = exp(-x - sp)
            gx = g * ((1 - self.t) - self.lw * sig_neg)
        if self.needs_input_grad[1]:
            dt = -self.x if self.pos_weight is None else -self.x + (self.pos_weight - 1) * self.sp
            gt = g * dt
        return gx, gt


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Any,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable step (PyTorch's ``BCEWithLogitsLoss``).

    ``loss = -weight * (pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))``,
    elementwise; ``target`` has the input's shape (probabilities in [0, 1], differentiable when a
    Tensor requiring grad), ``weight`` broadcasts to it, ``pos_weight`` broadcasts along the last
    dimension (per class). Both are constants. Mean = the average over all elements.
    """
    _check_reduction(reduction)
    x = as_tensor(input)
    if x.dtype.kind != "f":
        raise TypeError(f"input: needs floating-point logits, got dtype {x.dtype}")
    t = target if isinstance(target, Tensor) else Tensor(get_array_module(x.data).asarray(target))
    if t.shape != x.shape:
        raise ValueError(f"target: shape {t.shape} must equal the input's shape {x.shape}")
    if t.dtype != x.dtype:
        t = t.astype(x.dtype) if t.dtype.kind == "f" else Tensor(t.data.astype(x.dtype))
    xp = get_array_module(x.data)
    consts = []
    for name, c in (("weight", weight), ("pos_weight", pos_weight)):
        if c is not None:
            c = xp.asarray(_raw(c)).astype(x.dtype, copy=False)
            try:
                ok = np.broadcast_shapes(c.shape, x.shape) == x.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{name}: shape {tuple(c.shape)} does not broadcast to the input's "
                    f"shape {x.shape}"
                )
        consts.append(c)
    return BCEWithLogits(consts[0], consts[1], reduction)(x, t)


# --------------------------------------------------------------------------------------------
# Soft Dice


def dice_loss(
    probs: Tensor,
    target: Any,
    eps: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Soft Dice loss of class probabilities ``probs`` (N, K, H, W) against ``target``.

    ``target`` is either integer labels (N, H, W) (one-hot encoded here; elements equal to
    ``ignore_index`` are left out of both sums) or a float map (N, K, H, W) such as a one-hot or
    soft target. Per sample n and class k, summing over the pixels::

        dice[n, k] = (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps),   loss = 1 - dice

    reduced by ``"mean"`` (over N and K), ``"sum"`` or ``"none"`` (an (N, K) tensor). ``eps``
    smooths empty classes (a class absent from both gives loss 0). Pass probabilities: apply
    ``softmax(logits, dim=1)`` first (``nn.DiceLoss`` does this for you).
    """
    _check_reduction(reduction)
    p = as_tensor(probs)
    if p.ndim < 2 or p.dtype.kind != "f":
        raise ValueError(
            f"probs: needs float (N, K, ...) probabilities, got shape {p.shape}, dtype {p.dtype}"
        )
    xp = get_array_module(p.data)
    n, k = p.shape[0], p.shape[1]
    t = target if isinstance(target, Tensor) else Tensor(xp.asarray(target))
    axes = tuple(range(2, p.ndim))
    if t.dtype.kind in "iu":
        # One channel (sigmoid output): labels 0/1 are background/foreground of that channel.
        classes = max(k, 2)
        probe = Tensor(xp.zeros((n, classes) + p.shape[2:], dtype=p.dtype)) if k == 1 else p
        _, tc, _, valid = _prepare_classification("dice_loss", probe, t, None, ignore_index)
        cls = xp.arange(k).reshape((1, k) + (1,) * (p.ndim - 2)) + (1 if k == 1 else 0)
        onehot = (tc[:, None] == cls) & valid[:, None]  # (N, K, ...)
        mask = Tensor(xp.broadcast_to(valid[:, None], p.shape).astype(p.dtype))
        t = Tensor(onehot.astype(p.dtype))  # (N, K, ...)
        p = p * mask
    elif t.shape != p.shape:
        raise ValueError(
            f"target: a float target must have the probabilities' shape {p.shape}, got {t.shape}; "
            f"or pass integer labels of shape {(n,) + p.shape[2:]}"
        )
    inter = (p * t).sum(axes)  # (N, K)
    denom = p.sum(axes) + t.sum(axes)  # (N, K)
    loss = 1.0 - (2.0 * inter + eps) / (denom + eps)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _softmax_or_sigmoid(x: Tensor) -> Tensor:
    """Probabilities from logits: softmax over the class axis, sigmoid for a single channel."""
    x = as_tensor(x)
    return sigmoid(x) if x.shape[1] == 1 else softmax(x, dim=1)
