"""im2col / col2im (kernels/im2col.py): every implementation against the loop reference, and the
adjoint identity <im2col(x), c> = <x, col2im(c)> that makes col2im the transpose of im2col."""

from __future__ import annotations

import conv_cases
import numpy as np
import pytest
from conftest import SIMULATOR
from helpers import DTYPES, HYP, SMALL, assert_close, out_len
from hypothesis import given
from hypothesis import strategies as st
from minisegnet.kernels import im2col as K

# The `impl` fixture is a plain string: sharing it across hypothesis examples is safe.



@st.composite
def geometry(draw):
    """(x shape, kernel, stride, padding, dilation, out grid) with a non-empty output grid."""
    N = draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    k, s, p, d, hw = conv_cases.geometry(draw, SMALL)
    out = (out_len(hw[0], k[0], s[0], p[0], d[0]), out_len(hw[1], k[1], s[1], p[1], d[1]))
    # A smaller grid than the conv2d formula gives is legal too (transposed convs need it).
    if draw(st.booleans()) and out[0] > 1:
        out = (out[0] - 1, out[1])
    return (N, C, *hw), k, s, p, d, out


def run(impl: str, name: str, *args):
    return K.IMPLS[name][impl](*args)


@given(g=geometry(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_matches_reference(impl, dtype, g, seed):
    shape, *geo = g
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    expected = K.im2col_reference(x, *geo)
    assert_close(run(impl, "im2col", x, *geo), expected, what=f"im2col {g}")


@given(g=geometry(), seed=st.integers(0, 2**16))
@HYP
@pytest.mark.parametrize("dtype", DTYPES)
def test_col2im_matches_reference(impl, dtype, g, seed):
    shape, (kh, kw), *rest = g
    (oh, ow) = rest[-1]
    cols = np.random.default_rng(seed).standard_normal(
        (shape[0], shape[1] * kh * kw, oh * ow)).astype(dtype)
    expected = K.col2im_reference(cols, shape, (kh, kw), *rest)
    assert_close(run(impl, "col2im", cols, shape, (kh, kw), *rest), expected, scale=3.0,
                 what=f"col2im {g}")


@given(g=geometry(), seed=st.integers(0, 2**16), cut=st.integers(0, 8))
@HYP
def test_serial_kernels_match_the_parallel_ones(g, seed, cut):
    # im2col_serial / col2im_serial (one thread, GIL released: the CPU conv runs one per core) are
    # the parallel numba kernels' plane loop on the calling thread: the same numbers exactly.
    shape, *geo = g
    oh = geo[-1][0]
    rows = (cut % oh, oh)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = K.im2col_serial(x, *geo, rows)
    np.testing.assert_array_equal(cols, K.im2col_numba(x, *geo, rows))
    c = rng.standard_normal(cols.shape)
    acc = rng.standard_normal(shape)
    np.testing.assert_array_equal(K.col2im_serial(c, shape, *geo, rows, acc.copy()),
                                  K.col2im_numba(c, shape, *geo, rows, acc.copy()))
    np.testing.assert_array_equal(K.col2im_serial(c, shape, *geo, rows),
                                  K.col2im_numba(c, shape, *geo, rows))


@given(g=geometry(), seed=st.integers(0, 2**16))
@HYP
def test_col2im_is_the_adjoint_of_im2col(impl, g, seed):
    shape, *geo = g
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = run(impl, "im2col", x, *geo)
    c = rng.standard_normal(cols.shape)
    back = run(impl, "col2im", c, shape, *geo)
    lhs, rhs = float((cols * c).sum()), float((x * back).sum())
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs)), (lhs, rhs)


def test_hand_checked_example(impl):
    # 3x3 image 0..8, 2x2 window, stride 1: each column is one window read row by row, so each
    # row of cols is one tap (p, q) across the four windows.
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    cols = run(impl, "im2col", x, (2, 2), (1, 1), (0, 0), (1, 1), (2, 2))
    expected = np.array([[0, 1, 3, 4],  # tap (0, 0)
                         [1, 2, 4, 5],  # tap (0, 1)
                         [3, 4, 6, 7],  # tap (1, 0)
                         [4, 5, 7, 8]], dtype=np.float64)[None]  # tap (1, 1)
    assert_close(cols, expected)
    # col2im of all-ones counts how many windows read each pixel: corners 1, edges 2, centre 4.
    counts = run(impl, "col2im", np.ones_like(cols), x.shape, (2, 2), (1, 1), (0, 0), (1, 1),
                 (2, 2))
    assert_close(counts, np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)[None, None])


def test_padding_only_taps_and_strides(impl):
    # Padding 2 with a 1x1 kernel: the border outputs read padding only and must be exactly 0;
    # stride 2 then keeps every other one.
    x = np.ones((1, 2, 3, 3), dtype=np.float32)
    geo = ((1, 1), (2, 2), (2, 2), (1, 1), (4, 4))  # out = (3 + 4 - 1) // 2 + 1 = 4
    cols = run(impl, "im2col", x, *geo)
    plane = np.zeros((4, 4), np.float32)
    plane[1:3, 1:3] = 1  # outputs 1, 2 read input 0, 2; outputs 0, 3 read padding
    assert_close(cols, np.stack([plane.ravel()] * 2)[None])


@given(g=geometry(), seed=st.integers(0, 2**16), cut=st.integers(0, 8))
@HYP
def test_row_blocks_reassemble_the_whole(impl, g, seed, cut):
    # im2col of rows [r0, r1) is that slice of the full columns; col2im over the blocks of a
    # partition, accumulated with acc=, equals col2im of the whole (how conv2d tiles on the CPU).
    shape, *geo = g
    oh, ow = geo[-1]
    r = cut % (oh + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    full = K.im2col_reference(x, *geo)
    c = rng.standard_normal(full.shape)
    acc = np.full(shape, 0.5)
    for r0, r1 in [(0, r), (r, oh)]:
        if r1 > r0:
            block = run(impl, "im2col", x, *geo, (r0, r1))
            assert_close(block, full[:, :, r0 * ow:r1 * ow])
            acc = run(impl, "col2im", np.ascontiguousarray(c[:, :, r0 * ow:r1 * ow]), shape, *geo,
                      (r0, r1), acc)
    assert_close(acc, K.col2im_reference(c, shape, *geo) + 0.5)


@pytest.mark.parametrize("k, d", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_same_size_stride_one_grids(impl, k, d):
    # Stride 1 with padding d(k-1)/2 keeps the width: the numba kernel copies such rows as one
    # flat run of the input and zeroes the edges afterwards; rows reading only padding included.
    p = d * (k - 1) // 2
    x = np.random.default_rng(k + d).standard_normal((2, 2, 3 if SIMULATOR else 6, 5))
    geo = ((k, k), (1, 1), (p, p), (d, d), x.shape[2:])
    assert_close(run(impl, "im2col", x, *geo), K.im2col_reference(x, *geo))
    for rows in [(0, 2), (1, x.shape[2])]:
        assert_close(run(impl, "im2col", x, *geo, rows), K.im2col_reference(x, *geo, rows))
