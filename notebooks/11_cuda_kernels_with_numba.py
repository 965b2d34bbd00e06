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
# # 11 — Writing CUDA kernels with Numba
#
# minisegnet's GPU kernels are Python functions under `@cuda.jit`. This notebook writes two of them
# from scratch, for the two halves of an im2col convolution, and checks them against the plain-loop
# references of `minisegnet.kernels.im2col`. You will learn:
#
# 1. **threads, blocks and grids**: which thread computes what, and why every kernel starts with a
#    bounds check;
# 2. **im2col on the GPU**: one thread per column entry, neighbouring threads writing neighbouring
#    memory;
# 3. **col2im, two ways**: a *scatter* with atomic adds against a *gather* where each thread owns
#    one output pixel (no atomics, deterministic: what minisegnet ships);
# 4. **running without a GPU**: Numba's CUDA simulator executes the same kernels, thread by
#    thread, in Python (`NUMBA_ENABLE_CUDASIM=1`);
# 5. **on a real GPU with CuPy**, when there is one: the same `F.conv2d` on CuPy arrays.
#
# The simulator is slow (every thread is a Python thread), so the sizes are tiny whatever
# `MINISEGNET_FAST` says; run it with `pytest tests/test_notebooks.py -k 11_`.
#
# ## The simulator switch comes first
#
# Numba reads `NUMBA_ENABLE_CUDASIM` once, when it is imported. So before anything imports Numba
# (minisegnet does), this cell decides: a GPU with CuPy, or the simulator. Set the variable
# yourself before starting Jupyter to force either.

# %%
import importlib.util
import os
import shutil
import subprocess
import sys

assert "numba" not in sys.modules, "restart the kernel: Numba was imported before this cell"


def gpu_with_cupy() -> bool:
    if importlib.util.find_spec("cupy") is None or shutil.which("nvidia-smi") is None:
        return False
    if subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0:
        return False
    import cupy

    return bool(cupy.cuda.is_available())


if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if gpu_with_cupy() else "1"
SIMULATOR = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"
print("running on", "Numba's CUDA simulator (no GPU)" if SIMULATOR else "the GPU")

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from numba import cuda

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.kernels.im2col import col2im_reference, im2col_reference

assert cuda.is_available()  # the simulator counts as available
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Threads, blocks and grids
#
# A kernel launch `kernel[blocks, threads_per_block](args)` starts `blocks x threads_per_block`
# copies of the function. Each copy knows its block (`cuda.blockIdx.x`) and its place in the block
# (`cuda.threadIdx.x`); `cuda.grid(1) = blockIdx.x * blockDim.x + threadIdx.x` is its global index.
# There are usually more threads than work items (blocks come in whole numbers), so each thread
# first checks that its index is in range.

# %%
@cuda.jit
def who_am_i(block_of, thread_of, n):
    t = cuda.grid(1)
    if t >= n:  # the last block's spare threads do nothing
        return
    block_of[t] = cuda.blockIdx.x
    thread_of[t] = cuda.threadIdx.x


n, tpb = 20, 8
blocks = (n + tpb - 1) // tpb  # ceil(20 / 8) = 3 blocks, 24 threads, 4 idle
block_of, thread_of = np.full(n, -1), np.full(n, -1)
who_am_i[blocks, tpb](block_of, thread_of, n)
print("element :", np.arange(n))
print("block   :", block_of)
print("thread  :", thread_of)
assert np.array_equal(block_of * tpb + thread_of, np.arange(n))  # cuda.grid(1), unpacked

# %% [markdown]
# ## 2. im2col: one thread per column entry
#
# `cols[(c*KH + p)*KW + q, i*OW + j] = x[c, i*s - pad + p, j*s - pad + q]` (zero outside the
# input). The thread index `t` enumerates `cols` in memory order, `j` fastest, and is unpacked into
# `(row, i, j)`: thread `t` and thread `t + 1` then write neighbouring addresses, and a warp of 32
# threads writes one contiguous stretch (a *coalesced* store). Each thread does one read and one
# write; there is nothing to share and nothing to synchronise.

# %%
@cuda.jit
def im2col_kernel(x, kh, kw, stride, pad, oh, ow, cols):
    t = cuda.grid(1)
    if t >= cols.shape[0] * cols.shape[1]:
        return
    j = t % ow  # unpack t = (row * oh + i) * ow + j
    i = (t // ow) % oh
    row = t // (ow * oh)
    q = row % kw
    p = (row // kw) % kh
    c = row // (kh * kw)
    h = i * stride - pad + p
    w = j * stride - pad + q
    v = 0.0
    if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
        v = x[c, h, w]
    cols[row, i * ow + j] = v


C, H, W, K, S_, P_ = 2, 5, 6, 3, 1, 1
OH, OW = F.conv_output_size(H, K, S_, P_), F.conv_output_size(W, K, S_, P_)
x = rng.standard_normal((C, H, W)).astype(np.float32)
cols = np.zeros((C * K * K, OH * OW), np.float32)
TPB = 32  # threads per block: a warp (real kernels use 128-256; the simulator prefers few)
total = cols.size
im2col_kernel[(total + TPB - 1) // TPB, TPB](x, K, K, S_, P_, OH, OW, cols)
ref = im2col_reference(x[None], (K, K), (S_, S_), (P_, P_), (1, 1), (OH, OW))[0]
print(f"cols {cols.shape}: {total} threads in {(total + TPB - 1) // TPB} blocks of {TPB}")
assert np.array_equal(cols, ref)

# %% [markdown]
# Which block wrote which entry of `cols`: blocks cover consecutive stretches of rows, since
# memory order and thread order are the same.

# %%
block_map = (np.arange(total) // TPB).reshape(cols.shape)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
axes[0].imshow(block_map, cmap="tab20", aspect="auto", interpolation="nearest")
axes[0].set_title(f"cols ({cols.shape[0]} x {cols.shape[1]}), coloured by the block that wrote it")
axes[0].set_xlabel("output pixel i*OW + j"), axes[0].set_ylabel("row (c*KH + p)*KW + q")
axes[1].imshow(cols, cmap="RdBu", aspect="auto", interpolation="nearest")
axes[1].set_title("the values (zeros: padding)")
axes[1].set_xticks([])
fig.tight_layout()

# %% [markdown]
# ## 3. col2im: scatter with atomics, or gather
#
# The backward of im2col adds every column entry back to the pixel it was copied from. The direct
# translation gives one thread per column entry, each *adding* into `x`. Up to `KH*KW = 9` threads
# add to the same pixel at once, so a plain `+=` (read, add, write) would lose updates: the add must
# be atomic (`cuda.atomic.add`). Atomics serialise the colliding threads, and float addition in
# whatever order they arrive is not reproducible bit for bit.
#
# The gather turns it around: one thread per *input pixel*, which loops over its taps `(p, q)`,
# finds the output position `i = (h + pad - p) / s` (if it is a whole number in range) that read
# it, and sums those entries in a fixed order. No two threads write the same address: no atomics,
# the same bits every run. That is what `kernels/im2col.py` ships.

# %%
@cuda.jit
def col2im_scatter(cols, kh, kw, stride, pad, oh, ow, x):
    t = cuda.grid(1)
    if t >= cols.shape[0] * cols.shape[1]:
        return
    j = t % ow
    i = (t // ow) % oh
    row = t // (ow * oh)
    q = row % kw
    p = (row // kw) % kh
    c = row // (kh * kw)
    h = i * stride - pad + p
    w = j * stride - pad + q
    if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
        cuda.atomic.add(x, (c, h, w), cols[row, i * ow + j])  # others may hit (c, h, w) too


@cuda.jit
def col2im_gather(cols, kh, kw, stride, pad, oh, ow, x):
    t = cuda.grid(1)
    if t >= x.size:
        return
    w = t % x.shape[2]
    h = (t // x.shape[2]) % x.shape[1]
    c = t // (x.shape[2] * x.shape[1])
    acc = 0.0
    for p in range(kh):
        hi = h + pad - p  # = i * stride for the output row i that read (h, w) through tap p
        if hi < 0 or hi % stride != 0 or hi // stride >= oh:
            continue
        for q in range(kw):
            wj = w + pad - q
            if wj < 0 or wj % stride != 0 or wj // stride >= ow:
                continue
            acc += cols[(c * kh + p) * kw + q, (hi // stride) * ow + wj // stride]
    x[c, h, w] = acc  # this thread alone writes this pixel


g = rng.standard_normal(cols.shape).astype(np.float32)  # a column gradient
expect = col2im_reference(g[None], (1, C, H, W), (K, K), (S_, S_), (P_, P_), (1, 1), (OH, OW))[0]
x_scatter = np.zeros((C, H, W), np.float32)
col2im_scatter[(g.size + TPB - 1) // TPB, TPB](g, K, K, S_, P_, OH, OW, x_scatter)
x_gather = np.zeros((C, H, W), np.float32)
col2im_gather[(x_gather.size + TPB - 1) // TPB, TPB](g, K, K, S_, P_, OH, OW, x_gather)
print(f"scatter: {g.size} threads, gather: {x_gather.size} threads")
assert np.allclose(x_scatter, expect, atol=1e-5) and np.allclose(x_gather, expect, atol=1e-5)

# the same kernels with stride 2
S2 = 2
OH2, OW2 = F.conv_output_size(H, K, S2, P_), F.conv_output_size(W, K, S2, P_)
g2 = rng.standard_normal((C * K * K, OH2 * OW2)).astype(np.float32)
x2 = np.zeros((C, H, W), np.float32)
col2im_gather[(x2.size + TPB - 1) // TPB, TPB](g2, K, K, S2, P_, OH2, OW2, x2)
assert np.allclose(x2, col2im_reference(g2[None], (1, C, H, W), (K, K), (S2, S2), (P_, P_),
                                        (1, 1), (OH2, OW2))[0], atol=1e-5)
print("col2im scatter == gather == reference (stride 1 and 2)")

# %% [markdown]
# How many scatter threads collide on each pixel? Exactly the number of column entries copied from
# it: col2im of a column matrix of ones. Nine in the interior; with stride 2 the count alternates
# (notebook 04's checkerboard, again).

# %%
collisions = col2im_reference(np.ones((1,) + cols.shape, np.float32), (1, C, H, W), (K, K),
                              (S_, S_), (P_, P_), (1, 1), (OH, OW))[0, 0]
collisions2 = col2im_reference(np.ones((1,) + g2.shape, np.float32), (1, C, H, W), (K, K),
                               (S2, S2), (P_, P_), (1, 1), (OH2, OW2))[0, 0]
assert collisions.max() == K * K and collisions[1:-1, 1:-1].min() == K * K
assert set(np.unique(collisions2[1:-1, 1:-1])) <= {1, 2, 4}  # 1 or 2 taps per axis
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
for ax, m, title in [(axes[0], collisions, "stride 1"), (axes[1], collisions2, "stride 2")]:
    ax.imshow(m, cmap="viridis", vmin=0, vmax=K * K)
    for (r, c_), v in np.ndenumerate(m):
        ax.text(c_, r, int(v), ha="center", va="center", color="w")
    ax.set_title(f"atomic adds per pixel, {title}"), ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# ## 4. The library's kernels, anywhere
#
# `msn.use_impl("cuda")` routes every op through its `@cuda.jit` kernels. On NumPy arrays under the
# simulator, that is how CI tests the GPU code on machines without a GPU; on a GPU it runs for real.
# A convolution forward and backward, checked against the Numba CPU kernels:

# %%
xs = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
ws = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
gy = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
results = {}
for impl in ("numba", "cuda", "numba", "cuda"):  # the second round is timed without compilation
    with msn.use_impl(impl):
        xt, wt = Tensor(xs, requires_grad=True), Tensor(ws, requires_grad=True)
        t0 = time.perf_counter()
        y = F.conv2d(xt, wt, padding=1)
        y.backward(gy)
        results[impl] = (y.numpy(), xt.grad, wt.grad, time.perf_counter() - t0)
for name, a, b in zip(("y", "dx", "dw"), results["numba"][:3], results["cuda"][:3]):
    assert np.allclose(a, b, atol=1e-4), name
print(f"conv2d fwd+bwd, cuda ({'simulated' if SIMULATOR else 'GPU'}) == numba; "
      f"cuda took {results['cuda'][3] * 1e3:.0f} ms, numba {results['numba'][3] * 1e3:.1f} ms")

# %% [markdown]
# Under the simulator the "cuda" time above measures Python threads, not a GPU: it checks the
# kernels' logic (indices, bounds, races show up as wrong values), never their speed.
#
# ## 5. On a GPU, with CuPy
#
# With a CUDA GPU and `pip install minisegnet[cuda12]`, CuPy arrays make every op run its CUDA
# kernels on the device. This section runs only there (above, `SIMULATOR` is False).

# %%
if SIMULATOR:
    print("No GPU (or no CuPy) here: section 5 is skipped. On a GPU machine it times F.conv2d on "
          "CuPy arrays against the CPU.")
else:
    import cupy as cp

    xg = rng.standard_normal((8, 64, 128, 128)).astype(np.float32)
    wg = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    y_cpu = F.conv2d(Tensor(xg), Tensor(wg), padding=1).numpy()
    xd, wd = Tensor(cp.asarray(xg)), Tensor(cp.asarray(wg))
    y_gpu = F.conv2d(xd, wd, padding=1)  # compiles the kernels
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(10):
        y_gpu = F.conv2d(xd, wd, padding=1)
    end.record()
    end.synchronize()
    ms = cp.cuda.get_elapsed_time(start, end) / 10
    flops = 2 * 8 * 64 * 128 * 128 * 64 * 9
    print(f"GPU conv2d 8x64x128x128, 3x3 -> 64: {ms:.2f} ms, {flops / ms / 1e9:.0f} GFLOP/s")
    assert np.allclose(cp.asnumpy(y_gpu.data), y_cpu, rtol=1e-3, atol=1e-2)

    # scatter vs gather on the device: run each 5 times, compare the bits
    big = rng.standard_normal((64 * 9, 128 * 128)).astype(np.float32)
    outs = {"scatter": [], "gather": []}
    for _ in range(5):
        for name, kern, n_threads in (("scatter", col2im_scatter, big.size),
                                      ("gather", col2im_gather, 64 * 128 * 128)):
            xo = cp.zeros((64, 128, 128), cp.float32)
            kern[(n_threads + 255) // 256, 256](cp.asarray(big), 3, 3, 1, 1, 128, 128, xo)
            outs[name].append(cp.asnumpy(xo))
    for name, runs in outs.items():
        same = all(np.array_equal(runs[0], r) for r in runs[1:])
        print(f"{name}: 5 runs bitwise identical: {same}")
    assert all(np.array_equal(outs["gather"][0], r) for r in outs["gather"][1:])

# %% [markdown]
# ## Exercises
#
# 1. Launch `im2col_kernel` with 7 threads per block. Does it still work? What would break without
#    the bounds check?
# 2. Change `im2col_kernel` so that `t` enumerates `cols` with the row index fastest. The result is
#    the same; on a GPU, time both and explain the difference (coalescing).
# 3. Remove `cuda.atomic.add` from `col2im_scatter` and write `x[c, h, w] += ...`. Under the
#    simulator the result may still be right: why does that prove nothing?
# 4. Add dilation to `col2im_gather`: tap `p` then reads row `i*s - pad + p*d`. Check it against
#    `col2im_reference` with dilation 2.
