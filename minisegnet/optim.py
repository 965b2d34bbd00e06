"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (PolyLR, CosineAnnealingLR, StepLR).

The update formulas are PyTorch's, step for step, so a run can be compared with one in PyTorch.
Every update writes ``p.data`` in place (NumPy or CuPy alike) without recording a graph:

    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = optim.PolyLR(opt, max_iters=1000)          # DeepLab's poly schedule
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .backend import get_array_module, to_numpy
from .tensor import Tensor, no_grad

ADAM_CHUNK = 1 << 16
"""Elements per chunk of Adam's update (256 KB of float32 per scratch buffer: in L2)."""

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "LRScheduler",
    "PolyLR",
    "CosineAnnealingLR",
    "StepLR",
]


class Optimizer:
    """Base class: holds ``param_groups`` (dicts with "params" and hyper-parameters) and ``state``.

    ``params`` is an iterable of Tensors (Parameters) or of dicts ``{"params": [...], "lr": ...}``
    whose missing hyper-parameters come from ``defaults``. ``state[p]`` holds each parameter's
    buffers (momentum, Adam moments), created on its first step.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("params: the optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        seen: set[int] = set()
        for g in groups:
            self.add_param_group(g, seen)

    def add_param_group(self, group: dict[str, Any], _seen: set[int] | None = None) -> None:
        """Add a group of parameters (with its own hyper-parameters, e.g. a smaller lr)."""
        if _seen is None:
            _seen = {id(p) for g in self.param_groups for p in g["params"]}
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"params: element {i} is a {type(p).__name__}, not a Tensor/Parameter"
                )
            if p.dtype.kind != "f":
                raise TypeError(
                    f"params: element {i} has dtype {p.dtype}; only float tensors can be optimized"
                )
            if id(p) in _seen:
                raise ValueError(
                    f"params: element {i} (shape {p.shape}) appears in more than one group"
                )
            _seen.add(id(p))
        group["params"] = ps
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward starts from scratch)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad, group, self.state.setdefault(p, {}))

    def _update(self, p: Tensor, grad: Any, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: array}}, "param_groups": [...]}``, parameters by position."""
        index = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {
            index[id(p)]: {
                k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in s.items()
            }
            for p, s in self.state.items()
            if id(p) in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (buffers go to each parameter's device)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"])
            for a, b in zip(groups, self.param_groups, strict=True)
        ):
            raise ValueError(
                "state_dict: parameter groups do not match this optimizer: sizes "
                f"{[len(g['params']) for g in groups]} vs "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        params = [p for g in self.param_groups for p in g["params"]]
        for saved, group in zip(groups, self.param_groups, strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            xp = get_array_module(p.data)
            # A 0-d array is a counter saved through a checkpoint: back to a Python number, or
            # NumPy 2 would promote `lr / (1 - b1**step)` to float64 and round updates differently.
            self.state[p] = {
                k: (v.item() if getattr(v, "ndim", None) == 0
                    else xp.asarray(v).copy() if hasattr(v, "shape") else v)
                for k, v in s.items()
            }

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


def _check(name: str, value: float, low: float = 0.0, high: float | None = None) -> None:
    if not value >= low or (high is not None and not value < high):
        rng = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name}: must be {rng}, got {value}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as PyTorch::

    g = grad + weight_decay * p
    buf = g (first step),  buf = momentum * buf + (1 - dampening) * g (later steps)
    g = g + momentum * buf if nesterov else buf            (when momentum != 0)
    p = p - lr * g
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check("lr", lr)
        _check("momentum", momentum)
        _check("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov: needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
            ),
        )

    def _update(self, p, grad, group, state):
        wd, mom = group["weight_decay"], group["momentum"]
        g = grad + wd * p.data if wd else grad
        if mom:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= mom
                buf += (1 - group["dampening"]) * g
            g = g + mom * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's formulation; ``weight_decay`` adds an L2 term to the gradient::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;     v = beta2 * v + (1 - beta2) * g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``amsgrad`` uses the running maximum of v in the denominator.
    """

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        _check("lr", lr)
        _check("eps", eps)
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        _check("weight_decay", weight_decay)
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
        )

    def _update(self, p, grad, group, state):
        xp = get_array_module(p.data)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd and self._decoupled:
            p.data *= 1 - lr * wd  # AdamW: decay the weights, not the gradient
        l2 = wd if wd and not self._decoupled else 0.0  # Adam's L2: grad + wd * p
        bias1, bias2 = 1 - b1**t, 1 - b2**t
        m, v = state["exp_avg"], state["exp_avg_sq"]
        vmax = state["max_exp_avg_sq"] if group["amsgrad"] else None
        arrays = [p.data, m, v] + ([vmax] if vmax is not None else [])
        if not all(a.flags.c_contiguous for a in arrays):  # no flat views to update through
            return self._update_whole(p, grad, m, v, vmax, lr, b1, b2, eps, l2, bias1, bias2)
        flat = [a.reshape(-1) for a in arrays]  # views
        g_all = grad.reshape(-1)
        n = g_all.size
        # Chunk by chunk, two scratch buffers: the same operations in the same order as the
        # whole-array formulas (bitwise the same result), without whole-parameter temporaries
        # (they were 2-3x the largest weight: 784 MB for FCN's fc6) and with the chunk in cache.
        s = xp.empty(min(n, ADAM_CHUNK), dtype=p.data.dtype)
        u = xp.empty_like(s)
        step, root2 = lr / bias1, math.sqrt(bias2)
        for a in range(0, n, ADAM_CHUNK):
            b = min(a + ADAM_CHUNK, n)
            pp, mm, vv = (f[a:b] for f in flat[:3])
            ss, uu = s[:b - a], u[:b - a]
            g = g_all[a:b]
            if l2:
                xp.multiply(pp, l2, out=uu)
                uu += g  # grad + wd * p
                g = uu
            mm *= b1
            xp.multiply(g, 1 - b1, out=ss)
            mm += ss  # m = b1 m + (1 - b1) g
            vv *= b2
            xp.multiply(g, 1 - b2, out=ss)
            ss *= g
            vv += ss  # v = b2 v + (1 - b2) g g
            if vmax is not None:
                xp.maximum(flat[3][a:b], vv, out=flat[3][a:b])
                vv = flat[3][a:b]
            xp.sqrt(vv, out=ss)
            ss /= root2
            ss += eps  # denom = sqrt(v) / sqrt(bias2) + eps
            xp.multiply(mm, step, out=uu)
            uu /= ss
            pp -= uu  # p -= (lr / bias1) m / denom

    @staticmethod
    def _update_whole(p, grad, m, v, vmax, lr, b1, b2, eps, l2, bias1, bias2):
        """The formulas on whole arrays (for parameters that are not C-contiguous)."""
        xp = get_array_module(p.data)
        if l2:
            grad = grad + l2 * p.data
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        if vmax is not None:
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        denom = xp.sqrt(v) / math.sqrt(bias2) + eps
        p.data -= (lr / bias1) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step, the gradient untouched. PyTorch's default ``weight_decay=0.01``."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules


class LRScheduler:
    """Sets each group's ``lr`` from its initial value and the step count ``last_epoch``.

    Construction applies step 0; each :meth:`step` advances one iteration (or epoch).
    Subclasses implement ``lr_at(base_lr, t)``.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = self.lr_at(base, self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the latest step, one per parameter group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


class PolyLR(LRScheduler):
    """DeepLab's "poly" policy: ``lr = base_lr * (1 - t / max_iters) ** power``.

    The rate stays 0 after ``max_iters`` steps.
    """

    def __init__(
        self, optimizer: Optimizer, max_iters: int, power: float = 0.9, last_epoch: int = -1
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"max_iters: must be positive, got {max_iters}")
        self.max_iters, self.power = int(max_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return base_lr * max(1.0 - t / self.max_iters, 0.0) ** self.power


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.

    PyTorch's closed form (its recursive ``step`` gives the same values up to rounding).
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:  # noqa: N803
        if T_max <= 0:
            raise ValueError(f"T_max: must be positive, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return (
            self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2
        )


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)``."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size: must be positive, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)
