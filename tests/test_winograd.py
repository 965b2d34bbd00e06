"""conv2d's Winograd F(2x2, 3x3) path (kernels/conv2d.py): the formula version and the fast one
against the plain-loop conv2d reference (hypothesis), conv2d forward and both gradients with the
path forced against the im2col path, float64 gradcheck, the switch really switching, blocking and
worker count not changing the result, the transform matrices' identities.

(These are conv2d cases; they sit in their own file while tests/test_conv2d.py is being edited by
another change, and can move there.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_close, rng
from hypothesis import given, settings
from hypothesis import strategies as st
from minisegnet.kernels import conv2d as K

import minisegnet as msn
import minisegnet.functional as F
from minisegnet.testing import gradcheck


@st.composite
def wino_case(draw):
    """(x shape, w shape, padding) of a 3x3 stride-1 conv with a non-empty output."""
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    H = draw(st.integers(max(1, 3 - 2 * p[0]), 9))
    W = draw(st.integers(max(1, 3 - 2 * p[1]), 9))
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (N, C, H, W), (O, C, 3, 3), p


@given(case=wino_case(), seed=st.integers(0, 2**16))
@settings(deadline=None)
def test_winograd_matches_the_loop_reference(case, seed):
    xs, ws, p = case
    g = rng(seed)
    x, w = g.standard_normal(xs), g.standard_normal(ws)
    expected = K.conv2d_reference(x, w, None, (1, 1), p)
    assert_close(K.conv2d_winograd_reference(x, w, p), expected, scale=10.0)
    assert_close(K.conv2d_winograd_numba(x, w, p), expected, scale=10.0)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_close(K.conv2d_winograd_numba(x32, w32, p), expected.astype(np.float32),
                 scale=10.0 * math.sqrt(9 * xs[1]))


def test_transforms_are_those_of_the_paper():
    # F(2, 3) in one dimension: A^T [(G g) * (B^T d)] is the 2-tap-output correlation of d with g
    g, d = rng(1).standard_normal(3), rng(2).standard_normal(4)
    direct = np.array([d[0:3] @ g, d[1:4] @ g])
    assert_close(K.WINO_AT @ ((K.WINO_G @ g) * (K.WINO_BT @ d)), direct)
    w = rng(3).standard_normal((2, 3, 3, 3))
    U = K.winograd_weights(w)  # (16, O, C) = G g G^T, row-major over the 4x4 tile
    assert U.shape == (16, 2, 3)
    assert_close(U[:, 1, 2].reshape(4, 4), K.WINO_G @ w[1, 2] @ K.WINO_G.T)


def grads(algo, x, w, b, p, gy):
    ts = [msn.Tensor(a, requires_grad=True) for a in (x, w, b)]
    with F.conv2d_algorithm(algo):
        y = F.conv2d(*ts, padding=p)
        y.backward(msn.Tensor(gy))
    return [y.data] + [t.grad for t in ts]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, p", [((2, 5, 9, 8), 1), ((1, 3, 6, 7), 0), ((2, 4, 5, 5), 2)])
def test_forced_winograd_equals_im2col_forward_and_backward(shape, p, dtype):
    g = rng(4)
    x = g.standard_normal(shape).astype(dtype)
    w = (g.standard_normal((6, shape[1], 3, 3)) / 3).astype(dtype)
    b = g.standard_normal(6).astype(dtype)
    oh, ow = shape[2] + 2 * p - 2, shape[3] + 2 * p - 2
    gy = g.standard_normal((shape[0], 6, oh, ow)).astype(dtype)
    with msn.use_impl("numba"):
        for a, e in zip(grads("winograd", x, w, b, p, gy), grads("im2col", x, w, b, p, gy),
                        strict=True):
            assert_close(a, e, scale=30.0)


def test_gradcheck_through_winograd():
    g = rng(5)
    x, w, b = g.standard_normal((2, 3, 5, 6)), g.standard_normal((4, 3, 3, 3)), g.standard_normal(4)
    with msn.use_impl("numba"), F.conv2d_algorithm("winograd"):
        assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = K.conv2d_winograd_numba

    def counting(x, w, padding):
        seen.append((x.shape, w.shape, padding))
        return real(x, w, padding)

    monkeypatch.setattr(K, "conv2d_winograd_numba", counting)
    return seen


@pytest.mark.parametrize("algo, expected", [("winograd", 2), ("im2col", 0), ("auto", 0)])
def test_the_switch_chooses_the_path(calls, algo, expected):
    # forward and input gradient each run one Winograd conv when forced; none under "im2col",
    # and none in auto mode at 4 channels (below WINOGRAD_MIN_CHANNELS)
    g = rng(6)
    x, w = g.standard_normal((1, 4, 6, 6)), g.standard_normal((4, 4, 3, 3))
    with msn.use_impl("numba"):
        grads(algo, x, w, np.zeros(4), 1, g.standard_normal((1, 4, 6, 6)))
    assert len(calls) == expected
    if expected:
        assert calls[1] == ((1, 4, 6, 6), (4, 4, 3, 3), (1, 1))  # the adjoint: gy, rotated w


def test_auto_takes_winograd_where_it_measured_faster(calls, monkeypatch):
    monkeypatch.setattr(K, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(K, "WINOGRAD_MIN_PIXELS", 36)
    g = rng(7)
    x, w = g.standard_normal((1, 4, 6, 6)), g.standard_normal((4, 4, 3, 3))
    with msn.use_impl("numba"):
        grads("auto", x, w, np.zeros(4), 1, g.standard_normal((1, 4, 6, 6)))
    assert len(calls) == 1  # the forward only: the backward keeps its one-pass im2col


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2, padding=2), dict(groups=2),
                                    dict(kernel=5)])
def test_ineligible_convs_never_take_winograd(calls, kwargs):
    k = kwargs.pop("kernel", 3)
    groups = kwargs.get("groups", 1)
    x = rng(8).standard_normal((1, 4, 9, 9))
    w = rng(9).standard_normal((4, 4 // groups, k, k))
    with msn.use_impl("numba"), F.conv2d_algorithm("winograd"):
        y = F.conv2d(x, w, **kwargs)
        with msn.use_impl("reference"):
            assert_close(y.data, F.conv2d(x, w, **kwargs).data)
    assert calls == []


@pytest.mark.parametrize("budget, min_flops", [(1, 0), (3000, 0), (10**9, math.inf)])
def test_blocks_and_workers_do_not_change_the_result(monkeypatch, budget, min_flops):
    monkeypatch.setitem(K.BLOCK_BYTES, "numba", budget)
    monkeypatch.setattr(K, "PER_CORE_MIN_FLOPS", min_flops)
    g = rng(10)
    x, w = g.standard_normal((3, 4, 9, 7)), g.standard_normal((5, 4, 3, 3))
    assert_close(K.conv2d_winograd_numba(x, w, (1, 1)), K.conv2d_reference(x, w, None, (1, 1),
                                                                            (1, 1)), scale=10.0)


def test_bad_algorithm_name():
    with pytest.raises(ValueError, match="name must be"):
        with F.conv2d_algorithm("fft"):
            pass
