"""conv2d (minisegnet/functional/conv.py on kernels/im2col.py) and the Conv2d / SeparableConv2d
layers: forward against a loop oracle written from the SPEC formula, gradients against finite
differences, the other implementations and (when installed) PyTorch; the adjoint identity that
makes conv_transpose2d the input gradient; output sizes; bad input."""

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

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.functional import conv as conv_module
from minisegnet.testing import gradcheck


def conv2d_oracle(x, w, b, s, p, d, g):
    """The SPEC formula as scalar loops: y[n,o,i,j] = b[o] + sum_{c,p,q} x[...] * w[...]."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    OH, OW = out_len(H, KH, s[0], p[0], d[0]), out_len(W, KW, s[1], p[1], d[1])
    y = np.zeros((N, O, OH, OW), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            c0 = (o // (O // g)) * Cg  # first input channel of o's group
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        for kp in range(KH):
                            for kq in range(KW):
                                h, v = i * s[0] - p[0] + kp * d[0], j * s[1] - p[1] + kq * d[1]
                                if 0 <= h < H and 0 <= v < W:
                                    acc += float(x[n, c0 + c, h, v]) * float(w[o, c, kp, kq])
                    y[n, o, i, j] = acc
    return y.astype(x.dtype)


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


@pytest.mark.parametrize("p, d, g", [(1, 1, 1), (0, 2, 2), (3, 2, 1), (2, 1, 3)])
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

    monkeypatch.setattr(conv_module, "_conv_transpose2d_array", no_adjoint)
    for a, e in zip(grads("numba", x, w, b, 1, p, d, g, gy), expected):
        assert_close(a, e)
    assert_close(conv_module._rotated(conv_module._rotated(w, g), g), w)


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
