"""max_pool2d (minisegnet/functional/pooling.py on kernels/max_pool2d.py) and nn.MaxPool2d.

Every implementation against the reference (values and indices exactly, gradients within
tolerance), the SPEC's tie / NaN / padding rules on worked examples, the adjoint identity of the
backward with fixed indices, gradcheck, PyTorch (when installed), bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, assert_close, check_bad_input, check_op, impls, out_len
from hypothesis import assume, given
from hypothesis import strategies as st
from minisegnet.kernels import max_pool2d as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 5 if SIMULATOR else 9  # the simulator runs a few thousand threads per second



def has_empty_window(n: int, k: int, s: int, p: int, d: int) -> bool:
    """Some window along this axis has no tap inside [0, n) (possible with dilation only)."""
    return any(all(not 0 <= o * s - p + i * d < n for i in range(k))
               for o in range(out_len(n, k, s, p, d)))


@st.composite
def pool_case(draw, allow_empty_windows=False):
    """(x shape, kernel, stride, padding, dilation) with a non-empty output, padding <= k/2."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    hw = []
    for a in range(2):
        least = max(1, d[a] * (k[a] - 1) + 1 - 2 * p[a])
        hw.append(draw(st.integers(least, max(least, SMALL))))
    if not allow_empty_windows:
        assume(not any(has_empty_window(hw[a], k[a], s[a], p[a], d[a]) for a in range(2)))
    return (N, C, *hw), k, s, p, d


def data(shape, dtype, seed, special=True):
    """Small integers (many ties), and with ``special`` some NaN and -inf."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(dtype)
    if special:
        x[rng.random(shape) < 0.08] = np.nan
        x[rng.random(shape) < 0.08] = -np.inf
    return x


def distinct(shape, seed=0):
    """float64 values at least 0.1 apart: no ties, so max pooling is differentiable there."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1 - n * 0.05


def random_in_window_indices(shape, k, s, p, d, seed):
    """Indices as max_pool2d could return them: one random tap inside each window."""
    N, C, H, W = shape
    OH, OW = out_len(H, k[0], s[0], p[0], d[0]), out_len(W, k[1], s[1], p[1], d[1])
    rng = np.random.default_rng(seed)
    idx = np.empty((N, C, OH, OW), np.int64)
    for o in np.ndindex(N, C, OH, OW):
        rows = [h for h in (o[2] * s[0] - p[0] + i * d[0] for i in range(k[0])) if 0 <= h < H]
        cols = [w for w in (o[3] * s[1] - p[1] + j * d[1] for j in range(k[1])) if 0 <= w < W]
        idx[o] = rng.choice([h * W + w for h in rows for w in cols])
    return idx


# ---- forward -------------------------------------------------------------------------------


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("max_pool2d", without=("reference",)))
def test_forward_matches_reference(impl, dtype, case, seed):
    shape, k, s, p, d = case
    x = data(shape, dtype, seed)
    with msn.use_impl(impl):
        y, idx = F.max_pool2d(x, k, s, p, d, return_indices=True)
    ry, ridx = K.max_pool2d_reference(x, k, s, p, d)
    assert y.shape == (shape[0], shape[1], out_len(shape[2], k[0], s[0], p[0], d[0]),
                       out_len(shape[3], k[1], s[1], p[1], d[1]))
    assert y.dtype == dtype and idx.dtype == np.int64 and not idx.requires_grad
    np.testing.assert_array_equal(y.numpy(), ry)  # a max is exact (NaN == NaN here)
    np.testing.assert_array_equal(idx.numpy(), ridx)


@given(case=pool_case(allow_empty_windows=True), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("impl", impls("max_pool2d", without=("reference",)))
def test_kernels_match_reference_even_on_windows_in_the_padding(impl, case, seed):
    # The functional layer refuses windows with no tap inside the input; the kernels still give
    # -inf and index -1 there, never reading out of bounds.
    shape, k, s, p, d = case
    x = data(shape, np.float32, seed)
    y, idx = K.IMPLS["max_pool2d"][impl](x, k, s, p, d)
    ry, ridx = K.max_pool2d_reference(x, k, s, p, d)
    np.testing.assert_array_equal(msn.backend.to_numpy(y), ry)
    np.testing.assert_array_equal(msn.backend.to_numpy(idx), ridx)
    gy = np.random.default_rng(seed).standard_normal(ry.shape).astype(np.float32)
    gx = K.IMPLS["max_pool2d_backward"][impl](gy, ridx, shape[2:], k, s, p, d)
    assert_close(gx, K.max_pool2d_backward_reference(gy, ridx, shape[2:], k, s, p, d))


def test_reference_follows_the_spec_on_worked_examples():
    f = K.max_pool2d_reference
    one = ((2, 2), (2, 2), (0, 0), (1, 1))
    # ties: the first maximum in row-major order wins
    y, i = f(np.array([[[[1.0, 3.0], [3.0, 2.0]]]]), *one)
    assert y[0, 0, 0, 0] == 3 and i[0, 0, 0, 0] == 1
    # NaN wins, and the first NaN's index is returned
    y, i = f(np.array([[[[1.0, np.nan], [np.nan, 5.0]]]]), *one)
    assert np.isnan(y[0, 0, 0, 0]) and i[0, 0, 0, 0] == 1
    # padding acts as -inf: a window of -inf values returns its first real tap, not the padding
    x = np.full((1, 1, 2, 2), -np.inf)
    y, i = f(x, (3, 3), (1, 1), (1, 1), (1, 1))
    assert np.all(y == -np.inf) and i[0, 0].tolist() == [[0, 0], [0, 0]]
    # indices are h*W + w within the unpadded plane
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    y, i = f(x, (2, 2), (1, 2), (1, 1), (1, 1))
    assert i[0, 0].tolist() == [[0, 2, 3], [4, 6, 7], [8, 10, 11], [8, 10, 11]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("max_pool2d", without=("reference",)))
def test_2x2_fast_path_matches_reference(impl, dtype):
    # The U-Net / SegNet case has its own CPU kernels: odd sizes leave a row and a column out.
    x = data((2, 3, 7, 5) if not SIMULATOR else (1, 2, 5, 3), dtype, 7)
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y, idx = F.max_pool2d(X, 2, return_indices=True)
        gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    ry, ridx = K.max_pool2d_reference(x, (2, 2), (2, 2), (0, 0), (1, 1))
    np.testing.assert_array_equal(y.numpy(), ry)
    np.testing.assert_array_equal(idx.numpy(), ridx)
    assert_close(X.grad, K.max_pool2d_backward_reference(gy, ridx, x.shape[2:], (2, 2), (2, 2),
                                                         (0, 0), (1, 1)))


# ---- backward ------------------------------------------------------------------------------


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("max_pool2d", without=("reference",)))
def test_backward_matches_reference(impl, dtype, case, seed):
    shape, k, s, p, d = case
    x = data(shape, dtype, seed)
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.max_pool2d(X, k, s, p, d)
        gy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
        y.backward(gy)
    _, ridx = K.max_pool2d_reference(x, k, s, p, d)
    expected = K.max_pool2d_backward_reference(gy, ridx, shape[2:], k, s, p, d)
    assert X.grad.dtype == dtype
    assert_close(X.grad, expected, scale=k[0] * k[1], what=f"{case}")


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
def test_backward_is_the_adjoint_of_the_gather(impl, case, seed):
    # With the indices fixed, max pooling is the linear map A x = x.flat[idx]; its backward must
    # be A^T: <A x, v> = <x, A^T v>. Random in-window indices repeat where windows overlap.
    shape, k, s, p, d = case
    idx = random_in_window_indices(shape, k, s, p, d, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    v = rng.standard_normal(idx.shape)
    N, C = shape[:2]
    ax = np.take_along_axis(x.reshape(N, C, -1), idx.reshape(N, C, -1), axis=2)  # (N, C, OH*OW)
    atv = K.IMPLS["max_pool2d_backward"][impl](v, idx, shape[2:], k, s, p, d)
    atv = msn.backend.to_numpy(atv)
    assert atv.shape == x.shape
    lhs, rhs = float((ax.reshape(v.shape) * v).sum()), float((x * atv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (lhs, rhs)


GRADCHECK_CASES = [  # (x shape, kernel, stride, padding, dilation)
    ((1, 2, 4, 4), 2, 2, 0, 1),  # tiny: also run by the CUDA simulator
    ((2, 2, 5, 6), 3, 2, 1, 1),
    ((1, 2, 7, 6), (3, 2), (1, 2), (1, 0), (2, 1)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, case):
    shape, k, s, p, d = case
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 150:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = distinct(shape)
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.max_pool2d(t, k, s, p, d), [x])


@pytest.mark.parametrize("shape, geo", [((2, 3, 9, 8), (2, 2, 0, 1)), ((2, 2, 9, 9), (3, 2, 1, 1)),
                                        ((1, 2, 10, 9), ((3, 2), (2, 1), (1, 1), (2, 3)))])
def test_matches_pytorch(shape, geo):
    torch = pytest.importorskip("torch")
    x = data(shape, np.float32, 3, special=False)  # ties: PyTorch also keeps the first max
    x[0, 0, 0, :2] = -np.inf
    check_op([], lambda t: F.max_pool2d(t, *geo, return_indices=True),
             lambda t: torch.nn.functional.max_pool2d(t, *geo, return_indices=True),
             inputs=[x], exact=True)


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((1, 2, 5, 5), np.float32)
BAD = [  # (kwargs for max_pool2d, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(2, 5, 5)"]),
    (dict(input=np.zeros((1, 2, 0, 5), np.float32)), ValueError, ["empty", "(1, 2, 0, 5)"]),
    (dict(input=X.astype(np.int64)), TypeError, ["input", "int64"]),
    (dict(input=[[1.0]]), TypeError, ["input"]),
    (dict(kernel_size=0), ValueError, ["kernel_size", "(0, 0)"]),
    (dict(kernel_size=(2, -1)), ValueError, ["kernel_size"]),
    (dict(kernel_size=2.0), TypeError, ["kernel_size"]),
    (dict(kernel_size=(1, 2, 3)), ValueError, ["kernel_size"]),
    (dict(stride=0), ValueError, ["stride", "(0, 0)"]),
    (dict(padding=-1), ValueError, ["padding", "(-1, -1)"]),
    (dict(kernel_size=3, padding=2), ValueError, ["padding", "half", "(2, 2)", "(3, 3)"]),
    (dict(dilation=0), ValueError, ["dilation"]),
    (dict(kernel_size=6), ValueError, ["empty output", "(1, 2, 5, 5)"]),
    (dict(kernel_size=2, padding=1, dilation=6, stride=1), ValueError, ["window", "no input"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(input=X, kernel_size=2, stride=None, padding=0, dilation=1)
    check_bad_input(F.max_pool2d, defaults, kwargs, exc, words)


def test_ceil_mode_is_refused():
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        F.max_pool2d(X, 2, ceil_mode=True)
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        nn.MaxPool2d(2, ceil_mode=True)


# ---- layer ---------------------------------------------------------------------------------


def test_maxpool2d_layer():
    x = distinct((2, 3, 6, 7)).astype(np.float32)
    layer = nn.MaxPool2d(3, stride=2, padding=1)
    assert "kernel_size=3" in repr(layer) and list(layer.parameters()) == []
    y = layer(msn.Tensor(x))
    assert_close(y.data, F.max_pool2d(x, 3, 2, 1).data)
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    assert y.shape == (2, 3, 3, 3) and idx.shape == y.shape and idx.dtype == np.int64
    with pytest.raises(ValueError, match="stride"):
        nn.MaxPool2d(2, stride=0)
