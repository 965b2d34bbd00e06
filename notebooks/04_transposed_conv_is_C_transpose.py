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
# # 02 — Transposed convolution is the transpose of the convolution matrix
#
# A convolution is linear in its input, so for a fixed kernel it *is* a matrix: flatten the input
# to a vector, and `conv2d(x) = C @ vec(x)`. This notebook builds `C` explicitly, then shows that
#
# * `conv_transpose2d(y) = C^T @ vec(y)` — the "deconvolution" of FCN and U-Net is just `C^T`;
# * the same thing is a stride-1 convolution over a zero-inserted input with a flipped kernel;
# * conv2d's input gradient is exactly `C^T` applied to the output gradient — which is why
#   minisegnet computes conv2d's backward by calling conv_transpose2d.

# %%
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
