"""Properties of convolution that the lectures lean on, checked on minisegnet.functional with
hypothesis-drawn sizes, kernels, strides, paddings, dilations, groups and output paddings:

* adjointness: <conv2d(x), y> = <x, conv_transpose2d(y)> (transposed conv *is* the adjoint);
* the zero-insertion recipe for transposed convolution;
* a dilated (atrous) conv is a plain conv with a zero-dilated kernel;
* a separable conv is a depthwise conv then a 1x1 conv (and its parameter count);
* nearest x s upsampling is a depthwise transposed conv with a ones(s, s) kernel and stride s;
* convolutionalization: a dense layer re-expressed as a conv slides over larger inputs;
* output sizes follow the SPEC formulas, and impossible settings are rejected with ValueError.

The explicit-matrix forms (conv2d = C x, conv_transpose2d = C^T y) are in test_conv_matrix.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMULATOR
from conv_cases import conv_case, out_len, transpose_case, transpose_out_len
from helpers import HYP, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn


def rand(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- adjointness ------------------------------------------------------------------------------


@given(case=conv_case(), seed=st.integers(0, 2**16))
@HYP
def test_conv_transpose2d_is_the_adjoint_of_conv2d(impl, case, seed):
    """<conv2d(x; w), y> = <x, conv_transpose2d(y; w)>, same weight, stride, padding, dilation,
    groups; output_padding is the remainder that makes the transposed conv's output x's size."""
    xs, ws, s, p, d, g = case
    x, w = rand(xs, seed), rand(ws, seed + 1)
    oh, ow = out_len(xs[2], ws[2], s[0], p[0], d[0]), out_len(xs[3], ws[3], s[1], p[1], d[1])
    y = rand((xs[0], ws[0], oh, ow), seed + 2)
    op = tuple((xs[2 + a] + 2 * p[a] - d[a] * (ws[2 + a] - 1) - 1) % s[a] for a in range(2))
    with msn.use_impl(impl):
        cx = F.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g).data
        ty = F.conv_transpose2d(y, w, stride=s, padding=p, output_padding=op, groups=g,
                                dilation=d).data
    assert cx.shape == y.shape and ty.shape == x.shape
    lhs, rhs = float(np.vdot(cx, y)), float(np.vdot(x, ty))
    assert abs(lhs - rhs) <= 1e-10 * (1 + np.abs(cx).sum() * np.abs(y).max()), (lhs, rhs)


# ---- the zero-insertion recipe ----------------------------------------------------------------


def pad_or_crop(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Zero-pad the last two axes by the given amounts; a negative amount crops instead."""
    a = np.pad(a, ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
    H, W = a.shape[2:]
    return a[:, :, max(-top, 0): H - max(-bottom, 0), max(-left, 0): W - max(-right, 0)]


def flipped_swapped(w: np.ndarray, groups: int) -> np.ndarray:
    """conv_transpose2d weight (C_in, O/g, kh, kw) -> conv2d weight (O, C_in/g, kh, kw), rotated
    by 180 degrees: in and out channels swap within each group."""
    Cin, Og, kh, kw = w.shape
    wg = w.reshape(groups, Cin // groups, Og, kh, kw)  # (g, C_in/g, O/g, kh, kw)
    wg = wg.transpose(0, 2, 1, 3, 4)  # (g, O/g, C_in/g, kh, kw)
    return np.ascontiguousarray(wg.reshape(groups * Og, Cin // groups, kh, kw)[:, :, ::-1, ::-1])


@given(case=transpose_case(), seed=st.integers(0, 2**16))
@HYP
def test_zero_insertion_recipe(impl, case, seed):
    """A stride-s transposed conv = insert s-1 zeros between input pixels, pad by d(k-1)-p (plus
    output_padding at the bottom/right), then a stride-1 conv with the flipped, channel-swapped
    kernel (same dilation)."""
    xs, ws, s, p, op, d, g = case
    x, w = rand(xs, seed), rand(ws, seed + 1)
    N, Cin, H, W = xs
    z = np.zeros((N, Cin, (H - 1) * s[0] + 1, (W - 1) * s[1] + 1))
    z[:, :, :: s[0], :: s[1]] = x  # s-1 zeros between neighbours
    eh, ew = d[0] * (ws[2] - 1) - p[0], d[1] * (ws[3] - 1) - p[1]
    z = pad_or_crop(z, eh, eh + op[0], ew, ew + op[1])  # often a non-contiguous view
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op, groups=g,
                               dilation=d).data
        recipe = F.conv2d(z, flipped_swapped(w, g), dilation=d, groups=g).data
    assert_close(y, recipe)


# ---- atrous convolution -----------------------------------------------------------------------


def dilate_kernel(w: np.ndarray, d: tuple[int, int]) -> np.ndarray:
    """Insert d-1 zeros between the taps of each kernel: k taps span d(k-1)+1."""
    O, Cg, kh, kw = w.shape
    out = np.zeros((O, Cg, d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1), dtype=w.dtype)
    out[:, :, :: d[0], :: d[1]] = w
    return out


def test_dilated_kernel_worked_example():
    """[[1, 2, 3]] at rate 4 becomes [[1, 0, 0, 0, 2, 0, 0, 0, 3]], and convolves the same."""
    w = np.array([[[[1.0, 2.0, 3.0]]]])
    wd = np.array([[[[1.0, 0, 0, 0, 2.0, 0, 0, 0, 3.0]]]])
    np.testing.assert_array_equal(dilate_kernel(w, (1, 4)), wd)
    x = rand((1, 1, 3, 12), 0)
    assert_close(F.conv2d(x, w, dilation=(1, 4)).data, F.conv2d(x, wd).data)


@given(case=conv_case(), seed=st.integers(0, 2**16))
@HYP
def test_dilated_conv_is_a_conv_with_the_dilated_kernel(impl, case, seed):
    xs, ws, s, p, d, g = case
    x, w = rand(xs, seed), rand(ws, seed + 1)
    with msn.use_impl(impl):
        atrous = F.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g).data
        plain = F.conv2d(x, dilate_kernel(w, d), stride=s, padding=p, groups=g).data
    assert_close(atrous, plain)


# ---- separable convolution --------------------------------------------------------------------


@pytest.mark.parametrize("k, s, p, d", [(3, 1, 1, 1), (3, 2, 2, 2), (1, 1, 0, 1)])
def test_separable_conv_is_depthwise_then_pointwise(impl, k, s, p, d):
    C, O = 3, 4
    layer = nn.SeparableConv2d(C, O, k, stride=s, padding=p, dilation=d, dtype=np.float64)
    dw, pw = layer.depthwise.weight.data, layer.pointwise.weight.data  # (C, 1, k, k), (O, C, 1, 1)
    b = layer.pointwise.bias.data
    x = rand((2, C, 6, 5), 0)
    with msn.use_impl(impl):
        y = layer(msn.Tensor(x)).data
        two_steps = F.conv2d(F.conv2d(x, dw, stride=s, padding=p, dilation=d, groups=C),
                             pw, b).data
        # ... which is one plain conv whose kernel has rank one across channels:
        # W[o, c] = pw[o, c] * dw[c].
        merged = F.conv2d(x, pw[:, :, 0, 0, None, None] * dw[None, :, 0], b, stride=s,
                          padding=p, dilation=d).data
    assert_close(y, two_steps, what="layer vs depthwise then 1x1")
    assert_close(y, merged, what="layer vs merged kernel")


def test_separable_parameter_count():
    """SPEC: k*k*C + C*O weights: 3x3, C=3, O=16 gives 27 + 48 = 75 against 432 (+ 16 biases
    each)."""
    def count(m):
        return sum(int(p.data.size) for p in m.parameters())

    assert count(nn.SeparableConv2d(3, 16, 3, bias=False)) == 3 * 3 * 3 + 3 * 16 == 75
    assert count(nn.Conv2d(3, 16, 3, bias=False)) == 3 * 3 * 3 * 16 == 432
    assert count(nn.SeparableConv2d(3, 16, 3)) == 75 + 16
    assert count(nn.Conv2d(3, 16, 3)) == 432 + 16
    for C, O, k in [(8, 5, 5), (1, 1, 1), (4, 32, 3)]:
        assert count(nn.SeparableConv2d(C, O, k, bias=False)) == k * k * C + C * O


# ---- nearest upsampling is a transposed conv ---------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
def test_nearest_upsampling_is_a_ones_transposed_conv(impl, scale):
    C = 3
    x = rand((2, C, 3, 4), scale)
    nearest = np.repeat(np.repeat(x, scale, axis=2), scale, axis=3)  # (N, C, s*H, s*W)
    ones = np.ones((C, 1, scale, scale))  # depthwise: each channel paints an s x s block
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, ones, stride=scale, groups=C).data
        interp = F.interpolate(msn.Tensor(x), scale_factor=scale, mode="nearest").data
    assert_close(y, nearest, what="transposed conv vs np.repeat")
    assert_close(interp, nearest, what="F.interpolate vs np.repeat")


# ---- convolutionalization ----------------------------------------------------------------------


def test_convolutionalization(impl):
    """A dense layer over a 7x7 map, re-expressed as a 7x7 conv: the same numbers on a 7x7 input,
    and on a 14x14 input an 8x8 map whose every position is the dense layer on that 7x7 crop."""
    C, K = (1, 2) if SIMULATOR else (3, 5)
    Wd = rand((K, C * 7 * 7), 0)  # a classifier on a flattened (C, 7, 7) feature map
    b = rand((K,), 1)
    Wc = Wd.reshape(K, C, 7, 7)  # (K, C*7*7) -> (K, C, 7, 7): the same numbers as a conv kernel
    x7, x14 = rand((2, C, 7, 7), 2), rand((1, C, 14, 14), 3)
    with msn.use_impl(impl):
        dense = F.linear(msn.Tensor(x7.reshape(2, -1)), msn.Tensor(Wd), msn.Tensor(b)).data
        conv7 = F.conv2d(x7, Wc, b).data
        conv14 = F.conv2d(x14, Wc, b).data
    assert conv7.shape == (2, K, 1, 1)
    assert_close(conv7[:, :, 0, 0], dense, what="7x7 input")
    assert conv14.shape == (1, K, 8, 8)  # 14 - 7 + 1 = 8 positions per axis
    crops = np.stack([x14[0, :, i: i + 7, j: j + 7].ravel() for i in range(8) for j in range(8)])
    assert_close(conv14[0].reshape(K, 64).T, crops @ Wd.T + b, what="14x14 input, per crop")


# ---- output sizes and bad input ----------------------------------------------------------------


@given(case=conv_case())
@settings(max_examples=40)
def test_conv2d_output_size_follows_spec(case):
    xs, ws, s, p, d, g = case
    y = F.conv2d(np.zeros(xs), np.zeros(ws), stride=s, padding=p, dilation=d, groups=g)
    expected = tuple(out_len(xs[2 + a], ws[2 + a], s[a], p[a], d[a]) for a in range(2))
    assert y.shape == (xs[0], ws[0], *expected)
    assert expected == tuple(F.conv_output_size(xs[2 + a], ws[2 + a], s[a], p[a], d[a])
                             for a in range(2))


@given(case=transpose_case())
@settings(max_examples=40)
def test_conv_transpose2d_output_size_follows_spec(case):
    xs, ws, s, p, op, d, g = case
    y = F.conv_transpose2d(np.zeros(xs), np.zeros(ws), stride=s, padding=p, output_padding=op,
                           groups=g, dilation=d)
    expected = tuple(transpose_out_len(xs[2 + a], ws[2 + a], s[a], p[a], op[a], d[a])
                     for a in range(2))
    assert y.shape == (xs[0], ws[1] * g, *expected)


X = np.zeros((1, 4, 5, 5))
W = np.zeros((4, 2, 3, 3))


@pytest.mark.parametrize("fn, args, kwargs, exc, words", [
    (F.conv2d, (np.zeros((1, 4, 2, 2)), W), {"groups": 2}, ValueError, "empty output"),
    (F.conv2d, (X, W), {"groups": 2, "dilation": 3}, ValueError, "empty output"),
    (F.conv2d, (X, W), {"groups": 3}, ValueError, "groups"),
    (F.conv2d, (X, W), {}, ValueError, "weight"),  # 2 channels per group but groups=1
    (F.conv2d, (X, W), {"groups": 2, "stride": 0}, ValueError, "stride"),
    (F.conv2d, (X, W), {"groups": 2, "padding": -1}, ValueError, "padding"),
    (F.conv2d, (X, W), {"groups": 2, "dilation": (1, 0)}, ValueError, "dilation"),
    (F.conv2d, (np.zeros((4, 5, 5)), W), {"groups": 2}, ValueError, "4-D"),
    (F.conv2d, (X, W), {"groups": 2, "stride": 1.5}, TypeError, "stride"),
    (F.conv_transpose2d, (X, W), {"stride": 2, "output_padding": 2}, ValueError, "output_padding"),
    (F.conv_transpose2d, (X, W), {"stride": 2, "dilation": 3, "output_padding": 3}, ValueError,
     "output_padding"),
    (F.conv_transpose2d, (X, W), {"output_padding": 1}, ValueError, "output_padding"),
    (F.conv_transpose2d, (X, W), {"padding": 5}, ValueError, "empty output"),
    (F.conv_transpose2d, (np.zeros((1, 3, 5, 5)), W), {}, ValueError, "channels"),
])
def test_impossible_settings_are_rejected(fn, args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        fn(*args, **kwargs)


def test_output_padding_below_dilation_is_allowed():
    """output_padding < max(stride, dilation): with dilation 3 and stride 1, output_padding 2."""
    y = F.conv_transpose2d(X, W, stride=1, dilation=3, output_padding=2)
    side = transpose_out_len(5, 3, 1, 0, 2, 3)
    assert y.shape == (1, 2, side, side)
