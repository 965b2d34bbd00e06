"""SegNet: unpooling restores each maximum at its own position, inside the network too; odd
sizes round-trip; too-small inputs; PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_torch_parity, needs_torch, tiny

import minisegnet as msn
from minisegnet.models.segnet import SegNet


def _pool_then_unpool_numpy(x: np.ndarray) -> np.ndarray:
    """2x2 max-pool then unpool, written out: each window's first maximum kept in place."""
    out = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for i in range(H // 2):
                for j in range(W // 2):
                    win = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    a, b = np.unravel_index(np.argmax(win), (2, 2))
                    out[n, c, 2 * i + a, 2 * j + b] = win[a, b]
    return out


@pytest.mark.parametrize("hw", [(6, 8), (7, 9)])
def test_unpooling_puts_values_back_at_the_max_locations(hw):
    model = SegNet(2, width=3)
    x = np.random.default_rng(0).standard_normal((2, 3, *hw)).astype(np.float32)
    y, idx = model.pool(msn.Tensor(x))
    idx = idx.numpy()
    # the index is h*W + w of the window's maximum in the unpooled plane
    r, c = np.divmod(idx, hw[1])
    for n, ch, i, j in np.ndindex(*idx.shape):
        assert 2 * i <= r[n, ch, i, j] <= 2 * i + 1 and 2 * j <= c[n, ch, i, j] <= 2 * j + 1
        assert x[n, ch, r[n, ch, i, j], c[n, ch, i, j]] == x[n, ch, 2 * i:2 * i + 2,
                                                             2 * j:2 * j + 2].max()
    up = model.unpool(y, msn.Tensor(idx), output_size=hw).numpy()
    assert up.shape == x.shape
    np.testing.assert_array_equal(up, _pool_then_unpool_numpy(x))


def test_the_decoder_unpools_with_the_encoders_indices():
    """A SegNet whose convs are identities and BN at its initial evaluation statistics is
    ``c^2 * unpool(pool(relu(c * x)))`` with c = 1/sqrt(1 + eps): the decoder's maxima sit
    where the encoder found them, the rest is zero, on an odd size."""
    model = SegNet(3, in_channels=3, width=3, depth=1, kernel_size=1).eval()
    for conv in (model.encoder["conv1"].conv, model.decoder["conv_decode1"].conv,
                 model.classifier):
        conv.weight.data[...] = np.eye(3, dtype=np.float32)[:, :, None, None]
    model.classifier.bias.data[...] = 0
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 7)).astype(np.float32)
    c = 1 / np.sqrt(1 + 1e-5)
    expect = c * _pool_then_unpool_numpy(np.maximum(c * x, 0))
    np.testing.assert_allclose(model(msn.Tensor(x)).numpy(), expect, rtol=1e-6, atol=1e-7)


def test_layout_and_no_learned_upsampling():
    model = SegNet(4, width=8)
    names = [n for n, _ in model.named_parameters()]
    assert [n.split(".")[1] for n in names if n.startswith("encoder") and n.endswith("conv.weight")
            ] == ["conv1", "conv2", "conv3", "conv4"]
    assert [n.split(".")[1] for n in names if n.startswith("decoder") and n.endswith("conv.weight")
            ] == ["conv_decode4", "conv_decode3", "conv_decode2", "conv_decode1"]
    # 4 + 4 convs 7x7 (no bias: BN follows), 8 BNs, the 1x1 classifier: no upsampling weights
    assert model.num_parameters() == (3 * 8 * 49 + 7 * 8 * 8 * 49) + 8 * 2 * 8 + (8 * 4 + 4)


@pytest.mark.parametrize("hw", [(16, 16), (17, 31), (45, 60)])
def test_odd_sizes_keep_their_size(hw):
    model = SegNet(2, width=2)
    assert model(msn.Tensor(np.zeros((2, 3, *hw), np.float32))).shape == (2, 2, *hw)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size.*odd"):
        SegNet(2, kernel_size=4)
    with pytest.raises(ValueError, match="depth"):
        SegNet(2, depth=0)


@needs_torch
@pytest.mark.parametrize("hw", [(16, 20), (37, 45)])
def test_matches_pytorch(hw):
    from benchmarks import torch_models as T

    model = tiny("segnet", num_classes=3, width=4, depth=3, kernel_size=3)
    twin = T.load_from(T.create("segnet", 3, width=4, depth=3, kernel_size=3), model)
    x = np.random.default_rng(2).standard_normal((2, 3, *hw))
    check_torch_parity(model, twin, [x])
