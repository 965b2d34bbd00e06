"""Hypothesis strategies for convolution settings, shared by the conv tests.

Each draws shapes, kernel, stride, padding, dilation, groups (and output_padding) such that the
output is non-empty, so tests exercise valid settings; invalid ones have their own tests.
"""

from __future__ import annotations

from conftest import SIMULATOR
from helpers import out_len, transpose_out_len  # noqa: F401 - re-exported for the conv tests
from hypothesis import strategies as st

MAX_HW = 4 if SIMULATOR else 7  # the simulator runs a few thousand threads per second


def geometry(draw, max_hw: int = MAX_HW, max_dilation: int = 3):
    """(kernel, stride, padding, dilation, (H, W)) as (h, w) pairs, sizes from the smallest with
    one conv2d output up to ``max_hw``."""
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    hw = []
    for a in range(2):
        least = max(1, d[a] * (k[a] - 1) + 1 - 2 * p[a])
        hw.append(draw(st.integers(least, max(least, max_hw))))
    return k, s, p, d, tuple(hw)


@st.composite
def conv_case(draw, max_hw: int = MAX_HW, max_groups: int = 2, depthwise: bool = False):
    """(x shape, conv2d weight shape, stride, padding, dilation, groups) with a non-empty output;
    with ``depthwise``, half the cases have one input channel per group (the direct kernels)."""
    g = draw(st.integers(1, max_groups))
    Cg, Og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if depthwise and draw(st.booleans()):
        Cg = 1
    N = draw(st.integers(1, 2))
    k, s, p, d, hw = geometry(draw, max_hw)
    return (N, g * Cg, *hw), (g * Og, Cg, *k), s, p, d, g


@st.composite
def transpose_case(draw, max_hw: int = MAX_HW, max_pad: int = 3):
    """(x shape, conv_transpose2d weight shape, stride, padding, output_padding, dilation,
    groups)."""
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
