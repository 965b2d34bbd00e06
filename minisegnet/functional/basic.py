"""Core differentiable ops: activations, softmax family, dropout, padding, joins and shapes."""

from __future__ import annotations

from collections.abc import Sequence

from ..backend import get_array_module
from ..ops import cat, matmul, stack
from ..random import rng_for
from ..tensor import Function, Tensor, as_tensor

__all__ = [
    "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "pad",
    "cat", "stack", "matmul", "linear", "reshape", "permute", "flatten",
]


class ReLU(Function):
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return ReLU()(x)


class LeakyReLU(Function):
    def __init__(self, slope: float) -> None:
        self.slope = slope

    def forward(self, x):
        self.mask = x > 0
        xp = get_array_module(x)
        return xp.where(self.mask, x, x * x.dtype.type(self.slope))

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.where(self.mask, gy, gy * gy.dtype.type(self.slope))


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x if x > 0 else negative_slope * x."""
    return LeakyReLU(negative_slope)(x)


class Sigmoid(Function):
    def forward(self, x):
        xp = get_array_module(x)
        # tanh form: no overflow warning for large |x|, unlike 1 / (1 + exp(-x))
        self.y = (xp.tanh(x * x.dtype.type(0.5)) + 1) * x.dtype.type(0.5)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return Sigmoid()(x)


class Tanh(Function):
    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


def tanh(x: Tensor) -> Tensor:
    return Tanh()(x)


class Softmax(Function):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=self.dim, keepdims=True))  # shift: no overflow
        self.y = e / e.sum(axis=self.dim, keepdims=True)
        return self.y

    def backward(self, gy):
        gx = self.y * gy
        return gx - self.y * gx.sum(axis=self.dim, keepdims=True)


class LogSoftmax(Function):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        z = x - x.max(axis=self.dim, keepdims=True)
        self.y = z - xp.log(xp.exp(z).sum(axis=self.dim, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


def _dim(dim: int, ndim: int, name: str = "dim") -> int:
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}: {dim} is out of range for a tensor with {ndim} dimensions")
    return dim % ndim


def softmax(x: Tensor, dim: int = 1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim`` (default 1: the class axis of (N, K, H, W) logits)."""
    x = as_tensor(x)
    return Softmax(_dim(dim, x.ndim))(x)


def log_softmax(x: Tensor, dim: int = 1) -> Tensor:
    """x - logsumexp(x) along ``dim``, computed stably."""
    x = as_tensor(x)
    return LogSoftmax(_dim(dim, x.ndim))(x)


class Dropout(Function):
    def __init__(self, p: float) -> None:
        self.p = p

    def forward(self, x):
        xp = get_array_module(x)
        keep = rng_for(xp).random(x.shape) >= self.p
        # inverted dropout: scale at training time so evaluation needs no change
        self.mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: dropout probability must be in [0, 1], got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout(p)(x)


class Pad(Function):
    """Constant or reflect padding; ``widths`` is NumPy's ((before, after), ...) per axis."""

    def __init__(self, widths: tuple[tuple[int, int], ...], mode: str, value: float) -> None:
        self.widths, self.mode, self.value = widths, mode, value

    def forward(self, x):
        xp = get_array_module(x)
        self.shape = x.shape
        if self.mode == "constant":
            return xp.pad(x, self.widths, mode="constant", constant_values=self.value)
        return xp.pad(x, self.widths, mode="reflect")

    def backward(self, gy):
        # Crop the centre; for reflect, fold each mirrored border back onto the pixels it copied:
        # out[before - j] = in[j] for j = 1..before, out[before + n - 1 + j] = in[n - 1 - j].
        g = gy
        for axis, (lo, hi) in enumerate(self.widths):
            if lo == 0 and hi == 0:
                continue
            n = self.shape[axis]
            g = g.swapaxes(0, axis)  # work on axis 0
            core = g[lo : lo + n].copy()
            if self.mode == "reflect":
                if lo:
                    core[1 : lo + 1] += g[:lo][::-1]
                if hi:
                    core[n - 1 - hi : n - 1] += g[lo + n :][::-1]
            g = core.swapaxes(0, axis)
        return g


def pad(x: Tensor, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last dimensions, PyTorch-style: ``pad = (left, right, top, bottom, ...)``.

    ``mode="reflect"`` mirrors without repeating the edge (U-Net's overlap-tile mirroring); each
    width must be smaller than the padded dimension.
    """
    x = as_tensor(x)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: needs an even number of widths for at most {x.ndim} dims, "
                         f"got {pad}")
    if any(int(p) < 0 for p in pad):
        raise ValueError(f"pad: widths must be non-negative, got {tuple(pad)}")
    if mode not in ("constant", "reflect"):
        raise ValueError(f"mode: must be 'constant' or 'reflect', got {mode!r}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if mode == "reflect":
        for axis, (lo, hi) in enumerate(widths):
            if max(lo, hi) >= x.shape[axis] and (lo or hi):
                raise ValueError(
                    f"pad: reflect widths ({lo}, {hi}) must be smaller than dimension {axis} of "
                    f"size {x.shape[axis]} (input shape {x.shape})"
                )
    return Pad(tuple(widths), mode, value)(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, weight (out_features, in_features) as in PyTorch."""
    y = matmul(as_tensor(x), as_tensor(weight).T)
    return y if bias is None else y + bias


def reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    return as_tensor(x).reshape(tuple(shape))


def permute(x: Tensor, dims: Sequence[int]) -> Tensor:
    return as_tensor(x).permute(tuple(dims))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return as_tensor(x).flatten(start_dim, end_dim)


