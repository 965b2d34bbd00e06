"""Hypothesis strategies for convolution settings, shared by the conv property tests.

Each draws shapes, kernel, stride, padding, dilation, groups (and output_padding) such that the
output is non-empty, so tests exercise valid settings; invalid ones have their own tests.
"""

from __future__ import annotations

from hypothesis import strategies as st

from conftest import SIMULATOR

MAX_HW = 4 if SIMULATOR else 7  # the simulator runs a few thousand threads per second


def out_len(size: int, k: int, s: int, p: int, d: int) -> int:
    """SPEC conv2d: H_out = floor((H + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transpose_out_len(size: int, k: int, s: int, p: int, op: int, d: int) -> int:
    """SPEC conv_transpose2d: H_out = (H - 1)s - 2p + d(k-1) + output_padding + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


@st.composite
def conv_case(draw, max_hw: int = MAX_HW):
    """(x shape, conv2d weight shape, stride, padding, dilation, groups) with a non-empty output."""
    g = draw(st.integers(1, 2))
    Cg, Og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    N = draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = []
    for a in range(2):
        least = max(1, d[a] * (k[a] - 1) + 1 - 2 * p[a])
        hw.append(draw(st.integers(least, max(least, max_hw))))
    return (N, g * Cg, *hw), (g * Og, Cg, *k), s, p, d, g


@st.composite
def transpose_case(draw, max_hw: int = MAX_HW, max_pad: int = 3):
    """(x shape, conv_transpose2d weight shape, stride, padding, output_padding, dilation, groups)."""
    g = draw(st.integers(1, 2))
    Cg, Og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    N = draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    op = (draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1)))
    p, hw = [], []
    for a in range(2):
        h = draw(st.integers(1, max_hw - 2))
        most = ((h - 1) * s[a] + d[a] * (k[a] - 1) + op[a]) // 2  # keeps H_out >= 1
        p.append(draw(st.integers(0, min(max_pad, most))))
        hw.append(h)
    return (N, g * Cg, *hw), (g * Cg, Og, *k), s, tuple(p), op, d, g
