"""Batch normalisation with autograd, on the fused kernels of ``kernels/batch_norm.py``.

Two passes over the data forward (statistics, then output) and two backward (the fused
reductions sum(gy) and sum(gy*(x - mean)), then gx); everything per channel (C numbers) is
computed here in float64. The kernels' header has the formulas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, kernel, register
from ..kernels import batch_norm as _bn_kernels
from ..tensor import Function, Tensor, as_tensor

__all__ = ["batch_norm"]

register(_bn_kernels.IMPLS)


class BatchNormFunction(Function):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel (axis 1).

    Training (``batch_stats=True``): mean and biased variance over all axes but 1; with m values per
    channel and ``xhat`` the normalised input the gradient is
    ``dx = invstd/m * (m*g - sum(g) - xhat*sum(g*xhat))`` with ``g = dy * gamma``.
    Evaluation: the given running statistics are constants, so ``dx = dy * gamma * invstd``.
    Inputs: x, then gamma and beta when affine. Outputs y; the batch mean and biased variance
    (float64) are left on ``self.mean`` / ``self.var`` for the running-statistics update.
    ``relu=True``: the output is ``max(y, 0)`` (batch norm + ReLU in the same passes), and the
    backward masks the incoming gradient by ``output > 0`` inside the kernels.
    """

    def __init__(self, eps: float, batch_stats: bool, mean: Any = None, var: Any = None,
                 relu: bool = False) -> None:
        self.eps, self.batch_stats = eps, batch_stats
        self.mean, self.var = mean, var
        self.relu = relu

    def forward(self, x, *affine):
        xp = get_array_module(x)
        if self.batch_stats:
            self.mean, self.var = kernel("batch_norm_stats", x)(x)  # float64 (C,)
        mean = xp.asarray(self.mean, dtype=np.float64)
        self.invstd = 1.0 / xp.sqrt(xp.asarray(self.var, dtype=np.float64) + self.eps)  # (C,)
        scale, shift = self.invstd, xp.zeros_like(self.invstd)
        if affine:
            self.gamma = affine[0].astype(np.float64)
            scale, shift = self.invstd * self.gamma, affine[1]
        self.x, self.mean64 = x, mean
        y = kernel("batch_norm_apply", x)(x, mean, scale, shift, self.relu)
        self.y = y if self.relu else None  # the ReLU's mask source (the next layer keeps y too)
        return y

    def backward(self, gy):
        x, mean, invstd = self.x, self.mean64, self.invstd
        need = self.needs_input_grad
        affine = len(need) == 3
        xp = get_array_module(gy)
        a = invstd * self.gamma if affine else invstd  # (C,) float64
        sums = None
        if self.batch_stats or (affine and (need[1] or need[2])):
            sums = kernel("batch_norm_backward_reduce", gy)(gy, x, mean, self.y)  # S_g, S_gx
        gx = None
        if need[0]:
            b = k = xp.zeros_like(a)
            if self.batch_stats:
                m = gy.size // gy.shape[1]
                s_g, s_gx = sums
                b, k = -a * invstd * invstd * s_gx / m, -a * s_g / m
            gx = kernel("batch_norm_backward_apply", gy)(gy, x, mean, a, b, k, self.y)
        if not affine:
            return gx
        dt = gy.dtype
        ggamma = (invstd * sums[1]).astype(dt) if need[1] else None
        gbeta = sums[0].astype(dt) if need[2] else None
        return gx, ggamma, gbeta


def _check_activation(activation: Any) -> bool:
    """True for "relu", False for None; anything else is a ValueError."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation: None or 'relu', got {activation!r}")
    return activation == "relu"


def batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
               bias: Any = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5, activation: str | None = None) -> Tensor:
    """PyTorch's ``batch_norm``: normalise (N, C, ...) per channel (axis 1).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``. ``training=True`` uses the batch's mean
    and biased variance (over every axis but 1) and, when ``running_mean`` / ``running_var`` are
    given, updates them in place: ``running = (1 - momentum) * running + momentum * batch``, with
    the *unbiased* variance. ``training=False`` uses the running statistics. Shapes: input
    (N, C, ...), running_mean / running_var / weight / bias (C,) or None. Differentiable in input,
    weight and bias.

    ``activation="relu"`` (not in PyTorch) returns ``relu(batch_norm(...))`` from the same passes
    over the data, forward and backward: conv -> BN -> ReLU blocks spend no pass of their own on the
    ReLU (see ``kernels/batch_norm.py``).
    """
    relu = _check_activation(activation)
    x = as_tensor(input)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"input: batch_norm needs float32 or float64, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"input: batch_norm needs a non-empty (N, C, ...) input, got shape "
                         f"{x.shape}")
    C = x.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if v is not None and tuple(getattr(v, "shape", ())) != (C,):
            raise ValueError(f"{name}: must have shape ({C},) for input {x.shape}, got "
                             f"{tuple(getattr(v, 'shape', ()))}")
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias: give both or neither")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var: needed when training=False")
    m = x.size // C
    if training and m <= 1:
        raise ValueError(f"input: batch normalisation needs more than 1 value per channel in "
                         f"training, got input of shape {x.shape}")
    raw = [v.data if isinstance(v, Tensor) else v for v in (running_mean, running_var)]
    fn = (BatchNormFunction(eps, True, relu=relu) if training
          else BatchNormFunction(eps, False, raw[0], raw[1], relu=relu))
    y = fn(x, weight, bias) if weight is not None else fn(x)
    if training and raw[0] is not None and raw[1] is not None:
        rm, rv = raw
        rm *= 1.0 - momentum
        rm += (momentum * fn.mean).astype(rm.dtype, copy=False)
        rv *= 1.0 - momentum
        rv += (momentum * fn.var * (m / (m - 1))).astype(rv.dtype, copy=False)
    return y
