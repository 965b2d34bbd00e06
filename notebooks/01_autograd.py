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
# # 01 — The autograd engine, step by step
#
# minisegnet's engine is about 300 lines (`minisegnet/tensor.py`). This notebook walks through
# what happens when you write `loss.backward()`:
#
# 1. every op is a `Function` whose `forward` and `backward` work on plain arrays;
# 2. calling a `Function` records it as the *creator* of its outputs, with a *generation* number;
# 3. `backward` visits creators newest-first and *accumulates* gradients;
# 4. gradients of broadcast inputs are summed back to the input's shape;
# 5. the graph is freed afterwards.

# %%
import numpy as np

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import Tensor
from minisegnet.testing import gradcheck

# %% [markdown]
# ## A graph is built as you compute
#
# `y = (a * b + a).sum()` creates three functions. Each output remembers its creator; each creator
# remembers its inputs. The generation tells `backward` the order: a function runs only after
# every function that used its output.

# %%
a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
b = Tensor(np.array([4.0, 5.0, 6.0]), requires_grad=True)
prod = a * b
s = prod + a
y = s.sum()
for t, name in [(prod, "a*b"), (s, "a*b + a"), (y, "sum")]:
    print(f"{name:8s} creator={type(t.creator).__name__:4s} generation={t.generation}")

# %% [markdown]
# ## Backward accumulates
#
# `a` is used twice (in `a * b` and in `+ a`), so its gradient is the sum of both paths:
# dy/da = b + 1, and dy/db = a.

# %%
y.backward()
print("dy/da =", a.grad, " expected b + 1 =", b.data + 1)
print("dy/db =", b.grad, " expected a =", a.data)
assert np.allclose(a.grad, b.data + 1) and np.allclose(b.grad, a.data)

# %% [markdown]
# The graph was freed: each function dropped its inputs and saved arrays. A second `backward`
# without `retain_graph=True` is an error, as in PyTorch.

# %%
try:
    y.backward()
except RuntimeError as e:
    print("RuntimeError:", e)

# %% [markdown]
# ## Broadcasting and its gradient
#
# Adding a bias of shape (C, 1, 1) to an (N, C, H, W) map broadcasts it over N, H and W. The
# gradient flowing back has the big shape; `sum_to` adds it back up over the broadcast axes.

# %%
x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 4)), requires_grad=True)
bias = Tensor(np.zeros((3, 1, 1)), requires_grad=True)
(x + bias).sum().backward()
print("bias.grad shape:", bias.grad.shape, "values:", bias.grad.ravel())
assert np.allclose(bias.grad.ravel(), 2 * 4 * 4)  # each channel's bias touches N*H*W pixels

# %% [markdown]
# ## Checking a backward against finite differences
#
# `gradcheck` perturbs every input element by ±eps in float64 and compares the slope with the
# analytic gradient. Here: a softmax cross-entropy over a small logit map.

# %%
rng = np.random.default_rng(1)
logits = rng.standard_normal((2, 4, 3, 3))
target = rng.integers(0, 4, (2, 3, 3))
print(gradcheck(lambda z: F.cross_entropy(z, target), [logits]))

# %% [markdown]
# A wrong backward is caught, and the report names the worst element. Below, `BadSquare` claims
# d(x²)/dx = x instead of 2x.

# %%
class BadSquare(msn.Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return gy * self.x  # wrong on purpose: should be 2 * x


try:
    gradcheck(lambda t: BadSquare()(t), [rng.standard_normal(5)])
except AssertionError as e:
    print(e)

# %% [markdown]
# ## Exercises
#
# 1. Build `y = (a * a).sum()` and predict `a.grad` before calling `backward`. Which function
#    receives the gradient twice, and where is it added up?
# 2. Write a `Function` for `exp` (forward and backward) and check it with `gradcheck`.
# 3. Broadcast a bias of shape (1, 3, 1, 1) instead of (3, 1, 1). What shape does `bias.grad`
#    have, and which axes did `sum_to` add over?
# 4. Call `backward` twice with `retain_graph=True`. What happens to `a.grad`, and why is that the
#    behaviour you want when two losses share a graph?
