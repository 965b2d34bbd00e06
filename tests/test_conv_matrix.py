"""The explicit convolution matrix (kernels/conv_matrix.py): conv2d is C @ vec(x) and
conv_transpose2d is C^T @ vec(y) for every implementation of the two ops; the 4x16 worked example of
Dumoulin & Visin; dense against sparse; bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conv_cases import conv_case, out_len, transpose_case
from helpers import HYP, assert_close
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels.conv_matrix import conv_matrix, conv_transpose_matrix

import minisegnet as msn
import minisegnet.functional as F

# ---- the worked example ----------------------------------------------------------------------

# Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016), section 4.1:
# a 3x3 kernel over a 4x4 input (no padding, unit stride) as a 4x16 matrix. Entry = index into
# the kernel's row-major taps w00..w22, -1 = zero.
PAPER_LAYOUT = np.array([
    [0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, -1, -1, -1, -1],
    [-1, 0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, -1, -1, -1],
    [-1, -1, -1, -1, 0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1],
    [-1, -1, -1, -1, -1, 0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8],
])


def test_worked_example_4x16(impl):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 1, 3, 3))
    expected = np.where(PAPER_LAYOUT >= 0, w.ravel()[PAPER_LAYOUT], 0.0)
    C = conv_matrix((1, 4, 4), w)
    assert C.shape == (4, 16) and C.dtype == np.float64
    np.testing.assert_array_equal(C, expected)
    x = rng.standard_normal((1, 1, 4, 4))
    y = rng.standard_normal((1, 1, 2, 2))
    with msn.use_impl(impl):
        conv = F.conv2d(x, w).data
        convT = F.conv_transpose2d(y, w).data
    assert_close(conv, (C @ x.ravel()).reshape(1, 1, 2, 2), what="conv2d = C x")
    # The transpose maps the 2x2 map back to 4x4: transposed convolution is C^T.
    assert_close(convT, (C.T @ y.ravel()).reshape(1, 1, 4, 4), what="conv_transpose2d = C^T y")


def test_worked_example_in_the_docstring_is_the_paper_layout():
    """The docstring shows the kernel 1..9: its matrix is the paper's layout with those numbers."""
    w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(conv_matrix((1, 4, 4), w).astype(int),
                                  np.where(PAPER_LAYOUT >= 0, PAPER_LAYOUT + 1, 0))


# ---- C @ x is conv2d, C^T @ y is conv_transpose2d ----------------------------------------------


@given(case=conv_case(), seed=st.integers(0, 2**16))
@HYP
def test_conv2d_is_the_matrix(impl, case, seed):
    xs, ws, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    C = conv_matrix(xs[1:], w, s, p, d, g)
    oh, ow = out_len(xs[2], ws[2], s[0], p[0], d[0]), out_len(xs[3], ws[3], s[1], p[1], d[1])
    assert C.shape == (ws[0] * oh * ow, xs[1] * xs[2] * xs[3])
    with msn.use_impl(impl):
        y = F.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g).data
    assert_close(y, (x.reshape(xs[0], -1) @ C.T).reshape(xs[0], ws[0], oh, ow))


@given(case=transpose_case(max_pad=2), seed=st.integers(0, 2**16))
@HYP
def test_conv_transpose2d_is_the_transposed_matrix(impl, case, seed):
    xs, ws, s, p, op, d, g = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    T = conv_transpose_matrix(xs[1:], w, s, p, op, g, d)
    with msn.use_impl(impl):
        y = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op, groups=g,
                               dilation=d).data
    assert T.shape == (y[0].size, x[0].size)
    assert_close(y, (x.reshape(xs[0], -1) @ T.T).reshape(y.shape))
    if op[0] < s[0] and op[1] < s[1]:
        # Then the conv2d grid of the (H_out, W_out) plane is exactly (H, W), and T is literally
        # the transpose of that conv's matrix (with output_padding >= stride, allowed when the
        # dilation is larger, the transposed conv uses the first H x W outputs of a larger grid).
        np.testing.assert_array_equal(T, conv_matrix(y.shape[1:], w, s, p, d, g).T)


def test_sparse_equals_dense():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    dense = conv_matrix((2, 6, 5), w, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    sp = conv_matrix((2, 6, 5), w, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                     sparse=True)
    assert sp.shape == dense.shape and sp.dtype == np.float32
    np.testing.assert_array_equal(sp.toarray(), dense)
    assert sp.nnz == np.count_nonzero(dense)  # one stored entry per tap that lands in the input
    # The transposed conv that maps the (4, 3, 3) output back to (2, 6, 5): output_padding (1, 0).
    spT = conv_transpose_matrix((4, 3, 3), w, stride=(2, 1), padding=1, output_padding=(1, 0),
                                groups=2, dilation=(1, 2), sparse=True)
    np.testing.assert_array_equal(spT.toarray(), dense.T)


def test_sparse_without_scipy_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy...` now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    with pytest.raises(ImportError, match="SciPy"):
        conv_matrix((1, 4, 4), np.ones((1, 1, 3, 3)), sparse=True)
    assert conv_matrix((1, 4, 4), np.ones((1, 1, 3, 3))).shape == (4, 16)  # dense still works


def test_accepts_a_tensor_weight():
    w = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(conv_matrix((1, 4, 4), msn.Tensor(w)),
                                  conv_matrix((1, 4, 4), w))


# ---- bad input ---------------------------------------------------------------------------------

W3 = np.ones((2, 1, 3, 3))


@pytest.mark.parametrize("args, kwargs, exc, words", [
    (((1, 4), W3), {}, ValueError, "in_shape"),
    (((1, 4, 4), np.ones((3, 3))), {}, ValueError, "4-D"),
    (((2, 4, 4), W3), {}, ValueError, "groups"),  # weight wants 1 input channel
    (((2, 4, 4), W3), {"groups": 3}, ValueError, "groups"),
    (((1, 2, 2), W3), {}, ValueError, "empty output"),
    (((1, 4, 4), W3), {"stride": 0}, ValueError, "stride"),
    (((1, 4, 4), W3), {"padding": -1}, ValueError, "padding"),
    (((1, 4, 4), W3), {"dilation": (1, 0)}, ValueError, "dilation"),
    (((1, 4, 4), W3), {"stride": 1.5}, TypeError, "stride"),
])
def test_conv_matrix_bad_input(args, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        conv_matrix(*args, **kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"stride": 2, "output_padding": 2}, "output_padding"),
    ({"stride": 1, "output_padding": 1}, "output_padding"),
    ({"padding": 5}, "empty output"),
])
def test_conv_transpose_matrix_bad_input(kwargs, words):
    with pytest.raises(ValueError, match=words):
        conv_transpose_matrix((2, 3, 3), np.ones((2, 1, 3, 3)), **kwargs)
    with pytest.raises(ValueError, match="channels"):
        conv_transpose_matrix((3, 3, 3), np.ones((2, 1, 3, 3)))
