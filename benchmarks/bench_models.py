"""models: one training step of each segmentation model (forward, cross-entropy, backward, SGD).

``minisegnet.models.create(name, num_classes=4, in_channels=3)`` for every name SPEC lists, one
step ``opt.zero_grad(); loss = F.cross_entropy(model(x), target); loss.backward(); opt.step()``
on a batch of random images under ``use_impl(impl)``. Validation compares the loss and every
parameter gradient of the first step (same seed, same weights) with the numba implementation's
(each op is validated against its reference separately, in the other files; the reference is far
too slow for a whole network). Work: images per second.

PyTorch: the same network written in PyTorch (``benchmarks/torch_models.py``, the twins the
parity tests use), with our initial weights copied in, the same batch and the same SGD step; its
loss and gradients are validated against ours like any implementation. Dropout is off
(``dropout=0``) so that the step is deterministic across frameworks. A model without a twin
would get "n/a" (every model has one).

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
        # Whole networks in float32: summation orders differ across dozens of layers, and where
        # two values of a max-pool window are within float32 rounding of each other the
        # implementations may pick different maxima, moving that pixel's gradient. Measured:
        # FCN-16s, width 8, 1x3x32x32: conv1_1's weight gradient 2.2% of its largest entry
        # apart from PyTorch's in float32, 1e-15 in float64. A wiring error is O(1).
        self.tolerance = (2e-2, 5e-2)

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
        from benchmarks.common import torch_module

        if torch_module() is None:
            return "PyTorch not installed"
        from benchmarks import torch_models

        if not torch_models.has_twin(self.model):
            return f"no PyTorch twin of {self.model} in benchmarks/torch_models.py"
        return None

    def _batch(self, model: Any) -> np.ndarray:
        H = W = self.HW
        size_for = getattr(model, "input_size_for", None)
        if callable(size_for) and self.model.endswith("valid"):
            H, W = size_for(self.HW, self.HW)  # the input whose output is HW x HW
        rng = np.random.default_rng(seed_of(self.name))
        return rng.standard_normal((self.N, 3, H, W)).astype(np.float32)

    def _target(self, shape: tuple[int, ...]) -> np.ndarray:
        n, _, h, w = shape
        return np.random.default_rng(seed_of(self.name) + 1).integers(0, NUM_CLASSES, (n, h, w))

    def runner(self, impl: str):
        if impl.startswith("torch"):
            return self._torch_runner(device_of(impl))
        return self._msn_runner(impl)

    def _torch_runner(self, device: str):
        import torch
        import torch.nn.functional as tF

        import minisegnet as msn
        import minisegnet.models as M
        from benchmarks import torch_models

        msn.manual_seed(0)  # our initial weights, copied into the twin
        ours = M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        twin = torch_models.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        torch_models.load_from(twin, ours).to(device)
        names = [n for n, _ in ours.named_parameters()]  # our order, for the comparison
        x = torch.from_numpy(self._batch(ours)).to(device)
        del ours
        params = dict(twin.named_parameters())
        opt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            opt.zero_grad()
            logits = twin(x)
            if "target" not in state:
                state["target"] = torch.from_numpy(self._target(tuple(logits.shape))).to(device)
            loss = tF.cross_entropy(logits, state["target"])
            loss.backward()
            outs = [loss.detach()] + [params[n].grad.detach().clone() for n in names]
            opt.step()
            return outs

        return call

    def _msn_runner(self, impl: str):
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
        x = to_device(self._batch(model), device)
        params = list(model.parameters())
        opt = optim.SGD(params, lr=1e-3, momentum=0.9)
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            with msn.use_impl(impl):
                msn.manual_seed(1)  # dropout masks identical across implementations
                opt.zero_grad()
                logits = model(msn.Tensor(x))
                if "target" not in state:
                    state["target"] = to_device(self._target(logits.shape), device)
                loss = F.cross_entropy(logits, msn.Tensor(state["target"]))
                loss.backward()
                outs = [loss.data] + [p.grad for p in params]
                opt.step()
                return outs

        return call


# dropout off: the step must be the same computation in every implementation and in PyTorch
NO_DROPOUT = {m: {"dropout": 0.0} for m in ("fcn32s", "fcn16s", "fcn8s", "deeplabv3plus", "pspnet")}
# --quick: narrow instances (FCN's VGG16 alone is 134M parameters)
QUICK_WIDTH = {"fcn32s": {"width": 4}, "fcn16s": {"width": 4}, "fcn8s": {"width": 4},
               "unet": {"base_channels": 8}, "unet-valid": {"base_channels": 8},
               "deeplabv3plus": {"width": 4}, "pspnet": {"width": 4}, "segnet": {"width": 8}}


def cases(quick: bool) -> list[Case]:
    if quick:
        # batch 2: with one image, BatchNorm after DeepLab's ASPP projection removes the
        # image-pooling branch (a per-image constant): its gradient is 0, compared as noise
        return [ModelCase(m, 2, 32 if m != "unet-valid" else 4,
                          {**NO_DROPOUT.get(m, {}), **QUICK_WIDTH[m]}) for m in MODELS]
    return [ModelCase(m, 2, 128 if m != "unet-valid" else 68, NO_DROPOUT.get(m)) for m in MODELS]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
