"""conv2d (minisegnet/functional/conv.py on kernels/conv2d.py and kernels/im2col.py) and the
Conv2d / SeparableConv2d layers: forward against the loop oracle written from the SPEC formula
(kernels/conv2d.py's conv2d_reference, and its direct CUDA twin), gradients against finite
differences, the other implementations and (when installed) PyTorch; the adjoint identity that
makes conv_transpose2d the input gradient; output sizes; bad input; the Winograd F(2x2, 3x3) path
(formula and fast version against the loops, forced against im2col, the switch)."""

from __future__ import annotations

import math

import conv_cases
import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import (
    DTYPES,
    HYP,
    SMALL,
    assert_close,
    check_bad_input,
    check_op,
    impls,
    numba_threads,
    out_len,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from minisegnet.kernels import conv2d as conv_module
from minisegnet.kernels.conv2d import conv2d_reference as conv2d_oracle  # the SPEC loops

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck


def conv_case():
    """conv2d settings with a non-empty output, depthwise ones (groups = C) among them."""
    return conv_cases.conv_case(max_hw=SMALL, max_groups=3, depthwise=True)


def tensors(case, dtype, seed, requires_grad=False, bias=True):
    xs, ws, *_ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return x, w, b


# ---- forward -------------------------------------------------------------------------------


@given(case=conv_case(), seed=st.integers(0, 2**16), bias=st.booleans())
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_formula(impl, dtype, case, seed, bias):
    x, w, b = tensors(case, dtype, seed, bias=bias)
    s, p, d, g = case[2:]
    with msn.use_impl(impl):
        y = F.conv2d(x, w, b, s, p, d, g)
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(y.data, conv2d_oracle(x, w, b, s, p, d, g), scale=math.sqrt(fan_in),
                 what=f"conv2d {case}")


@given(case=conv_case())
@HYP
def test_output_size_follows_spec(case):
    xs, ws, s, p, d, g = case
    y = F.conv2d(np.zeros(xs, np.float32), np.zeros(ws, np.float32), None, s, p, d, g)
    expected = (xs[0], ws[0], out_len(xs[2], ws[2], s[0], p[0], d[0]),
                out_len(xs[3], ws[3], s[1], p[1], d[1]))
    assert y.shape == expected
    assert F.conv_output_size(xs[2], ws[2], s[0], p[0], d[0]) == expected[2]


def test_textbook_example(impl):
    # Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (arXiv:1603.07285),
    # Figure 1.1: a 3x3 kernel over a 5x5 input, no padding, unit strides.
    x = np.array([[3, 3, 2, 1, 0], [0, 0, 1, 3, 1], [3, 1, 2, 2, 3], [2, 0, 0, 2, 2],
                  [2, 0, 0, 0, 1]], dtype=np.float32)[None, None]
    w = np.array([[0, 1, 2], [2, 2, 0], [0, 1, 2]], dtype=np.float32)[None, None]
    with msn.use_impl(impl):
        y = F.conv2d(x, w)
    expected = np.array([[12, 12, 17], [10, 17, 19], [9, 6, 14]], dtype=np.float32)[None, None]
    assert_close(y.data, expected)


# ---- backward ------------------------------------------------------------------------------


def grads(impl, x, w, b, s, p, d, g, gy):
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        Wt = msn.Tensor(w, requires_grad=True)
        B = None if b is None else msn.Tensor(b, requires_grad=True)
        y = F.conv2d(X, Wt, B, s, p, d, g)
        y.backward(gy)
    return y.data, X.grad, Wt.grad, (None if B is None else B.grad)


@given(case=conv_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", impls("im2col", without=("reference",)))
def test_backward_matches_reference(impl, dtype, case, seed):
    x, w, b = tensors(case, dtype, seed)
    s, p, d, g = case[2:]
    N, O = x.shape[0], w.shape[0]
    oh, ow = out_len(x.shape[2], w.shape[2], s[0], p[0], d[0]), out_len(
        x.shape[3], w.shape[3], s[1], p[1], d[1])
    gy = np.random.default_rng(seed + 1).standard_normal((N, O, oh, ow)).astype(dtype)
    got = grads(impl, x, w, b, s, p, d, g, gy)
    ref = grads("reference", x, w, b, s, p, d, g, gy)
    scale = math.sqrt(max(x.size, w.size))
    for a, e, name in zip(got, ref, ("y", "gx", "gw", "gb")):
        assert_close(a, e, scale=scale, what=f"{name} {case}")


@given(case=conv_case(), seed=st.integers(0, 2**16))
@HYP
def test_input_gradient_is_the_adjoint(impl, case, seed):
    # <conv2d(x), v> = <x, conv_transpose2d(v)>: conv2d's input gradient is the transposed conv.
    x, w, _ = tensors(case, np.float64, seed, bias=False)
    s, p, d, g = case[2:]
    with msn.use_impl(impl):
        y = F.conv2d(x, w, None, s, p, d, g).data
        v = np.random.default_rng(seed + 1).standard_normal(y.shape)
        op = tuple(x.shape[2 + a] - F.conv_transpose_output_size(y.shape[2 + a], w.shape[2 + a],
                                                                  s[a], p[a], 0, d[a])
                   for a in range(2))
        xt = F.conv_transpose2d(v, w, None, s, p, op, g, d).data
    lhs, rhs = float((y * v).sum()), float((x * xt).sum())
    assert xt.shape == x.shape
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), (lhs, rhs)


GRADCHECK_CASES = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 2, 5, 4), (3, 2, 3, 3), 1, 1, 1, 1),
    ((1, 2, 6, 6), (2, 2, 3, 2), (2, 1), (1, 0), (2, 1), 1),
    ((1, 4, 4, 5), (2, 2, 2, 3), 1, (0, 1), 1, 2),
    ((1, 3, 5, 5), (6, 1, 3, 3), 2, 1, 1, 3),  # depthwise, channel multiplier 2
    ((1, 2, 3, 3), (2, 1, 2, 2), 1, 1, 1, 2),  # tiny: also run by the CUDA simulator
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, case):
    x, w, b = tensors(case, np.float64, 0)
    if impl == "cuda" and SIMULATOR and x.size + w.size > 30:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    s, p, d, g = case[2:]
    with msn.use_impl(impl):
        assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, s, p, d, g), [x, w, b])


@pytest.mark.parametrize("min_flops", [0, math.inf], ids=["all-cores", "one-thread"])
@pytest.mark.parametrize("budget", [1, 4000, 14000, 10**9],
                         ids=["1-row-blocks", "2-row-blocks", "2-image-blocks", "one-block"])
def test_cpu_blocking_gives_the_same_result(monkeypatch, budget, min_flops):
    # The numba path walks the batch in blocks of images or of output rows (BLOCK_BYTES of
    # columns each); every blocking must give what the one-block reference gives.
    x, w, b = tensors(((3, 4, 7, 6), (6, 2, 3, 3)), np.float64, 3)
    gy = np.random.default_rng(4).standard_normal((3, 6, 4, 6))
    expected = grads("reference", x, w, b, (2, 1), 1, 1, 2, gy)
    monkeypatch.setitem(conv_module.BLOCK_BYTES, "numba", budget)
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", min_flops)
    for a, e in zip(grads("numba", x, w, b, (2, 1), 1, 1, 2, gy), expected):
        assert_close(a, e)


@given(N=st.integers(1, 9), oh=st.integers(1, 40), row_bytes=st.integers(1, 5000),
       budget=st.integers(1, 60000), parts=st.integers(1, 4))
@settings(max_examples=200)
def test_blocks_tile_the_grid_for_every_core(N, oh, row_bytes, budget, parts):
    # _blocks must cover every (image, output row) exactly once, hold several images only as
    # whole images, keep each block within the budget up to one image or row of slack, and give
    # each of `parts` cores at least one block whenever there are enough rows.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(conv_module.BLOCK_BYTES, "numba", budget)
        blocks = conv_module._blocks("numba", N, row_bytes, oh, parts)
    seen = np.zeros((N, oh), int)
    for n0, n1, r0, r1 in blocks:
        assert 0 <= n0 < n1 <= N and 0 <= r0 < r1 <= oh
        seen[n0:n1, r0:r1] += 1
        size = (n1 - n0) * (r1 - r0) * row_bytes
        if n1 - n0 > 1:
            assert (r0, r1) == (0, oh), "several images only as whole images"
            assert size <= budget + oh * row_bytes
        elif len(blocks) > 1:
            assert size <= max(budget, row_bytes) + row_bytes
    assert (seen == 1).all()
    assert len(blocks) >= min(parts, N * oh)
    if parts == 1 and N * oh * row_bytes <= budget:
        assert blocks == [(0, N, 0, oh)]


def test_cpu_results_do_not_depend_on_the_worker_count(monkeypatch):
    # The numba conv runs its blocks one per core (minisegnet/_cpu_pool.py); with one worker the
    # same blocks run in this thread. Both must agree with the reference and with each other.
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", 0)  # all cores, however small
    x, w, b = tensors(((3, 4, 9, 8), (6, 4, 3, 3)), np.float64, 5)
    gy = np.random.default_rng(6).standard_normal((3, 6, 9, 8))
    with numba_threads(1):
        one = grads("numba", x, w, b, 1, 1, 1, 1, gy)
    with numba_threads(2):
        two = grads("numba", x, w, b, 1, 1, 1, 1, gy)
    for a, c, e in zip(one, two, grads("reference", x, w, b, 1, 1, 1, 1, gy)):
        assert_close(a, e)
        assert_close(c, e)


@pytest.mark.parametrize("p, d, g", [(1, 1, 1), (2, 2, 2), (3, 2, 1), (2, 1, 3)])
def test_stride_one_backward_is_one_conv_of_gy(monkeypatch, p, d, g):
    # With stride 1 (numba) both gradients come from one conv2d of gy with the rotated kernel: its
    # output is the input gradient, its weight gradient (output gradient x) the rotated weight
    # gradient. The separate adjoint must not run, and the numbers must be the reference's.
    x, w, b = tensors(((2, 6, 7, 6), (3 * g, 6 // g, 3, 3)), np.float64, 9)
    oh, ow = out_len(7, 3, 1, p, d), out_len(6, 3, 1, p, d)
    gy = np.random.default_rng(10).standard_normal((2, 3 * g, oh, ow))
    expected = grads("reference", x, w, b, 1, p, d, g, gy)

    def no_adjoint(*args, **kwargs):
        raise AssertionError("the separate adjoint ran")

    monkeypatch.setattr(conv_module, "conv_transpose2d_array", no_adjoint)
    for a, e in zip(grads("numba", x, w, b, 1, p, d, g, gy), expected):
        assert_close(a, e)
    assert_close(conv_module._rotated(conv_module._rotated(w, g), g), w)


@pytest.mark.parametrize("xs, ws, p, d", [((2, 6, 7, 6), (6, 6, 3, 3), 0, 2),
                                           ((1, 3, 11, 11), (4, 3, 7, 7), 0, 1)])
def test_stride_one_valid_conv_on_a_small_plane_takes_the_col2im_adjoint(monkeypatch, xs, ws, p,
                                                                          d):
    # The rotated-kernel conv of gy runs on x's whole grid: for a valid conv on a small plane (7x6
    # -> 3x2, FCN's fc6 11x11 -> 5x5) it would do several times the work of W^T @ gy + col2im,
    # so the driver takes the separate adjoint there (ADJOINT_MAX_GROWTH); same numbers.
    x, w, b = tensors((xs, ws), np.float64, 11)
    oh, ow = out_len(xs[2], ws[2], 1, p, d), out_len(xs[3], ws[3], 1, p, d)
    assert xs[2] * xs[3] > conv_module.ADJOINT_MAX_GROWTH * oh * ow
    gy = np.random.default_rng(12).standard_normal((xs[0], ws[0], oh, ow))
    expected = grads("reference", x, w, b, 1, p, d, 1, gy)
    calls = []
    adjoint = conv_module.conv_transpose2d_array

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return adjoint(*args, **kwargs)

    monkeypatch.setattr(conv_module, "conv_transpose2d_array", counted)
    for a, e in zip(grads("numba", x, w, b, 1, p, d, 1, gy), expected):
        assert_close(a, e)
    assert calls == [gy.shape]


# (N, C, H, W), (O, C/G, KH, KW), stride, padding, dilation, groups: O/G >= N*OH*OW
WIDE_CASES = [((2, 5, 4, 4), (40, 5, 3, 3), 1, 0, 1, 1),  # 2x2 outputs, 40 >= 8
              ((2, 4, 11, 11), (60, 4, 7, 7), 1, 0, 1, 1),  # fc6 in small: 5x5 -> 60 >= 50
              ((1, 6, 3, 2), (24, 3, 1, 1), 1, 0, 1, 2),  # grouped 1x1 (fc7)
              ((2, 3, 6, 5), (32, 3, 3, 3), 2, 1, 2, 1)]  # strided, dilated


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", WIDE_CASES, ids=range(len(WIDE_CASES)))
def test_wide_passes_match_the_reference(monkeypatch, case, workers):
    # A weight bigger than the columns (O/G >= N*OH*OW: FCN's fc6/fc7) runs as one GEMM cut by
    # output channels (conv2d, weight gradient) or by column rows (adjoint), never per block.
    xs, ws, s, p, d, g = case
    oh, ow = out_len(xs[2], ws[2], s, p, d), out_len(xs[3], ws[3], s, p, d)
    assert conv_module._wide(1, xs[0], ws[0] // g, oh * ow)
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", 0)
    x, w, b = tensors((xs, ws), np.float64, 13)
    gy = np.random.default_rng(14).standard_normal((xs[0], ws[0], oh, ow))
    wide = []
    for name in ("_conv2d_wide", "_conv_transpose2d_wide"):
        inner = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name,
                            lambda *a, _f=inner, _n=name, **k: wide.append(_n) or _f(*a, **k))
    with numba_threads(workers):
        got = grads("numba", x, w, b, s, p, d, g, gy)
    for a, e in zip(got, grads("reference", x, w, b, s, p, d, g, gy)):
        assert_close(a, e)
    assert "_conv2d_wide" in wide and "_conv_transpose2d_wide" in wide


def test_float32_in_float32_out(impl):
    x, w, b = tensors(((1, 2, 5, 5), (3, 2, 3, 3)), np.float32, 0)
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        Wt = msn.Tensor(w, requires_grad=True)
        y = F.conv2d(X, Wt, b, padding=1)
        y.sum().backward()
    assert y.dtype == np.float32 and X.grad.dtype == np.float32 and Wt.grad.dtype == np.float32


@pytest.mark.parametrize("xs, ws, geo", [((2, 4, 9, 8), (6, 2, 3, 3), (2, 1, 1, 2)),
                                         ((1, 3, 12, 12), (5, 3, 3, 3), (1, 4, 4, 1)),
                                         ((2, 4, 7, 7), (8, 1, 3, 3), (1, 1, 2, 4))])
def test_matches_pytorch(xs, ws, geo):
    torch = pytest.importorskip("torch")
    check_op([xs, ws, ws[:1]], lambda x, w, b: F.conv2d(x, w, b, *geo),
             lambda x, w, b: torch.nn.functional.conv2d(x, w, b, *geo))


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((1, 4, 5, 5), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
BAD = [  # (kwargs for conv2d, exception, words the message must contain)
    (dict(x=X[0]), ValueError, ["input", "(4, 5, 5)"]),
    (dict(weight=W[0]), ValueError, ["weight", "(4, 3, 3)"]),
    (dict(weight=np.zeros((6, 3, 3, 3), np.float32)), ValueError, ["weight.shape[1]", "4"]),
    (dict(weight=np.zeros((6, 2, 3, 3), np.float32), groups=3), ValueError, ["groups=3"]),
    (dict(weight=np.zeros((5, 2, 3, 3), np.float32), groups=2), ValueError, ["groups=2", "5"]),
    (dict(groups=0), ValueError, ["groups"]),
    (dict(groups=1.0), TypeError, ["groups"]),
    (dict(stride=0), ValueError, ["stride", "(0, 0)"]),
    (dict(stride=(1, -2)), ValueError, ["stride"]),
    (dict(stride=(1, 2, 3)), ValueError, ["stride"]),
    (dict(stride=1.5), TypeError, ["stride"]),
    (dict(dilation=0), ValueError, ["dilation"]),
    (dict(padding=-1), ValueError, ["padding"]),
    (dict(weight=np.zeros((6, 4, 0, 3), np.float32)), ValueError, ["kernel size"]),
    (dict(weight=np.zeros((6, 4, 7, 3), np.float32)), ValueError, ["empty output", "(1, 4, 5, 5)"]),
    (dict(dilation=3), ValueError, ["empty output"]),
    (dict(bias=np.zeros(5, np.float32)), ValueError, ["bias", "(6,)"]),
    (dict(x=X.astype(np.int32)), TypeError, ["input", "int32"]),
    (dict(weight=W.astype(np.float64)), TypeError, ["float32", "float64"]),
    (dict(x=[1.0, 2.0]), TypeError, ["input"]),
    (dict(x=np.zeros((0, 4, 5, 5), np.float32)), ValueError, ["empty", "(0, 4, 5, 5)"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(x=X, weight=W, bias=None, stride=1, padding=0, dilation=1, groups=1)
    check_bad_input(F.conv2d, defaults, kwargs, exc, words)


# ---- layers --------------------------------------------------------------------------------


def test_conv2d_layer():
    msn.manual_seed(0)
    layer = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 3 * 3)  # kaiming-uniform a=sqrt(5): 1/sqrt(fan_in)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.8 * bound  # really spread over the range
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 7)).astype(np.float32)
    y = layer(msn.Tensor(x))
    expected = F.conv2d(x, layer.weight.data, layer.bias.data, 2, 1, 1, 2)
    assert_close(y.data, expected.data)
    assert nn.Conv2d(3, 8, (3, 5), bias=False).bias is None
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(4, 6, 0)


def test_separable_conv2d_layer():
    # SPEC: 3x3, C=3, O=16: 27 depthwise + 48 pointwise weights (432 for the plain conv).
    layer = nn.SeparableConv2d(3, 16, 3, padding=1, bias=False)
    assert sum(p.size for p in layer.parameters()) == 27 + 48
    assert sum(p.size for p in nn.SeparableConv2d(3, 16, 3).parameters()) == 27 + 48 + 16
    layer = nn.SeparableConv2d(3, 5, 3, stride=2, padding=2, dilation=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    X = msn.Tensor(x, requires_grad=True)
    y = layer(X)
    dw, pw = layer.depthwise, layer.pointwise
    mid = conv2d_oracle(x, dw.weight.data, None, (2, 2), (2, 2), (2, 2), 3)
    expected = conv2d_oracle(mid, pw.weight.data, pw.bias.data, (1, 1), (0, 0), (1, 1), 1)
    assert_close(y.data, expected, scale=3)
    y.sum().backward()
    assert X.grad.shape == x.shape and dw.weight.grad.shape == (3, 1, 3, 3)


@pytest.mark.parametrize("impl", impls("conv2d_direct"))
def test_direct_kernel_is_the_formula(impl):
    # conv2d_direct: the loops (the oracle above) and one CUDA thread per output; on the host,
    # the loops agree with the im2col path too
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    geo = ((2, 1), (1, 2), (1, 2), 2)
    y = msn.backend.kernel("conv2d_direct", x, impl=impl)(x, w, b, *geo)
    with msn.use_impl("numpy"):
        assert_close(y, F.conv2d(x, w, b, *geo).data)


# ---- Winograd F(2x2, 3x3) --------------------------------------------------------------------


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
    g = np.random.default_rng(seed)
    x, w = g.standard_normal(xs), g.standard_normal(ws)
    expected = conv_module.conv2d_reference(x, w, None, (1, 1), p)
    assert_close(conv_module.conv2d_winograd_reference(x, w, p), expected, scale=10.0)
    assert_close(conv_module.conv2d_winograd_numba(x, w, p), expected, scale=10.0)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_close(conv_module.conv2d_winograd_numba(x32, w32, p), expected.astype(np.float32),
                 scale=10.0 * math.sqrt(9 * xs[1]))


def test_transforms_are_those_of_the_paper():
    # F(2, 3) in one dimension: A^T [(G g) * (B^T d)] is the 2-tap-output correlation of d with g
    g, d = np.random.default_rng(1).standard_normal(3), np.random.default_rng(2).standard_normal(4)
    direct = np.array([d[0:3] @ g, d[1:4] @ g])
    K = conv_module
    assert_close(K.WINO_AT @ ((K.WINO_G @ g) * (K.WINO_BT @ d)), direct)
    w = np.random.default_rng(3).standard_normal((2, 3, 3, 3))
    U = conv_module.winograd_weights(w)  # (16, O, C) = G g G^T, row-major over the 4x4 tile
    assert U.shape == (16, 2, 3)
    assert_close(U[:, 1, 2].reshape(4, 4), conv_module.WINO_G @ w[1, 2] @ conv_module.WINO_G.T)


def wino_grads(algo, x, w, b, p, gy):
    ts = [msn.Tensor(a, requires_grad=True) for a in (x, w, b)]
    with F.conv2d_algorithm(algo):
        y = F.conv2d(*ts, padding=p)
        y.backward(msn.Tensor(gy))
    return [y.data] + [t.grad for t in ts]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, p", [((2, 5, 9, 8), 1), ((1, 3, 6, 7), 0), ((2, 4, 5, 5), 2)])
def test_forced_winograd_equals_im2col_forward_and_backward(shape, p, dtype):
    g = np.random.default_rng(4)
    x = g.standard_normal(shape).astype(dtype)
    w = (g.standard_normal((6, shape[1], 3, 3)) / 3).astype(dtype)
    b = g.standard_normal(6).astype(dtype)
    oh, ow = shape[2] + 2 * p - 2, shape[3] + 2 * p - 2
    gy = g.standard_normal((shape[0], 6, oh, ow)).astype(dtype)
    with msn.use_impl("numba"):
        forced = wino_grads("winograd", x, w, b, p, gy)
        for a, e in zip(forced, wino_grads("im2col", x, w, b, p, gy), strict=True):
            assert_close(a, e, scale=30.0)


def test_gradcheck_through_winograd():
    g = np.random.default_rng(5)
    x, w, b = g.standard_normal((2, 3, 5, 6)), g.standard_normal((4, 3, 3, 3)), g.standard_normal(
        4)
    with msn.use_impl("numba"), F.conv2d_algorithm("winograd"):
        assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = conv_module.conv2d_winograd_numba

    def counting(x, w, padding):
        seen.append((x.shape, w.shape, padding))
        return real(x, w, padding)

    monkeypatch.setattr(conv_module, "conv2d_winograd_numba", counting)
    return seen


@pytest.mark.parametrize("algo, expected", [("winograd", 2), ("im2col", 0), ("auto", 0)])
def test_the_switch_chooses_the_path(calls, algo, expected):
    # forward and input gradient each run one Winograd conv when forced; none under "im2col",
    # and none in auto mode at 4 channels (below WINOGRAD_MIN_CHANNELS)
    g = np.random.default_rng(6)
    x, w = g.standard_normal((1, 4, 6, 6)), g.standard_normal((4, 4, 3, 3))
    with msn.use_impl("numba"):
        wino_grads(algo, x, w, np.zeros(4), 1, g.standard_normal((1, 4, 6, 6)))
    assert len(calls) == expected
    if expected:
        assert calls[1] == ((1, 4, 6, 6), (4, 4, 3, 3), (1, 1))  # the adjoint: gy, rotated w


def test_auto_takes_winograd_where_it_measured_faster(calls, monkeypatch):
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_PIXELS", 36)
    g = np.random.default_rng(7)
    x, w = g.standard_normal((1, 4, 6, 6)), g.standard_normal((4, 4, 3, 3))
    with msn.use_impl("numba"):
        wino_grads("auto", x, w, np.zeros(4), 1, g.standard_normal((1, 4, 6, 6)))
    assert len(calls) == 1  # the forward only: the backward keeps its one-pass im2col


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2, padding=2), dict(groups=2),
                                    dict(kernel=5)])
def test_ineligible_convs_never_take_winograd(calls, kwargs):
    k = kwargs.pop("kernel", 3)
    groups = kwargs.get("groups", 1)
    x = np.random.default_rng(8).standard_normal((1, 4, 9, 9))
    w = np.random.default_rng(9).standard_normal((4, 4 // groups, k, k))
    with msn.use_impl("numba"), F.conv2d_algorithm("winograd"):
        y = F.conv2d(x, w, **kwargs)
        with msn.use_impl("reference"):
            assert_close(y.data, F.conv2d(x, w, **kwargs).data)
    assert calls == []


@pytest.mark.parametrize("budget, min_flops", [(1, 0), (3000, 0), (10**9, math.inf)])
def test_blocks_and_workers_do_not_change_the_result(monkeypatch, budget, min_flops):
    monkeypatch.setitem(conv_module.BLOCK_BYTES, "numba", budget)
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", min_flops)
    g = np.random.default_rng(10)
    x, w = g.standard_normal((3, 4, 9, 7)), g.standard_normal((5, 4, 3, 3))
    expected = conv_module.conv2d_reference(x, w, None, (1, 1), (1, 1))
    assert_close(conv_module.conv2d_winograd_numba(x, w, (1, 1)), expected, scale=10.0)


def test_bad_algorithm_name():
    with pytest.raises(ValueError, match="name must be"):
        with F.conv2d_algorithm("fft"):
            pass
