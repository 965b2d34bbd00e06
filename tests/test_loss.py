"""Losses: values against NumPy written here, gradients by gradcheck, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor
from minisegnet.testing import gradcheck

IGNORE = 255


def np_cross_entropy(x, t, weight=None, ignore_index=-100, reduction="mean"):
    """Straight from the definition, class axis 1: -w * log(softmax(x))[target]."""
    xm = np.moveaxis(x, 1, -1)  # (N, ..., K)
    logp = xm - np.log(np.exp(xm).sum(-1, keepdims=True))  # moderate logits: no shift needed
    valid = t != ignore_index
    tc = np.where(valid, t, 0)
    lp = np.take_along_axis(logp, tc[..., None], -1)[..., 0]
    if weight is None:
        w = np.ones(t.shape)
    elif weight.shape == (x.shape[1],):
        w = weight[tc]
    else:
        w = weight
    w = w * valid
    loss = -w * lp
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / w.sum()


def case(n=2, k=4, hw=(3, 2), seed=0, ignore_frac=0.0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, k) + hw)
    t = r.integers(0, k, (n,) + hw)
    if ignore_frac:
        t[r.random(t.shape) < ignore_frac] = IGNORE
    return x, t


# ---- cross_entropy ------------------------------------------------------------------------------


def test_cross_entropy_worked_example():
    # softmax([0, ln 3]) = [1/4, 3/4]: the loss of class 1 is -ln(3/4), of class 0 is ln 4
    x = Tensor(np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]]))
    loss = F.cross_entropy(x, np.array([1, 0]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [-math.log(0.75), math.log(4.0)], rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("hw", [(), (3, 2)])
def test_cross_entropy_matches_numpy_and_gradcheck(reduction, hw):
    x, t = case(hw=hw, seed=1)
    out = F.cross_entropy(Tensor(x), t, reduction=reduction)
    np.testing.assert_allclose(
        out.numpy(), np_cross_entropy(x, t, reduction=reduction), rtol=1e-12, atol=1e-14
    )
    assert gradcheck(lambda z: F.cross_entropy(z, t, reduction=reduction), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_class_weights_and_ignore_index(reduction):
    x, t = case(seed=2, ignore_frac=0.3)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    out = F.cross_entropy(Tensor(x), t, weight=w, ignore_index=IGNORE, reduction=reduction)
    expected = np_cross_entropy(x, t, w, IGNORE, reduction)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda z: F.cross_entropy(z, t, w, IGNORE, reduction), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_per_pixel_weight_map(reduction):
    x, t = case(n=2, k=3, hw=(4, 3), seed=3, ignore_frac=0.2)
    wmap = np.random.default_rng(4).uniform(0.1, 5.0, t.shape)  # U-Net's border weights
    out = F.cross_entropy(Tensor(x), t, weight=wmap, ignore_index=IGNORE, reduction=reduction)
    np.testing.assert_allclose(
        out.numpy(), np_cross_entropy(x, t, wmap, IGNORE, reduction), rtol=1e-12, atol=1e-14
    )
    assert gradcheck(lambda z: F.cross_entropy(z, t, wmap, IGNORE, reduction), [x])


@given(
    n=st.integers(1, 3),
    k=st.integers(1, 4),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_drawn_shapes(n, k, h, w, seed):
    x, t = case(n, k, (h, w), seed, ignore_frac=0.25)
    wmap = np.random.default_rng(seed).uniform(0.5, 2.0, t.shape)
    if not (t != IGNORE).any():
        t[0, 0, 0] = 0  # keep at least one counted pixel: the mean of nothing is NaN
    np.testing.assert_allclose(
        F.cross_entropy(Tensor(x), t, wmap, IGNORE).numpy(),
        np_cross_entropy(x, t, wmap, IGNORE),
        rtol=1e-12,
        atol=1e-14,
    )
    assert gradcheck(lambda z: F.cross_entropy(z, t, wmap, IGNORE), [x])


def test_cross_entropy_float32_large_logits_and_all_ignored():
    x = np.array([[[[1000.0]], [[-1000.0]], [[0.0]]]], np.float32)  # (1, 3, 1, 1)
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, np.array([[[1]]]))
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), 2000.0)
    loss.backward()
    assert xt.grad.dtype == np.float32
    np.testing.assert_allclose(xt.grad.ravel(), [1.0, -1.0, 0.0], atol=1e-6)
    # every pixel ignored: the mean divides 0 by 0, NaN as in PyTorch
    with np.errstate(invalid="ignore"):
        assert np.isnan(
            F.cross_entropy(Tensor(x), np.array([[[IGNORE]]]), ignore_index=IGNORE).item()
        )


def test_cross_entropy_equals_nll_of_log_softmax():
    x, t = case(seed=5, ignore_frac=0.2)
    w = np.array([1.0, 2.0, 0.5, 1.5])
    for red in ("mean", "sum", "none"):
        a = F.cross_entropy(Tensor(x), t, w, IGNORE, red).numpy()
        b = F.nll_loss(F.log_softmax(Tensor(x), 1), t, w, IGNORE, red).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert gradcheck(lambda z, red=red: F.nll_loss(z, t, w, IGNORE, red), [x])


def test_cross_entropy_bad_input():
    x = Tensor(np.zeros((2, 3, 4, 4)))
    t = np.zeros((2, 4, 4), np.int64)
    t[1, 2, 3] = 3
    with pytest.raises(ValueError, match=r"target: labels must be in \[0, 3\).*\[3\]"):
        F.cross_entropy(x, t)
    t[1, 2, 3] = -1
    with pytest.raises(ValueError, match=r"target: labels must be in \[0, 3\).*\[-1\]"):
        F.cross_entropy(x, t)
    t[1, 2, 3] = 0
    with pytest.raises(TypeError, match="target: .*integer"):
        F.cross_entropy(x, t.astype(np.float32))
    with pytest.raises(ValueError, match=r"target: shape \(2, 4\).*expected \(2, 4, 4\)"):
        F.cross_entropy(x, t[:, 0])
    with pytest.raises(ValueError, match=r"weight: shape \(4,\)"):
        F.cross_entropy(x, t, weight=np.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="input"):
        F.cross_entropy(Tensor(np.zeros(3)), np.zeros(3, np.int64))


# ---- binary cross-entropy with logits -----------------------------------------------------------


def np_bce(x, t, w=None, pw=None):
    s = 1 / (1 + np.exp(-x))
    pw = 1.0 if pw is None else pw
    loss = -(pw * t * np.log(s) + (1 - t) * np.log(1 - s))
    return loss if w is None else loss * w


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_numpy_and_gradcheck(reduction):
    r = np.random.default_rng(6)
    x = r.standard_normal((3, 4)) * 2
    t = r.uniform(0, 1, (3, 4))
    w = r.uniform(0.5, 2, (3, 1))  # broadcast over the last axis
    pw = np.array([1.0, 2.0, 0.5, 3.0])  # per class (the last axis)
    for ww, pp in ((None, None), (w, None), (None, pw), (w, pw)):
        expected = np_bce(x, t, ww, pp)
        expected = {"none": expected, "sum": expected.sum(), "mean": expected.mean()}[reduction]
        got = F.binary_cross_entropy_with_logits(Tensor(x), t, ww, pp, reduction)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
        # differentiable in the logits and in the target
        assert gradcheck(
            lambda a, b, ww=ww, pp=pp: F.binary_cross_entropy_with_logits(a, b, ww, pp, reduction),
            [x, t],
        )


def test_bce_with_logits_is_stable():
    x = Tensor(np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], np.float32), requires_grad=True)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        loss.sum().backward()
    # -log(sigmoid(-1000)) = 1000, -log(1 - sigmoid(-30)) ~ 1e-13, log 2, ~1e-13, 1000
    np.testing.assert_allclose(loss.numpy(), [1000.0, 0.0, math.log(2), 0.0, 1000.0], atol=1e-5)
    np.testing.assert_allclose(x.grad, [-1.0, 0.0, -0.5, 0.0, 1.0], atol=1e-6)  # sigmoid(x) - t


def test_bce_bad_input():
    with pytest.raises(ValueError, match=r"target: shape \(3,\) must equal.*\(2,\)"):
        F.binary_cross_entropy_with_logits(Tensor(np.zeros(2)), np.zeros(3))
    with pytest.raises(ValueError, match="pos_weight"):
        F.binary_cross_entropy_with_logits(
            Tensor(np.zeros((2, 3))), np.zeros((2, 3)), pos_weight=np.ones(2)
        )


# ---- soft Dice ----------------------------------------------------------------------------------


def np_dice(p, onehot, eps=1.0):
    axes = tuple(range(2, p.ndim))
    inter = (p * onehot).sum(axes)
    return 1 - (2 * inter + eps) / (p.sum(axes) + onehot.sum(axes) + eps)  # (N, K)


def test_dice_loss_labels_match_onehot_and_gradcheck():
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 3, 4, 4))
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    t = r.integers(0, 3, (2, 4, 4))
    onehot = np.moveaxis(np.eye(3)[t], -1, 1)  # (N, K, H, W)
    expected = np_dice(p, onehot, 1.0)
    np.testing.assert_allclose(
        F.dice_loss(Tensor(p), t, reduction="none").numpy(), expected, rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        F.dice_loss(Tensor(p), onehot).numpy(), expected.mean(), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        F.dice_loss(Tensor(p), t, reduction="sum").numpy(), expected.sum(), rtol=1e-12, atol=1e-14
    )
    assert gradcheck(lambda z: F.dice_loss(F.softmax(z, 1), t), [x])
    assert gradcheck(lambda z: F.dice_loss(z, onehot, eps=0.5), [p])


def test_dice_loss_perfect_prediction_and_ignore_index():
    t = np.array([[[0, 1], [2, IGNORE]]])
    onehot = np.moveaxis(np.eye(3)[np.where(t == IGNORE, 0, t)], -1, 1)
    p = onehot.copy()
    p[0, :, 1, 1] = [0.2, 0.3, 0.5]  # the ignored pixel's prediction must not matter
    loss = F.dice_loss(Tensor(p), t, eps=1e-6, ignore_index=IGNORE)
    assert abs(loss.item()) < 1e-6
    assert gradcheck(lambda z: F.dice_loss(z, t, ignore_index=IGNORE), [p])


def test_dice_loss_single_channel_binary():
    r = np.random.default_rng(8)
    x = r.standard_normal((2, 1, 3, 3))
    t = r.integers(0, 2, (2, 3, 3))
    s = 1 / (1 + np.exp(-x))
    expected = np_dice(s, t[:, None].astype(float)).mean()
    np.testing.assert_allclose(
        nn.DiceLoss()(Tensor(x), t).numpy(), expected, rtol=1e-12, atol=1e-14
    )
    with pytest.raises(ValueError, match="target: labels"):
        F.dice_loss(Tensor(s), t + 1)


def test_dice_bad_input():
    with pytest.raises(ValueError, match="target: a float target"):
        F.dice_loss(Tensor(np.ones((1, 2, 3, 3))), np.ones((1, 2, 3, 2)))
    with pytest.raises(ValueError, match="target: labels"):
        F.dice_loss(Tensor(np.ones((1, 2, 3, 3))), np.full((1, 3, 3), 2))


# ---- loss modules -------------------------------------------------------------------------------


def test_loss_modules_match_functional():
    x, t = case(seed=9, ignore_frac=0.2)
    cw = np.array([1.0, 2.0, 0.5, 1.5])
    wmap = np.random.default_rng(10).uniform(0.5, 2, t.shape)
    crit = nn.CrossEntropyLoss(weight=cw, ignore_index=IGNORE)
    np.testing.assert_allclose(
        crit(Tensor(x), t).numpy(), F.cross_entropy(Tensor(x), t, cw, IGNORE).numpy()
    )
    # class weights and a per-pixel map multiply
    combined = wmap * cw[np.where(t == IGNORE, 0, t)]
    np.testing.assert_allclose(
        crit(Tensor(x), t, weight=wmap).numpy(),
        np_cross_entropy(x, t, combined, IGNORE),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        nn.NLLLoss()(F.log_softmax(Tensor(x), 1), np.where(t == IGNORE, 0, t)).numpy(),
        np_cross_entropy(x, np.where(t == IGNORE, 0, t)),
        rtol=1e-12,
    )
    r = np.random.default_rng(11)
    z, y = r.standard_normal((4, 3)), r.uniform(0, 1, (4, 3))
    np.testing.assert_allclose(
        nn.BCEWithLogitsLoss(pos_weight=np.array([1.0, 2.0, 3.0]))(Tensor(z), y).numpy(),
        np_bce(z, y, pw=np.array([1.0, 2.0, 3.0])).mean(),
        rtol=1e-10,
    )
    p = F.softmax(Tensor(x), 1)
    tt = np.where(t == IGNORE, 0, t)
    np.testing.assert_allclose(nn.DiceLoss()(Tensor(x), tt).numpy(), F.dice_loss(p, tt).numpy())
    np.testing.assert_allclose(
        nn.DiceLoss(from_logits=False)(p, tt).numpy(), F.dice_loss(p, tt).numpy()
    )
    assert "ignore_index=255" in repr(crit)
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="bogus")
