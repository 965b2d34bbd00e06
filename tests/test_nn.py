"""nn.Module machinery and the basic layers (Linear, activations, dropout, batch normalisation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minisegnet as msn
import minisegnet.functional as F
import minisegnet.nn as nn
from minisegnet import Tensor
from minisegnet.nn.layers import BatchNormFunction
from minisegnet.testing import gradcheck


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(np.ones(1, np.float32))
        self.register_buffer("counter", np.zeros(2, np.float32))
        self.plain = 7  # not registered anywhere

    def forward(self, x):
        return F.relu(self.bn(self.fc(x))) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(Block(), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2, bias=False)
        self.tied = self.head  # the same module twice: its weight counts once

    def forward(self, x):
        return self.head(self.body(x))


# ---- registration and traversal ------------------------------------------------------------------


def test_parameters_buffers_and_children_are_registered():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == [
        "body.0.scale",
        "body.0.fc.weight",
        "body.0.fc.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.1.weight",
        "body.1.bias",
        "head.weight",
    ]
    assert len(list(net.parameters())) == len(names)
    assert net.num_parameters() == 1 + 12 + 4 + 4 + 4 + 16 + 4 + 8
    assert [n for n, _ in net.named_children()] == ["body", "head"]
    assert [n for n, _ in net.named_modules()] == [
        "",
        "body",
        "body.0",
        "body.0.fc",
        "body.0.bn",
        "body.1",
        "head",
    ]
    assert [n for n, _ in net.named_buffers()] == [
        "body.0.counter",
        "body.0.bn.running_mean",
        "body.0.bn.running_var",
        "body.0.bn.num_batches_tracked",
    ]
    assert net.body[0].plain == 7 and "plain" not in net.body[0].state_dict()
    assert isinstance(net.head.weight, nn.Parameter) and net.head.bias is None
    assert "body" in dir(net)


def test_shared_parameter_counted_once():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.weight = a.weight  # weight tying
    seq = nn.Sequential(a, b)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert seq.num_parameters() == 4 + 2 + 2


def test_reassignment_and_deletion():
    m = nn.Linear(2, 3)
    m.bias = None  # a registered parameter may be cleared
    assert m.bias is None and [n for n, _ in m.named_parameters()] == ["weight"]
    with pytest.raises(TypeError, match="weight"):
        m.weight = np.ones((3, 2))  # a raw array is not a Parameter
    m.extra = nn.ReLU()
    assert "extra" in dict(m.named_children())
    del m.extra
    assert "extra" not in dict(m.named_children())
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        m.missing  # noqa: B018

    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(1))

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgot()


def test_train_eval_propagate_and_zero_grad():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    out = net(Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    assert net.num_parameters(trainable_only=True) == 0


def test_sequential_modulelist_moduledict():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers and seq[-1] is layers[2]
    assert isinstance(seq[1:], nn.Sequential) and len(seq[1:]) == 2
    x = Tensor(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(seq(x).numpy(), layers[2](layers[1](layers[0](x))).numpy())
    with pytest.raises(IndexError):
        seq[3]  # noqa: B018
    with pytest.raises(TypeError, match="argument 1"):
        nn.Sequential(nn.ReLU(), np.ones(2))
    ml = nn.ModuleList([nn.Linear(1, 1)]).append(nn.Linear(1, 2))
    ml.insert(0, nn.Identity())
    assert len(ml) == 3 and isinstance(ml[0], nn.Identity)
    assert [n for n, _ in ml.named_parameters()] == ["1.weight", "1.bias", "2.weight", "2.bias"]
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    assert "a" in md and list(md.keys()) == ["a"]
    assert [n for n, _ in md.named_parameters()] == ["a.weight", "a.bias"]


def test_repr_like_pytorch():
    seq = nn.Sequential(
        nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Dropout(0.25)), nn.BatchNorm2d(3)
    )
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Dropout(p=0.25)\n"
        "  )\n"
        "  (3): BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        ")"
    )
    assert repr(nn.Parameter(np.zeros(1))).startswith("Parameter containing:")


# ---- state_dict ----------------------------------------------------------------------------------


def test_state_dict_is_a_copy_in_pytorch_order():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == [
        "body.0.scale",
        "body.0.counter",
        "body.0.fc.weight",
        "body.0.fc.bias",
        "body.0.bn.weight",
        "body.0.bn.bias",
        "body.0.bn.running_mean",
        "body.0.bn.running_var",
        "body.0.bn.num_batches_tracked",
        "body.1.weight",
        "body.1.bias",
        "head.weight",
    ]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["head.weight"][...] = 123.0
    assert not np.any(net.head.weight.data == 123.0)


def test_load_state_dict_in_place_and_strictness():
    a, b = Net(), Net()
    params_before = list(b.parameters())
    b.load_state_dict(a.state_dict())
    assert all(
        p is q for p, q in zip(params_before, b.parameters(), strict=True)
    )  # same objects, new values
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        np.testing.assert_array_equal(va, vb, err_msg=k)

    sd = a.state_dict()
    del sd["head.weight"]
    sd["extra.weight"] = np.ones(2)
    with pytest.raises(
        ValueError, match=r"missing keys \['head.weight'\].*unexpected keys \['extra.weight'\]"
    ):
        b.load_state_dict(sd)
    result = b.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["head.weight"] and result.unexpected_keys == ["extra.weight"]

    sd = a.state_dict()
    sd["body.1.weight"] = np.ones((4, 5), np.float32)
    before = b.state_dict()
    with pytest.raises(
        ValueError, match=r"'body.1.weight'.*checkpoint has \(4, 5\).*model has \(4, 4\)"
    ):
        b.load_state_dict(sd)
    after = b.state_dict()
    for k in before:  # nothing was half-loaded
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    with pytest.raises(TypeError, match="state_dict"):
        b.load_state_dict([1, 2])


def test_load_state_dict_accepts_tensors_and_casts():
    m = nn.Linear(2, 2)
    m.load_state_dict({"weight": Tensor(np.eye(2)), "bias": np.array([1, 2])})
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    np.testing.assert_array_equal(m.weight.data, np.eye(2))


def test_to_device_and_dtype(monkeypatch):
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm2d(2))
    assert m.to("cpu") is m and m.device == "cpu"
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m[1].running_mean.dtype == np.float64 and m[1].num_batches_tracked.dtype == np.int64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    with pytest.raises(ValueError, match="device"):
        m.to("gpu")
    # a machine without CuPy (or without a GPU): a clear RuntimeError, not an ImportError
    monkeypatch.setattr(msn.backend, "_cupy_checked", True)
    monkeypatch.setattr(msn.backend, "_cupy", None)
    with pytest.raises(RuntimeError, match="device='cuda' needs CuPy"):
        m.to("cuda")


# ---- Linear and activations ----------------------------------------------------------------------


def test_linear_init_is_pytorch_default_and_seeded():
    msn.manual_seed(0)
    m = nn.Linear(50, 400)
    bound = 1 / math.sqrt(50)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = m.weight.numpy()
    assert w.dtype == np.float32 and w.shape == (400, 50)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.05)  # the variance of U(-b, b)
    assert np.abs(m.bias.numpy()).max() <= bound
    msn.manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(50, 400).weight.numpy(), w)


def test_linear_forward_and_gradients():
    m = nn.Linear(3, 2)
    x = np.random.default_rng(1).standard_normal((4, 5, 3)).astype(np.float32)
    y = m(Tensor(x))
    W, b = m.weight.numpy(), m.bias.numpy()
    np.testing.assert_allclose(y.numpy(), x @ W.T + b, rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    np.testing.assert_allclose(
        m.weight.grad, g.reshape(-1, 2).T @ x.reshape(-1, 3), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(m.bias.grad, g.sum((0, 1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="in_features=3.*\\(4, 2\\)"):
        m(Tensor(np.ones((4, 2), np.float32)))


def test_activation_modules_match_functional():
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3, 4)))
    pairs = [
        (nn.ReLU(), F.relu(x)),
        (nn.LeakyReLU(0.1), F.leaky_relu(x, 0.1)),
        (nn.Sigmoid(), F.sigmoid(x)),
        (nn.Tanh(), F.tanh(x)),
        (nn.Softmax(2), F.softmax(x, 2)),
        (nn.LogSoftmax(1), F.log_softmax(x, 1)),
        (nn.Identity(), x),
        (nn.Flatten(), x.reshape(2, 12)),
        (nn.Flatten(0, 1), x.reshape(6, 4)),
    ]
    for mod, expected in pairs:
        np.testing.assert_array_equal(mod(x).numpy(), expected.numpy(), err_msg=repr(mod))


def test_dropout_modules_train_and_eval():
    x = Tensor(np.ones((8, 16, 5, 5), np.float32))
    d = nn.Dropout(0.5)
    y = d(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.3 < (y == 0).mean() < 0.7
    assert d.eval()(x) is x
    d2 = nn.Dropout2d(0.5)
    y2 = d2(x).numpy()
    planes = y2.reshape(8, 16, -1)
    assert np.all(planes.min(-1) == planes.max(-1))  # whole channels are kept or dropped
    assert set(np.unique(planes)) <= {0.0, 2.0}
    assert d2.eval()(x) is x
    with pytest.raises(ValueError, match="p: dropout probability"):
        nn.Dropout(-0.1)


# ---- batch normalisation -------------------------------------------------------------------------


def np_bn_train(x, gamma, beta, eps):
    axes = (0, 2, 3)
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)  # biased
    return gamma.reshape(1, -1, 1, 1) * (x - mean) / np.sqrt(var + eps) + beta.reshape(1, -1, 1, 1)


def test_batchnorm2d_train_forward_and_running_stats():
    r = np.random.default_rng(4)
    x = (r.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(np.float32)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    bn.weight.data[...] = [1.0, 2.0, 0.5]
    bn.bias.data[...] = [0.0, -1.0, 3.0]
    y = bn(Tensor(x))
    expected = np_bn_train(x.astype(np.float64), bn.weight.numpy(), bn.bias.numpy(), 1e-5)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-5)
    m = 4 * 5 * 6
    mean, var_unbiased = x.mean((0, 2, 3)), x.var((0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.8 * 1 + 0.2 * var_unbiased, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean.dtype == np.float32


def test_batchnorm2d_eval_uses_running_stats():
    r = np.random.default_rng(5)
    bn = nn.BatchNorm2d(2)
    bn.running_mean[...] = [0.5, -1.0]
    bn.running_var[...] = [4.0, 0.25]
    bn.weight.data[...] = [2.0, 1.0]
    bn.bias.data[...] = [1.0, 0.0]
    x = r.standard_normal((3, 2, 2, 2)).astype(np.float32)
    y = bn.eval()(Tensor(x)).numpy()
    rm, rv = np.array([0.5, -1.0]).reshape(1, 2, 1, 1), np.array([4.0, 0.25]).reshape(1, 2, 1, 1)
    expected = np.array([2.0, 1.0]).reshape(1, 2, 1, 1) * (x - rm) / np.sqrt(rv + 1e-5) + np.array(
        [1.0, 0.0]
    ).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 0  # eval leaves the statistics alone


def test_batchnorm_cumulative_average_and_no_tracking():
    r = np.random.default_rng(6)
    xs = [r.standard_normal((2, 2, 3, 3)) + i for i in range(3)]
    bn = nn.BatchNorm2d(2, momentum=None).double()
    for x in xs:
        bn(Tensor(x))
    np.testing.assert_allclose(
        bn.running_mean, np.mean([x.mean((0, 2, 3)) for x in xs], 0), rtol=1e-12
    )
    free = nn.BatchNorm2d(2, affine=False, track_running_stats=False).double().eval()
    assert free.running_mean is None and list(free.parameters()) == []
    x = xs[0]
    np.testing.assert_allclose(
        free(Tensor(x)).numpy(), np_bn_train(x, np.ones(2), np.zeros(2), 1e-5), rtol=1e-10
    )


def test_batchnorm_gradcheck_train_and_eval():
    r = np.random.default_rng(7)
    x = r.standard_normal((3, 2, 2, 3))
    gamma, beta = r.uniform(0.5, 2, 2), r.standard_normal(2)
    rm, rv = r.standard_normal(2), r.uniform(0.5, 2, 2)
    assert gradcheck(lambda a, g, b: BatchNormFunction(1e-5, True)(a, g, b), [x, gamma, beta])
    assert gradcheck(
        lambda a, g, b: BatchNormFunction(1e-5, False, rm, rv)(a, g, b), [x, gamma, beta]
    )
    assert gradcheck(lambda a: BatchNormFunction(1e-5, True)(a), [x])  # affine=False
    # through the module, both modes
    bn = nn.BatchNorm2d(2).double()
    assert gradcheck(lambda a: bn(a), [x])
    bn.eval()
    assert gradcheck(lambda a: bn(a), [x])
    bn1 = nn.BatchNorm1d(2).double()
    assert gradcheck(lambda a: bn1(a), [r.standard_normal((4, 2))])
    assert gradcheck(lambda a: bn1(a), [r.standard_normal((2, 2, 3))])


def test_batchnorm_bad_input():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"x: BatchNorm2d\(3\).*\(2, 4, 3, 3\)"):
        bn(Tensor(np.ones((2, 4, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(Tensor(np.ones((1, 3, 1, 1), np.float32)))
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)


def test_deepcopy_and_pickle_make_independent_copies():
    import copy
    import pickle

    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert [n for n, _ in c.named_parameters()] == [n for n, _ in m.named_parameters()]
        assert isinstance(c[0].weight, nn.Parameter)
        c[0].weight.data[...] = 0.0
        c[1].running_mean[...] = 5.0
        assert np.all(m[0].weight.data != 0.0) and np.all(m[1].running_mean == 0.0)
