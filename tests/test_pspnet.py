"""PSPNet: the pyramid pooling module against NumPy written from its definition, output stride 8,
output size = input size on odd sizes, PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_torch_parity, needs_torch, tiny

import minisegnet as msn
from minisegnet.models.pspnet import PSPNet, PyramidPooling


def _adaptive_avg(x: np.ndarray, b: int) -> np.ndarray:
    """SPEC: bin i covers [floor(i n / b), ceil((i + 1) n / b))."""
    N, C, H, W = x.shape
    rows = [(i * H // b, -(-(i + 1) * H // b)) for i in range(b)]
    cols = [(j * W // b, -(-(j + 1) * W // b)) for j in range(b)]
    return np.array([[[[x[n, c, r0:r1, c0:c1].mean() for c0, c1 in cols] for r0, r1 in rows]
                      for c in range(C)] for n in range(N)])


def _bilinear(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """SPEC's bilinear resize, align_corners=False, separably along H then W."""
    def axis(a: np.ndarray, out: int, ax: int) -> np.ndarray:
        n = a.shape[ax]
        src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        lam = (src - i0).reshape([-1 if d == ax else 1 for d in range(a.ndim)])
        return (1 - lam) * np.take(a, i0, axis=ax) + lam * np.take(a, i1, axis=ax)

    return axis(axis(x, H, 2), W, 3)


@pytest.mark.parametrize("hw", [(12, 12), (7, 11)])
def test_pyramid_pooling_matches_its_definition(hw):
    rng = np.random.default_rng(0)
    C, bins = 8, (1, 2, 3, 6)
    msn.manual_seed(0)
    ppm = PyramidPooling(C, bins)
    x = rng.standard_normal((2, C, *hw))
    y = ppm.double()(msn.Tensor(x)).numpy()
    parts = [x]
    for conv, b in zip(ppm.stages, bins, strict=True):
        W, bias = conv.weight.numpy()[:, :, 0, 0], conv.bias.numpy()
        pooled = np.maximum(np.einsum("oc,nchw->nohw", W, _adaptive_avg(x, b))
                            + bias[None, :, None, None], 0)
        parts.append(_bilinear(pooled, *hw))
    expect = np.concatenate(parts, axis=1)
    assert y.shape == expect.shape == (2, C + 4 * (C // 4), *hw)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(33, 47), (8, 8), (1, 3)])
def test_output_stride_8_and_input_size_out(hw):
    model = PSPNet(4, width=2)
    x = msn.Tensor(np.random.default_rng(0).standard_normal((2, 3, *hw)).astype(np.float32))
    _, features = model.backbone(x)
    assert features.shape[2:] == tuple(-(-s // 8) for s in hw)   # ceil(H / 8)
    assert model(x).shape == (2, 4, *hw)


def test_custom_bins_and_bad_bins():
    model = PSPNet(2, width=2, bins=(1, 4))
    assert len(model.pyramid_pooling.stages) == 2
    with pytest.raises(ValueError, match="bins"):
        PSPNet(2, bins=(1, 0))
    with pytest.raises(ValueError, match="bins"):
        PSPNet(2, bins=())


@needs_torch
@pytest.mark.parametrize("hw", [(33, 47), (16, 9)])
def test_matches_pytorch(hw):
    from benchmarks import torch_models as T

    model = tiny("pspnet", num_classes=3, width=3)
    twin = T.load_from(T.create("pspnet", 3, width=3, dropout=0.0), model)
    x = np.random.default_rng(3).standard_normal((2, 3, *hw))
    check_torch_parity(model, twin, [x])
