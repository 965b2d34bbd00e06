"""MaskHead and paste_masks: shapes, the RoIAlign settings, pasting against an independent
pixel-centre rule and against F.interpolate, bad boxes, gradcheck, overfitting, PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_torch_parity, coins_batch, gradcheck_module, needs_torch, overfit

import minisegnet as msn
import minisegnet.functional as F
from minisegnet.models.mask_head import MaskHead, paste_masks

BOXES = np.array([[0, 1.0, 2.0, 30.0, 20.0],
                  [1, 5.5, 3.2, 11.0, 17.9],
                  [1, 0.0, 0.0, 47.0, 39.0]])


def _features(seed: int = 0, c: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, c, 20, 24)).astype(np.float32)


def _head(**kw) -> MaskHead:
    msn.manual_seed(0)
    return MaskHead(**{"in_channels": 4, "num_classes": 3, "spatial_scale": 0.5, "width": 8, **kw})


def test_shapes_and_box_formats():
    head = _head()
    x = msn.Tensor(_features())
    y = head(x, BOXES)
    assert y.shape == (3, 3, 28, 28)
    per_image = [BOXES[:1, 1:], BOXES[1:, 1:]]
    np.testing.assert_array_equal(head(x, per_image).numpy(), y.numpy())
    assert _head(roi_size=7)(x, BOXES).shape == (3, 3, 14, 14)
    assert head(x, np.zeros((0, 5))).shape == (0, 3, 28, 28)


def test_first_stage_is_aligned_roialign_with_sampling_ratio_2():
    head = _head()
    x = msn.Tensor(_features())
    stage1 = head.roi_align(x, BOXES)
    expect = F.roi_align(x, BOXES, (14, 14), 0.5, sampling_ratio=2, aligned=True)
    np.testing.assert_array_equal(stage1.numpy(), expect.numpy())
    for other in (dict(sampling_ratio=2, aligned=False), dict(sampling_ratio=-1, aligned=True)):
        assert not np.allclose(F.roi_align(x, BOXES, (14, 14), 0.5, **other).numpy(),
                               expect.numpy())
    # and the whole head is that, then the convs
    h = expect
    for conv in (head.mask_fcn1, head.mask_fcn2, head.mask_fcn3, head.mask_fcn4):
        h = F.relu(conv(h))
    h = head.predictor(F.relu(head.deconv(h)))
    np.testing.assert_array_equal(head(x, BOXES).numpy(), h.numpy())


def _centres_in_box(box, H, W) -> np.ndarray:
    """Pixels whose centre (j + 0.5, i + 0.5) lies in [x1, x2) x [y1, y2)."""
    x1, y1, x2, y2 = box
    ci, cj = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    return (cj >= x1) & (cj < x2) & (ci >= y1) & (ci < y2)


@pytest.mark.parametrize("box", [(3, 4, 13, 9), (2.3, 1.7, 9.6, 12.5), (-4, -3, 5.5, 6),
                                 (10, 8, 40, 30), (5, 5, 5, 9), (0, 0, 16, 20)])
def test_a_full_mask_covers_exactly_its_boxs_pixels(box):
    H, W = 20, 16
    got = paste_masks(np.ones((1, 28, 28)), np.array([box]), (H, W))
    assert got.shape == (1, H, W) and got.dtype == bool
    np.testing.assert_array_equal(got[0], _centres_in_box(box, H, W))


@pytest.mark.parametrize("box", [(3, 4, 13, 9), (1, 2, 25, 30), (0, 0, 7, 5)])
def test_pasting_into_an_integer_box_is_bilinear_resizing(box):
    """On integer boxes the half-pixel rule is F.interpolate(align_corners=False) to the box."""
    H, W = 32, 28
    rng = np.random.default_rng(1)
    probs = rng.random((2, 28, 28))
    x1, y1, x2, y2 = box
    resized = F.interpolate(msn.Tensor(probs[:, None]), size=(y2 - y1, x2 - x1),
                            mode="bilinear").numpy()[:, 0]
    for t in (0.3, 0.5, 0.7):
        got = paste_masks(probs, np.array([box, box], float), (H, W), threshold=t)
        expect = np.zeros((2, H, W), bool)
        expect[:, y1:y2, x1:x2] = resized >= t
        np.testing.assert_array_equal(got, expect)


def test_paste_masks_bad_input():
    probs = np.ones((2, 28, 28))
    with pytest.raises(ValueError, match=r"boxes.*\(K, 4\).*K = 2"):
        paste_masks(probs, np.zeros((2, 5)), (10, 10))
    with pytest.raises(ValueError, match=r"boxes.*K = 2"):
        paste_masks(probs, np.zeros((3, 4)), (10, 10))
    with pytest.raises(ValueError, match=r"boxes: box 1 .*x2 < x1"):
        paste_masks(probs, np.array([[0, 0, 4, 4], [5, 0, 3, 4]]), (10, 10))
    with pytest.raises(ValueError, match="boxes.*finite"):
        paste_masks(probs, np.array([[0, 0, 4, 4], [0, 0, np.nan, 4]]), (10, 10))
    with pytest.raises(ValueError, match="probs"):
        paste_masks(np.ones((28, 28)), np.zeros((1, 4)), (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(probs, np.zeros((2, 4)), (10, 0))


def test_head_bad_boxes_and_features():
    head = _head()
    x = msn.Tensor(_features())
    with pytest.raises(ValueError, match=r"boxes.*\(K, 5\).*\(3, 4\)"):
        head(x, BOXES[:, 1:])
    with pytest.raises(ValueError, match=r"boxes: box 1 .*y2 < y1"):
        head(x, np.array([[0, 1, 2, 3, 4], [0, 1, 5, 3, 4]]))
    with pytest.raises(ValueError, match=r"boxes: box 2 has batch index 2.*N=2"):
        head(x, np.array([[0, 1, 2, 3, 4], [1, 1, 2, 3, 4], [2, 1, 2, 3, 4]]))
    with pytest.raises(ValueError, match=r"boxes: box 0 has batch index -1"):
        head(x, np.array([[-1, 1, 2, 3, 4]]))
    with pytest.raises(ValueError, match=r"boxes\[1\].*\(K_i, 4\)"):
        head(x, [BOXES[:1, 1:], BOXES[1:]])
    with pytest.raises(ValueError, match=r"features.*\(N, 4, H, W\).*\(2, 3, 20, 24\)"):
        head(msn.Tensor(_features(c=3)), BOXES)


def test_gradcheck_float64():
    head = _head(num_classes=1, width=2, roi_size=3)
    rows = np.array([[0, 1.0, 1.5, 7.0, 6.0], [1, 0.5, 0.0, 5.5, 7.5]])
    feats = np.random.default_rng(2).standard_normal((2, 4, 5, 5))
    assert gradcheck_module(head, lambda f: head(f, rows), feats,
                            ["mask_fcn1.bias", "deconv.bias", "predictor.weight"],
                            atol=1e-6, rtol=1e-4)


def test_overfits_masks_of_a_real_image():
    """Features: the coins photograph; targets: each box's coin mask, cut out of the label
    image by the same aligned RoIAlign at 28 x 28."""
    x, labels = coins_batch(2, (48, 56))
    boxes = np.array([[0, 2, 3, 30, 40], [0, 20, 10, 54, 44], [1, 5, 5, 40, 30],
                      [1, 10, 20, 50, 46]], float)
    target = F.roi_align(msn.Tensor(labels[:, None].astype(np.float32)), boxes, 28,
                         sampling_ratio=2, aligned=True).numpy()          # (4, 1, 28, 28)
    assert 0.1 < target.mean() < 0.9
    msn.manual_seed(0)
    head = MaskHead(1, 1, width=8)

    class Net:  # the head on fixed features and boxes, as overfit() expects
        def __call__(self, feats):
            return head(feats, boxes)

        def parameters(self):
            return head.parameters()

    first, last = overfit(Net(), x, lambda logits: F.binary_cross_entropy_with_logits(
        logits, target), steps=60, lr=1e-2)
    assert last < 0.5 * first, (first, last)


@needs_torch
def test_matches_pytorch():
    from benchmarks import torch_models as T

    head = _head()
    twin = T.load_from(T.MaskHead(4, 3, spatial_scale=0.5, width=8), head)
    # boxes reaching past the map exercise RoIAlign's border rules too
    rows = np.concatenate([BOXES, [[0, -3.0, 30.0, 20.0, 45.0]]])
    check_torch_parity(head, twin, [_features().astype(np.float64), rows])


@pytest.mark.cuda
@pytest.mark.skipif(msn.backend.cupy_module() is None, reason="needs CuPy and a CUDA GPU")
def test_cuda_matches_cpu():
    cp = msn.backend.cupy_module()
    outs = []
    for device in ("cpu", "cuda"):
        head = _head().double().to(device)
        y = head(msn.Tensor(_features().astype(np.float64)).to(device), BOXES)
        y.sum().backward()
        probs = 1 / (1 + np.exp(-y.numpy()[:, 0]))
        arr = probs if device == "cpu" else cp.asarray(probs)
        pasted = paste_masks(arr, BOXES[:, 1:], (20, 24))
        assert isinstance(pasted, np.ndarray) == (device == "cpu")
        outs.append([y.numpy(), msn.backend.to_numpy(head.mask_fcn1.weight.grad),
                     msn.backend.to_numpy(pasted)])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
