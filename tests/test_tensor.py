"""The autograd engine: construction, gradient accumulation, no_grad, graph freeing, errors."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import Function, Tensor, no_grad

# ---- construction -------------------------------------------------------------------------------


def test_construction_dtypes_and_properties():
    t = Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert t.dtype == np.float32 and t.shape == (2, 3) and t.ndim == 2 and t.size == 6
    assert len(t) == 2 and t.device == "cpu" and t.is_leaf and not t.requires_grad
    assert Tensor([1, 2]).dtype.kind == "i"
    assert Tensor(np.zeros(3, np.float64)).dtype == np.float64  # arrays keep their dtype
    assert Tensor(np.zeros(3), dtype=np.float32).dtype == np.float32
    assert Tensor(3.0).item() == 3.0
    assert isinstance(msn.tensor([1.0], requires_grad=True), Tensor)
    assert msn.as_tensor(t) is t
    assert "requires_grad=True" in repr(Tensor([1.0], requires_grad=True))
    np.testing.assert_array_equal(t.numpy(), [[1, 2, 3], [4, 5, 6]])


def test_bad_construction_errors_name_the_argument():
    with pytest.raises(TypeError, match="data: cannot make a Tensor from an object array"):
        Tensor(np.array([1, "a", None], dtype=object))
    with pytest.raises(TypeError, match="data"):
        Tensor(np.array([[1.0], [1.0, 2.0]], dtype=object))
    with pytest.raises(TypeError, match="data: unsupported dtype"):
        Tensor(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="requires_grad"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(ValueError, match="item"):
        Tensor(np.ones(2)).item()


def test_to_cpu_and_detach():
    t = Tensor(np.ones(3), requires_grad=True)
    assert t.to("cpu") is t and t.cpu() is t
    d = (t * 2).detach()
    assert d.is_leaf and not d.requires_grad
    with pytest.raises(ValueError, match="device"):
        t.to("tpu")


def test_comparisons_give_constant_bool_tensors():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    m = a > 1.5
    assert m.dtype == bool and not m.requires_grad
    np.testing.assert_array_equal(m.numpy(), [False, True, True])
    np.testing.assert_array_equal(
        (a == Tensor(np.array([1.0, 0.0, 3.0]))).numpy(), [True, False, True]
    )


# ---- gradient accumulation --------------------------------------------------------------------


def test_tensor_used_twice_gets_the_sum():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)


def test_diamond_graph_is_visited_in_topological_order():
    # a feeds b and c, and both feed d: a's gradient must arrive complete before a's backward
    x = Tensor(np.array([0.5, 1.5]), requires_grad=True)
    a = x.exp()
    b = a * 3.0
    c = a * a
    d = (b + c).sum()
    d.backward()
    np.testing.assert_allclose(x.grad, (3.0 + 2 * np.exp(x.data)) * np.exp(x.data))


def test_grad_accumulates_across_backward_calls_until_zeroed():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_leaf_backward_and_grad_as_tensor():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.backward(Tensor(np.array([3.0, 4.0])))
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])
    y = x * 2.0
    y.backward(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(x.grad, [5.0, 6.0])


def test_deep_chain_needs_no_recursion():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y + 0.001
    y.backward()
    assert x.grad == 1.0


def test_input_not_requiring_grad_gets_none():
    x = Tensor(np.ones(3), requires_grad=True)
    c = Tensor(np.full(3, 2.0))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


class TwoOutputs(Function):
    """Float output and integer output: the integer one never requires grad."""

    def forward(self, x):
        self.shape = x.shape
        return x * 2.0, np.argmax(x, axis=-1)

    def backward(self, gy, gidx):
        assert gidx is None  # integer outputs get None
        return gy * 2.0


def test_multi_output_function_and_integer_outputs():
    x = Tensor(np.array([[1.0, 3.0], [2.0, 0.0]]), requires_grad=True)
    y, idx = TwoOutputs()(x)
    assert y.requires_grad and not idx.requires_grad and idx.dtype.kind == "i"
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 2.0)


class Split(Function):
    def forward(self, x):
        return x[:1] * 1.0, x[1:] * 1.0

    def backward(self, g0, g1):
        return np.concatenate([g0, g1])


def test_unused_float_output_gets_zero_gradient():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    a, _ = Split()(x)  # the second output is dropped: its gradient arrives as zeros
    (a * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 0.0, 0.0])


def test_backward_returning_wrong_count_is_an_error():
    class Bad(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            return gy

    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="returned 1 gradients for 2 inputs"):
        Bad()(x, x).sum().backward()


# ---- no_grad ------------------------------------------------------------------------------------


def test_no_grad_records_nothing_and_restores_after_errors():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = x * 2.0
        assert not msn.is_grad_enabled()
        with msn.enable_grad():
            z = x * 2.0
    assert msn.is_grad_enabled()
    assert not y.requires_grad and y.creator is None
    assert z.requires_grad
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            raise ZeroDivisionError
    assert msn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


# ---- backward errors ----------------------------------------------------------------------------


def test_backward_on_non_scalar_needs_grad():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(
        ValueError, match=r"grad: backward\(\) on a non-scalar tensor of shape \(2, 3\)"
    ):
        y.backward()
    with pytest.raises(ValueError, match=r"grad: shape \(3,\) does not match.*\(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_twice_without_retain_graph_raises():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, 4 * x.data)


# ---- graph freeing and memory --------------------------------------------------------------------


def test_graph_is_freed_after_backward():
    x = Tensor(np.random.default_rng(0).standard_normal(100), requires_grad=True)
    h = x.exp()  # an intermediate: its Function saves exp(x) for backward
    fn_ref, arr_ref, t_ref = weakref.ref(h.creator), weakref.ref(h.data), weakref.ref(h)
    loss = (h * h).sum()
    del h
    assert fn_ref() is not None and arr_ref() is not None  # kept alive by the graph
    loss.backward()
    # no reference cycles: plain reference counting frees everything, no gc needed
    assert fn_ref() is None and arr_ref() is None and t_ref() is None


def _live_functions() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, Function))


def test_memory_does_not_grow_over_many_training_steps():
    rng = np.random.default_rng(0)
    w1 = Tensor(rng.standard_normal((4, 8)) * 0.5, requires_grad=True)
    w2 = Tensor(rng.standard_normal((8, 3)) * 0.5, requires_grad=True)
    x = Tensor(rng.standard_normal((16, 4)))
    y = rng.integers(0, 3, 16)
    counts = []
    gc.collect()
    for step in range(2000):
        loss = F.cross_entropy(F.relu(x @ w1) @ w2, y)
        loss.backward()
        with no_grad():
            w1.data -= 0.01 * w1.grad
            w2.data -= 0.01 * w2.grad
        w1.grad = w2.grad = None
        if step in (100, 1999):
            counts.append(_live_functions())
    assert counts[1] == counts[0] and counts[1] < 10


def test_leaf_gradients_never_share_memory():
    # Add hands the same gy to both sides, Reshape a view: each leaf's .grad is its own array.
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    c = Tensor(np.ones((3, 1)), requires_grad=True)
    (a + b + c.reshape(3)).backward(np.arange(3.0))
    a.grad[0] = 99.0
    assert b.grad[0] == 0.0 and c.grad[0, 0] == 0.0 and c.grad.base is None


def test_the_engine_alone_loads_no_kernels():
    # Tensor's operators run on minisegnet/ops.py: arithmetic and backward never import the
    # functional package (which registers and loads every kernel), and the op classes are still
    # importable from minisegnet.tensor, where they used to live.
    import subprocess
    import sys

    code = ("import sys, minisegnet as msn; x = msn.Tensor([1.0, 2.0], requires_grad=True); "
            "((x * 2 + 1) @ x).backward(); assert x.grad.tolist() == [5.0, 9.0], x.grad; "
            "assert 'minisegnet.functional' not in sys.modules; "
            "from minisegnet.tensor import Add, Concat, GetItem, MatMul, Sum, cat, matmul, stack")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
