"""adaptive_avg_pool2d (minisegnet/functional/pooling.py on kernels/adaptive_avg_pool2d.py) and
nn.AdaptiveAvgPool2d.

Every implementation against the reference, forward and backward; the SPEC's bins written out
by hand; the adjoint identity; gradcheck; PSPNet's bins against PyTorch (when installed); the
output_size forms (int, pair, None = keep); bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, assert_close, check_bad_input, check_op
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import adaptive_avg_pool2d as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 5 if SIMULATOR else 10  # the simulator runs a few thousand threads per second


@st.composite
def case(draw):
    """(x shape, output size): output smaller, equal or larger than the input."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, SMALL)), draw(st.integers(1, SMALL))
    return (N, C, H, W), (draw(st.integers(1, SMALL)), draw(st.integers(1, SMALL)))


@given(c=case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(impl, dtype, c, seed):
    shape, out = c
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.adaptive_avg_pool2d(X, out)
        gy = rng.standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    assert y.shape == shape[:2] + out and y.dtype == dtype and X.grad.dtype == dtype
    assert_close(y.data, K.adaptive_avg_pool2d_reference(x, out), what=f"y {c}")
    assert_close(X.grad, K.adaptive_avg_pool2d_backward_reference(gy, shape[2:]), what=f"gx {c}")


@given(c=case(), seed=st.integers(0, 2**16))
@HYP
def test_backward_is_the_adjoint(impl, c, seed):
    shape, out = c
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    ax = msn.backend.to_numpy(K.IMPLS["adaptive_avg_pool2d"][impl](x, out))
    v = rng.standard_normal(ax.shape)
    atv = msn.backend.to_numpy(K.IMPLS["adaptive_avg_pool2d_backward"][impl](v, shape[2:]))
    assert atv.shape == x.shape
    lhs, rhs = float((ax * v).sum()), float((x * atv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (lhs, rhs)


def test_bins_follow_the_spec(impl):
    # SPEC: bin i covers [floor(i*H/o), ceil((i+1)*H/o)). H = 5, o = 3: rows [0, 2), [1, 4),
    # [3, 5) (overlapping); W = 4, o = 2: columns [0, 2), [2, 4).
    x = np.arange(20.0).reshape(1, 1, 5, 4)
    rows, cols = [(0, 2), (1, 4), (3, 5)], [(0, 2), (2, 4)]
    expected = [[x[0, 0, a:b, c:d].mean() for c, d in cols] for a, b in rows]
    with msn.use_impl(impl):
        y = F.adaptive_avg_pool2d(x, (3, 2))
        np.testing.assert_allclose(y.numpy()[0, 0], expected, rtol=1e-12)
        # output larger than the input: H = 2, o = 3 -> rows [0, 1), [0, 2), [1, 2)
        y = F.adaptive_avg_pool2d(np.array([[[[2.0], [4.0]]]]), (3, 1))
        np.testing.assert_allclose(y.numpy()[0, 0, :, 0], [2.0, 3.0, 4.0], rtol=1e-12)
        # o = 1 is the global mean
        y = F.adaptive_avg_pool2d(x, 1)
        np.testing.assert_allclose(y.numpy().ravel(), [x.mean()], rtol=1e-12)


def test_output_size_forms():
    x = np.zeros((2, 3, 7, 5), np.float32)
    assert F.adaptive_avg_pool2d(x, 3).shape == (2, 3, 3, 3)
    assert F.adaptive_avg_pool2d(x, (2, 4)).shape == (2, 3, 2, 4)
    assert F.adaptive_avg_pool2d(x, [None, 2]).shape == (2, 3, 7, 2)  # None keeps the size
    assert F.adaptive_avg_pool2d(x, (4, None)).shape == (2, 3, 4, 5)
    assert F.adaptive_avg_pool2d(x, None).shape == x.shape


GRADCHECK_CASES = [  # (x shape, output size)
    ((1, 2, 4, 3), (2, 2)),  # tiny: also run by the CUDA simulator
    ((1, 2, 7, 6), (3, 4)),
    ((1, 2, 3, 5), (6, 2)),  # more bins than rows: bins repeat rows
]


@pytest.mark.parametrize("c", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, c):
    shape, out = c
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 150:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = np.random.default_rng(0).standard_normal(shape)
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.adaptive_avg_pool2d(t, out), [x])


@pytest.mark.parametrize("bins", [1, 2, 3, 6, (5, 17)])
def test_pspnet_bins_match_pytorch(bins):
    torch = pytest.importorskip("torch")
    check_op([(2, 4, 13, 11)], lambda x: F.adaptive_avg_pool2d(x, bins),
             lambda x: torch.nn.functional.adaptive_avg_pool2d(x, bins), dtype=np.float32)


X = np.zeros((1, 2, 5, 5), np.float32)
BAD = [  # (kwargs, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(2, 5, 5)"]),
    (dict(input=np.zeros((1, 2, 0, 5), np.float32)), ValueError, ["empty", "(1, 2, 0, 5)"]),
    (dict(input=X.astype(np.int32)), TypeError, ["input", "int32"]),
    (dict(input="x"), TypeError, ["input"]),
    (dict(output_size=0), ValueError, ["output_size", "(0, 0)"]),
    (dict(output_size=(2, -1)), ValueError, ["output_size", "(2, -1)"]),
    (dict(output_size=(1, 2, 3)), ValueError, ["output_size"]),
    (dict(output_size=2.5), TypeError, ["output_size"]),
    (dict(output_size=(2, "3")), TypeError, ["output_size"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    check_bad_input(F.adaptive_avg_pool2d, dict(input=X, output_size=2), kwargs, exc, words)


def test_adaptiveavgpool2d_layer():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    layer = nn.AdaptiveAvgPool2d((None, 3))
    assert "output_size=(None, 3)" in repr(layer) and list(layer.parameters()) == []
    assert_close(layer(msn.Tensor(x)).data, K.adaptive_avg_pool2d_reference(x, (7, 3)))
