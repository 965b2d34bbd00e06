"""Batch normalisation (kernels/batch_norm.py, functional/batch_norm.py, nn.BatchNorm2d/1d):
every implementation's four kernels against the reference loops (plain and with the fused ReLU),
the fused ReLU against relu(batch_norm(x)), the layer's values, gradients and
running statistics against PyTorch and against the formula, float64 gradcheck in both modes,
results independent of the thread count, bad input."""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import assert_close, rng
from minisegnet.kernels import batch_norm as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SHAPES = [(3, 4, 5, 6), (2, 3, 7), (5, 3)] if not SIMULATOR else [(2, 3, 3, 4), (4, 2)]
KERNELS = list(K.IMPLS)
# (kernel, fused ReLU form): the statistics have none
KERNEL_FORMS = [(n, False) for n in KERNELS] + [(n, True) for n in KERNELS[1:]]


def data(shape, dtype, seed=0, offset=0.0):
    g = rng(seed)
    return (g.standard_normal(shape) * 2.0 + offset).astype(dtype)


def kernel_args(name, shape, dtype, seed, relu=False):
    """Arguments of one kernel; ``relu``: the fused-ReLU form (the apply's flag, or the output
    ``y`` of a ReLU, about half zeros, that masks gy in the backward kernels)."""
    C = shape[1]
    g = rng(seed + 100)
    x = data(shape, dtype, seed, offset=50.0)  # a mean far from 0: no cancellation allowed
    gy = data(shape, dtype, seed + 1)
    mean, scale, shift, a, b, k = g.standard_normal((6, C))
    mean = mean + 50.0
    y = np.maximum(data(shape, dtype, seed + 2), 0)
    mask = (y,) if relu else ()
    return {"batch_norm_stats": (x,), "batch_norm_apply": (x, mean, scale, shift, *[relu][:relu]),
            "batch_norm_backward_reduce": (gy, x, mean, *mask),
            "batch_norm_backward_apply": (gy, x, mean, a, b, k, *mask)}[name]


def as_tuple(out):
    return tuple(np.asarray(o) for o in (out if isinstance(out, tuple) else (out,)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name, relu", KERNEL_FORMS)
def test_kernel_matches_reference(impl, name, shape, dtype, relu):
    args = kernel_args(name, shape, dtype, 3, relu)
    expected = as_tuple(K.IMPLS[name]["reference"](*args))
    got = as_tuple(K.IMPLS[name][impl](*args))
    for e, o in zip(expected, got, strict=True):
        assert o.shape == e.shape and o.dtype == e.dtype
        assert_close(o, e, dtype=dtype if name.endswith("apply") else np.float64,
                     scale=max(1.0, float(np.abs(e).max())), what=f"{name} {impl}")


def test_reference_statistics_are_the_definitions():
    x = data((3, 4, 5, 6), np.float64, 1, offset=3.0)
    mean, var = K.batch_norm_stats_reference(x)
    assert_close(mean, x.mean(axis=(0, 2, 3)))
    assert_close(var, x.var(axis=(0, 2, 3)))


def test_statistics_survive_a_large_mean():
    # float32 values 1e4 +- 1: E[x^2] - E[x]^2 in float64 keeps ~8 digits; the shifted sums
    # keep all of them.
    x = (rng(2).standard_normal((4, 3, 16, 16)) + 1e4).astype(np.float32)
    exact = x.astype(np.float64).var(axis=(0, 2, 3))
    for impl in ("numpy", "numba"):
        _, var = K.IMPLS["batch_norm_stats"][impl](x)
        assert_close(var, exact, dtype=np.float64, what=impl)


@contextlib.contextmanager
def threads(n):
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("name, relu", KERNEL_FORMS)
def test_numba_is_bitwise_independent_of_threads_and_twin(name, relu):
    # one row per prange iteration, rows of a channel summed in a fixed order: one thread, two
    # threads and the serial nogil twin (kernels/_parallel.py) give the same bits
    args = kernel_args(name, (3, 5, 9, 10), np.float32, 4, relu)
    fn = K.IMPLS[name]["numba"]
    with threads(1):
        one = as_tuple(fn(*args))
    with threads(2):
        two = as_tuple(fn(*args))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    kernels = [K._stats_rows, K._apply_rows, K._backward_reduce_rows, K._backward_apply_rows]
    x = data((2, 3, 17), np.float64, 5)
    s = [np.empty((2, 3)) for _ in range(4)]
    kernels[0].parallel(x, x[0, :, 0].copy(), s[0], s[1])
    kernels[0].serial(x, x[0, :, 0].copy(), s[2], s[3])
    np.testing.assert_array_equal(s[0], s[2])
    np.testing.assert_array_equal(s[1], s[3])


# ---- the op and the layers -----------------------------------------------------------------

def torch_or_skip():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_pytorch(impl, training, affine, dtype):
    torch = torch_or_skip()
    shape = (2, 3, 4, 5) if impl in ("reference", "cuda") else (4, 6, 9, 7)
    C = shape[1]
    x, gy = data(shape, dtype, 6, offset=1.5), data(shape, dtype, 7)
    g = rng(8)
    rm, rv = g.standard_normal(C).astype(dtype), g.uniform(0.5, 2, C).astype(dtype)
    w, b = (g.standard_normal(C).astype(dtype), g.standard_normal(C).astype(dtype)) if affine \
        else (None, None)
    ours_rm, ours_rv = rm.copy(), rv.copy()
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = [None if v is None else torch.tensor(v, requires_grad=True) for v in (w, b)]
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, 0.2, 1e-3)
    ty.backward(torch.tensor(gy))
    xt = msn.Tensor(x, requires_grad=True)
    wt, bt = [None if v is None else msn.Tensor(v, requires_grad=True) for v in (w, b)]
    with msn.use_impl(impl):
        y = F.batch_norm(xt, ours_rm, ours_rv, wt, bt, training, 0.2, 1e-3)
        y.backward(msn.Tensor(gy))
    assert y.dtype == dtype
    assert_close(y.data, ty.detach().numpy(), dtype=dtype, scale=4.0)
    assert_close(xt.grad, tx.grad.numpy(), dtype=dtype, scale=16.0)
    if affine:
        assert_close(wt.grad, tw.grad.numpy(), dtype=dtype, scale=64.0)
        assert_close(bt.grad, tb.grad.numpy(), dtype=dtype, scale=64.0)
    assert_close(ours_rm, trm.numpy(), dtype=dtype)
    assert_close(ours_rv, trv.numpy(), dtype=dtype)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(impl, training):
    if impl == "cuda" and SIMULATOR:
        shape = (2, 2, 2, 3)
    else:
        shape = (2, 3, 3, 4)
    x = data(shape, np.float64, 9, offset=0.5)
    g = rng(10)
    w, b = g.standard_normal(shape[1]), g.standard_normal(shape[1])
    rm, rv = g.standard_normal(shape[1]), g.uniform(0.5, 2, shape[1])
    with msn.use_impl(impl):
        assert gradcheck(lambda x, w, b: F.batch_norm(x, rm.copy(), rv.copy(), w, b, training),
                         [x, w, b])


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fused_relu_is_relu_of_batch_norm(impl, training, affine):
    # same values and gradients (input, weight, bias) as the two ops one after the other
    shape = (2, 3, 4, 5) if impl in ("reference", "cuda") else (4, 6, 9, 7)
    C = shape[1]
    x, gy = data(shape, np.float64, 40, offset=0.3), data(shape, np.float64, 41)
    g = rng(42)
    stats = g.standard_normal(C), g.uniform(0.5, 2, C)
    params = (g.standard_normal(C), g.standard_normal(C)) if affine else (None, None)
    results = []
    for fused in (True, False):
        ts = [msn.Tensor(v, requires_grad=True) for v in (x, *params) if v is not None]
        rm, rv = stats[0].copy(), stats[1].copy()
        with msn.use_impl(impl):
            y = F.batch_norm(ts[0], rm, rv, *(ts[1:] or (None, None)), training,
                             activation="relu" if fused else None)
            if not fused:
                y = F.relu(y)
            y.backward(msn.Tensor(gy))
        results.append([y.data, rm, rv] + [t.grad for t in ts])
    assert 0.2 < (results[0][0] == 0).mean() < 0.8  # the ReLU does cut
    for a, b in zip(*results, strict=True):
        assert_close(a, b, dtype=np.float64, scale=8.0)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_fused_relu(impl, training):
    shape = (2, 2, 2, 3) if impl == "cuda" and SIMULATOR else (2, 3, 3, 4)
    x = data(shape, np.float64, 43, offset=0.2)
    g = rng(44)
    w, b = g.standard_normal(shape[1]), g.standard_normal(shape[1])
    rm, rv = g.standard_normal(shape[1]), g.uniform(0.5, 2, shape[1])
    with msn.use_impl(impl):
        assert gradcheck(lambda x, w, b: F.batch_norm(x, rm.copy(), rv.copy(), w, b, training,
                                                      activation="relu"), [x, w, b])


def test_fused_relu_layer_has_the_plain_layers_state():
    fused, plain = nn.BatchNorm2d(4, activation="relu"), nn.BatchNorm2d(4)
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = msn.Tensor(data((2, 4, 3, 3), np.float32, 45))
    np.testing.assert_array_equal(fused(x).data, F.relu(plain(x)).data)
    assert "activation='relu'" in repr(fused) and "activation" not in repr(plain)


def test_batchnorm2d_layer_matches_pytorch_over_steps():
    torch = torch_or_skip()
    for momentum in (0.1, None):
        ours, theirs = nn.BatchNorm2d(5, momentum=momentum), torch.nn.BatchNorm2d(
            5, momentum=momentum)
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(rng(11).standard_normal(5)))
            theirs.bias.copy_(torch.tensor(rng(12).standard_normal(5)))
        ours.weight.data[...] = theirs.weight.detach().numpy()
        ours.bias.data[...] = theirs.bias.detach().numpy()
        for step in range(3):
            x = data((3, 5, 6, 4), np.float32, 20 + step, offset=step)
            assert_close(ours(msn.Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(),
                         dtype=np.float32, scale=4.0)
        assert_close(ours.running_mean, theirs.running_mean.numpy(), dtype=np.float32)
        assert_close(ours.running_var, theirs.running_var.numpy(), dtype=np.float32)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
        ours.eval()
        theirs.eval()
        x = data((2, 5, 3, 3), np.float32, 30)
        assert_close(ours(msn.Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(),
                     dtype=np.float32, scale=4.0)


def test_training_output_is_normalised():
    # per channel the output has mean beta and standard deviation |gamma| (up to eps)
    bn = nn.BatchNorm1d(4, eps=1e-12, dtype=np.float64)
    bn.weight.data[...] = [1.0, 2.0, -3.0, 0.5]
    bn.bias.data[...] = [0.0, 1.0, -1.0, 2.0]
    y = bn(msn.Tensor(data((8, 4, 25), np.float64, 13, offset=7.0))).data
    assert_close(y.mean(axis=(0, 2)), bn.bias.data, dtype=np.float64, scale=10.0)
    assert_close(y.std(axis=(0, 2)), np.abs(bn.weight.data), dtype=np.float64, scale=10.0)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(input=np.zeros((2, 3, 4, 4), np.int64)), TypeError, "float32"),
    (dict(input=np.zeros(3, np.float32)), ValueError, "(N, C, ...)"),
    (dict(running_mean=np.zeros(4, np.float32)), ValueError, "running_mean"),
    (dict(weight=np.ones(3, np.float32)), ValueError, "weight and bias"),
    (dict(training=False, running_var=None), ValueError, "running_var"),
    (dict(input=np.zeros((1, 3, 1, 1), np.float32), training=True), ValueError,
     "more than 1 value"),
    (dict(activation="gelu"), ValueError, "activation"),
])
def test_bad_input(kwargs, exc, words):
    args = dict(input=np.zeros((2, 3, 4, 4), np.float32), running_mean=np.zeros(3, np.float32),
                running_var=np.ones(3, np.float32), training=False)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        F.batch_norm(**args)
    assert words in str(info.value)
