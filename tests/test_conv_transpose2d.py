"""conv_transpose2d (minisegnet/functional/conv.py) and the ConvTranspose2d layer: forward against
a scatter oracle written from the definition, the adjoint identity with conv2d, gradients against
finite differences, the other implementations and (when installed) PyTorch; output sizes
(output_padding rows are computed, not zero); bad input; bilinear initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, assert_close, check_bad_input, check_op, transpose_out_len
from hypothesis import given, settings
from hypothesis import strategies as st
from minisegnet.kernels import conv2d as conv_module

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet.testing import gradcheck

SMALL = 3 if SIMULATOR else 5  # input sizes; the simulator runs a few thousand threads a second



def conv_transpose2d_oracle(x, w, b, s, p, op, g, d):
    """The definition as a scatter: x[n, c, i, j] * w[c, o', kp, kq] lands on output
    (i*s - p + kp*d, j*s - p + kq*d) of channel (group of c)*O/G + o'; off-grid taps drop."""
    N, C, H, W = x.shape
    _, Og, KH, KW = w.shape
    OH = transpose_out_len(H, KH, s[0], p[0], op[0], d[0])
    OW = transpose_out_len(W, KW, s[1], p[1], op[1], d[1])
    y = np.zeros((N, Og * g, OH, OW), dtype=np.float64)
    for n in range(N):
        for c in range(C):
            o0 = (c // (C // g)) * Og
            for i in range(H):
                for j in range(W):
                    for o in range(Og):
                        for kp in range(KH):
                            for kq in range(KW):
                                h, v = i * s[0] - p[0] + kp * d[0], j * s[1] - p[1] + kq * d[1]
                                if 0 <= h < OH and 0 <= v < OW:
                                    xv, wv = float(x[n, c, i, j]), float(w[c, o, kp, kq])
                                    y[n, o0 + o, h, v] += xv * wv
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


@st.composite
def convT_case(draw):
    """(x shape, w shape, stride, padding, output_padding, groups, dilation), non-empty output."""
    g = draw(st.integers(1, 3))
    Cg = draw(st.integers(1, 2))
    Og = draw(st.integers(1, 2))
    if draw(st.booleans()):  # O = groups: the adjoint of a depthwise conv2d
        Og = 1
    N = draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
    hw = []
    for a in range(2):  # the smallest input whose output is non-empty, plus a few more
        least = 1
        while transpose_out_len(least, k[a], s[a], p[a], op[a], d[a]) < 1:
            least += 1
        hw.append(draw(st.integers(least, max(least, SMALL))))
    return (N, g * Cg, *hw), (g * Cg, Og, *k), s, p, op, g, d


def tensors(case, dtype, seed, bias=True):
    xs, ws = case[:2]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[1] * case[5]).astype(dtype) if bias else None
    return x, w, b


@given(case=convT_case(), seed=st.integers(0, 2**16), bias=st.booleans())
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_definition(impl, dtype, case, seed, bias):
    x, w, b = tensors(case, dtype, seed, bias)
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, b, *case[2:])
    assert_close(y.data, conv_transpose2d_oracle(x, w, b, *case[2:]),
                 scale=math.sqrt(w.size), what=f"conv_transpose2d {case}")


@given(case=convT_case())
@HYP
def test_output_size_follows_spec(case):
    xs, ws, s, p, op, g, d = case
    y = F.conv_transpose2d(np.zeros(xs, np.float32), np.zeros(ws, np.float32), None, s, p, op, g, d)
    expected = (xs[0], ws[1] * g, transpose_out_len(xs[2], ws[2], s[0], p[0], op[0], d[0]),
                transpose_out_len(xs[3], ws[3], s[1], p[1], op[1], d[1]))
    assert y.shape == expected
    assert F.conv_transpose_output_size(xs[2], ws[2], s[0], p[0], op[0], d[0]) == expected[2]


def test_output_padding_rows_are_computed(impl):
    # stride 1, dilation 2, output_padding 1: the extra last row is reached by the taps kp = 1 of
    # the last input row, so it is a computed value, not zero padding.
    x = np.ones((1, 1, 2, 2))
    w = np.ones((1, 1, 2, 2))
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, stride=1, padding=1, output_padding=1, dilation=2).data
    # out = (2-1)*1 - 2 + 2*1 + 1 + 1 = 3; row/col h receives input rows i with i - 1 + 2kp = h.
    expected = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=np.float64)
    assert_close(y[0, 0], expected)
    assert_close(y, conv_transpose2d_oracle(x, w, None, (1, 1), (1, 1), (1, 1), 1, (2, 2)))


# ---- backward ------------------------------------------------------------------------------


def grads(impl, x, w, b, geo, gy):
    with msn.use_impl(impl):
        X = msn.Tensor(x, requires_grad=True)
        Wt = msn.Tensor(w, requires_grad=True)
        B = None if b is None else msn.Tensor(b, requires_grad=True)
        y = F.conv_transpose2d(X, Wt, B, *geo)
        y.backward(gy)
    return y.data, X.grad, Wt.grad, (None if B is None else B.grad)


@given(case=convT_case(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(impl, dtype, case, seed):
    x, w, b = tensors(case, dtype, seed)
    geo = case[2:]
    with msn.use_impl("reference"):
        shape = F.conv_transpose2d(x, w, None, *geo).shape
    gy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    got = grads(impl, x, w, b, geo, gy)
    ref = grads("reference", x, w, b, geo, gy)
    scale = math.sqrt(max(gy.size, w.size))
    for a, e, name in zip(got, ref, ("y", "gx", "gw", "gb")):
        assert_close(a, e, scale=scale, what=f"{name} {case}")


@given(case=convT_case(), seed=st.integers(0, 2**16))
@HYP
def test_is_the_adjoint_of_conv2d(impl, case, seed):
    # SPEC: conv_transpose2d multiplies by C^T, C the matrix of conv2d with the same weight,
    # stride, padding, dilation and groups taking the (bigger) output back to the input's grid.
    x, w, _ = tensors(case, np.float64, seed, bias=False)
    s, p, op, g, d = case[2:]
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, None, s, p, op, g, d).data
        v = np.random.default_rng(seed + 1).standard_normal(y.shape)
        cv = F.conv2d(v, w, None, s, p, d, g).data
    # With dilation > stride, output_padding can make conv2d's grid one longer than x's: C is
    # that conv2d restricted to x's grid.
    assert cv.shape[2] >= x.shape[2] and cv.shape[3] >= x.shape[3]
    cv = cv[:, :, : x.shape[2], : x.shape[3]]
    lhs, rhs = float((y * v).sum()), float((x * cv).sum())
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), (lhs, rhs)


GRADCHECK_CASES = [  # (x shape, w shape, stride, padding, output_padding, groups, dilation)
    ((2, 3, 3, 4), (3, 2, 3, 3), 2, 1, 1, 1, 1),
    ((1, 2, 3, 3), (2, 2, 2, 3), (1, 2), (0, 1), (1, 0), 1, (2, 1)),
    ((1, 4, 3, 3), (4, 1, 3, 3), 2, 1, 0, 2, 1),  # grouped
    ((1, 3, 3, 3), (3, 1, 4, 4), 2, 1, 0, 3, 1),  # per-channel (FCN bilinear upsampling shape)
    ((1, 1, 2, 2), (1, 2, 2, 2), 2, 0, 1, 1, 1),  # tiny: also run by the CUDA simulator
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=range(len(GRADCHECK_CASES)))
def test_gradcheck(impl, case):
    x, w, b = tensors(case, np.float64, 0)
    if impl == "cuda" and SIMULATOR and x.size + w.size > 30:
        pytest.skip("hundreds of launches: the simulator is too slow; values are compared above")
    geo = case[2:]
    with msn.use_impl(impl):
        assert gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, *geo), [x, w, b])


@pytest.mark.parametrize("min_flops", [0, math.inf], ids=["all-cores", "one-thread"])
@pytest.mark.parametrize("budget", [1, 3000, 12000], ids=["1-row", "2-row", "2-image"])
def test_cpu_blocking_gives_the_same_result(monkeypatch, budget, min_flops):
    # conv_transpose2d's forward adds column blocks back with col2im(acc=...), its backward walks
    # the blocks of conv2d(gy): every blocking must give what the one-block reference gives.
    case = ((3, 4, 4, 3), (4, 3, 3, 3), (2, 1), 1, (1, 0), 2, 1)
    x, w, b = tensors(case, np.float64, 5)
    gy = np.random.default_rng(6).standard_normal((3, 6, 8, 3))
    expected = grads("reference", x, w, b, case[2:], gy)
    monkeypatch.setitem(conv_module.BLOCK_BYTES, "numba", budget)
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", min_flops)
    for a, e in zip(grads("numba", x, w, b, case[2:], gy), expected):
        assert_close(a, e)


@pytest.mark.parametrize("N, budget", [(1, 1), (1, 2000), (2, 1), (3, 5000)])
@pytest.mark.parametrize("k, s, p, d", [(4, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 3), (16, 8, 4, 1)])
def test_row_blocks_on_all_cores_give_the_same_result(monkeypatch, N, budget, k, s, p, d):
    # The CPU forward adds row blocks of one image into gx from several cores at once, in two
    # phases (_col2im_phases). Upsampling kernels that overlap (FCN's k4 s2, k16 s8) or reach far
    # (dilated) must give what the reference gives, whatever the blocks.
    x, w, b = tensors(((N, 3, 7, 5), (3, 2, k, k), s, p, 0, 1, d), np.float64, 7)
    geo = (s, p, 0, 1, d)
    oh = F.conv_transpose_output_size(7, k, s, p, 0, d)
    ow = F.conv_transpose_output_size(5, k, s, p, 0, d)
    gy = np.random.default_rng(8).standard_normal((N, 2, oh, ow))
    expected = grads("reference", x, w, b, geo, gy)
    monkeypatch.setitem(conv_module.BLOCK_BYTES, "numba", budget)
    monkeypatch.setattr(conv_module, "PER_CORE_MIN_FLOPS", 0)  # all cores, however small
    for a, e in zip(grads("numba", x, w, b, geo, gy), expected):
        assert_close(a, e)


@given(N=st.integers(1, 3), oh=st.integers(1, 30), H=st.integers(1, 70), s=st.integers(1, 4),
       p=st.integers(0, 3), reach=st.integers(0, 12), nblocks=st.integers(1, 12),
       workers=st.integers(1, 4))
@settings(max_examples=200)
def test_col2im_phases_never_add_into_one_row_at_once(N, oh, H, s, p, reach, nblocks, workers):
    # Brute force: within a phase, no two chunks may add into the same input row of one image.
    # Rows a block (n, r0, r1) adds into: r*s - p + t for r in [r0, r1) and t in [0, reach] that
    # land in [0, H) (every dilated tap offset lies in that range).
    blocks = [(n, n + 1, r0, r1) for n in range(N)
              for r0, r1 in [(oh * k // nblocks, oh * (k + 1) // nblocks) for k in range(nblocks)]
              if r1 > r0]
    phases = conv_module._col2im_phases(blocks, s, p, reach, H, workers)
    if phases is None:
        return
    assert [b for chunk in sorted(phases[0] + phases[1]) for b in chunk] == blocks

    def rows(chunk):
        return {(n, r * s - p + t) for n, _, r0, r1 in chunk for r in range(r0, r1)
                for t in range(reach + 1) if 0 <= r * s - p + t < H}

    for phase in phases:
        seen = set()
        for chunk in phase:
            mine = rows(chunk)
            assert not (mine & seen)
            seen |= mine


def test_col2im_phases_for_fcn_upsampling():
    # FCN's k4 s2 p1 on one image in 8 row blocks over 2 cores: 4 chunks of 2 rows each, the
    # even ones first. Chunks 0 and 2 add into input rows 0..4 and 7..12: apart, so allowed.
    blocks = [(0, 1, r, r + 1) for r in range(8)]
    phases = conv_module._col2im_phases(blocks, 2, 1, 3, 16, 2)
    assert phases == [[blocks[0:2], blocks[4:6]], [blocks[2:4], blocks[6:8]]]
    # A dilated stride-1 kernel reaching 12 rows past a 2-row chunk cannot run that way.
    assert conv_module._col2im_phases(blocks, 1, 0, 12, 16, 2) is None


@pytest.mark.parametrize("xs, ws, geo", [((2, 4, 5, 6), (4, 3, 3, 3), (2, 1, 1, 2, 1)),
                                         ((1, 3, 4, 4), (3, 2, 4, 4), (2, 1, 0, 1, 1)),
                                         ((2, 2, 4, 5), (2, 3, 3, 2),
                                          ((1, 3), (2, 0), (1, 2), 1, (3, 1)))])
def test_matches_pytorch(xs, ws, geo):
    torch = pytest.importorskip("torch")  # geo: stride, padding, output_padding, groups, dilation
    check_op([xs, ws, (ws[1] * geo[3],)], lambda x, w, b: F.conv_transpose2d(x, w, b, *geo),
             lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, *geo))


# ---- bad input -----------------------------------------------------------------------------

X = np.zeros((1, 4, 5, 5), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)
BAD = [  # (kwargs for conv_transpose2d, exception, words the message must contain)
    (dict(x=X[0]), ValueError, ["input", "(4, 5, 5)"]),
    (dict(weight=W[..., 0]), ValueError, ["weight", "(4, 3, 3)"]),
    (dict(weight=np.zeros((3, 3, 3, 3), np.float32)), ValueError, ["weight.shape[0]", "3 != 4"]),
    (dict(groups=3, weight=np.zeros((4, 1, 3, 3), np.float32)), ValueError, ["groups=3", "4"]),
    (dict(stride=0), ValueError, ["stride"]),
    (dict(padding=(0, -1)), ValueError, ["padding", "(0, -1)"]),
    (dict(dilation=-1), ValueError, ["dilation"]),
    (dict(output_padding=1), ValueError, ["output_padding", "(1, 1)"]),
    (dict(output_padding=2, stride=2), ValueError, ["output_padding", "(2, 2)"]),
    (dict(output_padding=(1, 2), stride=2, dilation=(1, 3)), None, []),  # 2 < max(2, 3): fine
    (dict(output_padding=-1, stride=2), ValueError, ["output_padding"]),
    (dict(output_padding="1"), TypeError, ["output_padding"]),
    (dict(padding=5), ValueError, ["empty output"]),
    (dict(weight=np.zeros((4, 3, 0, 3), np.float32)), ValueError, ["kernel size"]),
    (dict(bias=np.zeros(4, np.float32)), ValueError, ["bias", "(3,)"]),
    (dict(x=X.astype(np.float64)), TypeError, ["float64", "float32"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(kwargs, exc, words):
    defaults = dict(x=X, weight=W, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                    dilation=1)
    check_bad_input(F.conv_transpose2d, defaults, kwargs, exc, words)


# ---- layer ---------------------------------------------------------------------------------


def test_conv_transpose2d_layer():
    msn.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    assert layer.weight.shape == (4, 3, 3, 3) and layer.bias.shape == (6,)
    bound = 1 / math.sqrt(3 * 3 * 3)  # PyTorch's fan_in for a transposed conv: weight.shape[1]*k*k
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = layer(msn.Tensor(x))
    assert y.shape == (2, 6, 10, 10)
    expected = conv_transpose2d_oracle(x, layer.weight.data, layer.bias.data, (2, 2), (1, 1),
                                       (1, 1), 2, (1, 1))
    assert_close(y.data, expected, scale=3)
    with pytest.raises(ValueError, match="init"):
        nn.ConvTranspose2d(4, 4, 3, init="xavier")


def test_bilinear_init_upsamples_like_fcn():
    # FCN's upsampling filter for factor 2: kernel 4, stride 2, padding 1; taps [1, 3, 3, 1] / 4.
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    assert_close(nn.bilinear_kernel(4, 4, np.float64), np.outer(taps, taps))
    assert_close(nn.bilinear_kernel(3, 3, np.float64)[1], np.array([0.5, 1.0, 0.5]))
    for groups in (1, 3):
        layer = nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, groups=groups, bias=False,
                                   init="bilinear")
        # A ramp along W, different per channel: channels stay apart and the interior of the
        # result is the linear interpolation at src = (dst + 0.5) / 2 - 0.5.
        ramp = np.arange(6, dtype=np.float32)
        x = np.stack([ramp * (c + 1) for c in range(3)])[None, :, None, :].repeat(6, axis=2)
        y = layer(msn.Tensor(x)).data
        assert y.shape == (1, 3, 12, 12)
        dst = np.arange(1, 11)
        for c in range(3):
            assert_close(y[0, c, 5, 1:11], ((dst + 0.5) / 2 - 0.5).astype(np.float32) * (c + 1))
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        nn.ConvTranspose2d(3, 6, 4, stride=2, init="bilinear")
