"""FCN: the coordinate maps and crops against the authors' Caffe nets, convolutionalize against
the dense layer, the bilinear upsampling, 32s / 16s / 8s differing only in the fusion, PyTorch."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from helpers import check_torch_parity, needs_torch, tiny

import minisegnet as msn
from minisegnet import nn
from minisegnet.models.fcn import FCN, convolutionalize, coord_map, crop_offset

# Offsets of the crop layers in the authors' nets (fcn.berkeleyvision.org,
# voc-fcn32s/16s/8s train.prototxt: score 19; score_pool4c 5, score 27; score_pool4c 5,
# score_pool3c 9, score 31), which their coord_map.py derived from the same geometry.
AUTHORS_CROPS = {
    "32s": {"score": 19},
    "16s": {"score_pool4c": 5, "score": 27},
    "8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_computed_crops_are_the_authors(variant):
    model = FCN(2, variant, width=1)
    assert model.crops == {k: (v, v) for k, v in AUTHORS_CROPS[variant].items()}


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (4, 2, 1, 1), (7, 3, 0, 1), (3, 1, 2, 2),
                                     (5, 2, 3, 1), (2, 2, 0, 1), (16, 8, 4, 1)])
def test_a_transposed_conv_undoes_its_convs_coordinate_map(k, s, p, d):
    conv = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
    convt = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, dilation=d)
    m = coord_map(conv)
    kd = d * (k - 1) + 1
    assert m.scale == (s, s) and m.offset == (Fraction(kd - 1, 2) - p,) * 2
    assert coord_map(conv, convt) == coord_map()  # identity: scale 1, offset 0
    assert coord_map(convt, conv) == coord_map()


def test_coord_map_is_the_centre_of_the_receptive_field():
    """Walk output pixel i's receptive field back layer by layer (interval arithmetic: a conv
    output o reads inputs o*s - p .. o*s - p + d(k-1)); the map gives its centre."""
    layers = [nn.Conv2d(1, 1, 3, padding=100), nn.MaxPool2d(2), nn.Conv2d(1, 1, 5),
              nn.MaxPool2d(3, stride=2), nn.Conv2d(1, 1, 3, padding=2, dilation=2),
              nn.Conv2d(1, 1, 7, stride=3, padding=1)]
    m = coord_map(*layers)
    for i in range(4):
        lo, hi = i, i
        for layer in reversed(layers):
            k, s, p, d = (v if isinstance(v, int) else v[0] for v in
                          (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
            lo, hi = lo * s - p, hi * s - p + d * (k - 1)
        assert m.scale[0] * i + m.offset[0] == Fraction(lo + hi, 2)


def test_crop_offset_rejects_a_misaligned_pair():
    a = coord_map(nn.MaxPool2d(2))                      # 2i + 1/2
    b = coord_map(nn.Conv2d(1, 1, 3, stride=2))         # 2i + 1
    with pytest.raises(ValueError, match="offset 1/4"):
        crop_offset(a, b)
    with pytest.raises(ValueError, match="scales differ"):
        crop_offset(a, coord_map())


def test_convolutionalize_equals_the_dense_layer():
    rng = np.random.default_rng(0)
    C, h, w, n_out = 3, 7, 7, 5
    msn.manual_seed(0)
    fc = nn.Linear(C * h * w, n_out)
    conv = convolutionalize(fc, (C, h, w))
    assert conv.weight.shape == (n_out, C, h, w)
    x = rng.standard_normal((2, C, h, w)).astype(np.float32)
    dense = fc(msn.Tensor(x.reshape(2, -1))).numpy()
    np.testing.assert_allclose(conv(msn.Tensor(x)).numpy()[:, :, 0, 0], dense, rtol=1e-5, atol=1e-6)
    # on a 14x14 map: an 8x8 map, each position the dense layer on its 7x7 window
    big = rng.standard_normal((1, C, 14, 14)).astype(np.float32)
    out = conv(msn.Tensor(big)).numpy()
    assert out.shape == (1, n_out, 8, 8)
    for i in range(8):
        for j in range(8):
            window = big[:, :, i:i + h, j:j + w].reshape(1, -1)
            np.testing.assert_allclose(out[0, :, i, j], fc(msn.Tensor(window)).numpy()[0],
                                       rtol=1e-5, atol=1e-5)


def test_convolutionalize_bad_input():
    fc = nn.Linear(12, 2)
    with pytest.raises(ValueError, match=r"in_shape.*12"):
        convolutionalize(fc, (3, 2, 3))
    with pytest.raises(TypeError, match="linear"):
        convolutionalize(nn.Conv2d(1, 1, 1), (1, 1, 1))


@pytest.mark.parametrize("variant,layer,factor", [("8s", "upscore2", 2), ("8s", "upscore8", 8),
                                                  ("16s", "upscore16", 16), ("32s", "upscore", 32)])
def test_bilinear_upsampling_is_exact_on_linear_maps(variant, layer, factor):
    """Linear interpolation reproduces a linear ramp, at the positions the coordinate map gives;
    so a constant map stays constant. Checked away from the border (where the kernel is cut)."""
    up = getattr(FCN(2, variant, width=1), layer)
    n = 6
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ramp = np.stack([0.3 * ii - 0.7 * jj + 2.0, np.full((n, n), 4.0)])[None].astype(np.float32)
    out = up(msn.Tensor(ramp)).numpy()
    m = coord_map(up)  # output pixel o sits at input coordinate scale*o + offset
    o = np.arange(out.shape[2])
    src = float(m.scale[0]) * o + float(m.offset[0])
    inner = (src >= 0) & (src <= n - 1)
    assert inner.sum() >= factor * (n - 2)
    si = src[inner]
    expect = 0.3 * si[:, None] - 0.7 * si[None, :] + 2.0
    np.testing.assert_allclose(out[0, 0][np.ix_(inner, inner)], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 1][np.ix_(inner, inner)], 4.0, rtol=1e-6)


def test_variants_differ_only_in_the_fusion():
    """Same seed, same backbone and score_fr; what differs is the path from score_fr to the
    output. All three paths put the scores at the same place: fed a linear ramp instead of
    score_fr (bilinear interpolation is exact on it), the cropped outputs agree wherever every
    upsampling interpolates (the ramp's 1-cell margin excluded)."""
    nets = {}
    for v in ("32s", "16s", "8s"):
        msn.manual_seed(3)
        nets[v] = FCN(2, v, width=1, dropout=0.0)
    s32, s16, s8 = (nets[v].state_dict() for v in ("32s", "16s", "8s"))
    assert set(s16) - set(s32) == {"upscore2.weight", "score_pool4.weight", "score_pool4.bias",
                                   "upscore16.weight"}
    assert set(s32) - set(s16) == {"upscore.weight"}
    assert set(s8) - set(s16) == {"upscore_pool4.weight", "score_pool3.weight",
                                  "score_pool3.bias", "upscore8.weight"}
    for k in set(s32) & set(s16) & set(s8):
        assert np.array_equal(s32[k], s16[k]) and np.array_equal(s32[k], s8[k]), k
    for k in ("score_pool4.weight", "score_pool4.bias", "score_pool3.weight", "score_pool3.bias"):
        assert not (s8[k]).any(), k  # zero: the finer nets start from the coarser one's scores

    n, size = 6, 120
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ramp = msn.Tensor(np.stack([0.5 * ii - 0.25 * jj, 0.1 * ii + jj])[None].astype(np.float32))
    paths = {"32s": ["upscore"], "16s": ["upscore2", "upscore16"],
             "8s": ["upscore2", "upscore_pool4", "upscore8"]}
    out = {}
    for v, layers in paths.items():
        h = ramp
        for layer in layers:
            h = getattr(nets[v], layer)(h)
        o = nets[v].crops["score"][0]
        out[v] = h.numpy()[0, :, o:o + size, o:o + size]
    # pixel x of the output sits at score_fr coordinate (x - offset) / 32
    fr = coord_map(*(getattr(nets["32s"], k) for k in (
        "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5", "pool5",
        "fc6", "fc7", "score_fr")))
    pos = (np.arange(size) - float(fr.offset[0])) / float(fr.scale[0])
    inner = (pos >= 1) & (pos <= n - 2)
    assert inner.sum() >= 64
    region = (slice(None),) + np.ix_(inner, inner)
    expect = np.stack([0.5 * pos[:, None] - 0.25 * pos[None, :], 0.1 * pos[:, None] + pos[None, :]])
    for v in out:
        np.testing.assert_allclose(out[v][region], expect[region], atol=1e-4, err_msg=v)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (32, 32), (31, 65)])
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_size_is_input_size_even_tiny(variant, hw):
    model = FCN(2, variant, width=1)
    x = msn.Tensor(np.zeros((1, 3, *hw), np.float32))
    assert model(x).shape == (1, 2, *hw)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant.*4s"):
        FCN(2, "4s")
    with pytest.raises(ValueError, match="width"):
        FCN(2, width=0)


@needs_torch
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_matches_pytorch(name):
    from benchmarks import torch_models as T

    model = tiny(name, num_classes=3, width=1, dropout=0.0)
    rng = np.random.default_rng(5)
    for layer in ("score_pool4", "score_pool3"):  # nonzero skips: their crops must line up too
        if hasattr(model, layer):
            conv = getattr(model, layer)
            conv.weight.data[...] = rng.standard_normal(conv.weight.shape)
            conv.bias.data[...] = rng.standard_normal(conv.bias.shape)
    twin = T.load_from(T.create(name, 3, width=1, dropout=0.0), model)
    x = rng.standard_normal((2, 3, 37, 45))
    check_torch_parity(model, twin, [x])


@pytest.mark.slow  # 14 s at load 5 on 2 cores, much of it compiling float64 kernels
@needs_torch
def test_trains_like_pytorch():
    """Beyond one gradient: ours and the PyTorch twin, from the same weights, on the same shapes
    batches, with Adam, follow the same loss curve step for step (float64). This is how "the
    FCNs stay at the class prior from scratch" was told apart from a bug: the twin stays too."""
    import torch

    from benchmarks import torch_models as T
    from minisegnet import data, optim

    model = tiny("fcn8s", num_classes=4, dropout=0.0).double()
    twin = T.load_from(T.create("fcn8s", 4, width=1, dropout=0.0), model)
    ours_opt = optim.Adam(model.parameters(), lr=1e-2)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    train = data.load("shapes", n=8, size=32)
    batches = data.patches(train, 32, 2, seed=0, weights=False)
    ours_loss, twin_loss = [], []
    for _ in range(6):
        x, y, _ = next(batches)
        x = x.astype(np.float64)
        loss = msn.functional.cross_entropy(model(msn.Tensor(x)), msn.Tensor(y))
        ours_opt.zero_grad()
        loss.backward()
        ours_opt.step()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        twin_opt.zero_grad()
        tloss.backward()
        twin_opt.step()
        ours_loss.append(loss.item())
        twin_loss.append(tloss.item())
    assert len(set(np.round(ours_loss, 3))) > 3  # the weights moved: the curve is not flat
    np.testing.assert_allclose(ours_loss, twin_loss, rtol=1e-7)


@pytest.mark.slow
def test_the_docstrings_shapes_for_a_500x500_image():
    """The module docstring's walk through FCN-8s (and the 32s / 16s upsampling sizes)."""
    nets = {v: FCN(2, v, width=1) for v in ("32s", "16s", "8s")}
    m = nets["8s"]
    expect = {"conv1": 698, "pool1": 349, "pool2": 175, "pool3": 88, "pool4": 44, "pool5": 22,
              "fc6": 16}
    got = {}
    with msn.no_grad():
        h = msn.Tensor(np.zeros((1, 3, 500, 500), np.float32))
        for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4",
                     "conv5", "pool5", "fc6"):
            h = getattr(m, name)(h)
            got[name] = h.shape[2]
        score_fr = m.score_fr(m.fc7(h))
        up2 = m.upscore2(score_fr)
        up4 = m.upscore_pool4(up2)
        sizes = (up2.shape[2], up4.shape[2], m.upscore8(up4).shape[2],
                 nets["32s"].upscore(score_fr).shape[2],
                 nets["16s"].upscore16(nets["16s"].upscore2(score_fr)).shape[2])
    assert {k: got[k] for k in expect} == expect
    assert sizes == (34, 70, 568, 544, 560)


@pytest.mark.slow
def test_full_width_is_vgg16_plus_the_fcn_layers():
    """Default width = VGG16: its 13 convs hold 14,714,688 parameters (torchvision's
    ``vgg16().features``), fc6/fc7 102,764,544 and 16,781,312 (its first two classifier
    layers, here as 7x7 and 1x1 convs); then FCN-8s's 21-class score and upsampling layers."""
    K = 21
    model = FCN(K, "8s")
    fcn_layers = ((4096 + 512 + 256) * K + 3 * K) + K * K * (4 * 4 + 4 * 4 + 16 * 16)
    assert model.num_parameters() == 14_714_688 + 102_764_544 + 16_781_312 + fcn_layers


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_batch_norm_variant_keeps_the_geometry_and_trains(variant):
    """VGG16-BN stages: same crops as the paper's net, BN layers after every stage conv, no
    conv bias in front of a BN, gradients reach the first conv."""
    import minisegnet.functional as F

    plain, bn = FCN(2, variant, width=1), FCN(2, variant, width=1, batch_norm=True)
    assert bn.crops == plain.crops
    stage_convs = [m for name, m in bn.named_modules()
                   if name.startswith("conv") and isinstance(m, nn.Conv2d)]
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(stage_convs) == len(norms) == 13
    assert all(c.bias is None for c in stage_convs)
    x = msn.Tensor(np.random.default_rng(0).standard_normal((2, 3, 21, 34)).astype(np.float32))
    y = bn(x)
    assert y.shape == (2, 2, 21, 34)
    F.cross_entropy(y, msn.Tensor(np.zeros((2, 21, 34), np.int64))).backward()
    assert np.any(bn.conv1.conv1_1.weight.grad != 0)
