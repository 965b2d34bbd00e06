"""Shared pieces of the model tests: tiny instances, a real image batch, gradcheck through a
module's parameters, and the PyTorch parity check (twins in ``benchmarks/torch_models.py``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import models, nn
from minisegnet.testing import gradcheck

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks/` is a top-level folder, not installed
    sys.path.insert(0, str(REPO))

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (parity tests)")
HAS_UNET = (REPO / "minisegnet" / "models" / "unet.py").exists()

# The smallest instance of each model that still has every block (CI: 2 cores).
TINY: dict[str, dict[str, Any]] = {
    "fcn32s": dict(width=1, dropout=0.0),
    "fcn16s": dict(width=1, dropout=0.0),
    "fcn8s": dict(width=1, dropout=0.0),
    "unet": dict(base_channels=2, depth=2),
    "unet-valid": dict(base_channels=2, depth=2),
    "deeplabv3plus": dict(width=2, dropout=0.0),
    "pspnet": dict(width=2, dropout=0.0),
    "segnet": dict(width=4, depth=2, kernel_size=3),
}


# Adam's step size and step count that overfit one coins batch (test_models.py)
OVERFIT: dict[str, tuple[float, int]] = {
    "fcn32s": (1e-2, 60), "fcn16s": (1e-2, 60), "fcn8s": (1e-2, 60), "unet-valid": (3e-2, 40),
}


def model_params(names: Sequence[str] | None = None) -> list[Any]:
    """pytest params over ``models.list_models()``; U-Net ids skip while unet.py is missing."""
    out = []
    for name in names or models.list_models():
        marks = []
        if name.startswith("unet") and not HAS_UNET:
            marks.append(pytest.mark.skip(reason="minisegnet/models/unet.py not written yet"))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def tiny(name: str, num_classes: int = 3, in_channels: int = 3, seed: int = 0,
         **overrides: Any) -> nn.Module:
    msn.manual_seed(seed)
    return models.create(name, num_classes, in_channels=in_channels, **{**TINY[name], **overrides})


def input_and_output_size(model: nn.Module, name: str, h: int, w: int) -> tuple[tuple, tuple]:
    """An input size near (h, w) the model accepts and the output size SPEC gives for it."""
    if name == "unet-valid":
        H, W = model.input_size_for(h, w)
        return (H, W), tuple(model.output_size(H, W))
    return (h, w), (h, w)


def coins_batch(n: int = 2, size: tuple[int, int] = (40, 48), in_channels: int = 1
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops of skimage's coins photograph, in [0, 1], and coin (1) / background (0) labels
    by a global threshold (the mean plus a little: coins are brighter than the tray)."""
    from skimage import data

    img = data.coins().astype(np.float32) / 255.0                     # (303, 384)
    h, w = size
    corners = [((30 + 91 * i) % (img.shape[0] - h), (20 + 137 * i) % (img.shape[1] - w))
               for i in range(n)]
    crops = [img[r:r + h, c:c + w] for r, c in corners]
    x = np.stack(crops)[:, None]                                        # (n, 1, h, w)
    labels = (x[:, 0] > img.mean() + 0.1).astype(np.int64)              # (n, h, w)
    x = np.repeat(x, in_channels, axis=1)
    return (x - 0.5).astype(np.float32), labels


def overfit(model: nn.Module, x: np.ndarray, loss_fn: Callable[[Any], Any], steps: int = 40,
            lr: float = 1e-2) -> tuple[float, float]:
    """Adam on one batch; returns (first loss, last loss)."""
    from minisegnet import optim

    opt = optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(msn.Tensor(x)))
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return losses[0], losses[-1]


def gradcheck_module(module: nn.Module, fn: Callable[..., Any], x: np.ndarray,
                     param_names: Sequence[str], **kw: Any) -> bool:
    """``msn.testing.gradcheck`` of ``fn(x)`` (which calls ``module``) w.r.t. x and some parameters.

    gradcheck differentiates fresh float64 Tensors it makes from its inputs, so for each call
    the chosen parameters of ``module`` are swapped for those Tensors (through the module's
    parameter table: the Tensor must be the very object the graph uses) and restored after.
    """
    module.double()
    owners = []
    for name in param_names:
        *path, leaf = name.split(".")
        owner = module
        for p in path:
            owner = getattr(owner, p)
        owners.append((owner, leaf, getattr(owner, leaf)))

    def wrapped(xt: Any, *params: Any) -> Any:
        saved = []
        for (owner, leaf, _), t in zip(owners, params, strict=True):
            saved.append(owner._parameters[leaf])
            owner._parameters[leaf] = t
        try:
            return fn(xt)
        finally:
            for (owner, leaf, _), p in zip(owners, saved, strict=True):
                owner._parameters[leaf] = p

    return gradcheck(wrapped, [x.astype(np.float64)] + [p.data for _, _, p in owners], **kw)


def small_params(model: nn.Module, limit: int = 24) -> list[str]:
    """The first and the last parameter with at most ``limit`` elements (cheap to gradcheck)."""
    small = [n for n, p in model.named_parameters() if p.size <= limit]
    assert small, "no small parameter to gradcheck"
    return sorted({small[0], small[-1]}, key=small.index)


def check_torch_parity(ours: nn.Module, twin: Any, inputs: Sequence[np.ndarray],
                       rtol: float = 1e-9, atol: float = 1e-11) -> None:
    """float64: same outputs, same input gradients, same gradient for every parameter (by name).

    ``twin`` is the PyTorch network with our weights already copied in (``load_from``);
    ``inputs[0]`` is the differentiable image / features, the rest pass through as they are.
    """
    import torch

    ours.double()
    twin.double()
    x = msn.Tensor(inputs[0].astype(np.float64), requires_grad=True)
    xt = torch.tensor(inputs[0].astype(np.float64), requires_grad=True)
    rest_t = [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in inputs[1:]]
    y = ours(x, *inputs[1:])
    yt = twin(xt, *rest_t)
    scale = float(np.abs(yt.detach().numpy()).max()) + 1e-30
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=rtol, atol=atol * scale,
                               err_msg="forward")
    v = np.random.default_rng(7).standard_normal(y.shape)
    (y * msn.Tensor(v)).sum().backward()
    (yt * torch.from_numpy(v)).sum().backward()
    g = xt.grad.numpy()
    np.testing.assert_allclose(x.grad, g, rtol=rtol, atol=atol * (np.abs(g).max() + 1e-30),
                               err_msg="input gradient")
    twin_params = dict(twin.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == set(twin_params)
    for name, p in ours_params.items():
        gt = twin_params[name].grad.numpy()
        np.testing.assert_allclose(p.grad, gt, rtol=rtol, atol=atol * (np.abs(gt).max() + 1e-30),
                                   err_msg=f"gradient of {name}")


def cross_entropy(target: np.ndarray) -> Callable[[Any], Any]:
    t = msn.Tensor(target)
    return lambda logits: F.cross_entropy(logits, t)
