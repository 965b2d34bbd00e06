"""avg_pool2d (minisegnet/functional/pooling.py on kernels/avg_pool2d.py) and nn.AvgPool2d.

Every implementation against the reference, forward and backward; the adjoint identity
<avg(x), v> = <x, avg^T(v)> with the op's backward as avg^T; worked examples of PyTorch's
count_include_pad=True; gradcheck; PyTorch (when installed); bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, assert_close, check_bad_input, check_op, out_len
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import avg_pool2d as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 5 if SIMULATOR else 9  # the simulator runs a few thousand threads per second



@st.composite
def pool_case(draw):
    """(x shape, kernel, stride, padding) with a non-empty output and padding <= k/2."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    hw = [draw(st.integers(max(1, k[a] - 2 * p[a]), max(1, k[a] - 2 * p[a], SMALL)))
          for a in range(2)]
    return (N, C, *hw), k, s, p


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(impl, dtype, case, seed):
    shape, k, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.avg_pool2d(X, k, s, p)
        gy = rng.standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    assert y.shape == (*shape[:2], out_len(shape[2], k[0], s[0], p[0]),
                       out_len(shape[3], k[1], s[1], p[1]))
    assert_close(y.data, K.avg_pool2d_reference(x, k, s, p), what=f"y {case}")
    assert_close(X.grad, K.avg_pool2d_backward_reference(gy, shape[2:], k, s, p),
                 what=f"gx {case}")
    assert y.dtype == dtype and X.grad.dtype == dtype


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
def test_backward_is_the_adjoint(impl, case, seed):
    shape, k, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    ax = msn.backend.to_numpy(K.IMPLS["avg_pool2d"][impl](x, k, s, p))
    v = rng.standard_normal(ax.shape)
    atv = msn.backend.to_numpy(K.IMPLS["avg_pool2d_backward"][impl](v, shape[2:], k, s, p))
    assert atv.shape == x.shape
    lhs, rhs = float((ax * v).sum()), float((x * atv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (lhs, rhs)


def test_worked_examples(impl):
    with msn.use_impl(impl):
        y = F.avg_pool2d(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), 2)
        assert y.numpy().tolist() == [[[[2.5]]]]
        # count_include_pad=True: a 3x3 window centred on a 1x1 input of 9 averages 9 with 8 zeros
        y = F.avg_pool2d(np.full((1, 1, 1, 1), 9.0), 3, 1, 1)
        assert y.numpy().tolist() == [[[[1.0]]]]
        # 1x4 row, kernel (1, 2), stride (1, 1), padding (0, 1): (0+1)/2, (1+2)/2, ..., (4+0)/2
        y = F.avg_pool2d(np.array([[[[1.0, 2.0, 3.0, 4.0]]]]), (1, 2), 1, (0, 1))
        assert y.numpy().tolist() == [[[[0.5, 1.5, 2.5, 3.5, 2.0]]]]


GRADCHECK_CASES = [  # (x shape, kernel, stride, padding)
    ((1, 2, 4, 4), 2, 2, 0),  # tiny: also run by the CUDA simulator
    ((2, 2, 5, 6), 3, 2, 1),
    ((1, 2, 7, 6), (3, 2), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, case):
    shape, k, s, p = case
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 150:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = np.random.default_rng(0).standard_normal(shape)
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.avg_pool2d(t, k, s, p), [x])


@pytest.mark.parametrize("shape, geo", [((2, 3, 9, 8), (2, 2, 0)), ((2, 2, 9, 9), (3, 2, 1)),
                                        ((1, 2, 10, 9), ((3, 4), (2, 1), (1, 2)))])
def test_matches_pytorch(shape, geo):
    torch = pytest.importorskip("torch")
    check_op([shape], lambda x: F.avg_pool2d(x, *geo),
             lambda x: torch.nn.functional.avg_pool2d(x, *geo), dtype=np.float32)


X = np.zeros((1, 2, 5, 5), np.float32)
BAD = [  # (kwargs for avg_pool2d, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(2, 5, 5)"]),
    (dict(input=np.zeros((0, 2, 5, 5), np.float32)), ValueError, ["empty", "(0, 2, 5, 5)"]),
    (dict(input=X.astype(np.int32)), TypeError, ["input", "int32"]),
    (dict(kernel_size=0), ValueError, ["kernel_size", "(0, 0)"]),
    (dict(kernel_size=(2, 2, 2)), ValueError, ["kernel_size"]),
    (dict(stride=(1, 0)), ValueError, ["stride", "(1, 0)"]),
    (dict(stride="2"), TypeError, ["stride"]),
    (dict(padding=-1), ValueError, ["padding"]),
    (dict(kernel_size=2, padding=(1, 2)), ValueError, ["padding", "half", "(1, 2)"]),
    (dict(kernel_size=8, padding=1), ValueError, ["empty output", "(1, 2, 5, 5)"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(input=X, kernel_size=2, stride=None, padding=0)
    check_bad_input(F.avg_pool2d, defaults, kwargs, exc, words)


def test_unsupported_modes_are_refused():
    with pytest.raises(NotImplementedError, match="count_include_pad"):
        F.avg_pool2d(X, 3, 1, 1, count_include_pad=False)
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        nn.AvgPool2d(2, ceil_mode=True)


def test_avgpool2d_layer():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7)).astype(np.float32)
    layer = nn.AvgPool2d(3, stride=2, padding=1)
    assert "kernel_size=3" in repr(layer) and list(layer.parameters()) == []
    assert_close(layer(msn.Tensor(x)).data, K.avg_pool2d_reference(x, (3, 3), (2, 2), (1, 1)))
    with pytest.raises(ValueError, match="kernel_size"):
        nn.AvgPool2d(0)
