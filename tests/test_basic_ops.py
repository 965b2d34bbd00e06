"""Core tensor ops and activations: values against NumPy written here, gradients by gradcheck.

Every op in ``minisegnet.tensor`` and ``minisegnet.functional.basic`` is checked twice: the forward
value against the same formula written directly in NumPy, and the backward pass against central
finite differences (``msn.testing.gradcheck``, float64). Hypothesis draws the shapes, including
broadcasting pairs, reduction axes and padding widths.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.testing import GradcheckError, gradcheck


def randn(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def away_from_zero(shape, seed=0, low=0.5, high=2.0):
    """Values with |v| in [low, high], random sign: safe for 1/x, abs and kinks at 0."""
    r = np.random.default_rng(seed)
    return r.uniform(low, high, shape) * r.choice([-1.0, 1.0], shape)


def check(fn_msn, fn_np, *arrays, rtol=1e-12, atol=1e-12):
    """Forward value (float64) against NumPy, then gradcheck over every array."""
    out = fn_msn(*(Tensor(a) for a in arrays))
    expected = np.asarray(fn_np(*arrays))
    assert out.shape == expected.shape
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)
    assert gradcheck(fn_msn, list(arrays))


two_broadcast = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


# ---- elementwise arithmetic with broadcasting -------------------------------------------------


@given(shapes=two_broadcast, seed=st.integers(0, 2**16))
def test_add_sub_mul_broadcast(shapes, seed):
    sa, sb = shapes.input_shapes
    a, b = randn(sa, seed), randn(sb, seed + 1)
    check(lambda x, y: x + y, np.add, a, b)
    check(lambda x, y: x - y, np.subtract, a, b)
    check(lambda x, y: x * y, np.multiply, a, b)


@given(shapes=two_broadcast, seed=st.integers(0, 2**16))
def test_div_broadcast(shapes, seed):
    sa, sb = shapes.input_shapes
    a, b = randn(sa, seed), away_from_zero(sb, seed + 1)
    check(lambda x, y: x / y, np.divide, a, b, rtol=1e-12)


def test_scalar_operands_and_reflected_ops():
    a = away_from_zero((2, 3), 1)
    check(lambda x: 2.0 + x, lambda x: 2.0 + x, a)
    check(lambda x: 1.5 - x, lambda x: 1.5 - x, a)
    check(lambda x: 3.0 * x - x * 0.5, lambda x: 3.0 * x - x * 0.5, a)
    check(lambda x: 2.0 / x + x / 4.0, lambda x: 2.0 / x + x / 4.0, a)
    check(lambda x: -x, np.negative, a)
    # a NumPy array on the left defers to Tensor's reflected operator (__array_priority__)
    b = randn((3,), 2)
    out = b + Tensor(a)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.numpy(), b + a)


def test_python_scalar_keeps_float32():
    x = Tensor(np.ones((2, 2), np.float32))
    for y in (x + 1.5, 2 * x, x / 3.0, 1.0 - x, x**2.0, x.mean()):
        assert y.dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python floats default to float32
    assert Tensor(np.ones(2)).sum().dtype == np.float64  # NumPy scalars keep their dtype


@pytest.mark.parametrize("c", [2.0, 3.0, 0.5, -1.5, 1.0, 0.0])
def test_pow(c):
    base = np.random.default_rng(3).uniform(0.5, 2.0, (3, 4))  # positive: real non-integer powers
    check(lambda x: x**c, lambda x: x**c, base, rtol=1e-12)
    check(lambda x: x.sqrt(), np.sqrt, base)


def test_pow_of_tensor_exponent_is_type_error():
    with pytest.raises(TypeError, match="exponent"):
        Tensor(np.ones(2)) ** Tensor(np.ones(2))


@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), seed=st.integers(0, 2**16))
def test_unary_elementwise(shape, seed):
    x = randn(shape, seed)
    pos = np.random.default_rng(seed).uniform(0.3, 3.0, shape)
    nz = away_from_zero(shape, seed, 0.1, 2.0)
    check(lambda t: t.exp(), np.exp, x)
    check(lambda t: t.log(), np.log, pos)
    check(lambda t: t.abs(), np.abs, nz)
    check(F.relu, lambda a: np.maximum(a, 0), nz)
    check(lambda t: F.leaky_relu(t, 0.2), lambda a: np.where(a > 0, a, 0.2 * a), nz)
    check(F.sigmoid, lambda a: 1 / (1 + np.exp(-a)), x, rtol=1e-12)
    check(F.tanh, np.tanh, x)


def test_clamp_min_max_both():
    # keep values away from the bounds: the derivative jumps there
    x = np.array([-2.0, -1.2, -0.7, -0.3, 0.2, 0.6, 0.9, 1.7]).reshape(2, 4)
    check(lambda t: t.clamp(min=-0.5), lambda a: np.clip(a, -0.5, None), x)
    check(lambda t: t.clamp(max=0.5), lambda a: np.clip(a, None, 0.5), x)
    check(lambda t: t.clamp(-1.0, 1.0), lambda a: np.clip(a, -1.0, 1.0), x)
    y = Tensor(x, requires_grad=True)
    y.clamp(-1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(y.grad, (np.abs(x) <= 1.0).astype(float))


def test_sigmoid_is_stable_for_large_inputs():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.sigmoid(Tensor(x)).numpy()
    assert y[0] == 0.0 and y[-1] == 1.0 and y[2] == 0.5


# ---- matmul -----------------------------------------------------------------------------------


@given(
    batch=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
    n=st.integers(1, 3),
    k=st.integers(1, 3),
    m=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_matmul_batched_broadcast(batch, n, k, m, seed):
    ba, bb = batch.input_shapes
    a, b = randn(ba + (n, k), seed), randn(bb + (k, m), seed + 1)
    check(lambda x, y: x @ y, np.matmul, a, b)


@pytest.mark.parametrize(
    "sa, sb", [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)), ((3,), (4, 3, 2))]
)
def test_matmul_1d_operands(sa, sb):
    check(lambda x, y: x @ y, np.matmul, randn(sa, 1), randn(sb, 2))


def test_matmul_bad_shapes_name_both():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 2)))
    with pytest.raises(ValueError, match="scalar"):
        F.matmul(Tensor(np.ones(())), Tensor(np.ones(3)))


# ---- reductions ---------------------------------------------------------------------------------


@st.composite
def shape_and_axes(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    negative = draw(st.booleans())
    axes = tuple(a - len(shape) if negative else a for a in axes)
    return shape, (None if not axes else axes), draw(st.booleans())


@given(sak=shape_and_axes(), seed=st.integers(0, 2**16))
def test_sum_mean_amax_over_axes(sak, seed):
    shape, axes, keepdim = sak
    x = randn(shape, seed)  # continuous values: no ties for amax
    check(lambda t: t.sum(axes, keepdim), lambda a: a.sum(axis=axes, keepdims=keepdim), x)
    check(lambda t: t.mean(axes, keepdim), lambda a: a.mean(axis=axes, keepdims=keepdim), x)
    check(lambda t: t.amax(axes, keepdim), lambda a: a.max(axis=axes, keepdims=keepdim), x)


def test_amax_ties_share_the_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    x.amax(dim=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [0.5, 0, 0.5]])


def test_max_with_dim_returns_values_and_indices():
    a = randn((3, 4), 5)
    values, indices = Tensor(a).max(dim=1)
    np.testing.assert_array_equal(values.numpy(), a.max(axis=1))
    np.testing.assert_array_equal(indices.numpy(), a.argmax(axis=1))
    assert not indices.requires_grad
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        Tensor(a).sum(dim=2)


# ---- shape ops ----------------------------------------------------------------------------------


def test_reshape_permute_transpose_flatten():
    x = randn((2, 3, 4), 7)
    check(lambda t: t.reshape(4, 6), lambda a: a.reshape(4, 6), x)
    check(lambda t: t.reshape((-1, 2)), lambda a: a.reshape(-1, 2), x)
    check(lambda t: t.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), x)
    check(lambda t: t.permute((1, 2, 0)), lambda a: a.transpose(1, 2, 0), x)
    check(lambda t: t.transpose(0, 2), lambda a: a.swapaxes(0, 2), x)
    check(lambda t: t.T, lambda a: a.T, x)
    check(lambda t: t.flatten(1), lambda a: a.reshape(2, 12), x)
    check(lambda t: F.flatten(t), lambda a: a.reshape(-1), x)
    check(lambda t: F.permute(F.reshape(t, (6, 4)), (1, 0)), lambda a: a.reshape(6, 4).T, x)


def test_shape_op_errors():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="permutation"):
        x.permute(0, 0)


@pytest.mark.parametrize(
    "index",
    [
        (slice(None), slice(1, 3), slice(0, 2)),  # a centre crop (U-Net's crop-and-concat)
        (Ellipsis, slice(1, None)),
        (0, slice(None, None, -1)),
        (None, 1),
        (slice(None), 1, slice(None, None, 2)),
        -1,
    ],
)
def test_basic_indexing_and_crops(index):
    x = randn((2, 4, 3), 8)
    check(lambda t: t[index], lambda a: a[index], x)


@pytest.mark.parametrize(
    "index",
    [
        np.array([0, 0, 2, 0]),  # repeated rows: gradients must accumulate
        (np.array([1, 1, 0]), np.array([2, 2, 2])),  # a repeated element
        (slice(None), np.array([[0, 1], [1, 1]])),
        np.array([True, False, True]),
    ],
)
def test_advanced_indexing_with_repeats(index):
    x = randn((3, 3), 9)
    check(lambda t: t[index], lambda a: a[index], x)
    t = Tensor(x, requires_grad=True)
    t[index].sum().backward()
    expected = np.zeros_like(x)
    np.add.at(expected, index, 1.0)
    np.testing.assert_array_equal(t.grad, expected)


def test_indexing_with_a_tensor_index():
    x = randn((4, 2), 10)
    idx = Tensor(np.array([3, 3, 1]))
    check(lambda t: t[idx], lambda a: a[[3, 3, 1]], x)


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    dim_pick=st.integers(0, 10),
    seed=st.integers(0, 2**16),
)
def test_cat_and_stack(shape, sizes, dim_pick, seed):
    dim = dim_pick % len(shape)
    parts = []
    for i, s in enumerate(sizes):
        sh = list(shape)
        sh[dim] = s
        parts.append(randn(tuple(sh), seed + i))
    check(lambda *ts: F.cat(ts, dim), lambda *a: np.concatenate(a, axis=dim), *parts)
    same = [randn(shape, seed + i) for i in range(len(sizes))]
    sdim = dim_pick % (len(shape) + 1)
    check(lambda *ts: F.stack(ts, sdim), lambda *a: np.stack(a, axis=sdim), *same)


def test_cat_stack_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        F.cat([Tensor(np.ones((2, 3))), Tensor(np.ones((2, 4)))], dim=0)
    with pytest.raises(ValueError, match="at least one"):
        F.cat([])
    with pytest.raises(ValueError, match="equal shapes"):
        F.stack([Tensor(np.ones(2)), Tensor(np.ones(3))])


# ---- padding ------------------------------------------------------------------------------------


@st.composite
def pad_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
    npad = draw(st.integers(1, len(shape)))
    pads = []
    for i in range(npad):  # PyTorch order: last dimension first
        size = shape[len(shape) - 1 - i]
        pads += [draw(st.integers(0, size - 1)), draw(st.integers(0, size - 1))]
    return shape, pads


def _np_widths(ndim, pads):
    widths = [(0, 0)] * ndim
    for i in range(len(pads) // 2):
        widths[ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return widths


@given(case=pad_case(), seed=st.integers(0, 2**16))
def test_pad_constant_and_reflect(case, seed):
    shape, pads = case
    x = randn(shape, seed)
    w = _np_widths(len(shape), pads)
    check(lambda t: F.pad(t, pads), lambda a: np.pad(a, w), x)
    check(
        lambda t: F.pad(t, pads, value=1.5),
        lambda a: np.pad(a, w, constant_values=1.5),
        x,
    )
    check(lambda t: F.pad(t, pads, mode="reflect"), lambda a: np.pad(a, w, mode="reflect"), x)


def test_pad_reflect_by_hand():
    # reflect mirrors without repeating the edge: [1 2 3] padded (2, 1) -> [3 2 1 2 3 2]
    y = F.pad(Tensor(np.array([1.0, 2.0, 3.0])), (2, 1), mode="reflect")
    np.testing.assert_array_equal(y.numpy(), [3, 2, 1, 2, 3, 2])


def test_pad_errors():
    x = Tensor(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="reflect widths"):
        F.pad(x, (3, 0), mode="reflect")
    with pytest.raises(ValueError, match="non-negative"):
        F.pad(x, (-1, 0))
    with pytest.raises(ValueError, match="even number"):
        F.pad(x, (1, 1, 1))
    with pytest.raises(ValueError, match="mode"):
        F.pad(x, (1, 1), mode="circular")


# ---- softmax family -----------------------------------------------------------------------------


def _np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=3),
    d=st.integers(-4, 3),
    seed=st.integers(0, 2**16),
)
def test_softmax_and_log_softmax(shape, d, seed):
    dim = d % len(shape)
    x = randn(shape, seed) * 3
    check(lambda t: F.softmax(t, dim), lambda a: _np_softmax(a, dim), x)
    check(
        lambda t: F.log_softmax(t, dim),
        lambda a: np.log(_np_softmax(a, dim)),
        x,
        rtol=1e-10,
        atol=1e-12,
    )


def test_log_softmax_is_stable():
    x = Tensor(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        y = F.log_softmax(x, dim=1).numpy()
    np.testing.assert_allclose(y, [[0.0, -1000.0, -2000.0]])
    with pytest.raises(ValueError, match="dim"):
        F.softmax(x, dim=2)


# ---- dropout ------------------------------------------------------------------------------------


def test_dropout_gradient_is_the_mask_scale():
    p = 0.3
    x = Tensor(np.random.default_rng(0).uniform(1, 2, (40, 50)), requires_grad=True)
    msn.manual_seed(11)
    y = F.dropout(x, p)
    msn.manual_seed(11)
    y_again = F.dropout(Tensor(x.data), p)
    np.testing.assert_array_equal(y.numpy(), y_again.numpy())  # fixed seed -> fixed mask
    kept = y.numpy() != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y.numpy()[kept], x.data[kept] / (1 - p))
    y.backward(np.ones(y.shape))
    np.testing.assert_allclose(x.grad, kept / (1 - p))


def test_dropout_gradcheck_with_a_fixed_seed():
    def fn(t):
        msn.manual_seed(5)  # the same mask on every evaluation
        return F.dropout(t, 0.4)

    assert gradcheck(fn, [randn((3, 4), 1)])


def test_dropout_eval_and_edge_probabilities():
    x = Tensor(randn((3, 3), 2))
    assert F.dropout(x, 0.5, training=False) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), 0.0)
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())
    with pytest.raises(ValueError, match="p: dropout probability"):
        F.dropout(x, 1.5)


# ---- linear, casts, gradcheck itself -------------------------------------------------------------


def test_linear_and_cast():
    x, w, b = randn((4, 3), 1), randn((2, 3), 2), randn((2,), 3)
    check(F.linear, lambda a, ww, bb: a @ ww.T + bb, x, w, b)
    check(lambda a, ww: F.linear(a, ww), lambda a, ww: a @ ww.T, x, w)
    y = Tensor(x.astype(np.float32), requires_grad=True)
    z = y.double()
    assert z.dtype == np.float64
    (z * 2).sum().backward()
    assert y.grad.dtype == np.float32
    np.testing.assert_array_equal(y.grad, 2)
    assert y.double().float().dtype == np.float32


def test_gradcheck_catches_a_wrong_backward():
    class BadSquare(msn.Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, gy):
            return gy * self.x  # should be 2 x

    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda t: BadSquare()(t), [randn((2, 2), 0)])


def test_mismatched_shapes_in_arithmetic_name_both_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    for op, name in (
        (lambda: a + b, "add"),
        (lambda: a - b, "sub"),
        (lambda: a * b, "mul"),
        (lambda: a / b, "div"),
    ):
        with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\).*\(4,\)"):
            op()
