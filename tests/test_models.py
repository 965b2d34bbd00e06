"""What every model in ``models.list_models()`` must do (family specifics: tests/test_<family>.py).

Forward and backward on odd, non-square sizes with SPEC's output sizes and a gradient for every
parameter; the state_dict through msn.save / msn.load bit for bit; a float64 gradcheck of a tiny
instance (w.r.t. a patch of the input and two parameters); overfitting one batch of a real
photograph (skimage's coins); bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    OVERFIT,
    coins_batch,
    cross_entropy,
    gradcheck_module,
    input_and_output_size,
    model_params,
    overfit,
    small_params,
    tiny,
)

import minisegnet as msn
import minisegnet.functional as F
from minisegnet import models


def test_list_models_is_specs_list():
    assert models.list_models() == ["fcn32s", "fcn16s", "fcn8s", "unet", "unet-valid",
                                    "deeplabv3plus", "pspnet", "segnet"]


@pytest.mark.parametrize("name", model_params())
@pytest.mark.parametrize("hw", [(19, 26), (33, 17)], ids=["19x26", "33x17"])
def test_forward_backward_every_parameter_gets_a_gradient(name, hw):
    model = tiny(name, num_classes=3)
    (H, W), out = input_and_output_size(model, name, *hw)
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32)
    y = model(msn.Tensor(x))
    assert y.shape == (2, 3, *out) and y.dtype == np.float32
    target = np.random.default_rng(1).integers(0, 3, (2, *out))
    F.cross_entropy(y, msn.Tensor(target)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.shape == p.shape and np.isfinite(p.grad).all(), pname
        assert np.any(p.grad != 0), f"{pname}: gradient is all zero"


@pytest.mark.parametrize("name", model_params())
def test_state_dict_round_trips_bit_exactly(name, tmp_path):
    model = tiny(name, seed=0)
    (H, W), _ = input_and_output_size(model, name, 20, 23)
    x = msn.Tensor(np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32))
    model(x)  # a training-mode pass moves BatchNorm's running statistics off their start
    msn.save(model, tmp_path / "m.npz")
    other = tiny(name, seed=1)
    other.load_state_dict(msn.load(tmp_path / "m.npz"))
    a, b = model.state_dict(), other.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    model.eval()
    other.eval()
    assert np.array_equal(model(x).numpy(), other(x).numpy())


@pytest.mark.parametrize("name", model_params())
def test_gradcheck_float64(name):
    """Finite differences through the whole network: a 2x2 patch of the input and two parameters."""
    model = tiny(name, num_classes=2, in_channels=1)
    (H, W), _ = input_and_output_size(model, name, 9, 10)
    base = np.random.default_rng(0).standard_normal((2, 1, H, W))
    r, c = H // 2, W // 3

    def fn(patch):
        return model(msn.Tensor(base) + F.pad(patch, (c, W - c - 2, r, H - r - 2)))

    patch = np.random.default_rng(1).standard_normal((2, 1, 2, 2))
    assert gradcheck_module(model, fn, patch, small_params(model), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", model_params())
def test_overfits_one_batch_of_a_real_image(name):
    x, labels = coins_batch(2, (40, 48))
    model = tiny(name, num_classes=2, in_channels=1)
    if name == "unet-valid":  # the valid U-Net predicts the centre: crop the labels to it
        (H, W), (h, w) = input_and_output_size(model, name, 40, 48)
        x, labels = coins_batch(2, (H, W))
        top, left = (H - h) // 2, (W - w) // 2
        labels = labels[:, top:top + h, left:left + w]
    lr, steps = OVERFIT.get(name, (1e-2, 40))
    first, last = overfit(model, x, cross_entropy(labels), steps=steps, lr=lr)
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("name", model_params())
def test_wrong_input_channels_or_dims_is_a_value_error(name):
    model = tiny(name, in_channels=3)
    (H, W), _ = input_and_output_size(model, name, 20, 20)
    with pytest.raises(ValueError, match=r"(?s)x.*in_channels.*3.*(2 channels|\(1, 2,)"):
        model(msn.Tensor(np.zeros((1, 2, H, W), np.float32)))
    with pytest.raises(ValueError, match=r"x"):
        model(msn.Tensor(np.zeros((3, H, W), np.float32)))


@pytest.mark.parametrize("name,kwargs,hw,smallest", [
    ("segnet", dict(depth=4), (15, 40), "16x16"),
    ("segnet", dict(depth=2), (30, 3), "4x4"),
])
def test_too_small_input_is_a_value_error_naming_the_sizes(name, kwargs, hw, smallest):
    model = tiny(name, **kwargs)
    with pytest.raises(ValueError, match=rf"(?s)x.*{smallest}.*{hw[0]}x{hw[1]}"):
        model(msn.Tensor(np.zeros((1, 3, *hw), np.float32)))


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="name.*fcn8s"):
        models.create("fcn4s", 2)


@pytest.mark.cuda
@pytest.mark.skipif(msn.backend.cupy_module() is None, reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("name", model_params())
def test_cuda_matches_cpu(name):
    """The same forward and backward on CuPy arrays (CUDA kernels) and NumPy arrays, float64."""
    results = []
    for device in ("cpu", "cuda"):
        model = tiny(name, num_classes=3).double().to(device)
        (H, W), out = input_and_output_size(model, name, 19, 26)
        x = np.random.default_rng(0).standard_normal((2, 3, H, W))
        y = model(msn.Tensor(x).to(device))
        assert y.shape == (2, 3, *out) and y.device == device
        target = np.random.default_rng(1).integers(0, 3, (2, *out))
        F.cross_entropy(y, msn.Tensor(target).to(device)).backward()
        results.append([y.numpy()] + [msn.backend.to_numpy(p.grad) for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * (np.abs(a).max() + 1))
