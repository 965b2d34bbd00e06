"""End to end: small models train with SGD and Adam, and their checkpoints round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor, no_grad, optim


def spiral(n_per_class=100, seed=0):
    """Two interleaved spirals in 2-D: not linearly separable."""
    r = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(2):
        t = np.linspace(0.25, 3.5, n_per_class)
        angle = t * 2.2 + c * np.pi + r.normal(0, 0.1, n_per_class)
        xs.append(np.stack([t * np.cos(angle), t * np.sin(angle)], 1) / 3.5)
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


class MLP(nn.Module):
    def __init__(self, d_in, hidden, k):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, k)

    def forward(self, x):
        return self.fc2(F.tanh(self.fc1(x)))


def make_opt(name, params, sgd_lr=0.5, adam_lr=0.02):
    if name == "sgd":
        return optim.SGD(params, lr=sgd_lr, momentum=0.9)
    return optim.Adam(params, lr=adam_lr)


def train(model, opt, loss_fn, steps, sched=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_mlp_learns_a_spiral(opt_name, tmp_path):
    msn.manual_seed(0)
    x, y = spiral()
    model = MLP(2, 32, 2)
    opt = make_opt(opt_name, model.parameters())
    losses = train(model, opt, lambda: F.cross_entropy(model(Tensor(x)), y), 300)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    with no_grad():
        acc = (model(Tensor(x)).numpy().argmax(1) == y).mean()
    assert acc > 0.9

    path = tmp_path / "mlp.npz"
    msn.save(model, path)
    msn.manual_seed(123)
    fresh = MLP(2, 32, 2)
    fresh.load_state_dict(msn.load(path))
    for k, v in model.state_dict().items():
        assert fresh.state_dict()[k].tobytes() == v.tobytes(), k
    np.testing.assert_array_equal(fresh(Tensor(x)).numpy(), model(Tensor(x)).numpy())


class PixelLinear(nn.Module):
    """A 1x1 convolution written as a matmul: (N, C, H, W) -> (N*H*W, C) @ W.T -> (N, K, H, W)."""

    def __init__(self, c, k):
        super().__init__()
        self.proj = nn.Linear(c, k)

    def forward(self, x):
        n, c, h, w = x.shape
        pix = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N*H*W, C)
        logits = self.proj(pix)  # (N*H*W, K)
        return logits.reshape(n, h, w, -1).permute(0, 3, 1, 2)  # (N, K, H, W)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_per_pixel_linear_classifier(opt_name):
    r = np.random.default_rng(1)
    n, c, k, h, w = 4, 3, 4, 8, 8
    x = r.standard_normal((n, c, h, w)).astype(np.float32)
    true_w = r.standard_normal((k, c)) * 3
    y = np.einsum("kc,nchw->nkhw", true_w, x).argmax(1)  # (N, H, W) labels a 1x1 conv can fit
    y[:, :1, :] = 255  # an ignored border row
    cw = np.array([1.0, 2.0, 1.0, 0.5], np.float32)
    msn.manual_seed(2)
    model = PixelLinear(c, k)
    opt = make_opt(opt_name, model.parameters(), adam_lr=0.1)
    sched = optim.PolyLR(opt, max_iters=300)
    losses = train(
        model,
        opt,
        lambda: F.cross_entropy(model(Tensor(x)), y, weight=cw, ignore_index=255),
        300,
        sched,
    )
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    pred = model(Tensor(x)).numpy().argmax(1)
    assert (pred == y)[y != 255].mean() > 0.9


def test_mlp_with_batchnorm_and_dropout_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    r = np.random.default_rng(3)
    order = r.permutation(len(x))
    train_idx, test_idx = order[:1200], order[1200:]
    msn.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10)
    )
    opt = optim.AdamW(model.parameters(), lr=0.01)
    first = last = None
    for _epoch in range(6):
        perm = r.permutation(train_idx)
        for i in range(0, len(perm), 100):
            b = perm[i : i + 100]
            opt.zero_grad()
            loss = F.cross_entropy(model(Tensor(x[b])), y[b])
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
            last = loss.item()
    assert last < 0.5 * first
    model.eval()
    with no_grad():
        acc = (model(Tensor(x[test_idx])).numpy().argmax(1) == y[test_idx]).mean()
    assert acc > 0.85


@pytest.mark.cuda
@pytest.mark.skipif(msn.backend.cupy_module() is None, reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_cuda_training_matches_cpu(opt_name):
    """The same steps on CuPy arrays and on NumPy arrays give the same parameters (float64)."""
    x, y = spiral(50)
    x = x.astype(np.float64)
    runs = []
    for device in ("cpu", "cuda"):
        msn.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 2))
        model.double().to(device)
        opt = make_opt(opt_name, model.parameters())
        xt = Tensor(x).to(device)
        cw = np.array([1.0, 2.0])
        train(model, opt, lambda m=model, xt=xt, cw=cw: F.cross_entropy(m(xt), y, weight=cw), 5)
        assert model.device == device
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_allclose(runs[1][k], runs[0][k], rtol=1e-9, atol=1e-12, err_msg=k)
