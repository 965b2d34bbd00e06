"""max_unpool2d (minisegnet/functional/pooling.py on kernels/max_unpool2d.py) and nn.MaxUnpool2d.

Every implementation against the reference (including repeated indices: the last write wins),
unpool(pool(x)) keeping exactly the window maxima, the adjoint identity with distinct indices,
gradcheck, output sizes, PyTorch (when installed), bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, SMALL, assert_close, check_bad_input, check_op
from hypothesis import assume, given
from hypothesis import strategies as st
from minisegnet.kernels import max_unpool2d as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck


@st.composite
def unpool_case(draw):
    """(x shape, kernel, stride, padding, output size) with output_size within stride of the
    default (H - 1)s - 2p + k, as the functional layer requires."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    hw, out = [], []
    for a in range(2):
        h = draw(st.integers(1, SMALL))
        default = (h - 1) * s[a] - 2 * p[a] + k[a]
        lo = max(1, default - s[a] + 1)
        if lo > default + s[a] - 1:  # default <= 0: no valid size for this h; take one that is
            h = h + 2 * p[a] + 1
            default = (h - 1) * s[a] - 2 * p[a] + k[a]
            lo = max(1, default - s[a] + 1)
        hw.append(h)
        out.append(draw(st.integers(lo, default + s[a] - 1)))
    return (N, C, *hw), k, s, p, tuple(out)


def indices(shape, out, seed, distinct=False):
    """Random indices into each (OH*OW) plane; repeats unless ``distinct`` (then OH*OW >= H*W)."""
    rng = np.random.default_rng(seed)
    N, C, H, W = shape
    plane = out[0] * out[1]
    if distinct:
        return np.stack([rng.permutation(plane)[:H * W] for _ in range(N * C)]).reshape(shape)
    return rng.integers(0, plane, shape).astype(np.int64)


# ---- forward and backward ------------------------------------------------------------------


@given(case=unpool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(impl, dtype, case, seed):
    shape, k, s, p, out = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    idx = indices(shape, out, seed)  # with repeats: the last write in row-major order wins
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.max_unpool2d(X, idx, k, s, p, output_size=out)
        gy = rng.standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    assert y.shape == shape[:2] + out and y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), K.max_unpool2d_reference(x, idx, out))
    np.testing.assert_array_equal(X.grad, K.max_unpool2d_backward_reference(gy, idx))


def test_kernels_skip_indices_outside_the_plane(impl):
    # The functional layer raises; the kernels must still neither write nor read out of bounds.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    idx = rng.integers(-20, 40, x.shape).astype(np.int64)
    out = K.IMPLS["max_unpool2d"][impl](x, idx, (5, 4))
    np.testing.assert_array_equal(msn.backend.to_numpy(out),
                                  K.max_unpool2d_reference(x, idx, (5, 4)))
    gy = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    gx = K.IMPLS["max_unpool2d_backward"][impl](gy, idx)
    np.testing.assert_array_equal(msn.backend.to_numpy(gx),
                                  K.max_unpool2d_backward_reference(gy, idx))


def test_repeated_indices_last_write_wins(impl):
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    idx = np.array([[[[5, 0], [5, 2]]]])
    with msn.use_impl(impl):
        y = F.max_unpool2d(x, idx, 2, output_size=(3, 3))
    # writes in row-major order: [5] = 1, [0] = 2, [5] = 3, [2] = 4
    np.testing.assert_array_equal(y.numpy(), [[[[2.0, 0.0, 4.0], [0.0, 0.0, 3.0], [0, 0, 0]]]])


@given(case=unpool_case(), seed=st.integers(0, 2**16))
@HYP
def test_unpool_and_its_backward_are_adjoint(impl, case, seed):
    # With distinct indices in each plane, unpooling is a linear map U (a partial permutation)
    # and its backward (the gather gy.flat[idx]) is U^T: <U x, v> = <x, U^T v>.
    shape, k, s, p, out = case
    if out[0] * out[1] < shape[2] * shape[3]:
        out = (shape[2], shape[3])  # room for distinct indices (a size the kernels accept)
    idx = indices(shape, out, seed, distinct=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    v = rng.standard_normal(shape[:2] + out)
    ux = msn.backend.to_numpy(K.IMPLS["max_unpool2d"][impl](x, idx, out))
    utv = msn.backend.to_numpy(K.IMPLS["max_unpool2d_backward"][impl](v, idx))
    lhs, rhs = float((ux * v).sum()), float((x * utv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (lhs, rhs)


def window_maxima(x, k):
    """Independent of the kernels: zeros except, in each k x k block (stride k), the first
    maximum in row-major order (NaN counting as the largest), kept where it is."""
    N, C, H, W = x.shape
    OH, OW = H // k, W // k
    blocks = x[:, :, :OH * k, :OW * k].reshape(N, C, OH, k, OW, k).transpose(0, 1, 2, 4, 3, 5)
    first = np.argmax(blocks.reshape(N, C, OH, OW, k * k), axis=-1)  # NumPy: first max / NaN
    keep = np.zeros((N, C, OH, OW, k * k), bool)
    np.put_along_axis(keep, first[..., None], True, axis=-1)
    keep = keep.reshape(N, C, OH, OW, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, OH * k,
                                                                                 OW * k)
    expected = np.zeros_like(x)
    region = expected[:, :, :OH * k, :OW * k]
    region[keep] = x[:, :, :OH * k, :OW * k][keep]
    return expected


@given(seed=st.integers(0, 2**16), k=st.integers(2, 3), h=st.integers(2, SMALL + 1),
       w=st.integers(2, SMALL + 1))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_of_pool_keeps_exactly_the_window_maxima(impl, dtype, seed, k, h, w):
    assume(min(h, w) >= k)
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (2, 2, h, w)).astype(dtype)  # many ties
    x[rng.random(x.shape) < 0.1] = np.nan
    with msn.use_impl(impl):
        y, idx = F.max_pool2d(x, k, return_indices=True)
        up = F.max_unpool2d(y, idx, k, output_size=x.shape)
    assert up.shape == x.shape
    # indices lie within the unpadded plane, and point at the value pooled
    i = idx.numpy()
    assert i.min() >= 0 and i.max() < h * w
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 2, -1), i.reshape(2, 2, -1), 2),
                                  y.numpy().reshape(2, 2, -1))
    np.testing.assert_array_equal(up.numpy(), window_maxima(x, k))


GRADCHECK_CASES = [  # (x shape, kernel, stride, padding, output size)
    ((1, 2, 2, 2), 2, 2, 0, (4, 4)),  # tiny: also run by the CUDA simulator
    ((2, 2, 3, 4), 3, 2, 1, (5, 7)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, case):
    shape, k, s, p, out = case
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 50:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = np.random.default_rng(0).standard_normal(shape)
    idx = indices(shape, out, 1, distinct=True)
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.max_unpool2d(t, idx, k, s, p, output_size=out), [x])


def test_gradcheck_pool_then_unpool(impl):
    # SegNet's path: gradients flow through the unpooled values back into the pooled input.
    shape = (1, 2, 4, 4) if SIMULATOR else (2, 2, 5, 6)
    x = np.random.default_rng(0).permutation(int(np.prod(shape))).reshape(shape) * 0.1

    def segnet_step(t):
        y, idx = F.max_pool2d(t, 2, return_indices=True)
        return F.max_unpool2d(y * 2.0, idx, 2, output_size=t.shape)

    with msn.use_impl(impl):
        assert gradcheck(segnet_step, [x])


def test_output_size_forms():
    x = np.ones((1, 1, 3, 2), np.float32)
    idx = np.zeros((1, 1, 3, 2), np.int64)
    assert F.max_unpool2d(x, idx, 2).shape == (1, 1, 6, 4)  # SPEC: (H - 1)s - 2p + k
    assert F.max_unpool2d(x, idx, 3, 2, 1).shape == (1, 1, 5, 3)
    assert F.max_unpool2d(x, idx, 2, output_size=(7, 5)).shape == (1, 1, 7, 5)
    assert F.max_unpool2d(x, idx, 2, output_size=(1, 1, 5, 3)).shape == (1, 1, 5, 3)
    assert F.max_unpool2d(x, idx, 2, output_size=[7, 3]).shape == (1, 1, 7, 3)


@pytest.mark.parametrize("shape, geo", [((2, 3, 8, 9), (2, 2, 0)), ((1, 2, 9, 7), (3, 2, 1))])
def test_matches_pytorch(shape, geo):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y, idx = (t.numpy() for t in torch.nn.functional.max_pool2d(torch.tensor(x), *geo,
                                                                 return_indices=True))
    check_op([], lambda v, i: F.max_unpool2d(v, i, *geo, output_size=shape[2:]),
             lambda v, i: torch.nn.functional.max_unpool2d(v, i, *geo, output_size=shape[2:]),
             inputs=[y, idx], exact=True)


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((1, 2, 3, 3), np.float32)
I = np.zeros((1, 2, 3, 3), np.int64)
BAD = [  # (kwargs for max_unpool2d, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(2, 3, 3)"]),
    (dict(input=X.astype(np.int32)), TypeError, ["input", "int32"]),
    (dict(indices=I[:, :1]), ValueError, ["indices", "(1, 1, 3, 3)", "(1, 2, 3, 3)"]),
    (dict(indices=I.astype(np.float32)), TypeError, ["indices", "float32"]),
    (dict(indices=[0, 1]), TypeError, ["indices"]),
    (dict(indices=I + 36), ValueError, ["indices", "[0, 36)", "36"]),
    (dict(indices=I - 1), ValueError, ["indices", "-1"]),
    (dict(kernel_size=0), ValueError, ["kernel_size", "(0, 0)"]),
    (dict(stride=0), ValueError, ["stride"]),
    (dict(padding=-1), ValueError, ["padding"]),
    (dict(kernel_size=1.5), TypeError, ["kernel_size"]),
    (dict(output_size=(9, 6)), ValueError, ["output_size", "(9, 6)", "4", "8"]),
    (dict(output_size=(6,)), ValueError, ["output_size"]),
    (dict(output_size=6), TypeError, ["output_size"]),
    (dict(input=X[:, :, :1, :1], indices=I[:, :, :1, :1], kernel_size=1, padding=1),
     ValueError, ["empty output", "(1, 2, 1, 1)"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(input=X, indices=I, kernel_size=2, stride=None, padding=0, output_size=None)
    check_bad_input(F.max_unpool2d, defaults, kwargs, exc, words)


# ---- layer ---------------------------------------------------------------------------------


def test_maxunpool2d_layer():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    pool, unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
    assert "kernel_size=2" in repr(unpool) and list(unpool.parameters()) == []
    y, idx = pool(msn.Tensor(x))
    up = unpool(y, idx, output_size=x.shape)
    assert up.shape == x.shape
    assert_close(up.data, window_maxima(x, 2))
    with pytest.raises(ValueError, match="indices"):  # 5x7-plane indices, default 4x6 output
        unpool(y, idx)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxUnpool2d(2, padding=-1)
