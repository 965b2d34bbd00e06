"""The Tensor's own differentiable ops: arithmetic, matmul, reductions, shapes, indexing, joins.

What ``Tensor``'s operators and methods (``x + y``, ``x @ w``, ``x.sum()``, ``x.reshape()``,
``x[i]``) build on, each a :class:`~minisegnet.tensor.Function` with its backward beside its
forward. ``minisegnet/tensor.py`` is only the engine (Tensor, Function, backward); these ops live
here, outside ``minisegnet.functional``, so that ``import minisegnet`` does not load every kernel
(the functional package registers them all). ``minisegnet.functional`` re-exports the public
functions (``cat``, ``stack``, ``matmul``), and ``minisegnet.tensor`` every name it held before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import get_array_module
from .tensor import Function, Tensor, as_tensor

__all__ = [
    "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Exp", "Log", "Abs", "Clamp", "Cast", "MatMul",
    "Sum", "Max", "Reshape", "Permute", "GetItem", "Concat", "matmul", "cat", "stack",
]


# --------------------------------------------------------------------------------------------
# Elementwise and broadcasting arithmetic


def _check_broadcast(op: str, a: Any, b: Any) -> None:
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {tuple(a.shape)} (left operand) and {tuple(b.shape)} (right operand) "
            "cannot be broadcast together"
        ) from None


class Add(Function):
    def forward(self, a, b):
        _check_broadcast("add", a, b)
        return a + b

    def backward(self, gy):
        return gy, gy  # sum_to in backward() undoes any broadcasting


class Sub(Function):
    def forward(self, a, b):
        _check_broadcast("sub", a, b)
        return a - b

    def backward(self, gy):
        return gy, -gy


class Mul(Function):
    def forward(self, a, b):
        _check_broadcast("mul", a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga, gb = self.needs_input_grad
        return (gy * self.b if ga else None), (gy * self.a if gb else None)


class Div(Function):
    def forward(self, a, b):
        _check_broadcast("div", a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga, gb = self.needs_input_grad
        gx0 = gy / self.b if ga else None
        gx1 = -gy * self.a / (self.b * self.b) if gb else None
        return gx0, gx1


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    def __init__(self, c: float) -> None:
        self.c = c

    def forward(self, x):
        self.x = x
        return x ** x.dtype.type(self.c) if x.dtype.kind == "f" else x ** self.c

    def backward(self, gy):
        return gy * self.c * self.x ** (self.c - 1)


class Exp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Abs(Function):
    def forward(self, x):
        self.x = x
        return abs(x)

    def backward(self, gy):
        return gy * get_array_module(self.x).sign(self.x)


class Clamp(Function):
    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.lo, self.hi = lo, hi

    def forward(self, x):
        xp = get_array_module(x)
        self.mask = xp.ones(x.shape, dtype=bool)
        if self.lo is not None:
            self.mask &= x >= self.lo
        if self.hi is not None:
            self.mask &= x <= self.hi
        return xp.clip(x, self.lo, self.hi).astype(x.dtype, copy=False)

    def backward(self, gy):
        return gy * self.mask


class Cast(Function):
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.in_dtype)


# --------------------------------------------------------------------------------------------
# matmul


class MatMul(Function):
    """Batched matrix product of (..., n, k) and (..., k, m) with broadcast batch dimensions."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul: operands need 2+ dims, got {a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"matmul: inner dimensions differ: left {tuple(a.shape)} has {a.shape[-1]} "
                f"columns, right {tuple(b.shape)} has {b.shape[-2]} rows"
            )
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(
                f"matmul: batch dimensions of {tuple(a.shape)} and {tuple(b.shape)} do not "
                "broadcast"
            ) from None
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        ga, gb = self.needs_input_grad
        gx0 = gy @ self.b.swapaxes(-1, -2) if ga else None  # (..., n, k)
        gx1 = self.a.swapaxes(-1, -2) @ gy if gb else None  # (..., k, m)
        return gx0, gx1


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with NumPy's rules, 1-D operands included (promoted, then squeezed)."""
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: scalars are not allowed, got shapes {a.shape} and {b.shape}")
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    if squeeze_a:
        a = a.reshape(1, a.shape[0])  # (1, k)
    if squeeze_b:
        b = b.reshape(b.shape[0], 1)  # (k, 1)
    y = MatMul()(a, b)
    if squeeze_a and squeeze_b:
        return y.reshape(())
    if squeeze_a:
        return y.reshape(y.shape[:-2] + y.shape[-1:])
    if squeeze_b:
        return y.reshape(y.shape[:-1])
    return y


# --------------------------------------------------------------------------------------------
# Reductions


class Sum(Function):
    def __init__(self, dims: tuple[int, ...] | None, keepdim: bool) -> None:
        self.dims, self.keepdim = dims, keepdim

    def forward(self, x):
        self.shape = x.shape
        return x.sum(axis=self.dims, keepdims=self.keepdim)

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdim and self.dims is not None:
            gy = xp.expand_dims(gy, self.dims)
        return xp.broadcast_to(gy, self.shape)


class Max(Function):
    def __init__(self, dims: tuple[int, ...] | None, keepdim: bool) -> None:
        self.dims, self.keepdim = dims, keepdim

    def forward(self, x):
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        self.x = x
        self.y = x.max(axis=self.dims, keepdims=True)
        return self.y if self.keepdim else self.y.reshape(
            [s for i, s in enumerate(x.shape) if self.dims is not None and i not in self.dims]
        )

    def backward(self, gy):
        mask = self.x == self.y
        count = mask.sum(axis=self.dims, keepdims=True)
        gy = gy.reshape(self.y.shape)  # restore the kept dims
        return mask * (gy / count).astype(self.x.dtype)


# --------------------------------------------------------------------------------------------
# Shape ops


class Reshape(Function):
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(
                f"shape: cannot reshape a tensor of shape {tuple(x.shape)} ({x.size} elements) "
                f"into {self.shape}"
            ) from None

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Permute(Function):
    def __init__(self, dims: tuple[int, ...]) -> None:
        self.dims = dims

    def forward(self, x):
        return x.transpose(self.dims)

    def backward(self, gy):
        return gy.transpose(tuple(np.argsort(self.dims)))


def _basic_index(index: Any) -> bool:
    """True when ``index`` uses only ints, slices, None and Ellipsis (a view, no duplicates)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    def __init__(self, index: Any) -> None:
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        self.index = index

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=self.dtype)
        if _basic_index(self.index):
            gx[self.index] = gy  # basic indexing selects each element at most once
        elif xp is np:
            np.add.at(gx, self.index, gy)  # advanced indexing may repeat elements: accumulate
        else:
            import cupyx

            cupyx.scatter_add(gx, self.index, gy)
        return gx


class Concat(Function):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, *xs):
        ref = xs[0].shape
        for k, x in enumerate(xs):
            if x.ndim != len(ref) or any(
                a != b for i, (a, b) in enumerate(zip(x.shape, ref)) if i != self.dim % len(ref)
            ):
                raise ValueError(
                    f"tensors: cat along dim {self.dim} needs equal sizes elsewhere; tensor 0 has "
                    f"shape {tuple(ref)}, tensor {k} has shape {tuple(x.shape)}"
                )
        self.sizes = [x.shape[self.dim] for x in xs]
        return get_array_module(*xs).concatenate(xs, axis=self.dim)

    def backward(self, gy):
        xp = get_array_module(gy)
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp.split(gy, cuts, axis=self.dim))


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along an existing dimension (U-Net's skip connections)."""
    if len(tensors) == 0:
        raise ValueError("tensors: cat needs at least one tensor")
    return Concat(dim)(*tensors)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Stack along a new dimension."""
    if len(tensors) == 0:
        raise ValueError("tensors: stack needs at least one tensor")
    shapes = {as_tensor(t).shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"tensors: stack needs equal shapes, got {sorted(shapes)}")
    nd = as_tensor(tensors[0]).ndim + 1
    d = dim % nd
    tensors = [as_tensor(t) for t in tensors]
    expanded = [t.reshape(t.shape[:d] + (1,) + t.shape[d:]) for t in tensors]
    return Concat(d)(*expanded)
