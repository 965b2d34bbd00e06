# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Convolution as im2col + matrix multiplication
#
# A convolution layer is six nested loops. Written that way in Python it is hopelessly slow;
# written as *one* matrix product it runs at the speed of the machine's BLAS. This notebook goes
# from the formula to the fast version and measures every step. You will learn:
#
# 1. the output-size formula `H_out = floor((H + 2p - d(k-1) - 1) / s) + 1`, checked on many shapes;
# 2. the convolution as plain loops, straight from its definition (the *reference*);
# 3. **im2col**: copy every window into a column, so that the convolution becomes
#    `W (O, C*k*k) @ cols (C*k*k, OH*OW)`; the 4x16 matrix of a 3x3 kernel on a 4x4 input;
# 4. Numba: the loops compiled, and a first parallel im2col kernel written here;
# 5. how fast each version is, measured here.
#
# Run at full size with `MINISEGNET_FAST=0 pytest tests/test_notebooks.py -k 02_` (CI runs
# `MINISEGNET_FAST=1`: smaller shapes, fewer timing repeats).

# %%
import os
import time

import matplotlib.pyplot as plt
import numba
import numpy as np

import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.kernels.conv_matrix import conv_matrix
from minisegnet.kernels.im2col import im2col_numba, im2col_numpy, im2col_reference

FAST = os.environ.get("MINISEGNET_FAST", "0") == "1"
np.set_printoptions(linewidth=140, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. How big is the output?
#
# Output position `i` reads input rows `i*s - p + t*d` for the taps `t = 0 .. k-1`. The last tap
# of the last position must still land inside the padded input, `i*s - p + d(k-1) <= H - 1 + p`,
# which gives
#
# `H_out = floor((H + 2p - d(k-1) - 1) / s) + 1`.
#
# `F.conv_output_size` is that formula; below, each case is checked against the shape `conv2d`
# actually returns.

# %%
cases = [  # (H, k, s, p, d, what)
    (4, 3, 1, 0, 1, "3x3 on 4x4, no padding"),
    (5, 3, 2, 1, 1, "3x3, stride 2, padding 1"),
    (572, 3, 1, 0, 1, "U-Net's first conv"),
    (224, 7, 2, 3, 1, "ResNet's stem"),
    (65, 3, 1, 6, 6, "atrous 3x3 at rate 6, 'same' padding"),
    (7, 2, 2, 0, 1, "2x2 stride 2 on an odd size drops a row"),
]
print(f"{'H':>4} {'k':>2} {'s':>2} {'p':>2} {'d':>2}  H_out  what")
for H, k, s, p, d, what in cases:
    h_out = F.conv_output_size(H, k, s, p, d)
    x = Tensor(np.zeros((1, 1, H, 1), np.float32))
    w = Tensor(np.ones((1, 1, k, 1), np.float32))
    y = F.conv2d(x, w, stride=(s, 1), padding=(p, 0), dilation=(d, 1))
    assert y.shape[2] == h_out == (H + 2 * p - d * (k - 1) - 1) // s + 1
    print(f"{H:4d} {k:2d} {s:2d} {p:2d} {d:2d}  {h_out:5d}  {what}")
assert F.conv_output_size(572, 3) == 570 and F.conv_output_size(224, 7, 2, 3) == 112

# %% [markdown]
# ## 2. The reference: loops straight from the formula
#
# `y[n, o, i, j] = sum_{c, p, q} x[n, c, i*s - pad + p*d, j*s - pad + q*d] * W[o, c, p, q]`, reads
# outside the input being zero. Six loops, no cleverness.

# %%
def conv2d_loops(x, w, stride=1, padding=0, dilation=1):
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH = (H + 2 * padding - dilation * (KH - 1) - 1) // stride + 1
    OW = (W + 2 * padding - dilation * (KW - 1) - 1) // stride + 1
    y = np.zeros((N, O, OH, OW), x.dtype)
    for n in range(N):
        for o in range(O):
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0
                    for c in range(C):
                        for p in range(KH):
                            for q in range(KW):
                                h = i * stride - padding + p * dilation
                                v = j * stride - padding + q * dilation
                                if 0 <= h < H and 0 <= v < W:
                                    acc += x[n, c, h, v] * w[o, c, p, q]
                    y[n, o, i, j] = acc
    return y


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
for s, p, d in [(1, 0, 1), (2, 1, 1), (1, 2, 2)]:
    ours = F.conv2d(Tensor(x), Tensor(w), stride=s, padding=p, dilation=d).numpy()
    assert np.allclose(conv2d_loops(x, w, s, p, d), ours)
print("loops == F.conv2d for stride/padding/dilation (1,0,1), (2,1,1), (1,2,2)")

# %% [markdown]
# ## 3. im2col: every window becomes a column
#
# The inner three loops (over `c, p, q`) are a dot product between the kernel and one window of
# the input. Copy each window into a column of a matrix `cols` with `C*KH*KW` rows and one column
# per output pixel; then all the dot products are *one* matrix product:
#
# `y[n] = W.reshape(O, C*KH*KW) @ cols[n]`, shape `(O, OH*OW)`, which is already `(O, OH, OW)`.
#
# The classic example: a 4x4 input, a 3x3 kernel, no padding. There are 2x2 windows, so `cols` is
# 9x4. The input below holds its own flat index, so each column shows *which* pixels it copied.

# %%
x44 = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
cols = im2col_reference(x44, (3, 3), (1, 1), (0, 0), (1, 1), (2, 2))  # (N, C*KH*KW, OH*OW)
print("cols shape:", cols.shape)
print(cols[0].astype(int))
# column (i, j) is the 3x3 window whose top-left corner is (i, j), flattened row by row
for i in range(2):
    for j in range(2):
        assert np.array_equal(cols[0, :, i * 2 + j], x44[0, 0, i:i + 3, j:j + 3].ravel())

# %%
w33 = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
y_gemm = (w33.reshape(1, 9) @ cols[0]).reshape(1, 1, 2, 2)  # (O, C*KH*KW) @ (C*KH*KW, OH*OW)
assert np.allclose(y_gemm, F.conv2d(Tensor(x44), Tensor(w33)).numpy())
print("W @ cols =", y_gemm.ravel(), "== conv2d")

# %% [markdown]
# ### The same product, seen from the other side: the 4x16 convolution matrix
#
# im2col keeps the *kernel* as one row and copies the input. One can instead keep the input as one
# vector (16 numbers) and copy the kernel: the convolution is then a 4x16 matrix `C` with one row
# per output pixel, each row the kernel laid out where it lands on the flattened input. We build it
# by hand from that description and compare with `minisegnet.kernels.conv_matrix` (notebook 04
# shows that its transpose is the transposed convolution).

# %%
C_hand = np.zeros((4, 16))
for i in range(2):
    for j in range(2):
        for p in range(3):
            for q in range(3):
                C_hand[i * 2 + j, (i + p) * 4 + (j + q)] = w33[0, 0, p, q]
C = conv_matrix((1, 4, 4), w33)
print(C.astype(int))
assert C.shape == (4, 16) and np.array_equal(C, C_hand)
assert np.allclose(C @ x44.ravel(), y_gemm.ravel())
# only 9 of each row's 16 entries are non-zero: 36 of 64 in all
assert np.count_nonzero(C) == 36

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.1, 3.2]})
colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
ax = axes[0]
ax.imshow(x44[0, 0], cmap="Greys", alpha=0.25)
for (i, j), col in zip([(0, 0), (0, 1), (1, 0), (1, 1)], colors):
    ax.add_patch(plt.Rectangle((j - 0.45 + 0.06 * (i + j), i - 0.45 + 0.06 * (i + j)), 2.8, 2.8,
                               fill=False, lw=2, ec=col))
for h in range(4):
    for v in range(4):
        ax.text(v, h, str(h * 4 + v), ha="center", va="center")
ax.set_title("4x4 input, the four 3x3 windows")
ax.set_xticks([]), ax.set_yticks([])
ax = axes[1]
ax.imshow(cols[0], cmap="Greys", alpha=0.25, aspect="auto")
for r in range(9):
    for c in range(4):
        ax.text(c, r, str(int(cols[0, r, c])), ha="center", va="center", color=colors[c])
ax.set_title("cols (9 x 4)")
ax.set_xticks(range(4)), ax.set_yticks([])
ax = axes[2]
ax.imshow(C, cmap="viridis")
ax.set_title("conv matrix C (4 x 16): the kernel 1..9, shifted")
ax.set_xlabel("input pixel"), ax.set_ylabel("output pixel")
fig.tight_layout()

# %% [markdown]
# The price of im2col is memory: every input pixel is copied once per kernel tap that reads it,
# so `cols` is about `k*k` times the input (9x for a 3x3 kernel), minus the border.

# %%
xb = rng.standard_normal((1, 16, 64, 64)).astype(np.float32)
cols_b = im2col_numpy(xb, (3, 3), (1, 1), (1, 1), (1, 1), (64, 64))
print(f"input {xb.nbytes / 2**20:.2f} MiB, cols {cols_b.nbytes / 2**20:.2f} MiB "
      f"({cols_b.nbytes / xb.nbytes:.0f}x)")
assert cols_b.nbytes == 9 * xb.nbytes

# %% [markdown]
# ## 4. Compiling the loops with Numba
#
# Numba compiles a Python function over NumPy arrays to machine code. `numba.njit(conv2d_loops)`
# is the reference itself, unchanged, compiled. Better still, compile only the part that is pure
# data movement, im2col, and leave the arithmetic to BLAS. A first Numba im2col fits in a dozen
# lines: `prange` spreads the (image, channel) planes over the cores, and each plane's rows of
# `cols` are written by one thread only, so no two threads touch the same memory.

# %%
conv2d_loops_numba = numba.njit(conv2d_loops)


@numba.njit(parallel=True)
def im2col_simple(x, kh, kw, pad, oh, ow):
    """Stride 1, no dilation: cols (N, C*kh*kw, oh*ow)."""
    N, C, H, W = x.shape
    cols = np.zeros((N, C * kh * kw, oh * ow), x.dtype)
    for nc in numba.prange(N * C):  # one (n, c) plane per iteration, spread over the cores
        n, c = nc // C, nc % C
        for p in range(kh):
            for q in range(kw):
                row = (c * kh + p) * kw + q
                for i in range(oh):
                    h = i - pad + p
                    if 0 <= h < H:
                        for j in range(ow):
                            w_ = j - pad + q
                            if 0 <= w_ < W:
                                cols[n, row, i * ow + j] = x[n, c, h, w_]
    return cols


assert np.allclose(conv2d_loops_numba(x, w, 2, 1, 1), conv2d_loops(x, w, 2, 1, 1))
assert np.array_equal(im2col_simple(x, 3, 3, 1, 7, 6), im2col_reference(x, (3, 3), (1, 1), (1, 1),
                                                                       (1, 1), (7, 6)))
print("Numba-compiled loops == loops; im2col_simple == im2col_reference")

# %% [markdown]
# ## 5. All the versions, and how fast each is
#
# `minisegnet.kernels.im2col` holds the same function written several ways, one signature each:
#
# * `im2col_reference`: Python loops over every (n, c, p, q, i, j): the oracle;
# * `im2col_numpy`: one strided slice of the padded input per tap (the textbook vectorisation);
# * `im2col_numba`: `im2col_simple` grown up: any stride, padding and dilation, and each tap's
#   in-range span computed once so the inner loop is a branch-free copy (read `kernels/im2col.py`).
#
# `F.conv2d` itself goes further: it builds the columns a block at a time, each core running its
# own im2col + GEMM on blocks that stay in cache. First all versions must agree...

# %%
N, Cin, O, H = (1, 8, 8, 16) if FAST else (1, 32, 32, 48)
REPEATS = 3 if FAST else 10
x = rng.standard_normal((N, Cin, H, H)).astype(np.float32)
w = rng.standard_normal((O, Cin, 3, 3)).astype(np.float32)
geom = ((3, 3), (1, 1), (1, 1), (1, 1), (H, H))  # kernel, stride, padding, dilation, output grid
c_ref = im2col_reference(x, *geom)
for f in (im2col_numpy, im2col_numba):
    assert np.array_equal(f(x, *geom), c_ref), f.__name__
assert np.array_equal(im2col_simple(x, 3, 3, 1, H, H), c_ref)
y_ref = conv2d_loops_numba(x, w, 1, 1, 1)  # checked against the Python loops above
assert np.allclose(F.conv2d(Tensor(x), Tensor(w), padding=1).numpy(), y_ref, atol=1e-3)
print("im2col: reference == numpy == numba == im2col_simple; conv2d == loops")

# %% [markdown]
# ...then we time them. Each timing is the median of several runs, after one untimed call (so
# Numba's compilation is not counted). GFLOP/s counts the `2*N*O*OH*OW*C*9` multiply-adds. The
# Python loops are too slow for the whole layer: they run one output channel (`w[:1]`), and that
# time is multiplied by O (their work is exactly proportional to it).

# %%
def median_time(fn, repeats):
    fn()  # warm-up: JIT compilation, page faults
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


Wm = w.reshape(O, -1)  # (O, C*KH*KW)
versions = {
    "loops (Python)": (lambda: conv2d_loops(x, w[:1], padding=1), 1),
    "loops (Numba)": (lambda: conv2d_loops_numba(x, w, 1, 1, 1), REPEATS),
    "im2col reference + GEMM": (lambda: Wm @ im2col_reference(x, *geom), 1),
    "im2col numpy + GEMM": (lambda: Wm @ im2col_numpy(x, *geom), REPEATS),
    "im2col_simple + GEMM": (lambda: Wm @ im2col_simple(x, 3, 3, 1, H, H), REPEATS),
    "im2col numba + GEMM": (lambda: Wm @ im2col_numba(x, *geom), REPEATS),
    "F.conv2d (blocked, per core)": (lambda: F.conv2d(Tensor(x), Tensor(w), padding=1), REPEATS),
}
flops = 2 * N * O * H * H * Cin * 9
times = {}
for name, (fn, reps) in versions.items():
    times[name] = median_time(fn, reps) * (O if name == "loops (Python)" else 1)
    print(f"{name:30s} {times[name] * 1e3:10.3f} ms  {flops / times[name] / 1e9:8.3f} GFLOP/s")

speedup = times["loops (Python)"] / times["im2col numba + GEMM"]
print(f"\nshape {x.shape} -> {O} channels: im2col numba + GEMM is {speedup:,.0f}x the Python loops")
# compiled columns + BLAS beat interpreted loops by orders of magnitude, at any size
assert speedup > 50
assert times["loops (Numba)"] < times["loops (Python)"] / 10

# %%
fig, ax = plt.subplots(figsize=(8, 2.8))
names = list(times)
ax.barh(names, [times[k] * 1e3 for k in names], color="tab:blue")
ax.set_xscale("log")
ax.invert_yaxis()
ax.set_xlabel("time per conv (ms, log scale)")
ax.set_title(f"3x3 conv, {x.shape} -> {O} channels")
for k_, name in enumerate(names):
    ax.text(times[name] * 1e3 * 1.1, k_, f"{times[name] * 1e3:.3g} ms", va="center", fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# 1. Extend `conv2d_loops` to `groups`: input channel `c` of output `o` runs over the channels of
#    `o`'s group only. Check it against `F.conv2d(..., groups=2)`.
# 2. With stride 2, how many columns does `cols` have for a 64x64 input and a 3x3 kernel with
#    padding 1? Compute it with `F.conv_output_size` and check the shape `im2col_numba` returns.
# 3. The backward of the GEMM gives `dcols = W^T @ dy`. Which kernel of `minisegnet.kernels.im2col`
#    turns `dcols` back into `dx`, and why must it *add* rather than copy?
# 4. Time `F.conv2d` at 64 and at 128 channels. Which fraction of your machine's GEMM rate
#    (`a @ b` for matrices of the same sizes) does it reach?
