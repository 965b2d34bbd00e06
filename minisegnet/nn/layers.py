"""Basic layers: Linear, activations, Dropout, Identity, Flatten and batch normalisation.

Initialisation follows PyTorch's defaults and draws from ``minisegnet.random.default_rng()``
(seed it with ``msn.manual_seed``): ``Linear`` uses kaiming-uniform with ``a = sqrt(5)``, which
reduces to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the weight, and the same bound for the bias.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import get_array_module
from ..functional.batch_norm import BatchNormFunction, _check_activation
from ..random import default_rng, rng_for
from ..tensor import Tensor, as_tensor
from .module import Module, Parameter

__all__ = [
    "Linear",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "Dropout",
    "Dropout2d",
    "Identity",
    "Flatten",
    "BatchNorm1d",
    "BatchNorm2d",
    "kaiming_uniform",
]


def kaiming_uniform(
    shape: tuple[int, ...], fan_in: int, a: float = math.sqrt(5), dtype: Any = np.float32
) -> np.ndarray:
    """PyTorch's ``kaiming_uniform_``: ``U(-b, b)`` with ``b = sqrt(6 / ((1 + a^2) fan_in))``.

    With the default ``a = sqrt(5)`` (PyTorch's Linear and Conv2d weights) ``b = 1/sqrt(fan_in)``.
    """
    bound = math.sqrt(6.0 / ((1.0 + a * a) * max(fan_in, 1)))
    return default_rng().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """``y = x @ W.T + b`` over the last dimension.

    W: (out_features, in_features), b: (out_features,). Input (..., in_features).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"in_features/out_features: must be positive, got {in_features} and {out_features}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(
            kaiming_uniform((out_features, in_features), in_features, dtype=dtype)
        )
        if bias:
            bound = 1.0 / math.sqrt(in_features)
            self.bias = Parameter(default_rng().uniform(-bound, bound, out_features).astype(dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        x = as_tensor(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: Linear expects the last dimension to be in_features={self.in_features}, "
                f"got input of shape {x.shape}"
            )
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Softmax(Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Dropout(Module):
    """Inverted dropout when training: zero with probability p, scale the rest by 1/(1-p).

    Identity in evaluation mode.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout2d(Module):
    """Channel dropout: zero whole (n, c) planes of (N, C, H, W) with probability p.

    The kept planes are scaled by 1/(1-p); identity in evaluation mode.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        x = as_tensor(x)
        if not self.training or self.p == 0.0:
            return x
        if x.ndim < 2:
            raise ValueError(f"x: Dropout2d needs (N, C, ...) input, got shape {x.shape}")
        xp = get_array_module(x.data)
        shape = x.shape[:2] + (1,) * (x.ndim - 2)  # (N, C, 1, 1): one draw per plane
        keep = rng_for(xp).random(shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        return x * Tensor(keep.astype(x.dtype) * x.dtype.type(scale))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Identity(Module):
    def forward(self, x: Any) -> Any:
        return x


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return as_tensor(x).flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# --------------------------------------------------------------------------------------------
# Batch normalisation: the fused kernels of kernels/batch_norm.py via functional/batch_norm.py


class _BatchNorm(Module):
    _ndims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = np.float32,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features: must be positive, got {num_features}")
        self._relu = _check_activation(activation)  # fused ReLU (functional.batch_norm's docs)
        self.activation = activation
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, x: Tensor) -> Tensor:
        x = as_tensor(x)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(
                f"x: {type(self).__name__}({self.num_features}) expects a {self._ndims}-D input "
                f"with {self.num_features} channels in dim 1, got shape {x.shape}"
            )
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            m = x.size // x.shape[1]
            if m <= 1:
                raise ValueError(
                    f"x: batch normalisation needs more than 1 value per channel in training, "
                    f"got input of shape {x.shape}"
                )
            fn = BatchNormFunction(self.eps, True, relu=self._relu)
        else:
            fn = BatchNormFunction(self.eps, False, self.running_mean, self.running_var,
                                   relu=self._relu)
        inputs = (x, self.weight, self.bias) if self.affine else (x,)
        y = fn(*inputs)
        if self.training and self.track_running_stats:
            self._update_running_stats(fn.mean, fn.var, m)
        return y

    def _update_running_stats(self, mean: Any, var: Any, m: int) -> None:
        # In place, so the buffers stay the arrays registered (and on their device).
        self.num_batches_tracked += 1
        mom = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (m / (m - 1))  # PyTorch tracks the unbiased variance
        rm, rv = self.running_mean, self.running_var
        rm *= 1.0 - mom
        rm += (mom * mean).astype(rm.dtype, copy=False)
        rv *= 1.0 - mom
        rv += (mom * unbiased).astype(rv.dtype, copy=False)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
            + (f", activation={self.activation!r}" if self.activation else "")
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W): statistics per channel over N, H and W.

    Training: normalise with the batch mean and *biased* variance, and update
    ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* variance
    (``momentum=None``: cumulative average). Evaluation: normalise with the running statistics.
    Both modes are differentiable (:class:`BatchNormFunction`). ``activation="relu"`` (not in
    PyTorch) is ``relu(bn(x))`` fused into the same passes over the data; parameters, buffers and
    state_dict are those of the plain layer.
    """

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L); see :class:`BatchNorm2d`."""

    _ndims = (2, 3)
