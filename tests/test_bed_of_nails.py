"""bed_of_nails (kernels/bed_of_nails.py, F.bed_of_nails, nn.BedOfNails): implementations against
the loop reference, the adjoint identity, the definition checked with NumPy written here, a worked
example, gradcheck and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, assert_close
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import bed_of_nails as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor
from minisegnet.testing import gradcheck

# The `impl` fixture is a plain string: sharing it across hypothesis examples is safe.
SMALL = 3 if SIMULATOR else 6  # the simulator runs a few thousand threads per second


@st.composite
def config(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, SMALL)),
             draw(st.integers(1, SMALL)))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return shape, (sh if sh == sw and draw(st.booleans()) else (sh, sw))


def pair(scale):
    return scale if isinstance(scale, tuple) else (scale, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@HYP
@given(case=config(), seed=st.integers(0, 2**16))
def test_matches_reference(impl, dtype, case, seed):
    shape, scale = case
    sh, sw = pair(scale)
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(dtype)
    gy = r.standard_normal(shape[:2] + (shape[2] * sh, shape[3] * sw)).astype(dtype)
    results = {}
    for which in (impl, "reference"):
        t = Tensor(x, requires_grad=True)
        with msn.use_impl(which):
            y = F.bed_of_nails(t, scale)
            y.backward(gy)
        results[which] = (y.numpy(), t.grad)
    assert_close(results[impl][0], results["reference"][0], what=f"{impl} forward")
    assert_close(results[impl][1], results["reference"][1], what=f"{impl} backward")


@HYP
@given(case=config(), seed=st.integers(0, 2**16))
def test_adjoint(impl, case, seed):
    shape, scale = case
    sc = pair(scale)
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape)
    y = r.standard_normal(shape[:2] + (shape[2] * sc[0], shape[3] * sc[1]))
    lhs = float(np.sum(K.IMPLS["bed_of_nails"][impl](x, sc) * y))
    rhs = float(np.sum(x * K.IMPLS["bed_of_nails_backward"][impl](y, sc)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("scale", [1, 2, (2, 3), (3, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_definition(impl, scale, dtype):
    # nails at multiples of the scale hold x, everything else is 0; the gradient reads the nails
    sh, sw = pair(scale)
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 4)).astype(dtype)
    t = Tensor(x, requires_grad=True)
    with msn.use_impl(impl):
        y = F.bed_of_nails(t, scale)
        gy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    y = y.numpy()
    assert y.shape == (2, 2, 3 * sh, 4 * sw) and y.dtype == dtype
    np.testing.assert_array_equal(y[:, :, ::sh, ::sw], x)
    mask = np.ones(y.shape, bool)
    mask[:, :, ::sh, ::sw] = False
    assert np.all(y[mask] == 0)
    np.testing.assert_array_equal(t.grad, gy[:, :, ::sh, ::sw])


def test_worked_example(impl):
    # SegNet-style "bed of nails" unpooling of [[1, 2], [3, 4]] by 2, written out by hand
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(1, 1, 2, 2)
    expected = [[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]
    with msn.use_impl(impl):
        y = nn.BedOfNails(2)(x).numpy()[0, 0]
    np.testing.assert_array_equal(y, expected)


def test_gradcheck(impl):
    x = np.random.default_rng(4).standard_normal((1, 2, 2, 3))
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.bed_of_nails(t, (2, 3)), [x])


def test_non_contiguous_and_empty(impl):
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 2)).transpose(0, 3, 2, 1)  # (2,2,3,4)
    with msn.use_impl(impl):
        y = F.bed_of_nails(x, 2).numpy()
        e = F.bed_of_nails(np.zeros((0, 2, 3, 4)), 2)
    np.testing.assert_array_equal(y[:, :, ::2, ::2], x)
    assert e.shape == (0, 2, 6, 8)


def test_module():
    m = nn.BedOfNails((2, 3))
    assert list(m.parameters()) == [] and "scale=(2, 3)" in repr(m)
    with pytest.raises(ValueError, match="scale"):
        nn.BedOfNails(0)


@pytest.mark.parametrize(
    "shape, scale, err, match",
    [
        ((2, 2, 2), 2, ValueError, r"x: .*4-D.*\(2, 2, 2\)"),
        ((1, 1, 2, 2), 0, ValueError, "scale: must be positive, got 0"),
        ((1, 1, 2, 2), (2, -1), ValueError, r"scale: .*\(2, -1\)"),
        ((1, 1, 2, 2), 1.5, TypeError, "scale"),
        ((1, 1, 2, 2), (1, 2, 3), TypeError, "scale"),
    ],
)
def test_bad_input(shape, scale, err, match):
    with pytest.raises(err, match=match):
        F.bed_of_nails(np.zeros(shape, np.float32), scale)
