"""Depthwise conv kernels (kernels/depthwise_conv2d.py): every implementation against the plain-loop
reference for the forward and both backward kernels; the adjoint identities that define the two
backward kernels; run-to-run (and thread-count) determinism; and conv2d with groups = C, which
dispatches to these kernels, against the explicit convolution matrix."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from conv_cases import geometry
from helpers import DTYPES, HYP, assert_close, numba_threads, out_len
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import depthwise_conv2d as K
from minisegnet.kernels.conv_matrix import conv_matrix, conv_transpose_matrix

import minisegnet as msn
import minisegnet.functional as F
from minisegnet.testing import gradcheck

# The simulator runs a few thousand threads per second: tiny planes and few channels there.
MAX_HW = 4 if SIMULATOR else 9
MAX_C = 2 if SIMULATOR else 3

FWD, BWI, BWW = ("depthwise_conv2d", "depthwise_conv2d_backward_input",
                 "depthwise_conv2d_backward_weight")



@st.composite
def dw_case(draw):
    """(x shape (N, C, H, W), w shape (C*m, 1, KH, KW), stride, padding, dilation), OH, OW >= 1."""
    N = draw(st.integers(1, 2))
    C = draw(st.integers(1, MAX_C))
    m = draw(st.integers(1, 2))
    k, s, p, d, hw = geometry(draw, MAX_HW, max_dilation=2)
    return (N, C, *hw), (C * m, 1, *k), s, p, d


# Fixed cases that reach every path of the numba kernels: the fused 3x3 loop (strided, dilated),
# other kernel sizes, channel multipliers, 1-3 column phases, padding beyond the kernel's reach.
TABLE = [
    ((2, 3, 7, 8), (3, 1, 3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 9, 7), (4, 1, 3, 3), (2, 2), (2, 2), (2, 2)),
    ((1, 2, 8, 9), (2, 1, 3, 3), (2, 1), (1, 0), (1, 2)),
    ((2, 1, 6, 6), (3, 1, 1, 1), (1, 2), (0, 1), (1, 1)),
    ((1, 2, 9, 6), (2, 1, 5, 3), (1, 1), (2, 1), (1, 1)),
    ((1, 2, 7, 10), (6, 1, 3, 3), (1, 3), (2, 2), (1, 1)),  # m = 3, three column phases
    ((1, 1, 5, 5), (1, 1, 1, 1), (1, 1), (2, 2), (1, 1)),  # padding wider than the kernel
    ((1, 1, 5, 41), (2, 1, 3, 3), (2, 2), (1, 1), (1, 1)),  # rows longer than a vector
]
if SIMULATOR:
    TABLE = [((1, 2, 5, 6), (2, 1, 3, 3), (1, 1), (1, 1), (1, 1)),
             ((1, 1, 6, 5), (2, 1, 3, 3), (2, 2), (2, 1), (2, 1))]


def arrays(case, dtype, seed):
    xs, ws, s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    oh, ow = (out_len(xs[2], ws[2], s[0], p[0], d[0]), out_len(xs[3], ws[3], s[1], p[1], d[1]))
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    return x, w, gy


def check_against_reference(impl, case, dtype, seed):
    x, w, gy = arrays(case, dtype, seed)
    _, ws, s, p, d = case
    taps = ws[2] * ws[3] * (ws[0] // x.shape[1])  # terms in one output / input-gradient sum
    terms = gy.shape[0] * gy.shape[2] * gy.shape[3]  # terms in one weight-gradient sum
    y0 = K.IMPLS[FWD]["reference"](x, w, s, p, d)
    assert y0.shape == gy.shape  # the reference sizes its output with the SPEC formula
    assert_close(K.IMPLS[FWD][impl](x, w, s, p, d), y0, scale=taps, what="forward")
    assert_close(K.IMPLS[BWI][impl](gy, w, x.shape, s, p, d),
                 K.IMPLS[BWI]["reference"](gy, w, x.shape, s, p, d), scale=taps,
                 what="backward_input")
    assert_close(K.IMPLS[BWW][impl](x, gy, w.shape, s, p, d),
                 K.IMPLS[BWW]["reference"](x, gy, w.shape, s, p, d), scale=terms,
                 what="backward_weight")


# ---- every implementation against the reference ----------------------------------------------


@given(case=dw_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(impl, dtype, case, seed):
    check_against_reference(impl, case, dtype, seed)


@pytest.mark.parametrize("case", TABLE, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}")
def test_table_matches_reference(impl, case):
    check_against_reference(impl, case, np.float32, 1)


# ---- the backward kernels are the adjoints of the forward ------------------------------------


@given(case=dw_case(), seed=st.integers(0, 2**16))
@HYP
def test_adjoint_identities(impl, case, seed):
    """<dw(x; w), y> = <x, bwi(y; w)> and <dw(x; w), y> = <w, bww(x, y)>, in float64."""
    x, w, y = arrays(case, np.float64, seed)
    _, _, s, p, d = case
    fx = K.IMPLS[FWD][impl](x, w, s, p, d)
    lhs = float(np.vdot(msn.backend.to_numpy(fx), y))
    via_input = float(np.vdot(x, msn.backend.to_numpy(K.IMPLS[BWI][impl](y, w, x.shape, s, p, d))))
    via_weight = float(np.vdot(w, msn.backend.to_numpy(K.IMPLS[BWW][impl](x, y, w.shape, s, p, d))))
    tol = 1e-10 * (1 + np.abs(x).sum() * np.abs(w).sum() * np.abs(y).max())
    assert abs(lhs - via_input) <= tol, (lhs, via_input)
    assert abs(lhs - via_weight) <= tol, (lhs, via_weight)


def test_weight_gradient_is_deterministic(impl):
    """No atomics: two runs give the same bits (the CUDA reduction tree has a fixed order)."""
    case = TABLE[1] if not SIMULATOR else TABLE[0]
    x, w, gy = arrays(case, np.float32, 3)
    _, _, s, p, d = case
    a = msn.backend.to_numpy(K.IMPLS[BWW][impl](x, gy, w.shape, s, p, d))
    b = msn.backend.to_numpy(K.IMPLS[BWW][impl](x, gy, w.shape, s, p, d))
    np.testing.assert_array_equal(a, b)
    a = msn.backend.to_numpy(K.IMPLS[BWI][impl](gy, w, x.shape, s, p, d))
    b = msn.backend.to_numpy(K.IMPLS[BWI][impl](gy, w, x.shape, s, p, d))
    np.testing.assert_array_equal(a, b)


def test_numba_results_do_not_depend_on_the_thread_count():
    """Per-image partial sums reduced in image order: the same bits on 1 thread or on all."""
    x, w, gy = arrays(((4, 3, 11, 10), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1)), np.float32, 5)
    geo = ((1, 1), (1, 1), (1, 1))
    results = []
    for n in (1, 2):
        with numba_threads(n):
            results.append((K.depthwise_conv2d_numba(x, w, *geo),
                            K.depthwise_conv2d_backward_input_numba(gy, w, x.shape, *geo),
                            K.depthwise_conv2d_backward_weight_numba(x, gy, w.shape, *geo)))
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


@given(H=st.integers(1, 7), W=st.integers(1, 7), S=st.integers(1, 3), HB=st.integers(0, 9),
       WB=st.integers(0, 5), oh=st.integers(-3, 3), ow=st.integers(-3, 3))
def test_numba_phase_split_padding_round_trip(H, W, S, HB, WB, oh, ow):
    """The numba kernels' padded, column-phase-split plane: buf[f, r, t] = padded[r, t*S + f] with
    padded[h + oh, v + ow] = src[h, v]; and back (cropping), zero where there is no overlap."""
    src = np.random.default_rng(H * 100 + W).standard_normal((H, W)).astype(np.float32)
    padded = np.zeros((HB, S * WB), np.float32)
    inside = np.zeros((H, W), bool)
    for h in range(H):
        for v in range(W):
            if 0 <= h + oh < HB and 0 <= v + ow < S * WB:
                padded[h + oh, v + ow] = src[h, v]
                inside[h, v] = True
    buf = np.full((S, HB, WB), 7.0, np.float32)
    K._pad_phases(buf, src, oh, ow)
    expected = np.stack([padded[:, f::S] for f in range(S)]).reshape(S, HB, WB)
    np.testing.assert_array_equal(buf, expected)
    back = np.full((H, W), 5.0, np.float32)
    K._unpad_phases(back, buf, oh, ow)
    np.testing.assert_array_equal(back, np.where(inside, src, 0))


def test_outputs_keep_the_input_dtype(impl):
    case = ((1, 1, 4, 4), (1, 1, 3, 3), (1, 1), (1, 1), (1, 1))
    for dtype in DTYPES:
        x, w, gy = arrays(case, dtype, 0)
        assert K.IMPLS[FWD][impl](x, w, *case[2:]).dtype == dtype
        assert K.IMPLS[BWI][impl](gy, w, x.shape, *case[2:]).dtype == dtype
        assert K.IMPLS[BWW][impl](x, gy, w.shape, *case[2:]).dtype == dtype


# ---- through minisegnet.functional: conv2d / conv_transpose2d with groups = C ------------------


@given(case=dw_case(), seed=st.integers(0, 2**16))
@HYP
def test_conv2d_groups_c_matches_the_convolution_matrix(impl, case, seed):
    """conv2d(groups=C) runs the depthwise kernels; forward and both gradients against C and C^T."""
    x, w, gy = arrays(case, np.float64, seed)
    xs, ws, s, p, d = case
    N, C = xs[0], xs[1]
    M = conv_matrix(xs[1:], w, s, p, d, groups=C)  # (C*m*OH*OW, C*H*W)
    xt = msn.Tensor(x, requires_grad=True)
    wt = msn.Tensor(w, requires_grad=True)
    with msn.use_impl(impl):
        y = F.conv2d(xt, wt, stride=s, padding=p, dilation=d, groups=C)
        y.backward(gy)
    assert_close(y.data, (x.reshape(N, -1) @ M.T).reshape(gy.shape), what="forward")
    assert_close(xt.grad, (gy.reshape(N, -1) @ M).reshape(x.shape), what="input grad")
    assert_close(wt.grad, K.depthwise_conv2d_backward_weight_reference(x, gy, w.shape, s, p, d),
                 what="weight grad")


def test_depthwise_transposed_conv_matches_the_transposed_matrix(impl):
    """conv_transpose2d with groups = C and weight (C, 1, k, k) also takes the depthwise path."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((3, 1, 3, 3))
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=3).data
    T = conv_transpose_matrix((3, 4, 5), w, 2, 1, 1, groups=3)
    assert_close(y, (x.reshape(2, -1) @ T.T).reshape(y.shape))


@pytest.mark.skipif(SIMULATOR, reason="finite differences are many forward passes")
def test_gradcheck_through_conv2d(impl):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 6))
    w = rng.standard_normal((4, 1, 3, 2))
    with msn.use_impl(impl):
        gradcheck(lambda a, b: F.conv2d(a, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
                  [x, w])


def test_bad_depthwise_weight_is_rejected():
    x = np.zeros((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(x, np.zeros((4, 1, 3, 3), np.float32), groups=3)  # 4 outputs, 3 groups
    with pytest.raises(ValueError, match="weight"):
        F.conv2d(x, np.zeros((3, 1, 3, 3), np.float32), groups=1)  # 1 input channel per output


@pytest.mark.slow
@pytest.mark.parametrize("s, d", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_benchmark_shapes_numba_against_numpy(s, d):
    """The benchmark's shapes (N=8, C=32, 64x64, 3x3): numba against the vectorised NumPy
    version."""
    case = ((8, 32, 64, 64), (32, 1, 3, 3), (s, s), (d, d), (d, d))
    x, w, gy = arrays(case, np.float32, 0)
    g = case[2:]
    assert_close(K.depthwise_conv2d_numba(x, w, *g), K.depthwise_conv2d_numpy(x, w, *g), scale=9)
    assert_close(K.depthwise_conv2d_backward_input_numba(gy, w, x.shape, *g),
                 K.depthwise_conv2d_backward_input_numpy(gy, w, x.shape, *g), scale=9)
    assert_close(K.depthwise_conv2d_backward_weight_numba(x, gy, w.shape, *g),
                 K.depthwise_conv2d_backward_weight_numpy(x, gy, w.shape, *g), scale=2e4)
