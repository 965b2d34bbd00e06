"""roi_align (minisegnet/functional/roi.py on kernels/roi_align.py) and nn.RoIAlign.

Every implementation against the reference (forward and backward) on boxes partly or wholly
outside the map, degenerate and inverted boxes, all sampling modes and both alignments; the
adjoint identity of the backward; exact cases designed from the SPEC's formula (pixel centres
reproduced, the half-pixel shift, samples beyond one pixel outside counting as zeros); gradcheck;
run-to-run agreement of the CUDA backward (atomics); bad input."""

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
from minisegnet.kernels import roi_align as K

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 4 if SIMULATOR else 7  # the simulator runs a few thousand threads per second
SCALES = [1.0, 0.5, 0.75, 1.25]


@st.composite
def align_case(draw):
    """(x shape, boxes (K, 5), output size, scale, sampling_ratio, aligned).

    Box coordinates are quarter pixels of the feature map divided by the scale, from 3 pixels
    before the map to 3 after it: boxes partly or wholly outside, zero-size and inverted ones."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, SMALL)), draw(st.integers(1, SMALL))
    scale = draw(st.sampled_from(SCALES))
    K_ = draw(st.integers(1, 3 if SIMULATOR else 4))
    rows = []
    for _ in range(K_):
        b = draw(st.integers(0, N - 1))
        x1 = draw(st.integers(-12, 4 * W + 12)) / 4
        y1 = draw(st.integers(-12, 4 * H + 12)) / 4
        kind = draw(st.sampled_from(["normal", "normal", "zero", "inverted"]))
        if kind == "normal":
            x2 = x1 + draw(st.integers(1, 4 * W + 4)) / 4
            y2 = y1 + draw(st.integers(1, 4 * H + 4)) / 4
        elif kind == "zero":
            x2, y2 = x1, y1 + draw(st.integers(0, 8)) / 4
        else:
            x2, y2 = x1 - draw(st.integers(1, 8)) / 4, y1 - draw(st.integers(0, 8)) / 4
        rows.append([b, x1 / scale, y1 / scale, x2 / scale, y2 / scale])
    out = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sampling_ratio = draw(st.sampled_from([-1, 0, 1, 2, 3]))
    aligned = draw(st.booleans())
    return (N, C, H, W), np.array(rows), out, scale, sampling_ratio, aligned



# ---- every implementation against the reference --------------------------------------------


@given(case=align_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("roi_align", without=("reference",)))
def test_forward_and_backward_match_reference(impl, dtype, case, seed):
    shape, boxes, out, scale, sr, aligned = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal((len(boxes), shape[1]) + out).astype(dtype)
    X = msn.Tensor(x, requires_grad=True)
    with msn.use_impl(impl):
        y = F.roi_align(X, boxes, out, scale, sr, aligned)
        y.backward(gy)
    b = boxes.astype(dtype)
    ry = K.roi_align_reference(x, b, out, scale, sr, aligned)
    rg = K.roi_align_backward_reference(gy, b, shape, scale, sr, aligned)
    assert y.shape == (len(boxes), shape[1]) + out and y.dtype == dtype
    assert_close(y.numpy(), ry, what=f"forward {case}")
    assert_close(X.grad, rg, scale=len(boxes), what=f"backward {case}")


@given(case=align_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_backward_is_the_adjoint(impl, case, seed):
    # With the boxes fixed RoIAlign is linear, y = A x; its backward must be A^T:
    # <A x, v> = <x, A^T v>.
    shape, boxes, out, scale, sr, aligned = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    v = rng.standard_normal((len(boxes), shape[1]) + out)
    ax = msn.backend.to_numpy(K.IMPLS["roi_align"][impl](x, boxes, out, scale, sr, aligned))
    atv = msn.backend.to_numpy(
        K.IMPLS["roi_align_backward"][impl](v, boxes, shape, scale, sr, aligned))
    lhs, rhs = float((ax * v).sum()), float((x * atv).sum())
    assert abs(lhs - rhs) <= 1e-12 * (1 + abs(lhs) + float(np.abs(x).sum())), (lhs, rhs)


@pytest.mark.parametrize("impl", missing_impls("roi_align"))
def test_a_missing_implementation_says_so(impl):
    with msn.use_impl(impl), pytest.raises(NotImplementedError, match=f"roi_align.*{impl}"):
        F.roi_align(np.zeros((1, 1, 4, 4)), np.array([[0, 0, 0, 2, 2.0]]), 2)


# ---- exact cases designed from the formula -------------------------------------------------


def box_all(W: int, H: int) -> np.ndarray:
    return np.array([[0, 0, 0, W, H]], np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_aligned_box_over_the_map_reproduces_the_pixels(impl, dtype):
    # aligned=True, box [0, 0, W, H], output (H, W), one sample per bin: start = -0.5, bin = 1,
    # the sample of bin (i, j) is at (-0.5 + i + 0.5, -0.5 + j + 0.5) = (i, j): a pixel centre.
    H, W = (3, 4) if SIMULATOR else (5, 7)
    x = np.random.default_rng(0).standard_normal((1, 2, H, W)).astype(dtype)
    with msn.use_impl(impl):
        y = F.roi_align(x, box_all(W, H), (H, W), 1.0, 1, aligned=True)
    assert_close(y.numpy(), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_unaligned_box_samples_between_the_pixels(impl, dtype):
    # aligned=False, same box: start = 0, the sample of bin (i, j) is at (i + 0.5, j + 0.5): the
    # mean of the 2x2 pixels around it, the last row/column clamped (y_low >= H-1 rule).
    H, W = (3, 4) if SIMULATOR else (5, 7)
    x = np.random.default_rng(1).standard_normal((1, 2, H, W)).astype(dtype)
    e = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge")  # replicate the last row/col
    expected = (e[:, :, :-1, :-1] + e[:, :, 1:, :-1] + e[:, :, :-1, 1:] + e[:, :, 1:, 1:]) / 4
    with msn.use_impl(impl):
        y = F.roi_align(x, box_all(W, H), (H, W), 1.0, 1, aligned=False)
    assert_close(y.numpy(), expected.astype(dtype))


@given(case=align_case(), seed=st.integers(0, 2**16))
@HYP
def test_aligned_is_unaligned_shifted_by_half_a_pixel(case, seed):
    # aligned=True at box b equals aligned=False at b - 0.5 when the box is at least one pixel
    # wide and high, so that aligned=False's min-size-1 rule does not apply. Scale 1 and
    # quarter-pixel boxes keep the arithmetic exact, so both see the same sampling grid.
    shape, boxes, out, scale, sr, _ = case
    boxes = boxes.copy()
    boxes[:, 1:] = np.round(boxes[:, 1:] * scale * 4) / 4  # feature-map coordinates
    boxes[:, 3:5] = np.maximum(boxes[:, 3:5], boxes[:, 1:3] + 1)  # sizes >= 1
    x = np.random.default_rng(seed).standard_normal(shape)
    shifted = boxes.copy()
    shifted[:, 1:] -= 0.5
    a = F.roi_align(x, boxes, out, 1.0, sr, aligned=True)
    b = F.roi_align(x, shifted, out, 1.0, sr, aligned=False)
    assert_close(a.numpy(), b.numpy())


def bilinear(x: np.ndarray, y: float, xx: float) -> np.ndarray:
    """The bilinear value of the (N, C) planes at an inside point (0 <= y, x), edge-clamped."""
    H, W = x.shape[-2:]
    y0, x0 = int(y), int(xx)
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly, lx = y - y0, xx - x0
    return ((1 - ly) * (1 - lx) * x[..., y0, x0] + (1 - ly) * lx * x[..., y0, x1]
            + ly * (1 - lx) * x[..., y1, x0] + ly * lx * x[..., y1, x1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_samples_beyond_one_pixel_outside_count_as_zeros(impl, dtype):
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 4)).astype(dtype)
    with msn.use_impl(impl):
        # aligned, x from -2 to 4 over 6 bins, one sample each: samples at x = -2 .. 3. x = -2 is
        # beyond one pixel outside (0), x = -1 is not (clamped to column 0), then columns 0..3.
        y = F.roi_align(x, np.array([[0, -2, 0, 4, 4]]), (4, 6), 1.0, 1, aligned=True)
        # one bin, 2x2 samples: x at -4.5 + (0.5, 1.5)*4 = -2.5 (outside) and 1.5; y at 0.5, 2.5.
        # The two outside samples add 0 but the average still divides by 4.
        z = F.roi_align(x, np.array([[0, -4, 0, 4, 4]]), 1, 1.0, 2, aligned=True)
        # a box wholly beyond one pixel outside: zeros
        w = F.roi_align(x, np.array([[0, 5.5, 5.5, 9, 9]]), 2, 1.0, -1, aligned=False)
    y = y.numpy()
    assert np.all(y[..., 0] == 0)
    assert_close(y[..., 1], x[..., 0])
    assert_close(y[..., 2:], x)
    expected = (bilinear(x, 0.5, 1.5) + bilinear(x, 2.5, 1.5)) / 4
    assert_close(z.numpy()[0, :, 0, 0], expected[0].astype(dtype))
    assert np.all(w.numpy() == 0)


def test_adaptive_grid_and_min_size():
    # sampling_ratio <= 0: ceil(roi / P) samples per bin; aligned=False lifts roi to at least 1.
    x = np.arange(36.0).reshape(1, 1, 6, 6)  # x[h, w] = 6h + w: linear, so a bilinear sample
    # at (y, x) is exactly 6y + x, and the bin average is the value at the mean sample position
    y = F.roi_align(x, np.array([[0, 0, 0, 5, 3]]), (1, 1), 1.0, -1).numpy()  # grid 3 x 5
    assert y[0, 0, 0, 0] == pytest.approx(6 * 1.5 + 2.5)
    # a zero-size box at (2, 3) becomes 1x1 at start (2, 3): one sample at (2.5, 3.5)
    y = F.roi_align(x, np.array([[0, 2, 3, 2, 3]]), (1, 1), 1.0, 0).numpy()
    assert y[0, 0, 0, 0] == pytest.approx(6 * 3.5 + 2.5)
    # aligned=True keeps the zero size: roi 0 -> grid ceil(0) = 0 samples, count 1, output 0
    y = F.roi_align(x, np.array([[0, 2, 3, 2, 3]]), (1, 1), 1.0, -1, aligned=True).numpy()
    assert y[0, 0, 0, 0] == 0


def test_box_list_and_empty_boxes():
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 5)).astype(np.float32)
    per_image = [np.array([[0, 0, 4, 4.0]]), np.zeros((0, 4)), ]
    rows = np.array([[0, 0, 0, 4, 4.0]])
    assert_close(F.roi_align(x, per_image, 2).numpy(), F.roi_align(x, rows, 2).numpy())
    two = [np.array([[0, 0, 4, 4.0]]), np.array([[1, 1, 3, 5.0], [0, 0, 1, 1.0]])]
    rows = np.array([[0, 0, 0, 4, 4.0], [1, 1, 1, 3, 5.0], [1, 0, 0, 1, 1.0]])
    assert_close(F.roi_align(x, two, 3, 0.5, 2, True).numpy(),
                 F.roi_align(x, rows, 3, 0.5, 2, True).numpy())
    X = msn.Tensor(x, requires_grad=True)
    y = F.roi_align(X, np.zeros((0, 5)), (2, 3))
    assert y.shape == (0, 3, 2, 3) and y.dtype == np.float32
    y.sum().backward()
    assert X.grad.shape == x.shape and not X.grad.any()


def test_module():
    layer = nn.RoIAlign((2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    assert "RoIAlign" in repr(layer) and "aligned=True" in repr(layer)
    assert not list(layer.parameters())
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 6))
    boxes = np.array([[0, 1, 2, 9, 11.0]])
    assert_close(layer(x, boxes).numpy(), F.roi_align(x, boxes, (2, 3), 0.5, 2, True).numpy())
    with pytest.raises(ValueError, match="output_size"):
        nn.RoIAlign(0, 1.0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        nn.RoIAlign(2, 1.0, sampling_ratio=-2)


# ---- gradients -----------------------------------------------------------------------------


GRADCHECK_CASES = [  # (x shape, boxes, output size, scale, sampling_ratio, aligned)
    ((1, 1, 3, 3), [[0, 0.3, 0.2, 2.6, 2.1], [0, -1.2, 1.0, 1.5, 4.5]], (2, 2), 1.0, 2, False),
    ((2, 2, 4, 5), [[1, 0.5, 0.5, 7.5, 5.0], [0, 2.0, 1.0, 9.0, 9.0], [1, 3, 1, 2, 1]], (2, 3),
     0.5, -1, True),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_gradcheck(impl, case):
    shape, boxes, out, scale, sr, aligned = case
    if impl == "cuda" and SIMULATOR and np.prod(shape) > 10:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    x = np.random.default_rng(5).standard_normal(shape)
    with msn.use_impl(impl):
        assert gradcheck(lambda t: F.roi_align(t, np.array(boxes), out, scale, sr, aligned), [x])


@pytest.mark.cuda
def test_cuda_backward_atomics_agree_run_to_run():
    # The CUDA backward adds with atomics in whatever order threads run: two runs agree within
    # rounding. Many overlapping boxes on one small map make the collisions frequent.
    rng = np.random.default_rng(6)
    shape = (1, 2, 4, 4)
    boxes = np.concatenate([np.zeros((6, 1)), rng.uniform(0, 2, (6, 2)),
                            rng.uniform(2, 4, (6, 2))], axis=1)
    gy = rng.standard_normal((6, 2, 2, 2)).astype(np.float32)
    runs = [K.roi_align_backward_cuda(gy, boxes.astype(np.float32), shape, 1.0, 2, False)
            for _ in range(3)]
    for r in runs[1:]:
        assert_close(r, runs[0], scale=6)
    assert_close(runs[0], K.roi_align_backward_reference(gy, boxes.astype(np.float32), shape,
                                                         1.0, 2, False), scale=6)


TV_BOXES = np.array([[0, 0.5, 1.25, 6.75, 7.5], [1, -2.5, -1.0, 3.0, 4.25], [1, 5, 6, 12, 11],
                     [0, 3, 3, 3, 3], [1, 4.0, 2.0, 3.5, 6.0]], np.float32)


@pytest.mark.parametrize("args", [((3, 3), 1.0, -1, False), ((2, 4), 0.5, 2, True),
                                  ((7, 7), 0.75, 0, True), ((5, 3), 1.25, 1, False)])
def test_matches_torchvision(args):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    check_op([(2, 3, 9, 8)], lambda x: F.roi_align(x, TV_BOXES, *args),
             lambda x: tv.ops.roi_align(x, torch.tensor(TV_BOXES), *args), dtype=np.float32,
             scale=len(TV_BOXES))


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((2, 3, 5, 5), np.float32)
B = np.array([[0, 0, 0, 2, 2.0]])
BAD = [  # (kwargs for roi_align, exception, words the message must contain)
    (dict(input=X[0]), ValueError, ["input", "(3, 5, 5)"]),
    (dict(input=X.astype(np.int32)), TypeError, ["input", "int32"]),
    (dict(input=np.zeros((1, 3, 0, 5), np.float32)), ValueError, ["empty", "(1, 3, 0, 5)"]),
    (dict(boxes=np.zeros((3, 4))), ValueError, ["boxes", "(K, 5)", "(3, 4)"]),
    (dict(boxes=np.zeros(5)), ValueError, ["boxes", "(5,)"]),
    (dict(boxes=[np.zeros((2, 5))]), ValueError, ["boxes[0]", "(K_i, 4)", "(2, 5)"]),
    (dict(boxes="boxes"), TypeError, ["boxes", "str"]),
    (dict(boxes=np.array([[2, 0, 0, 1, 1.0]])), ValueError, ["batch index", "2", "N=2"]),
    (dict(boxes=np.array([[-1, 0, 0, 1, 1.0]])), ValueError, ["batch index", "-1"]),
    (dict(boxes=np.array([[0.5, 0, 0, 1, 1.0]])), ValueError, ["batch ind", "integer", "0.5"]),
    (dict(boxes=[B[:, 1:]] * 3), ValueError, ["batch index", "2", "N=2"]),
    (dict(boxes=np.array([[0, 0, 0, np.nan, 1.0]])), ValueError, ["boxes", "finite"]),
    (dict(output_size=0), ValueError, ["output_size", "(0, 0)"]),
    (dict(output_size=(2, -1)), ValueError, ["output_size", "(2, -1)"]),
    (dict(output_size=(1, 2, 3)), ValueError, ["output_size"]),
    (dict(output_size=2.5), TypeError, ["output_size"]),
    (dict(spatial_scale=0.0), ValueError, ["spatial_scale", "0.0"]),
    (dict(spatial_scale=-0.5), ValueError, ["spatial_scale", "-0.5"]),
    (dict(spatial_scale=float("inf")), ValueError, ["spatial_scale"]),
    (dict(spatial_scale="1"), TypeError, ["spatial_scale"]),
    (dict(sampling_ratio=-2), ValueError, ["sampling_ratio", "-2"]),
    (dict(sampling_ratio=1.5), TypeError, ["sampling_ratio"]),
    (dict(aligned=1), TypeError, ["aligned"]),
    (dict(boxes=np.array([[0, 0, 0, 1e30, 1.0]])), ValueError,
     ["box 0", "sampling grid", "5e+29", "along x", "sampling_ratio"]),
    (dict(input=X.astype(np.float64), boxes=np.array([[0, 0, -1e300, 1, 1.0]])), ValueError,
     ["box 0", "along y"]),
    (dict(sampling_ratio=2**31), ValueError, ["sampling_ratio", str(2**31)]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(input=X, boxes=B, output_size=2, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=False)
    check_bad_input(F.roi_align, defaults, kwargs, exc, words)


@given(case=align_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("impl", impls("roi_align", without=("reference",)))
def test_kernels_stay_in_bounds_on_out_of_range_batch_indices(impl, case, seed):
    # The functional layer rejects such boxes; the kernels still give zeros for them.
    shape, boxes, out, scale, sr, aligned = case
    boxes = boxes.copy()
    boxes[0, 0] = shape[0] + 3
    if len(boxes) > 1:
        boxes[1, 0] = -1
    x = np.random.default_rng(seed).standard_normal(shape)
    y = msn.backend.to_numpy(K.IMPLS["roi_align"][impl](x, boxes, out, scale, sr, aligned))
    assert_close(y, K.roi_align_reference(x, boxes, out, scale, sr, aligned))
    assert not y[0].any()
    gx = K.IMPLS["roi_align_backward"][impl](np.ones_like(y), boxes, shape, scale, sr, aligned)
    assert_close(gx, K.roi_align_backward_reference(np.ones_like(y), boxes, shape, scale, sr,
                                                    aligned), scale=len(boxes))


# ---- absurd boxes: bounded work and memory ---------------------------------------------------


ABSURD = """
x = np.random.default_rng(0).random((1, 2, 8, 8)).astype(np.float32)
box = np.array([[0, 0, 0, 1e9, 1e9], [0, -3e8, 2, 4e8, 5]], np.float32)
out = {}
for impl in ("numba", "reference"):
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        y = F.roi_align(X, box, 2, sampling_ratio=-1)
        (y * y).sum().backward()
        out[impl] = (y.numpy(), X.grad)
"""
CHECK = """
(y, gx), (ry, rgx) = out["numba"], out["reference"]
assert np.allclose(y, ry, rtol=1e-5, atol=0) and np.allclose(gx, rgx, rtol=1e-4, atol=0)
assert (y >= 0).all() and (y <= x.max()).all(), y  # an average of samples of x in [0, 1]
assert (y[0, :, 0, 0] > 0).all() and not y[0, :, 1, :].any() and not y[0, :, :, 1].any()
"""


def test_absurd_box_costs_bounded_work_and_memory():
    # A detector early in training emits such boxes: the adaptive grid is 5e8 x 5e8 samples per
    # bin. The old kernels built per-axis tables of all samples (about 24 GB, and values like 4.0
    # from inputs in [0, 1] under a memory limit); only the few samples near the map count.
    warm = ABSURD.replace("1e9, 1e9], [0, -3e8, 2, 4e8, 5]", "9, 9], [0, -3, 2, 4, 5]")
    proc = run_with_memory_limit(warm, ABSURD + CHECK, budget_mb=1500, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


BIG_BOXES = [  # [b, x1, y1, x2, y2] on an 8 x 6 map: far outside on every side, inverted
    [0, -50, -40, 60, 70], [0, -30.5, 2.25, 3.5, 44], [0, 7.5, -9, 120, 4.75],
    [0, -200, -200, -100, -150], [0, 3, 60, 1, -20], [0, 5.5, 2, 5.5, 2],
]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [-1, 3])
@pytest.mark.parametrize("impl", impls("roi_align"))
def test_visiting_only_samples_near_the_map_equals_visiting_all(impl, monkeypatch, aligned, sr):
    # The reference with every sample of every bin visited (its range helper swapped for the full
    # grid) is the brute force: the bisection may skip only samples that add 0.
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 8))
    boxes, out = np.array(BIG_BOXES, np.float64), (3, 2)
    gy = np.random.default_rng(6).standard_normal((len(boxes), 3) + out)
    with monkeypatch.context() as m:
        m.setattr(K, "_valid_samples_reference", lambda T, s, b, grid, p, size: (0, max(grid, 0)))
        y_all = K.roi_align_reference(x, boxes, out, 0.5, sr, aligned)
        gx_all = K.roi_align_backward_reference(gy, boxes, x.shape, 0.5, sr, aligned)
    y = msn.backend.to_numpy(K.IMPLS["roi_align"][impl](x, boxes, out, 0.5, sr, aligned))
    gx = msn.backend.to_numpy(
        K.IMPLS["roi_align_backward"][impl](gy, boxes, x.shape, 0.5, sr, aligned))
    if impl == "reference":  # the same sums in the same order
        assert np.array_equal(y, y_all) and np.array_equal(gx, gx_all)
    assert_close(y, y_all)
    assert_close(gx, gx_all, scale=len(boxes))
    assert y_all[:, :, :, :].any() and (y_all == 0).any()  # the boxes reach the map, and miss it
