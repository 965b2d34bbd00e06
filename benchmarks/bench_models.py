"""models: one training step of each segmentation model (forward, cross-entropy, backward, SGD).

``minisegnet.models.create(name, num_classes=4, in_channels=3)`` for every name SPEC lists, one
step ``opt.zero_grad(); loss = F.cross_entropy(model(x), target); loss.backward(); opt.step()``
on a batch of random images under ``use_impl(impl)``. Validation compares the loss and every
parameter gradient of the first step (same seed, same weights) with the numba implementation's
(each op is validated against its reference separately, in the other files; the reference is far
too slow for a whole network). Work: images per second. PyTorch has no twin of these models here.

Run alone: ``python benchmarks/bench_models.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, device_of, seed_of

OP = "models"
MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "unet-valid", "deeplabv3plus", "pspnet", "segnet")
NUM_CLASSES = 4


class ModelCase(Case):
    """One training step of ``models.create(name, ...)`` on an (N, 3, H, W) batch."""

    def __init__(self, model: str, N: int, HW: int, kwargs: dict[str, Any] | None = None) -> None:
        self.model, self.N, self.HW, self.kwargs = model, N, HW, dict(kwargs or {})
        self.op, self.mode, self.kind = OP, "step", "samples"
        self.name = f"{OP}/{model}/{N}x3x{HW}x{HW}/step"
        self.work, self.rate_unit = float(N), "images"
        self.dtype = np.dtype(np.float32)
        self.needs, self.ref_cost = ("models.create",), float("inf")
        self.tags = dict(model=model, N=N, H=HW)
        # whole networks in float32: summation orders differ across dozens of layers
        self.tolerance = (2e-2, 2e-3)

    def pending(self) -> str | None:
        try:
            import minisegnet.models as M
            from minisegnet import optim  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"minisegnet.models not importable yet ({type(e).__name__})"
        if not hasattr(M, "create"):
            return "minisegnet.models.create not written yet"
        try:
            M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        except Exception as e:  # noqa: BLE001
            return f"models.create({self.model!r}) fails: {type(e).__name__}: {e}"
        return None

    def torch_unavailable(self) -> str | None:
        return "no PyTorch twin of the model"

    def runner(self, impl: str):
        import minisegnet as msn
        import minisegnet.functional as F
        import minisegnet.models as M
        from minisegnet import optim
        from minisegnet.backend import to_device

        device = device_of(impl)
        msn.manual_seed(0)  # the same initial weights for every implementation
        model = M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        if device == "cuda":
            model.to("cuda")
        H = W = self.HW
        size_for = getattr(model, "input_size_for", None)
        if callable(size_for) and self.model.endswith("valid"):
            H, W = size_for(self.HW, self.HW)  # the input whose output is HW x HW
        rng = np.random.default_rng(seed_of(self.name))
        x = to_device(rng.standard_normal((self.N, 3, H, W)).astype(np.float32), device)
        params = list(model.parameters())
        opt = optim.SGD(params, lr=1e-3, momentum=0.9)
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            with msn.use_impl(impl):
                msn.manual_seed(1)  # dropout masks identical across implementations
                opt.zero_grad()
                logits = model(msn.Tensor(x))
                if "target" not in state:
                    n, _, h, w = logits.shape
                    t = np.random.default_rng(seed_of(self.name) + 1).integers(0, NUM_CLASSES, (n, h, w))
                    state["target"] = to_device(t, device)
                loss = F.cross_entropy(logits, msn.Tensor(state["target"]))
                loss.backward()
                outs = [loss.data] + [p.grad for p in params]
                opt.step()
                return outs

        return call


def cases(quick: bool) -> list[Case]:
    if quick:
        return [ModelCase(m, 1, 32 if m != "unet-valid" else 4,
                          {"base_channels": 8} if m.startswith("unet") else None) for m in MODELS]
    return [ModelCase(m, 2, 128 if m != "unet-valid" else 68) for m in MODELS]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
