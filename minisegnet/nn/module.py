"""``Module`` and ``Parameter``: the containers every layer and model is built from (PyTorch's API).

A ``Module`` registers what is assigned to it: a :class:`Parameter` (a trainable Tensor), another
``Module`` (a child), or an array given to :meth:`Module.register_buffer` (state that is saved but
not trained, such as BatchNorm's running statistics). From those registrations it derives
``parameters()``, ``state_dict()``, ``load_state_dict()``, ``train()``/``eval()`` and
``to(device)``.

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(2, 16)        # a child module: its weight is "fc1.weight"
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ..backend import array_device, get_array_module, is_cupy_array, to_device, to_numpy
from ..tensor import Tensor, _as_array

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "ModuleDict"]


class Parameter(Tensor):
    """A Tensor that a :class:`Module` registers as trainable: ``requires_grad=True`` by default.

    ``data`` becomes a floating-point array: Python numbers and integer arrays turn into float32,
    float arrays keep their dtype.
    """

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        arr = _as_array(data)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class Module:
    """Base class of layers and models.

    Subclasses call ``super().__init__()`` first, assign parameters/children as attributes and
    implement ``forward``; calling the module calls ``forward``. ``self.training`` is True after
    construction and toggled by :meth:`train` / :meth:`eval` on the whole tree.
    """

    training: bool

    def __init__(self) -> None:
        # object.__setattr__: our own __setattr__ needs these dicts to exist already.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ---------------------------------------------------------------------
    def _check_init(self) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._check_init()
            self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init()
            self._forget(name)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(
                    f"{name}: cannot assign a {type(value).__name__} to parameter {name!r}; "
                    "assign an nn.Parameter (or None)"
                )
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(
                    f"{name}: cannot assign a {type(value).__name__} to child module {name!r}; "
                    "assign an nn.Module (or None)"
                )
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            self._buffers[name] = None if value is None else _buffer_array(name, value)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        for d in (self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: parameters, buffers and children live in dicts.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(
            set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules)
        )

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` under ``name`` (None reserves the name, e.g. a disabled bias)."""
        self._check_init()
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param: expected an nn.Parameter or None, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, array: Any, persistent: bool = True) -> None:
        """Register a non-trainable array (saved in ``state_dict`` unless ``persistent=False``)."""
        self._check_init()
        self._forget(name)
        self._buffers[name] = None if array is None else _buffer_array(name, array)
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` as a child under ``name``."""
        self._check_init()
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected an nn.Module or None, got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    # ---- calling --------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- traversal ------------------------------------------------------------------------
    def named_modules(
        self, prefix: str = "", _seen: set[int] | None = None
    ) -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module and every descendant, each module once."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_name, mod in mods:
            for name, value in getattr(mod, store).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_name}.{name}" if mod_name else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter), each shared parameter once (under its first name)."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every submodule (children first) and on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of scalar parameters (each shared parameter counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- modes and gradients --------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active, BatchNorm uses batch statistics) on the whole tree."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Dotted name -> NumPy copy of every parameter and persistent buffer.

        Order as in PyTorch: a module's own parameters, then its buffers, then its children's.
        Shared parameters appear under every name, like PyTorch.
        """
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, (mod, name, kind) in self._state_slots().items():  # one walk of the tree
            value = mod._parameters[name].data if kind == "param" else mod._buffers[name]
            out[key] = to_numpy(value).copy()
        return out

    def _state_slots(self) -> OrderedDict[str, tuple[Module, str, str]]:
        """Dotted name -> (owning module, local name, "param" | "buffer")."""
        slots: OrderedDict[str, tuple[Module, str, str]] = OrderedDict()
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    slots[pre + name] = (mod, name, "param")
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    slots[pre + name] = (mod, name, "buffer")
        return slots

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into the parameters and buffers, in place.

        Values may be NumPy/CuPy arrays or Tensors; they are cast to each parameter's dtype and
        copied onto its device. With ``strict`` (the default) a missing or unexpected key is a
        ``ValueError`` listing them; a shape mismatch always is, naming the key and both shapes.
        Nothing is modified when an error is raised.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        slots = self._state_slots()
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(
                f"state_dict: does not match {type(self).__name__}: " + "; ".join(parts)
            )
        # Validate every shape before touching anything, so a failed load leaves the model intact.
        updates = []
        for key, (mod, name, kind) in slots.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.data if isinstance(value, Tensor) else value
            if not (isinstance(value, np.ndarray) or is_cupy_array(value)):
                value = np.asarray(value)
            current = mod._parameters[name].data if kind == "param" else mod._buffers[name]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"state_dict: shape mismatch for {key!r}: the checkpoint has "
                    f"{_shape_str(tuple(value.shape))}, the model has "
                    f"{_shape_str(tuple(current.shape))}"
                )
            updates.append((current, value))
        for current, value in updates:
            xp = get_array_module(current)
            current[...] = xp.asarray(to_numpy(value) if xp is np else value).astype(
                current.dtype, copy=False
            )
        return IncompatibleKeys(missing, unexpected)

    # ---- devices and dtypes ---------------------------------------------------------------
    def to(self, device: Any) -> Module:
        """Move (``"cpu"``/``"cuda"``) or cast (a float dtype) every parameter and buffer in place.

        Parameters stay the same objects (an optimizer built before the move keeps working);
        gradients move with them. Returns self.
        """
        if isinstance(device, str):
            conv: Callable[[Any], Any] = lambda a: to_device(a, device)  # noqa: E731
            conv_buf = conv
        else:
            dt = np.dtype(device)
            if dt.kind != "f":
                raise ValueError(f"device: expected 'cpu', 'cuda' or a float dtype, got {device!r}")
            conv = lambda a: a.astype(dt, copy=False)  # noqa: E731
            conv_buf = lambda a: a.astype(dt, copy=False) if a.dtype.kind == "f" else a  # noqa: E731
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = conv(p.data)
                    if p.grad is not None:
                        p.grad = conv(p.grad)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = conv_buf(b)
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    @property
    def device(self) -> str:
        """The device of the first parameter (or buffer); "cpu" for a module without state."""
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return array_device(b)
        return "cpu"

    # ---- printing -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses (its hyper-parameters)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    # Last in the class body: these names shadow the builtins inside it.
    def double(self) -> Module:
        """Cast floating-point parameters and buffers to float64 (for gradient checks)."""
        return self.to(np.float64)

    def float(self) -> Module:  # noqa: A003
        """Cast floating-point parameters and buffers to float32."""
        return self.to(np.float32)


def _buffer_array(name: str, value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray) or is_cupy_array(value):
        return value
    try:
        return _as_array(value)
    except TypeError as e:
        raise TypeError(f"{name}: a buffer must be an array, got {type(value).__name__}") from e


class Sequential(Module):
    """Modules applied in order: ``Sequential(conv, bn, relu)(x)``, or ``Sequential(OrderedDict)``.

    Indexable (``seq[0]``, ``seq[1:]`` gives a Sequential), iterable, ``len``-able.
    """

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(
                        f"modules: argument {i} is a {type(m).__name__}, not an nn.Module"
                    )
                self.add_module(str(i), m)

    def _index(self, idx: int) -> str:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._index(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        self.add_module(self._index(idx), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), module)
        return self

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules whose parameters are registered (``"0.weight"``, ``"1.weight"``...)."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx: int) -> str:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for ModuleList of length {n}")
        return str(idx % n)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._index(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        self.add_module(self._index(idx), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        self.extend(mods)


class ModuleDict(Module):
    """A dict of modules whose parameters are registered under their keys."""

    def __init__(self, modules: dict[str, Module] | None = None) -> None:
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> Iterable[str]:
        return self._modules.keys()

    def values(self) -> Iterable[Module]:
        return self._modules.values()

    def items(self) -> Iterable[tuple[str, Module]]:
        return self._modules.items()
