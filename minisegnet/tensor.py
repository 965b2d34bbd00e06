"""The autograd engine: ``Tensor``, ``Function`` and reverse-mode ``backward``.

A ``Tensor`` wraps a NumPy or CuPy array. Every differentiable op is a ``Function`` subclass whose
``forward`` and ``backward`` work on raw arrays (as in DeZero); ``Function.__call__`` unwraps the
inputs, runs ``forward``, wraps the outputs and, when gradients are wanted, records itself as their
``creator`` together with a *generation* number (one more than its newest input), so that
``backward`` can visit functions newest-first in topological order.

Backward accumulates: a tensor used twice receives the sum of both gradients, and leaf tensors add
into ``.grad`` across calls (clear it with ``zero_grad``). Gradients of broadcast inputs are summed
back to the input's shape in one place (:func:`sum_to`), so individual ops need not care. After
``backward`` the graph is freed (each function drops its inputs and saved arrays) unless
``retain_graph=True``: memory does not grow over thousands of training steps.

The ops that Tensor's operators and methods build on (``+``, ``@``, ``sum``, ``reshape``,
indexing, ``cat``) are in ``minisegnet/ops.py``; this module is the engine alone.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .backend import array_device, get_array_module, is_cupy_array, to_device

# --------------------------------------------------------------------------------------------
# Grad mode

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether new operations record a graph (False inside ``no_grad``)."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager: operations inside record no graph (evaluation, optimizer steps)."""
    old = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = old


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    """Context manager: turn graph recording back on inside a ``no_grad`` block."""
    old = is_grad_enabled()
    _state.enabled = True
    try:
        yield
    finally:
        _state.enabled = old


# --------------------------------------------------------------------------------------------
# Array helpers


def _as_array(data: Any, dtype: Any = None) -> Any:
    """Turn ``data`` into a NumPy/CuPy array; Python floats become float32, as in PyTorch."""
    if isinstance(data, Tensor):
        data = data.data
    if is_cupy_array(data):
        arr = data if dtype is None else data.astype(dtype, copy=False)
    elif isinstance(data, (np.ndarray, np.generic)):
        # NumPy scalars too (what a full reduction such as x.sum() returns): keep their dtype
        arr = np.asarray(data) if dtype is None else np.asarray(data).astype(dtype, copy=False)
    else:
        arr = np.asarray(data, dtype=dtype)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # Python floats/lists default to float32
    if arr.dtype == object:
        raise TypeError(
            f"data: cannot make a Tensor from an object array (shape {arr.shape}); "
            "pass numbers or a numeric NumPy/CuPy array"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"data: unsupported dtype {arr.dtype}; use bool, integer or float arrays")
    return arr


def sum_to(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum a broadcast gradient ``g`` back down to ``shape`` (the inverse of broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1
    )
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)  # drop the leading broadcast axes


# --------------------------------------------------------------------------------------------
# Function


class Function:
    """Base class of differentiable operations.

    Subclasses keep non-tensor parameters in ``__init__``, implement ``forward(*arrays)`` returning
    an array or a tuple of arrays and ``backward(*grads)`` returning one gradient per input (None
    where none is needed). In ``backward``, float outputs that received no gradient arrive as
    zeros and integer outputs (indices) as None; ``self.needs_input_grad`` tells which inputs
    want a gradient.
    """

    generation: int = 0
    inputs: tuple[Tensor, ...] | None = None
    needs_input_grad: tuple[bool, ...] = ()

    def __call__(self, *inputs: Any) -> Any:
        tensors = tuple(x if isinstance(x, Tensor) else Tensor(x) for x in inputs)
        outs = self.forward(*(t.data for t in tensors))
        single = not isinstance(outs, tuple)
        outs = (outs,) if single else outs
        outputs = tuple(Tensor(o) for o in outs)
        if is_grad_enabled() and any(t.requires_grad for t in tensors):
            self.generation = max(t.generation for t in tensors)
            self.inputs = tensors
            self.needs_input_grad = tuple(t.requires_grad for t in tensors)
            # Weak references: outputs own their creator, not the other way round (no cycles).
            self.outputs = tuple(weakref.ref(o) for o in outputs)
            self._out_meta = tuple((o.shape, o.dtype) for o in outputs)
            for o in outputs:
                if o.dtype.kind == "f":
                    o.requires_grad = True
                    o.creator = self
                    o.generation = self.generation + 1
        return outputs[0] if single else outputs

    def forward(self, *xs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *gys: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Drop inputs and everything saved for backward (the graph is freed after backward)."""
        self.__dict__.clear()
        self.released = True


# --------------------------------------------------------------------------------------------
# Tensor


class MaxResult(NamedTuple):
    """``Tensor.max(dim=...)`` returns values and indices, like PyTorch."""

    values: Tensor
    indices: Tensor


def _dims(dim: int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise ValueError(f"dim {d} is out of range for a tensor with {ndim} dimensions")
        out.append(d % max(ndim, 1))
    return tuple(out)


class Tensor:
    """An n-dimensional array (NumPy or CuPy) that records the operations applied to it.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` is an array, a number or a nested
    list (Python floats become float32). ``.grad`` is a raw array of the same shape, or None.
    """

    __array_priority__ = 1000  # so that ndarray <op> Tensor defers to Tensor's reflected op

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise ValueError(
                f"requires_grad: only floating-point tensors can require gradients, "
                f"got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad: Any = None
        self.creator: Function | None = None
        self.generation = 0

    # ---- basic properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return array_device(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=40)
        extra = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        return f"Tensor({body}, dtype={self.dtype}{dev}{extra})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed)."""
        return self.data.get() if is_cupy_array(self.data) else self.data

    def item(self) -> float | int:
        """The single value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item(): tensor has {self.size} elements (shape {self.shape}), not 1")
        return self.numpy().reshape(()).item()

    def to(self, device: str) -> Tensor:
        """A copy on ``device`` ("cpu" or "cuda") that is a leaf with the same requires_grad."""
        if device == self.device:
            return self
        return Tensor(to_device(self.data, device), requires_grad=self.requires_grad)

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype: Any) -> Tensor:
        """A differentiable dtype conversion (float <-> float)."""
        return Cast(np.dtype(dtype))(self)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- backward ---------------------------------------------------------------------
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) * grad into the ``.grad`` of every leaf requiring grad.

        ``grad`` (an array or Tensor of this tensor's shape) may be omitted only for a tensor
        with a single element. The graph is freed afterwards unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require grad and has no graph "
                "(did you create it inside no_grad(), or from tensors without requires_grad?)"
            )
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"grad: backward() on a non-scalar tensor of shape {self.shape} needs an "
                    "explicit gradient of the same shape"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(
                    f"grad: shape {tuple(grad.shape)} does not match the tensor's shape "
                    f"{self.shape}"
                )
        if self.creator is None:
            self._accumulate(grad)
            return
        if getattr(self.creator, "released", False):
            raise RuntimeError(
                "backward(): the graph was already freed by an earlier backward(); "
                "pass retain_graph=True to the first call to backward twice"
            )

        # Pending gradients of non-leaf tensors, keyed by id, holding the tensor alive meanwhile.
        pending: dict[int, tuple[Tensor, Any]] = {id(self): (self, grad)}
        heap: list[tuple[int, int, Function]] = []
        seen: set[int] = set()
        # Gradient arrays already held by some tensor in this pass (see the leaf case below).
        handed: set[int] = {id(grad)}

        def push(f: Function) -> None:
            if id(f) not in seen:
                seen.add(id(f))
                heapq.heappush(heap, (-f.generation, id(f), f))

        push(self.creator)
        while heap:
            _, _, f = heapq.heappop(heap)
            if getattr(f, "released", False):
                raise RuntimeError("backward(): part of the graph was already freed")
            gys = []
            for ref, (shape, dtype) in zip(f.outputs, f._out_meta):
                o = ref()
                entry = pending.pop(id(o), None) if o is not None else None
                if entry is not None:
                    gys.append(entry[1])
                elif dtype.kind == "f":
                    gys.append(get_array_module(f.inputs[0].data).zeros(shape, dtype=dtype))
                else:
                    gys.append(None)
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(f.inputs):
                raise RuntimeError(
                    f"{type(f).__name__}.backward returned {len(gxs)} gradients for "
                    f"{len(f.inputs)} inputs"
                )
            for x, gx, need in zip(f.inputs, gxs, f.needs_input_grad):
                if not need or gx is None:
                    continue
                gx = sum_to(gx, x.data.shape)
                if gx.dtype != x.dtype:
                    gx = gx.astype(x.dtype)
                if x.creator is None:
                    # A fresh array that nobody else holds becomes .grad without a copy; a view,
                    # or an array also handed to another input (Add passes gy to both sides), is
                    # copied, so that in-place edits of one .grad never reach another. Measured
                    # worth: nothing for parameters in a training step (copying every parameter
                    # gradient costs 0.004 ms of a 9 ms step of the README's model, 0.09 ms of
                    # 29 ms with 1.2 MB of 128-channel 3x3 convs), but a big input gradient is
                    # not copied twice: max_pool2d fwd+bwd of a leaf 8x64x128x128 input took
                    # 26.7 ms against 40.5 ms with the copy (benchmarks, gradcheck, saliency).
                    shared = gx.base is not None or id(gx) in handed
                    handed.add(id(gx))
                    x._accumulate(gx, copy=shared)
                else:
                    prev = pending.get(id(x))
                    handed.add(id(gx))
                    pending[id(x)] = (x, gx if prev is None else prev[1] + gx)
                    push(x.creator)
            if not retain_graph:
                f.release()

    def _accumulate(self, g: Any, copy: bool = True) -> None:
        # Out of place when adding: the old .grad may be an array the user kept a reference to.
        if self.grad is None:
            self.grad = g.copy() if copy else g
        else:
            self.grad = self.grad + g

    # ---- operators ----------------------------------------------------------------------
    def _other(self, other: Any) -> Tensor:
        if isinstance(other, Tensor):
            return other
        xp = get_array_module(self.data)
        if isinstance(other, (int, float, bool)) and not isinstance(other, np.ndarray):
            # Python scalars take the tensor's dtype (float32 stays float32), as in PyTorch.
            dt = self.dtype if self.dtype.kind == "f" or isinstance(other, int) else np.float32
            return Tensor(xp.asarray(other, dtype=dt))
        return Tensor(xp.asarray(other))

    def __add__(self, o: Any) -> Tensor:
        return Add()(self, self._other(o))

    def __radd__(self, o: Any) -> Tensor:
        return Add()(self._other(o), self)

    def __sub__(self, o: Any) -> Tensor:
        return Sub()(self, self._other(o))

    def __rsub__(self, o: Any) -> Tensor:
        return Sub()(self._other(o), self)

    def __mul__(self, o: Any) -> Tensor:
        return Mul()(self, self._other(o))

    def __rmul__(self, o: Any) -> Tensor:
        return Mul()(self._other(o), self)

    def __truediv__(self, o: Any) -> Tensor:
        return Div()(self, self._other(o))

    def __rtruediv__(self, o: Any) -> Tensor:
        return Div()(self._other(o), self)

    def __neg__(self) -> Tensor:
        return Neg()(self)

    def __pow__(self, exponent: float) -> Tensor:
        if isinstance(exponent, Tensor):
            raise TypeError("exponent: only a Python number is supported as an exponent")
        return Pow(float(exponent))(self)

    def __matmul__(self, o: Any) -> Tensor:
        return matmul(self, self._other(o))

    def __rmatmul__(self, o: Any) -> Tensor:
        return matmul(self._other(o), self)

    # comparisons give constant boolean tensors (no gradient), as in PyTorch
    def _cmp(self, o: Any, op: str) -> Tensor:
        other = o.data if isinstance(o, Tensor) else o
        return Tensor(getattr(self.data, op)(other))

    __lt__ = lambda s, o: s._cmp(o, "__lt__")  # noqa: E731
    __le__ = lambda s, o: s._cmp(o, "__le__")  # noqa: E731
    __gt__ = lambda s, o: s._cmp(o, "__gt__")  # noqa: E731
    __ge__ = lambda s, o: s._cmp(o, "__ge__")  # noqa: E731
    __eq__ = lambda s, o: s._cmp(o, "__eq__")  # type: ignore[assignment]  # noqa: E731
    __ne__ = lambda s, o: s._cmp(o, "__ne__")  # type: ignore[assignment]  # noqa: E731
    __hash__ = object.__hash__

    def __getitem__(self, index: Any) -> Tensor:
        return GetItem(index)(self)

    # ---- methods (PyTorch names) -------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        return Sum(_dims(dim, self.ndim), keepdim)(self)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        dims = _dims(dim, self.ndim)
        n = self.size if dims is None else int(np.prod([self.shape[d] for d in dims]))
        return self.sum(dims, keepdim) / max(n, 1)

    def amax(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        """Maximum over ``dim``; the gradient is shared equally among tied maxima."""
        return Max(_dims(dim, self.ndim), keepdim)(self)

    def max(self, dim: int | None = None, keepdim: bool = False) -> Tensor | MaxResult:
        """``max()`` is the overall maximum; ``max(dim)`` returns (values, indices) like PyTorch."""
        if dim is None:
            return self.amax()
        values = self.amax(dim, keepdim)
        return MaxResult(values, self.argmax(dim, keepdim))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        xp = get_array_module(self.data)
        if dim is None:
            return Tensor(xp.argmax(self.data))
        return Tensor(xp.argmax(self.data, axis=dim, keepdims=keepdim))

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape(shape)(self)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        s, e = start_dim % self.ndim, end_dim % self.ndim
        shape = self.shape[:s] + (int(np.prod(self.shape[s : e + 1])),) + self.shape[e + 1 :]
        return self.reshape(shape)

    def permute(self, *dims: Any) -> Tensor:
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"dims: {dims} is not a permutation of the {self.ndim} dimensions")
        return Permute(tuple(d % self.ndim for d in dims))(self)

    def transpose(self, dim0: int = -2, dim1: int = -1) -> Tensor:
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(dims)

    @property
    def T(self) -> Tensor:
        return self.permute(tuple(reversed(range(self.ndim))))

    def exp(self) -> Tensor:
        return Exp()(self)

    def log(self) -> Tensor:
        return Log()(self)

    def sqrt(self) -> Tensor:
        return self ** 0.5

    def abs(self) -> Tensor:
        return Abs()(self)

    def clamp(self, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
        return Clamp(min, max)(self)

    def __bool__(self) -> bool:
        return bool(self.data)  # NumPy's rule: ambiguous (an error) for more than one element

    # Last in the class body: these names shadow the builtins inside it.
    def float(self) -> Tensor:  # noqa: A003
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)


def as_tensor(x: Any) -> Tensor:
    """``x`` if it already is a Tensor, else a constant Tensor around it."""
    return x if isinstance(x, Tensor) else Tensor(x)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a Tensor (PyTorch's ``torch.tensor``)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


# --------------------------------------------------------------------------------------------
# The ops Tensor's operators and methods build on live in minisegnet/ops.py (which imports this
# module: hence at the end). Re-exported so that every name importable from here still is.
from .ops import (  # noqa: E402,F401
    Abs,
    Add,
    Cast,
    Clamp,
    Concat,
    Div,
    Exp,
    GetItem,
    Log,
    MatMul,
    Max,
    Mul,
    Neg,
    Permute,
    Pow,
    Reshape,
    Sub,
    Sum,
    cat,
    matmul,
    stack,
)
