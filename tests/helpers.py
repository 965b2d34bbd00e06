"""The helpers every op test shares (test files hold only cases):

* ``assert_close``: shape, dtype, then values within the dtype's tolerance;
* ``impls(kernel)``: pytest params of the implementations a kernel has (``cuda`` marked), to
  parametrize ``impl`` with; ``without=("reference",)`` where the reference is the oracle, so that
  no case compares the reference with itself; ``missing_impls`` for the NotImplementedError cases;
* ``numba_threads(n)``: run with exactly n Numba threads (fails, never skips, when n cannot be had);
* ``check_bad_input``: the SPEC's "Bad input" check, one call per table row;
* ``check_op(shapes, ours, torch_fn)``: tinygrad's ``helper_test_op``: the same inputs through
  minisegnet and PyTorch, forward values and every gradient compared;
* ``run_with_memory_limit``: run code in a child process under an address-space cap;
* models (``tests/test_models.py``, ``tests/test_<family>.py``): ``TINY`` instances and ``tiny``,
  ``model_params``, a real image batch (``coins_batch``), ``overfit``, ``gradcheck_module``
  through a module's parameters, ``check_torch_parity`` with the PyTorch twins in
  ``benchmarks/torch_models.py`` (``needs_torch``);
* shared constants: ``HYP`` (hypothesis settings), ``DTYPES``, ``SMALL``, ``out_len``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SIMULATOR
from hypothesis import HealthCheck, settings

import minisegnet as msn
import minisegnet.functional as F  # registers every kernel (impls() reads the registry)
from minisegnet import models, nn
from minisegnet.testing import gradcheck

# The `impl` parameter is a plain string: sharing it across hypothesis examples is safe.
HYP = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
DTYPES = [np.float32, np.float64]
SMALL = 4 if SIMULATOR else 7  # largest side of drawn maps: the simulator runs few threads/second

# Tolerances for comparing two implementations of the same op. float32 sums of a few hundred terms
# differ in the last bits depending on summation order; scale atol by the magnitude involved.
TOL = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-10, 1e-12)}


def out_len(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """SPEC conv2d / max_pool2d / avg_pool2d: H_out = floor((H + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transpose_out_len(size: int, k: int, s: int, p: int, op: int, d: int) -> int:
    """SPEC conv_transpose2d: H_out = (H - 1)s - 2p + d(k-1) + output_padding + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def assert_close(actual, expected, dtype=None, scale: float = 1.0, what: str = "") -> None:
    """Shape, dtype, then values within the dtype's tolerance (atol scaled by ``scale``)."""
    actual = msn.backend.to_numpy(actual)
    expected = msn.backend.to_numpy(expected)
    assert actual.shape == expected.shape, f"{what} shape {actual.shape} != {expected.shape}"
    dt = np.dtype(dtype or expected.dtype)
    assert actual.dtype == expected.dtype, f"{what} dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOL.get(dt, (0, 0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1.0),
                               err_msg=what)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- implementations ------------------------------------------------------------------------


def _param(impl: str) -> Any:
    return pytest.param(impl, id=impl, marks=[pytest.mark.cuda] if impl == "cuda" else [])


def impls(kernel: str, without: Sequence[str] = ()) -> list[Any]:
    """Params for ``@pytest.mark.parametrize("impl", ...)``: the implementations registered for
    ``kernel`` (read from the registry, so a new one is tested at once), minus ``without``."""
    return [_param(i) for i in msn.backend.implementations(kernel) if i not in without]


def missing_impls(kernel: str) -> list[Any]:
    """Params of the implementations ``kernel`` lacks (each must raise NotImplementedError)."""
    have = msn.backend.implementations(kernel)
    return [_param(i) for i in msn.backend.IMPLEMENTATIONS if i not in have]


@contextlib.contextmanager
def numba_threads(n: int) -> Iterator[None]:
    """Run the block with exactly ``n`` Numba threads (the CPU pool's worker count). tests/conftest
    starts Numba with 2+ threads even on a one-core runner, so 2 is always there."""
    import numba

    have = numba.config.NUMBA_NUM_THREADS
    assert have >= n, f"this test needs {n} Numba threads, NUMBA_NUM_THREADS is {have}"
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ---- bad input --------------------------------------------------------------------------------


def check_bad_input(fn: Callable[..., Any], defaults: dict[str, Any], kwargs: dict[str, Any],
                    exc: type[Exception] | None, words: Sequence[str]) -> None:
    """``fn(**defaults, **kwargs)`` raises ``exc`` whose message holds every one of ``words``
    (SPEC "Bad input": the argument's name and the shapes or values involved); ``exc=None``
    marks a table row of valid edge input, which must not raise."""
    if exc is None:
        fn(**{**defaults, **kwargs})
        return
    with pytest.raises(exc) as info:
        fn(**{**defaults, **kwargs})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ---- PyTorch comparison -----------------------------------------------------------------------


def check_op(shapes: Sequence[tuple[int, ...]], ours: Callable[..., Any],
             torch_fn: Callable[..., Any], *, inputs: Sequence[np.ndarray] | None = None,
             dtype: Any = np.float64, seed: int = 0, exact: bool = False,
             grad: bool = True, scale: float = 1.0) -> None:
    """tinygrad's ``helper_test_op``: random float inputs of ``shapes`` (or the given ``inputs``)
    go through ``ours`` (minisegnet Tensors) and ``torch_fn`` (torch tensors). Every output (a
    tuple's later items, such as indices, exactly) must match in shape, dtype and value, and, with
    ``grad``, the gradients of every float input for the same random output gradient."""
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(seed)
    arrays = list(inputs) if inputs is not None else [
        r.standard_normal(s).astype(dtype) for s in shapes]
    floats = [a.dtype.kind == "f" and grad for a in arrays]
    ts = [msn.Tensor(a, requires_grad=f) for a, f in zip(arrays, floats)]
    tt = [torch.tensor(a, requires_grad=f) for a, f in zip(arrays, floats)]
    ys, yts = ours(*ts), torch_fn(*tt)
    ys = ys if isinstance(ys, tuple) else (ys,)
    yts = yts if isinstance(yts, tuple) else (yts,)
    assert len(ys) == len(yts), (len(ys), len(yts))
    for i, (y, yt) in enumerate(zip(ys, yts)):
        expected = yt.detach().numpy()
        if exact or i > 0:
            got = y.numpy()
            assert got.shape == expected.shape and got.dtype == expected.dtype, (i, got.dtype)
            np.testing.assert_array_equal(got, expected, err_msg=f"output {i}")
        else:
            assert_close(y.numpy(), expected, scale=scale, what=f"output {i}")
    if not grad:
        return
    gy = r.standard_normal(ys[0].shape).astype(ys[0].dtype)
    ys[0].backward(gy)
    yts[0].backward(torch.tensor(gy))
    for i, (t, tt_) in enumerate(zip(ts, tt)):
        if t.requires_grad:
            assert_close(t.grad, tt_.grad.numpy(), scale=scale, what=f"gradient of input {i}")


# ---- resource limits -------------------------------------------------------------------------


def run_with_memory_limit(setup: str, body: str, budget_mb: int = 1500,
                          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``setup`` (imports, warm-up calls: compiling is not what is measured), then cap the
    child's address space at what it uses plus ``budget_mb`` (``RLIMIT_AS``), then run ``body``;
    the child prints "ok" at the end. A runaway allocation fails inside the child, never the
    machine. Returns the finished process (check ``returncode`` and ``stdout``)."""
    code = "\n".join([
        "import resource, numpy as np, minisegnet as msn, minisegnet.functional as F",
        setup,
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize'))",
        f"cap = (vm + {int(budget_mb)} * 1024) * 1024",
        "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))",
        body,
        "print('ok')",
    ])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


# ---- models ---------------------------------------------------------------------------------

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
