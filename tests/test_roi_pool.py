"""roi_pool (minisegnet/functional/roi.py on kernels/roi_pool.py) and nn.RoIPool.

Every implementation against the reference (values and argmax exactly, gradients within
tolerance) on boxes partly or wholly outside the map, degenerate and inverted boxes, with ties and
NaN; the quantization the papers describe on worked examples (coordinates rounded half away from
zero, rows shared by two bins, pixels lost or gained by the rounding, empty bins); the
argmax-routed backward and its adjoint identity; gradcheck; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import (
    DTYPES,
    HYP,
    assert_close,
    check_bad_input,
    check_op,
    impls,
    missing_impls,
    run_with_memory_limit,
)
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import roi_pool as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 4 if SIMULATOR else 8


@st.composite
def pool_case(draw):
    """(x shape, boxes (K, 5), output size, scale): boxes on a grid of quarter pixels of the
    feature map (so roundings hit exact halves), from 3 pixels before the map to 3 after it,
    including zero-size and inverted boxes."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, SMALL)), draw(st.integers(1, SMALL))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 2.0]))
    rows = []
    for _ in range(draw(st.integers(1, 3 if SIMULATOR else 4))):
        b = draw(st.integers(0, N - 1))
        c = [draw(st.integers(-12, 4 * W + 12)) / 4, draw(st.integers(-12, 4 * H + 12)) / 4,
             draw(st.integers(-12, 4 * W + 12)) / 4, draw(st.integers(-12, 4 * H + 12)) / 4]
        rows.append([b] + [v / scale for v in c])
    out = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return (N, C, H, W), np.array(rows), out, scale


def data(shape, dtype, seed, special=False):
    """Small integers (many ties), and with ``special`` some NaN."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype(dtype)
    if special:
        x[rng.random(shape) < 0.08] = np.nan
    return x


def distinct(shape, seed=0):
    """float64 values at least 0.1 apart: no ties, so the max is differentiable there."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1 - n * 0.05



# ---- every implementation against the reference --------------------------------------------


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("roi_pool", without=("reference",)))
def test_forward_and_backward_match_reference(impl, dtype, case, seed):
    shape, boxes, out, scale = case
    x = data(shape, dtype, seed)
    gy = np.random.default_rng(seed).standard_normal((len(boxes), shape[1]) + out).astype(dtype)
    X = msn.Tensor(x, requires_grad=True)
    with msn.use_impl(impl):
        y = F.roi_pool(X, boxes, out, scale)
        y.backward(gy)
    b = boxes.astype(dtype)
    ry, rarg = K.roi_pool_reference(x, b, out, scale)
    assert y.shape == ry.shape and y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), ry)  # a max is exact
    assert_close(X.grad, K.roi_pool_backward_reference(gy, rarg, b, shape, scale),
                 scale=len(boxes), what=f"{case}")


@pytest.mark.parametrize("impl", missing_impls("roi_pool"))
def test_a_missing_implementation_says_so(impl):
    with msn.use_impl(impl), pytest.raises(NotImplementedError, match=f"roi_pool.*{impl}"):
        F.roi_pool(np.zeros((1, 1, 4, 4)), np.array([[0, 0, 0, 2, 2.0]]), 2)


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("impl", impls("roi_pool", without=("reference",)))
def test_kernels_argmax_ties_nan_and_bad_batch_indices(impl, case, seed):
    # Straight to the kernels: the argmax must match too (first maximum in row-major order; the
    # first NaN wins), and boxes with a batch index outside [0, N) (which the functional layer
    # rejects) give zeros and -1 without reading out of bounds.
    shape, boxes, out, scale = case
    boxes = boxes.copy()
    boxes[-1, 0] = shape[0] + 2 if seed % 2 else -1
    x = data(shape, np.float32, seed, special=True)
    b = boxes.astype(np.float32)
    y, arg = K.IMPLS["roi_pool"][impl](x, b, out, scale)
    ry, rarg = K.roi_pool_reference(x, b, out, scale)
    np.testing.assert_array_equal(msn.backend.to_numpy(y), ry)
    np.testing.assert_array_equal(msn.backend.to_numpy(arg), rarg)
    assert (rarg[-1] == -1).all() and not ry[-1].any()
    gy = np.random.default_rng(seed).standard_normal(ry.shape).astype(np.float32)
    gx = K.IMPLS["roi_pool_backward"][impl](gy, rarg, b, shape, scale)
    assert_close(gx, K.roi_pool_backward_reference(gy, rarg, b, shape, scale), scale=len(b))


@given(case=pool_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("impl", impls("roi_pool"))
def test_backward_is_the_adjoint_of_the_argmax_gather(impl, case, seed):
    # With the argmax fixed, RoIPool is the linear map S x = x[b, c].flat[argmax] (0 where -1);
    # its backward must be S^T: <S x, v> = <x, S^T v>.
    shape, boxes, out, scale = case
    _, arg = K.roi_pool_reference(data(shape, np.float64, seed), boxes, out, scale)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    v = rng.standard_normal(arg.shape)
    sx = np.zeros(arg.shape)
    for k, c, ph, pw in np.ndindex(*arg.shape):
        if arg[k, c, ph, pw] >= 0:
            sx[k, c, ph, pw] = x[int(boxes[k, 0]), c].flat[arg[k, c, ph, pw]]
    stv = msn.backend.to_numpy(K.IMPLS["roi_pool_backward"][impl](v, arg, boxes, shape, scale))
    lhs, rhs = float((sx * v).sum()), float((x * stv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs)), (lhs, rhs)


# ---- the quantization, on worked examples --------------------------------------------------


def plane_with(H, W, where, value=10.0):
    x = np.zeros((1, 1, H, W))
    x[0, 0][where] = value
    return x


def test_a_row_shared_by_two_bins():
    # Box rows 0..4 (y1' = 0, y2' = 4): roi_h = 5, PH = 2 -> bin 0 = rows [0, ceil(2.5)) = 0..2,
    # bin 1 = rows [floor(2.5), 5) = 2..4: row 2 belongs to both, so its maximum appears twice
    # and both bins send their gradient to it.
    x = plane_with(5, 3, (2, 1))
    X = msn.Tensor(x, requires_grad=True)
    y = F.roi_pool(X, np.array([[0, 0, 0, 2, 4]]), (2, 1))
    assert y.numpy().ravel().tolist() == [10.0, 10.0]
    y.backward(np.array([[[[1.0], [2.0]]]]))
    assert X.grad[0, 0, 2, 1] == 3.0 and X.grad.sum() == 3.0
    # the same box over 3 bins: [0, 2), [1, 4), [3, 5): rows 1 and 3 are shared
    y = F.roi_pool(plane_with(5, 3, (3, 0)), np.array([[0, 0, 0, 2, 4]]), (3, 1))
    assert y.numpy().ravel().tolist() == [0.0, 10.0, 10.0]


def test_rounding_loses_and_gains_pixels():
    # x1 = 0.6 rounds to 1: column 0 is lost although the box covers 40% of it.
    y = F.roi_pool(plane_with(3, 5, (1, 0)), np.array([[0, 0.6, 0, 2.4, 2]]), 1)
    assert y.numpy().item() == 0.0
    # x2 = 2.5 rounds (half away from zero) to 3 and the end pixel is inclusive: column 3 is in.
    y = F.roi_pool(plane_with(3, 5, (1, 3)), np.array([[0, 0.6, 0, 2.5, 2]]), 1)
    assert y.numpy().item() == 10.0
    # x2 = 2.49 rounds to 2: column 3 is out.
    y = F.roi_pool(plane_with(3, 5, (1, 3)), np.array([[0, 0.6, 0, 2.49, 2]]), 1)
    assert y.numpy().item() == 0.0
    # x1 = -2.5 rounds to -3, not -2 (round half to even): roi_w = 3 - (-3) + 1 = 7, PW = 2,
    # bin 1 = [floor(3.5) - 3, ceil(7) - 3) = [0, 4) includes column 0 (with -2 it would start
    # at column 1).
    y = F.roi_pool(plane_with(2, 6, (0, 0)), np.array([[0, -2.5, 0, 3, 1]]), (1, 2))
    assert y.numpy().ravel().tolist() == [10.0, 10.0]
    # the scale applies before the rounding: 5 * 0.5 = 2.5 -> 3
    y = F.roi_pool(plane_with(3, 5, (1, 3)), np.array([[0, 1.2, 0, 5, 4]]), 1, spatial_scale=0.5)
    assert y.numpy().item() == 10.0


def test_small_and_degenerate_boxes():
    x = np.arange(20.0).reshape(1, 1, 4, 5)  # increasing: a bin's max is its last pixel
    # inverted box: roi = max(x2' - x1' + 1, 1) = 1, the single pixel at (y1', x1') = (2, 3)
    y = F.roi_pool(x, np.array([[0, 3, 2, 1, 0]]), (2, 2))
    assert (y.numpy() == x[0, 0, 2, 3]).all()
    # roi 2 over 3 bins: [0, 1), [0, 2), [1, 2) along each axis from (1, 1): no bin is empty
    y = F.roi_pool(x, np.array([[0, 1, 1, 2, 2]]), (3, 3)).numpy()[0, 0]
    r = [1, 2, 2]  # last row/column of each bin, offset by the box start
    assert y.tolist() == [[x[0, 0, i, j] for j in r] for i in r]
    # a box entirely below the map: every bin is empty -> 0
    y = F.roi_pool(x, np.array([[0, 0, 6, 4, 9]]), (2, 2))
    assert not y.numpy().any()
    # partly outside: bins are clamped to the map
    y = F.roi_pool(x, np.array([[0, -4, -4, 1, 1]]), (2, 2)).numpy()[0, 0]
    assert y.tolist() == [[0.0, 0.0], [0.0, x[0, 0, 1, 1]]]


def test_box_list_empty_boxes_and_module():
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 5)).astype(np.float32)
    two = [np.array([[0, 0, 4, 4.0]]), np.array([[1, 1, 3, 5.0], [0, 0, 1, 1.0]])]
    rows = np.array([[0, 0, 0, 4, 4.0], [1, 1, 1, 3, 5.0], [1, 0, 0, 1, 1.0]])
    np.testing.assert_array_equal(F.roi_pool(x, two, 3, 0.5).numpy(),
                                  F.roi_pool(x, rows, 3, 0.5).numpy())
    X = msn.Tensor(x, requires_grad=True)
    y = F.roi_pool(X, [np.zeros((0, 4)), np.zeros((0, 4))], (2, 3))
    assert y.shape == (0, 3, 2, 3) and y.dtype == np.float32
    y.sum().backward()
    assert X.grad.shape == x.shape and not X.grad.any()
    layer = nn.RoIPool((2, 3), spatial_scale=0.5)
    assert "RoIPool" in repr(layer) and not list(layer.parameters())
    np.testing.assert_array_equal(layer(x, rows).numpy(), F.roi_pool(x, rows, (2, 3), 0.5).numpy())
    with pytest.raises(ValueError, match="spatial_scale"):
        nn.RoIPool(2, -1.0)


# ---- gradients -----------------------------------------------------------------------------


GRADCHECK_CASES = [  # (x shape, boxes, output size, scale)
    ((1, 1, 3, 3), [[0, 0, 0, 2, 2], [0, 1, 0, 2, 1]], (2, 2), 1.0),
    ((2, 2, 5, 6), [[1, 0, 0, 9, 7], [0, 2, 2, 11, 9], [1, -3, 1, 4, 4]], (3, 2), 0.5),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
@pytest.mark.parametrize("impl", impls("roi_pool"))
def test_gradcheck(impl, case):
    shape, boxes, out, scale = case
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 10:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = distinct(shape)  # no ties: the max is differentiable
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.roi_pool(t, np.array(boxes, float), out, scale), [x])


HUGE = """
x = np.random.default_rng(0).random((1, 2, 8, 8)).astype(np.float32)
box = np.array([[0, 0, 0, 1e9, 1e9], [0, -1e12, -1e12, 1e12, 1e12], [0, -1e30, 3, 1e30, 4]],
               np.float32)
out = {}
for impl in ("numba", "reference"):
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.roi_pool(X, box, 2)
        y.sum().backward()
        out[impl] = (y.numpy(), X.grad)
"""
CHECK = """
(y, gx), (ry, rgx) = out["numba"], out["reference"]
assert np.array_equal(y, ry) and np.array_equal(gx, rgx)
assert np.array_equal(y[0, :, 0, 0], x[0].max(axis=(1, 2))) and not y[0, :, 1, :].any()
"""


def test_huge_boxes_cost_bounded_work_and_memory():
    # Bins are clamped to the map before any pixel is visited: a 1e9- or 1e30-pixel box costs
    # what a box over the whole map costs.
    warm = HUGE.replace("1e9, 1e9], [0, -1e12, -1e12, 1e12, 1e12], [0, -1e30, 3, 1e30, 4]",
                        "9, 9], [0, -1, -1, 1, 1], [0, -1, 3, 1, 4]")
    proc = run_with_memory_limit(warm, HUGE + CHECK, budget_mb=1000, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("out, scale", [((3, 3), 1.0), ((2, 4), 0.5), ((7, 7), 2.0)])
def test_matches_torchvision(out, scale):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    boxes = np.array([[0, 0.5, 1.25, 6.75, 7.5], [1, -2.5, -1.0, 3.0, 4.25], [1, 5, 6, 12, 11],
                      [0, 3, 3, 3, 3], [1, 4.0, 2.0, 3.5, 6.0]], np.float32)
    check_op([], lambda x: F.roi_pool(x, boxes, out, scale),
             lambda x: tv.ops.roi_pool(x, torch.tensor(boxes), out, scale),
             inputs=[distinct((2, 3, 9, 8)).astype(np.float32)], exact=True, scale=len(boxes))


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((2, 3, 5, 5), np.float32)
B = np.array([[0, 0, 0, 2, 2.0]])
BAD = [  # (kwargs for roi_pool, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(3, 5, 5)"]),
    (dict(input=X.astype(np.int64)), TypeError, ["input", "int64"]),
    (dict(boxes=np.zeros((3, 6))), ValueError, ["boxes", "(K, 5)", "(3, 6)"]),
    (dict(boxes=[np.zeros(4)]), ValueError, ["boxes[0]", "(4,)"]),
    (dict(boxes=np.array([[3, 0, 0, 1, 1.0]])), ValueError, ["batch index", "3", "N=2"]),
    (dict(boxes=np.array([[1.25, 0, 0, 1, 1.0]])), ValueError, ["integer", "1.25"]),
    (dict(boxes=np.array([[0, 0, np.inf, 1, 1.0]])), ValueError, ["finite"]),
    (dict(boxes=np.array([[0, 0, 0, 1, 1]], dtype=bool)), TypeError, ["boxes", "bool"]),
    (dict(output_size=(0, 2)), ValueError, ["output_size", "(0, 2)"]),
    (dict(output_size="7"), TypeError, ["output_size"]),
    (dict(spatial_scale=0), ValueError, ["spatial_scale", "0"]),
    (dict(spatial_scale=None), TypeError, ["spatial_scale"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(input=X, boxes=B, output_size=2, spatial_scale=1.0)
    check_bad_input(F.roi_pool, defaults, kwargs, exc, words)
