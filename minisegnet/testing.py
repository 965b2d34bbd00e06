"""Testing helpers for users and for minisegnet's own tests: a finite-difference gradient check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message names the worst element."""


def _scalar_objective(out: Any, cotangents: list[Any]) -> float:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = 0.0
    for o, v in zip(outs, cotangents):
        if v is not None:
            total += float((o.data * v).sum())
    return total


def gradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
) -> bool:
    """Compare ``fn``'s backward with central finite differences, in float64.

    Every float input (Tensor or array) is copied to float64 and made to require grad; integer
    inputs and other arguments pass through unchanged. The output (a Tensor or a tuple; integer
    outputs are ignored) is reduced to the scalar ``sum(out * v)`` with a fixed random cotangent
    ``v``, so that one backward pass checks the whole Jacobian-vector product. For each element
    ``x_i`` of each checked input the numeric derivative ``(L(x_i + eps) - L(x_i - eps)) / 2eps``
    must match the analytic one within ``atol + rtol * |numeric|``.

    Returns True, or raises :class:`GradcheckError` naming the input, the element's index, both
    values and the error of the worst element.
    """
    rng = np.random.default_rng(seed)
    tensors: list[Any] = []
    for a in inputs:
        data = a.data if isinstance(a, Tensor) else a
        if hasattr(data, "dtype") and getattr(data.dtype, "kind", "") == "f":
            tensors.append(Tensor(data.astype(np.float64), requires_grad=True))
        else:
            tensors.append(a)
    checked = [i for i, t in enumerate(tensors) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("inputs: gradcheck needs at least one floating-point input")

    out = fn(*tensors)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    xp = get_array_module(*(o.data for o in outs))
    cotangents = [
        xp.asarray(rng.standard_normal(o.shape))
        if o.dtype.kind == "f" and o.requires_grad else None
        for o in outs
    ]
    if all(v is None for v in cotangents):
        raise ValueError("fn: gradcheck found no differentiable float output")
    for o, v in zip(outs, cotangents):
        if v is not None:
            o.backward(v, retain_graph=True)

    worst = (-1.0, "", 0, 0.0, 0.0)  # (excess error, input, flat index, analytic, numeric)
    with no_grad():
        for i in checked:
            t = tensors[i]
            analytic = t.grad if t.grad is not None else xp.zeros_like(t.data)
            analytic = to_numpy(analytic).ravel()
            flat = t.data.reshape(-1)  # a view: edits change the input in place
            for j in range(flat.size):
                orig = float(flat[j])
                flat[j] = orig + eps
                plus = _scalar_objective(fn(*tensors), cotangents)
                flat[j] = orig - eps
                minus = _scalar_objective(fn(*tensors), cotangents)
                flat[j] = orig
                numeric = (plus - minus) / (2 * eps)
                excess = abs(analytic[j] - numeric) - (atol + rtol * abs(numeric))
                if excess > worst[0]:
                    worst = (excess, f"input {i} (shape {t.shape})", j, analytic[j], numeric)
    if worst[0] > 0:
        _, name, j, a, n = worst
        idx = np.unravel_index(j, tensors[int(name.split()[1])].shape)
        raise GradcheckError(
            f"gradcheck failed: {name} at index {tuple(int(k) for k in idx)}: analytic {a:.8g}, "
            f"numeric {n:.8g}, |difference| {abs(a - n):.3g} > "
            f"atol {atol} + rtol {rtol} * |numeric|"
        )
    return True
