"""Optimizers against their update formulas written here in NumPy; schedules against theirs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minisegnet.nn as nn
from minisegnet import optim


def grads(n_steps, shape, seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal(shape) for _ in range(n_steps)]


def run(opt_cls, p0, gs, **kw):
    p = nn.Parameter(p0.copy())
    opt = opt_cls([p], **kw)
    data_id = id(p.data)
    for g in gs:
        p.grad = g.copy()
        opt.step()
    assert id(p.data) == data_id  # updated in place
    return p.data


# ---- reference loops (PyTorch's documented algorithms) ------------------------------------------


def ref_sgd(p, gs, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in gs:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def ref_adam(
    p, gs, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False
):
    p, m, v, vmax = p.copy(), 0.0, 0.0, 0.0
    for t, g in enumerate(gs, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g**2
        m_hat = m / (1 - betas[0] ** t)
        vmax = np.maximum(vmax, v) if amsgrad else v
        v_hat = vmax / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    dict(lr=0.1, weight_decay=0.1),
]


@pytest.mark.parametrize(
    "kw", SGD_CASES, ids=["plain", "momentum", "dampening", "nesterov", "nesterov-wd", "wd"]
)
def test_sgd_matches_formula(kw):
    p0, gs = np.random.default_rng(1).standard_normal((3, 2)), grads(6, (3, 2))
    np.testing.assert_allclose(run(optim.SGD, p0, gs, **kw), ref_sgd(p0, gs, **kw), rtol=1e-12)


def test_sgd_worked_example():
    # p = 1, grad = 2, lr = 0.1: 1 - 0.2 = 0.8; with momentum 0.9 the second step moves 0.1 * 3.8
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.array([2.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.8])
    p.grad = np.array([2.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.8 - 0.1 * (0.9 * 2 + 2)])


ADAM_CASES = [
    (optim.Adam, dict(lr=1e-2), {}),
    (optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), {}),
    (optim.Adam, dict(lr=1e-2, amsgrad=True), dict(amsgrad=True)),
    (optim.AdamW, dict(lr=1e-2), dict(decoupled=True, weight_decay=1e-2)),  # default decay 0.01
    (
        optim.AdamW,
        dict(lr=1e-2, weight_decay=0.5, amsgrad=True),
        dict(decoupled=True, amsgrad=True),
    ),
]


@pytest.mark.parametrize(
    "cls, kw, extra", ADAM_CASES, ids=["adam", "adam-l2", "adam-amsgrad", "adamw", "adamw-amsgrad"]
)
def test_adam_family_matches_formula(cls, kw, extra):
    p0, gs = np.random.default_rng(2).standard_normal((4,)), grads(7, (4,), seed=3)
    ref_kw = {**kw, **extra}
    np.testing.assert_allclose(run(cls, p0, gs, **kw), ref_adam(p0, gs, **ref_kw), rtol=1e-11)


def test_adam_first_step_is_lr_times_sign():
    # m_hat = g and v_hat = g^2 after one step, so the update is lr * g / (|g| + eps)
    p0 = np.zeros(4)
    g = np.array([3.0, -0.5, 1e-3, -20.0])
    np.testing.assert_allclose(run(optim.Adam, p0, [g], lr=0.01), -0.01 * np.sign(g), rtol=1e-4)


def test_adamw_decay_is_decoupled_from_the_gradient():
    # with a zero gradient Adam's L2 term still moves p through m/v, AdamW just shrinks p
    p0, zero = np.array([2.0]), [np.zeros(1)]
    np.testing.assert_allclose(
        run(optim.AdamW, p0, zero, lr=0.1, weight_decay=0.5), [2.0 * (1 - 0.05)]
    )
    np.testing.assert_allclose(
        run(optim.Adam, p0, zero, lr=0.1, weight_decay=0.5), [2.0 - 0.1], rtol=1e-6
    )


def test_float32_stays_float32_and_missing_grads_are_skipped():
    a = nn.Parameter(np.ones(3, np.float32))
    b = nn.Parameter(np.ones(2, np.float32))
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        opt = cls([a, b], lr=0.1)
        a.grad, b.grad = np.ones(3, np.float32), None
        opt.step()
        assert a.dtype == np.float32 and a.data.dtype == np.float32
        np.testing.assert_array_equal(b.data, 1.0)
        opt.zero_grad()
        assert a.grad is None


def test_param_groups_have_their_own_lr():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1, momentum=0.5)
    assert opt.param_groups[1]["momentum"] == 0.5  # filled from defaults
    a.grad = b.grad = np.ones(1)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [-0.1, -1.0])
    assert "Parameter Group 1" in repr(opt)


def test_optimizer_bad_input():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="element 0"):
        optim.Adam([np.zeros(2)])


@pytest.mark.parametrize(
    "cls, kw",
    [(optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.Adam, dict(lr=0.05))],
    ids=["sgd", "adam"],
)
def test_state_dict_resumes_exactly(cls, kw):
    gs = grads(6, (3,), seed=4)
    p0 = np.random.default_rng(5).standard_normal(3)
    straight = run(cls, p0, gs, **kw)

    p = nn.Parameter(p0.copy())
    opt = cls([p], **kw)
    for g in gs[:3]:
        p.grad = g.copy()
        opt.step()
    sd = opt.state_dict()
    q = nn.Parameter(p.data.copy())  # a fresh parameter and optimizer, as after a restart
    opt2 = cls([q], **kw)
    opt2.load_state_dict(sd)
    for g in gs[3:]:
        q.grad = g.copy()
        opt2.step()
    np.testing.assert_array_equal(q.data, straight)
    with pytest.raises(ValueError, match="parameter groups"):
        cls([q, nn.Parameter(np.zeros(1))], **kw).load_state_dict(sd)


# ---- schedules ----------------------------------------------------------------------------------


def lrs(sched, n):
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def _opt(lr=0.1):
    return optim.SGD([nn.Parameter(np.zeros(1))], lr=lr)


def test_poly_lr():
    opt = _opt(0.1)
    got = lrs(optim.PolyLR(opt, max_iters=10, power=0.9), 12)
    expected = [0.1 * max(1 - t / 10, 0) ** 0.9 for t in range(13)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[10] == 0.0 and got[12] == 0.0  # stays at 0 after max_iters
    assert opt.param_groups[0]["lr"] == got[-1]
    with pytest.raises(ValueError, match="max_iters"):
        optim.PolyLR(_opt(), max_iters=0)


def test_cosine_annealing_lr():
    got = lrs(optim.CosineAnnealingLR(_opt(0.2), T_max=8, eta_min=0.02), 8)
    np.testing.assert_allclose(got[0], 0.2)
    np.testing.assert_allclose(got[4], (0.2 + 0.02) / 2)  # halfway
    np.testing.assert_allclose(got[8], 0.02)
    expected = [0.02 + 0.18 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_step_lr_and_groups():
    groups = [
        {"params": [nn.Parameter(np.zeros(1))]},
        {"params": [nn.Parameter(np.zeros(1))], "lr": 1.0},
    ]
    opt = optim.SGD(groups, lr=0.1)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(5):
        sched.step()
    np.testing.assert_allclose(sched.get_last_lr(), [0.1 * 0.25, 1.0 * 0.25])
    sd = sched.state_dict()
    sched2 = optim.StepLR(opt, step_size=2, gamma=0.5)
    sched2.load_state_dict(sd)
    assert sched2.last_epoch == 5


@pytest.mark.parametrize(
    "cls, kw, extra", ADAM_CASES, ids=["adam", "adam-l2", "adam-amsgrad", "adamw", "adamw-amsgrad"]
)
def test_adam_in_chunks_matches_formula(monkeypatch, cls, kw, extra):
    # a parameter of several chunks and a partial last one (ADAM_CHUNK made small)
    monkeypatch.setattr(optim, "ADAM_CHUNK", 7)
    p0, gs = np.random.default_rng(4).standard_normal((5, 9)), grads(5, (5, 9), seed=5)
    np.testing.assert_allclose(run(cls, p0, gs, **kw), ref_adam(p0, gs, **{**kw, **extra}),
                               rtol=1e-11)


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, amsgrad=True)])
def test_adam_chunks_are_bitwise_the_whole_array_update(monkeypatch, kw):
    # float32: the chunked path (C-contiguous parameter) and the whole-array path (a Fortran-
    # ordered one) do the same operations in the same order
    monkeypatch.setattr(optim, "ADAM_CHUNK", 16)
    g = np.random.default_rng(6)
    p0 = g.standard_normal((9, 11)).astype(np.float32)
    a = nn.Parameter(np.ascontiguousarray(p0))
    b = nn.Parameter(np.asfortranarray(p0))
    oa, ob = optim.Adam([a], lr=1e-2, **kw), optim.Adam([b], lr=1e-2, **kw)
    for _ in range(4):
        grad = g.standard_normal(p0.shape).astype(np.float32)
        a.grad, b.grad = grad.copy(), np.asfortranarray(grad)
        oa.step()
        ob.step()
    assert a.data.flags.c_contiguous and b.data.flags.f_contiguous
    np.testing.assert_array_equal(a.data, b.data)
