"""DeepLabV3+: output stride 16 vs 8 (ASPP rates and feature size), output size = input size on
odd and non-multiple-of-16 sizes, separable convs where the paper has them, PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_torch_parity, needs_torch, tiny

import minisegnet as msn
from minisegnet import nn
from minisegnet.models.deeplabv3plus import DeepLabV3Plus


@pytest.mark.parametrize("os_,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_output_stride_sets_rates_and_feature_size(os_, rates):
    model = DeepLabV3Plus(3, output_stride=os_, width=2)
    got = tuple(branch.conv.depthwise.dilation[0] for branch in model.aspp.atrous)
    assert got == rates
    pads = [b.conv.depthwise.padding for b in model.aspp.atrous]
    assert pads == [(r, r) for r in rates]
    x = msn.Tensor(np.random.default_rng(0).standard_normal((2, 3, 37, 50)).astype(np.float32))
    low, features = model.backbone(x)
    assert low.shape[2:] == (10, 13)                        # ceil(H / 4)
    assert features.shape[2:] == (-(-37 // os_), -(-50 // os_))
    assert model(x).shape == (2, 3, 37, 50)


def test_the_two_output_strides_share_their_parameters():
    """Same weights, different dilation: a model trained at 16 runs at 8 (as the paper does)."""
    a = DeepLabV3Plus(3, output_stride=16, width=2)
    b = DeepLabV3Plus(3, output_stride=8, width=2)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


@pytest.mark.parametrize("hw", [(17, 17), (31, 45), (50, 23), (1, 1)])
def test_output_size_is_input_size(hw):
    model = DeepLabV3Plus(2, width=2)
    assert model(msn.Tensor(np.zeros((2, 3, *hw), np.float32))).shape == (2, 2, *hw)


def test_separable_atrous_convs_and_image_pooling():
    model = DeepLabV3Plus(3, width=4)
    assert all(isinstance(b.conv, nn.SeparableConv2d) for b in model.aspp.atrous)
    assert all(isinstance(b.conv, nn.SeparableConv2d) for b in model.decoder.refine)
    c = model.backbone.channels[1]
    assert model.aspp.project.conv.in_channels == 5 * c     # 1x1, 3 atrous, image pooling
    assert model.decoder.reduce.conv.out_channels == 6      # 48 at the paper's width of 32


def test_bad_arguments():
    with pytest.raises(ValueError, match="output_stride.*32"):
        DeepLabV3Plus(2, output_stride=32)
    with pytest.raises(ValueError, match="width"):
        DeepLabV3Plus(2, width=0)


@needs_torch
@pytest.mark.parametrize("os_,hw", [(16, (37, 50)), (8, (19, 30))])
def test_matches_pytorch(os_, hw):
    from benchmarks import torch_models as T

    model = tiny("deeplabv3plus", num_classes=3, width=3, output_stride=os_)
    twin = T.load_from(T.create("deeplabv3plus", 3, width=3, output_stride=os_, dropout=0.0), model)
    x = np.random.default_rng(4).standard_normal((2, 3, *hw))
    check_torch_parity(model, twin, [x])
