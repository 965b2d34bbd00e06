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
# # 04 — Transposed convolution is the transpose of the convolution matrix
#
# A convolution is linear in its input, so for a fixed kernel it *is* a matrix: flatten the input
# to a vector, and `conv2d(x) = C @ vec(x)`. This notebook builds `C` explicitly, then shows that
#
# * `conv_transpose2d(y) = C^T @ vec(y)` — the "deconvolution" of FCN and U-Net is just `C^T`;
# * the same thing is a stride-1 convolution over a zero-inserted input with a flipped kernel;
# * conv2d's input gradient is exactly `C^T` applied to the output gradient — which is why
#   minisegnet computes conv2d's backward by calling conv_transpose2d;
# * when the kernel size is not a multiple of the stride, the painted copies of the kernel overlap
#   unevenly: the checkerboard artifacts of learned upsampling, drawn as overlap maps;
# * resizing first (nearest) and then convolving spreads the work evenly, the remedy of Odena et
#   al., "Deconvolution and checkerboard artifacts" (Distill, 2016).
#
# Notebook 02 built the 4x16 matrix `C` of this example from the im2col picture. Everything here
# is small; `MINISEGNET_FAST` changes nothing (run it with `pytest tests/test_notebooks.py -k 04_`).

# %%
import matplotlib.pyplot as plt
import numpy as np

import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.kernels.conv_matrix import conv_matrix

np.set_printoptions(linewidth=140, precision=0, suppress=True)

# %% [markdown]
# ## The classic 4x4 input, 3x3 kernel example
#
# A 3x3 kernel slides over a 4x4 input (no padding, stride 1) and visits 2x2 positions. `C` has
# one row per output pixel (4) and one column per input pixel (16). Each row is the kernel laid
# out where it lands on the flattened input.

# %%
w = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)  # (O, C, kh, kw)
C = conv_matrix((1, 4, 4), w)
print("C has shape", C.shape)
print(C)

# %%
x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
y_conv = F.conv2d(Tensor(x), Tensor(w)).numpy()
y_mat = (C @ x.ravel()).reshape(1, 1, 2, 2)
print("conv2d(x)      =", y_conv.ravel())
print("C @ vec(x)     =", y_mat.ravel())
assert np.allclose(y_conv, y_mat)

# %% [markdown]
# ## Going back up: C^T maps 2x2 to 4x4
#
# `C^T` has shape 16x4: it takes a 2x2 map back to 4x4. Each input pixel of the small map is
# "painted" into the big map, weighted by the kernel; overlapping paints add up.

# %%
y = np.array([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
up_mat = (C.T @ y.ravel()).reshape(4, 4)
up_op = F.conv_transpose2d(Tensor(y), Tensor(w)).numpy()[0, 0]
print("C^T @ e_00 =\n", up_mat)
assert np.allclose(up_mat, up_op)

# %% [markdown]
# ## Stride 2: the zero-insertion recipe
#
# With stride 2, `C` skips every other position. Its transpose equals: insert s-1 = 1 zero between
# the input pixels, pad by d(k-1) - p = 2, and run a stride-1 convolution with the kernel flipped
# in both axes (and, with several channels, input and output channels swapped).

# %%
C2 = conv_matrix((1, 5, 5), w, stride=2)
y2 = np.random.default_rng(1).standard_normal((1, 1, 2, 2))
via_matrix = (C2.T @ y2.ravel()).reshape(5, 5)

z = np.zeros((1, 1, 3, 3))
z[..., ::2, ::2] = y2  # zeros inserted between pixels
via_recipe = F.conv2d(Tensor(z), Tensor(w[..., ::-1, ::-1].copy()), padding=2).numpy()[0, 0]
via_op = F.conv_transpose2d(Tensor(y2), Tensor(w), stride=2).numpy()[0, 0]
print(np.round(via_matrix, 3))
assert np.allclose(via_matrix, via_recipe) and np.allclose(via_matrix, via_op)

# %% [markdown]
# ## Why conv2d's backward is a transposed convolution
#
# If `y = C x`, then for any loss `L`, `dL/dx = C^T dL/dy`. The autograd gradient of conv2d must
# therefore equal `C^T` applied to the upstream gradient.

# %%
xt = Tensor(np.random.default_rng(2).standard_normal((1, 1, 5, 5)), requires_grad=True)
g = np.random.default_rng(3).standard_normal((1, 1, 2, 2))
F.conv2d(xt, Tensor(w), stride=2).backward(g)
assert np.allclose(xt.grad.ravel(), C2.T @ g.ravel())
print("conv2d input gradient == C^T @ grad_out: True")

# %% [markdown]
# ## Checkerboards: when the painted kernels overlap unevenly
#
# A transposed conv with stride `s` paints one `k x k` copy of the kernel per input pixel, `s`
# pixels apart. Paint with a kernel of ones on an input of ones and each output pixel counts how
# many copies cover it. Along one axis that count is `floor(k/s)` or `ceil(k/s)` depending on the
# pixel's phase: if `k` is a multiple of `s` it is the same everywhere (away from the border),
# otherwise it alternates, and in 2-D the product of two alternating counts is a checkerboard.

# %%
n = 8
overlap = {}
for k, s in [(3, 2), (4, 2), (5, 2), (6, 3)]:
    ones_in, ones_k = Tensor(np.ones((1, 1, n, n))), Tensor(np.ones((1, 1, k, k)))
    overlap[k, s] = F.conv_transpose2d(ones_in, ones_k, stride=s).numpy()[0, 0]
    inner = overlap[k, s][k:-k, k:-k]  # away from the border
    # per axis, output pixel h is covered by the taps p = h - s*i, i.e. p = h mod s, + s, + 2s...
    per_axis = np.array([len(range(h % s, k, s)) for h in range(k, overlap[k, s].shape[0] - k)])
    assert np.array_equal(inner, np.outer(per_axis, per_axis))
    uniform = inner.min() == inner.max()
    assert uniform == (k % s == 0)
    print(f"k={k} s={s}: interior coverage {sorted({int(v) for v in inner.ravel()})}"
          f" -> {'uniform' if uniform else 'checkerboard'}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, ((k, s), m) in zip(axes, overlap.items()):
    ax.imshow(m, cmap="magma")
    ax.set_title(f"k={k}, s={s}" + ("  (k % s = 0)" if k % s == 0 else ""))
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("how many painted kernels cover each output pixel (conv_transpose2d of ones)")
fig.tight_layout()

# %% [markdown]
# ## Resize, then convolve
#
# Even overlap does not save a *learned* kernel: the taps that land on an even output pixel are
# different taps from those landing on an odd one, and nothing forces their sums to match. Below, a
# random positive 3x3 and 4x4 kernel upsample a constant image: both outputs are periodic. Odena
# et al.'s remedy is to upsample by nearest neighbour first (every output pixel sees the same
# thing) and then run an ordinary stride-1 convolution: on a constant image its output is constant
# away from the border, whatever the kernel.

# %%
rng = np.random.default_rng(0)
flat = Tensor(np.ones((1, 1, 12, 12)))


def ripple(img, margin=4):
    """Relative spread of the interior: 0 for a flat output."""
    inner = img[margin:-margin, margin:-margin]
    return float(inner.std() / inner.mean())


w3 = Tensor(rng.uniform(0.1, 1.0, (1, 1, 3, 3)))
w4 = Tensor(rng.uniform(0.1, 1.0, (1, 1, 4, 4)))
outs = {
    "transposed k3 s2": F.conv_transpose2d(flat, w3, stride=2, padding=1, output_padding=1),
    "transposed k4 s2": F.conv_transpose2d(flat, w4, stride=2, padding=1),
    "nearest x2, then 3x3 conv": F.conv2d(F.interpolate(flat, scale_factor=2, mode="nearest"), w3,
                                          padding=1),
}
for name, out in outs.items():
    assert out.shape == (1, 1, 24, 24)
    print(f"{name:28s} interior std/mean = {ripple(out.numpy()[0, 0]):.3f}")
assert ripple(outs["transposed k3 s2"].numpy()[0, 0]) > 0.05
assert ripple(outs["nearest x2, then 3x3 conv"].numpy()[0, 0]) < 1e-12

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
for ax, (name, out) in zip(axes, outs.items()):
    ax.imshow(out.numpy()[0, 0], cmap="gray")
    ax.set_title(name, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("a constant image upsampled x2 with a random positive kernel")
fig.tight_layout()

# %% [markdown]
# ## Exercises
#
# 1. Build `conv_matrix((1, 5, 5), w, stride=2)` for a 3x3 kernel of ones and sum the columns of
#    its transpose. Which overlap map of the figure above do you get?
# 2. A bilinear kernel (`minisegnet.nn.bilinear_kernel(4, 4)`) with k=4, s=2, p=1 is what
#    FCN initialises its upsampling with. Upsample the constant image with it: is the interior flat?
#    Why does this kernel escape the checkerboard when a random 4x4 does not?
# 3. Find kernel size, stride, padding and output_padding of a transposed conv that maps 7x7 to
#    exactly 14x14, using `F.conv_transpose_output_size`.
# 4. Show that nearest upsampling by 2 is itself a transposed conv: which kernel and stride?
