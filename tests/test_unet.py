"""U-Net: the paper's geometry and parameter count, parity with the same network in PyTorch,
overlap-tile inference against one whole pass, and the border weight map / touching-instance
separation against brute-force references."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

import minisegnet as msn
from minisegnet import models
from minisegnet.models.unet import UNet, predict_tiled, separate_touching, weight_map
from minisegnet.testing import gradcheck

# --------------------------------------------------------------------------------------------
# Instance label helpers


def random_instances(seed: int, shape: tuple[int, int], n: int) -> np.ndarray:
    """Random discs and boxes, later ones painted over earlier ones: many touch; sparse ids."""
    r = np.random.default_rng(seed)
    H, W = shape
    lab = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[:H, :W]
    ids = r.choice(np.arange(1, 10 * n + 1), size=n, replace=False)
    for k in ids:
        cy, cx = r.integers(0, H), r.integers(0, W)
        ry, rx = r.integers(1, 8, size=2)
        if r.random() < 0.5:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            m = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        lab[m] = k
    return lab


def weight_map_reference(instances, w0=10.0, sigma=5.0):
    """The formula over a full (N, H, W) stack of per-instance distance transforms (no crops)."""
    ids = [i for i in np.unique(instances) if i != 0]
    fg = instances > 0
    n, n_fg = instances.size, fg.sum()
    wc = np.where(fg, n / (2.0 * n_fg), n / (2.0 * (n - n_fg)))
    if len(ids) < 2:
        return wc
    d = np.sort(np.stack([ndimage.distance_transform_edt(instances != i) for i in ids]), axis=0)
    term = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return wc + np.where(fg, 0.0, term)


def other_instance_within(instances, gap):
    """Per pixel: does some pixel of a *different* instance lie within Chebyshev distance gap?"""
    H, W = instances.shape
    out = np.zeros(instances.shape, bool)
    for y in range(H):
        for x in range(W):
            win = instances[max(y - gap, 0) : y + gap + 1, max(x - gap, 0) : x + gap + 1]
            out[y, x] = np.any((win != 0) & (win != instances[y, x]))
    return out


@pytest.fixture(scope="module")
def nuclei():
    data = pytest.importorskip("stardist.data")
    _, mask = data.test_image_nuclei_2d(return_mask=True)
    return mask.astype(np.int32)


# --------------------------------------------------------------------------------------------
# weight_map


@pytest.mark.parametrize(
    "seed,shape,n,w0,sigma",
    [
        (0, (24, 31), 6, 10.0, 5.0),
        (1, (90, 70), 25, 10.0, 5.0),  # larger than the crop radius (29 px): crops are cut
        (2, (100, 100), 40, 10.0, 3.0),
        (3, (33, 17), 3, 5.0, 8.0),
        (4, (40, 40), 1, 10.0, 5.0),  # one instance: no second-nearest, no border term
    ],
)
def test_weight_map_matches_full_stack_reference(seed, shape, n, w0, sigma):
    inst = random_instances(seed, shape, n)
    w = weight_map(inst, w0=w0, sigma=sigma)
    assert w.dtype == np.float32 and w.shape == shape
    # Crops drop contributions below 1e-6 (weight_cutoff); float32 rounding on values up to ~w0.
    np.testing.assert_allclose(w, weight_map_reference(inst, w0, sigma), rtol=1e-6, atol=2e-6)


def test_weight_map_border_term_only_on_background():
    inst = random_instances(5, (50, 60), 15)
    w = weight_map(inst, class_weights=None)
    assert np.all(w[inst > 0] == 1.0)
    assert np.any(w[inst == 0] > 1.5)  # touching/near instances exist in this image


def test_weight_map_class_weights_balance():
    inst = random_instances(6, (64, 48), 12)
    fg = inst > 0
    wc = weight_map(inst, w0=0.0)  # only the class term
    total_fg, total_bg = wc[fg].sum(dtype=np.float64), wc[~fg].sum(dtype=np.float64)
    np.testing.assert_allclose(total_fg, total_bg, rtol=1e-6)
    assert len(np.unique(wc[fg])) == 1 and len(np.unique(wc[~fg])) == 1
    given = weight_map(inst, w0=0.0, class_weights=[0.25, 3.0])
    assert np.all(given[fg] == 3.0) and np.all(given[~fg] == 0.25)
    assert np.all(weight_map(inst, w0=0.0, class_weights=None) == 1.0)
    # The border term adds on top of the class term.
    full = weight_map(inst, class_weights=[0.25, 3.0])
    term = weight_map(inst, class_weights=[0.0, 0.0])
    np.testing.assert_allclose(full, given + term, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fill", [0, 7])
def test_weight_map_single_class_images(fill):
    inst = np.full((9, 11), fill, np.int32)
    assert np.all(weight_map(inst) == 1.0)


def test_weight_map_ids_need_not_be_consecutive(nuclei):
    assert nuclei.max() > len(np.unique(nuclei)) - 1  # the nuclei ids really are sparse
    ids = np.unique(nuclei)
    dense = np.searchsorted(ids, nuclei)  # 1..125
    huge = np.where(nuclei > 0, nuclei.astype(np.int64) * 1_000_003, 0)
    ref = weight_map(dense)
    np.testing.assert_array_equal(weight_map(nuclei), ref)
    np.testing.assert_array_equal(weight_map(huge), ref)
    np.testing.assert_array_equal(weight_map(nuclei.astype(np.uint16)), ref)


def two_instances_near(inst, size):
    """Background pixels with two different instances in their size x size neighbourhood."""
    top = np.iinfo(inst.dtype).max
    hi = ndimage.maximum_filter(inst, size=size)
    lo = ndimage.minimum_filter(np.where(inst == 0, top, inst), size=size)
    return (inst == 0) & (hi > 0) & (lo < top) & (hi != lo)


def test_weight_map_peaks_in_gaps_between_touching_nuclei(nuclei):
    inst = separate_touching(nuclei)
    w = weight_map(inst)
    bg = inst == 0
    gap1 = two_instances_near(inst, 3)  # one-pixel gaps: d1 = d2 = 1 (or sqrt 2)
    gap2 = two_instances_near(inst, 5)  # gaps up to two pixels wide (both sides carved)
    assert gap1.sum() > 50
    peak = w == w.max()
    assert peak.sum() > 10 and np.all(gap1[peak]), "the maxima sit in one-pixel gaps"
    top = w >= np.quantile(w, 0.999)  # the ~500 largest weights
    assert np.all(gap2[top]), "the largest weights lie in the gaps between touching nuclei"
    assert w[gap2].mean() > 4 * w[bg & ~gap2].mean()


def test_weight_map_nuclei_is_fast(nuclei):
    # Measured on 2 shared cores: 33-66 ms for the 512 x 512 image with 125 instances (7-12 ms
    # for separate_touching); the bound leaves room for a loaded CI machine.
    import time

    inst = separate_touching(nuclei)
    t = min(_timed(weight_map, inst, time) for _ in range(3))
    assert t < 1.0, f"weight_map took {t:.3f} s on the 512 x 512 nuclei image"


def _timed(fn, arg, time):
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


@pytest.mark.parametrize(
    "bad,exc",
    [
        (np.zeros((8, 8), np.float32), TypeError),
        (np.zeros((8, 8), bool), TypeError),
        (np.zeros((2, 8, 8), np.int32), ValueError),
        (np.zeros(8, np.int32), ValueError),
        (-np.ones((8, 8), np.int32), ValueError),
    ],
)
@pytest.mark.parametrize("fn", [weight_map, separate_touching])
def test_bad_instances(fn, bad, exc):
    with pytest.raises(exc, match="instances"):
        fn(bad)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"w0": -1.0}, "w0"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"class_weights": [1.0, 2.0, 3.0]}, "class_weights"),
    ],
)
def test_weight_map_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        weight_map(np.zeros((4, 4), np.int32), **kwargs)


# --------------------------------------------------------------------------------------------
# separate_touching


@pytest.mark.parametrize("gap", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separate_touching_against_reference(seed, gap):
    inst = random_instances(seed, (30, 37), 12)
    out = separate_touching(inst, gap=gap)
    assert out.dtype == inst.dtype and out.shape == inst.shape
    touched = (inst > 0) & other_instance_within(inst, gap)
    assert touched.any()
    # Exactly the pixels that had another instance within `gap` are removed; the rest are kept.
    np.testing.assert_array_equal(out, np.where(touched, 0, inst))
    # Afterwards no two different instances are within `gap` (8-adjacent for gap 1).
    assert not np.any((out > 0) & other_instance_within(out, gap))


def test_separate_touching_nuclei(nuclei):
    out = separate_touching(nuclei)
    removed = out != nuclei
    assert removed.any() and np.all(out[removed] == 0)
    hi = ndimage.maximum_filter(out, size=3)
    lo = ndimage.minimum_filter(np.where(out == 0, np.iinfo(np.int32).max, out), size=3)
    assert np.all((out == 0) | ((hi == out) & (lo == out))), "instances still 8-adjacent"
    assert set(np.unique(out)) <= set(np.unique(nuclei))


def test_separate_touching_gap_zero_and_bad_gap():
    inst = random_instances(3, (12, 12), 5)
    np.testing.assert_array_equal(separate_touching(inst, gap=0), inst)
    with pytest.raises(ValueError, match="gap"):
        separate_touching(inst, gap=-1)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint64])
def test_separate_touching_ids_need_not_be_consecutive(nuclei, dtype):
    ref = separate_touching(nuclei)
    big = np.iinfo(dtype).max // 200  # ids near the top of the dtype
    sparse = np.where(nuclei > 0, big - nuclei.astype(dtype), 0).astype(dtype)
    out = separate_touching(sparse)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out > 0, ref > 0)
    np.testing.assert_array_equal(out[out > 0], big - ref[ref > 0].astype(dtype))


# --------------------------------------------------------------------------------------------
# UNet: geometry


def paper_unet(**kwargs):
    return UNet(1, 2, padding="valid", batch_norm=False, **kwargs)


def closed_form_valid(s: int, depth: int) -> bool:
    """Valid lengths from the architecture (depth >= 2): s = 2^d b + 8 * 2^d - 4 with bottleneck
    output b >= 4 (b = 3 would leave 2 * 3 - 4 = 2 and then 0 pixels on the way up)."""
    return (s + 4) % 2**depth == 0 and s >= 12 * 2**depth - 4


def is_valid(model, s):
    try:
        model.output_size(s, s)
    except ValueError:
        return False
    return True


def test_paper_network_parameter_count_and_572_to_388():
    model = paper_unet()
    # The paper's network (Ronneberger et al. 2015, Fig. 1) has 31,030,658 parameters.
    assert model.num_parameters() == 31_030_658
    assert model.output_size(572, 572) == (388, 388)
    assert model.halo == (572 - 388) // 2 == 92
    assert model.input_size_for(388, 388) == (572, 572)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"contracting", "bottleneck", "expanding", "final"}


def test_paper_geometry_real_forward_at_small_width():
    # base 2 has the spatial geometry of base 64: a real 572 x 572 forward gives 388 x 388.
    msn.manual_seed(0)
    model = paper_unet(base_channels=2)
    x = np.random.default_rng(0).random((1, 1, 572, 572), np.float32)
    with msn.no_grad():
        y = model(x)
    assert y.shape == (1, 2, 388, 388) and y.dtype == np.float32


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_valid_sizes_match_the_closed_form(depth):
    model = UNet(1, 2, base_channels=1, depth=depth, padding="valid", batch_norm=False)
    assert model.halo == 6 * 2**depth - 4  # each 3x3 conv at level l costs 2^l pixels per side
    for s in range(1, 12 * 2**depth + 64):
        assert is_valid(model, s) == closed_form_valid(s, depth), s
        if is_valid(model, s):
            assert model.output_size(s, s) == (s - 2 * model.halo,) * 2


@pytest.mark.parametrize(
    "depth,shape", [(1, (18, 22)), (2, (44, 60)), (3, (92, 100)), (2, (60, 44))]
)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_valid_forward_shapes(depth, shape, batch_norm):
    model = UNet(2, 3, base_channels=2, depth=depth, padding="valid", batch_norm=batch_norm)
    x = np.random.default_rng(1).random((2, 2) + shape, np.float32)
    y = model(x)
    assert y.shape == (2, 3) + model.output_size(*shape)
    assert y.shape[2:] == tuple(s - 2 * model.halo for s in shape)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (16, 16), (33, 18), (3, 50)])
@pytest.mark.parametrize("depth", [1, 3])
def test_same_forward_any_size_equals_mirror_pad_then_crop(shape, depth):
    msn.manual_seed(2)
    model = UNet(3, 4, base_channels=2, depth=depth).eval()  # batch norm, running statistics
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, msn.nn.BatchNorm2d):
            m.running_mean[...] = np.random.default_rng(3).standard_normal(m.num_features)
            m.running_var[...] = np.random.default_rng(4).uniform(0.5, 2, m.num_features)
    x = np.random.default_rng(5).random((2, 3) + shape, np.float32)
    with msn.no_grad():
        y = model(x).data
        step = 2**depth
        bottom, right = -shape[0] % step, -shape[1] % step
        padded = np.pad(x, ((0, 0), (0, 0), (0, bottom), (0, right)), "reflect")
        ref = model(padded).data[:, :, : shape[0], : shape[1]]
    assert y.shape == (2, 4) + shape and model.output_size(*shape) == shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("h,w", [(1, 1), (388, 388), (7, 100), (129, 64)])
def test_input_size_for_is_valid_covers_and_minimal(depth, h, w):
    model = UNet(1, 2, base_channels=1, depth=depth, padding="valid", batch_norm=False)
    H, W = model.input_size_for(h, w)
    oh, ow = model.output_size(H, W)  # valid: does not raise
    assert oh >= h and ow >= w  # covers
    for s in range(1, H):  # minimal: every smaller length is invalid or does not cover h
        assert not is_valid(model, s) or model.output_size(s, s)[0] < h
    for s in range(1, W):
        assert not is_valid(model, s) or model.output_size(s, s)[1] < w
    same = UNet(1, 2, base_channels=1, depth=depth)
    assert same.input_size_for(h, w) == (h, w) and same.halo == 0


@pytest.mark.parametrize("size", [570, 571, 573, 100, 187, 1])
def test_invalid_size_names_the_nearest_valid_sizes(size):
    model = paper_unet(base_channels=1)
    with pytest.raises(ValueError, match=r"height") as err:
        model.output_size(size, 572)
    msg = str(err.value)
    assert str(size) in msg
    found = re.search(
        r"nearest valid heights are (\d+) and (\d+)|smallest valid height is (\d+)", msg
    )
    nums = [int(n) for n in found.groups() if n]
    for n in nums:
        assert closed_form_valid(n, 4)
    above = nums[-1]
    assert above > size and not any(closed_form_valid(s, 4) for s in range(size, above))
    if len(nums) == 2:
        below = nums[0]
        assert below < size and not any(closed_form_valid(s, 4) for s in range(below + 1, size))
    else:
        assert not any(closed_form_valid(s, 4) for s in range(1, size))
    with pytest.raises(ValueError, match=r"x: input width 573"):
        model(np.zeros((1, 1, 572, 573), np.float32))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_too_few_channels(padding):
    model = UNet(3, 2, base_channels=1, depth=2, padding=padding)
    with pytest.raises(ValueError, match=r"x: UNet\(in_channels=3\).*\(1, 2, 44, 44\)"):
        model(np.zeros((1, 2, 44, 44), np.float32))
    with pytest.raises(ValueError, match=r"x: .*\(3, 44, 44\)"):
        model(np.zeros((3, 44, 44), np.float32))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": -1}, "num_classes"),
        ({"base_channels": 2.0}, "base_channels"),
        ({"depth": 0}, "depth"),
        ({"padding": "full"}, "padding"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    args = {"in_channels": 1, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        UNet(**args)


def test_registry_builds_both_variants():
    valid = models.create("unet-valid", num_classes=2, in_channels=1, base_channels=2)
    assert valid.padding == "valid" and not valid.batch_norm
    assert valid.output_size(572, 572) == (388, 388)
    same = models.create("unet", num_classes=5, base_channels=2, depth=2)
    assert same.padding == "same" and same.batch_norm
    assert same(np.zeros((2, 3, 13, 9), np.float32)).shape == (2, 5, 13, 9)


# --------------------------------------------------------------------------------------------
# UNet: gradients


def module_gradcheck(model, x):
    """gradcheck over the input and every parameter (swapped for gradcheck's float64 copies)."""
    slots = [(m, n) for m in model.modules() for n, p in m._parameters.items() if p is not None]
    originals = [m._parameters[n] for m, n in slots]

    def fn(inp, *params):
        for (m, n), p in zip(slots, params):
            m._parameters[n] = p
        return model(inp)

    try:
        return gradcheck(fn, [x] + [p.data for p in originals], atol=1e-6, rtol=1e-4)
    finally:
        for (m, n), p in zip(slots, originals):
            m._parameters[n] = p


def test_gradcheck_tiny_valid_unet():
    msn.manual_seed(3)
    model = UNet(1, 2, base_channels=1, depth=1, padding="valid", batch_norm=False).double()
    x = np.random.default_rng(6).standard_normal((1, 1, 18, 20))
    assert module_gradcheck(model, x)


def test_gradcheck_tiny_same_unet_with_batch_norm_and_mirror_gather():
    msn.manual_seed(4)
    model = UNet(1, 2, base_channels=1, depth=1).double()  # training mode: batch statistics
    x = np.random.default_rng(7).standard_normal((2, 1, 1, 5))  # 1 row: padded by repetition
    assert module_gradcheck(model, x)


# --------------------------------------------------------------------------------------------
# UNet: parity with the same network in PyTorch

@pytest.fixture(scope="module")
def pt():
    t = pytest.importorskip("torch")
    return t


def torch_unet(t, model):
    """The same U-Net written in PyTorch, module for module (names match our state dict)."""
    tnn = t.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, p, bn):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, padding=p, bias=not bn)
            self.bn1 = tnn.BatchNorm2d(cout) if bn else tnn.Identity()
            self.conv2 = tnn.Conv2d(cout, cout, 3, padding=p, bias=not bn)
            self.bn2 = tnn.BatchNorm2d(cout) if bn else tnn.Identity()

        def forward(self, x):
            return t.relu(self.bn2(self.conv2(t.relu(self.bn1(self.conv1(x))))))

    class Up(Block):
        def __init__(self, cin, p, bn):
            super().__init__(cin, cin // 2, p, bn)
            self.upconv = tnn.ConvTranspose2d(cin, cin // 2, 2, stride=2, bias=not bn)

        def forward(self, x, skip):
            x = self.upconv(x)
            dh, dw = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
            skip = skip[:, :, dh : dh + x.shape[2], dw : dw + x.shape[3]]
            return super().forward(t.cat([skip, x], 1))

    class TorchUNet(tnn.Module):
        def __init__(self, cin, k, base, depth, padding, bn):
            super().__init__()
            p = 1 if padding == "same" else 0
            self.step, self.same = 2**depth, padding == "same"
            w = [base * 2**i for i in range(depth + 1)]
            self.contracting = tnn.ModuleList(
                [Block(a, b, p, bn) for a, b in zip([cin] + w[:-2], w[:-1])]
            )
            self.bottleneck = Block(w[-2], w[-1], p, bn)
            self.expanding = tnn.ModuleList([Up(c, p, bn) for c in reversed(w[1:])])
            self.final = tnn.Conv2d(w[0], k, 1)

        def forward(self, x):
            H, W = x.shape[2:]
            if self.same:
                x = t.nn.functional.pad(x, (0, -W % self.step, 0, -H % self.step), mode="reflect")
            skips = []
            for block in self.contracting:
                x = block(x)
                skips.append(x)
                x = t.nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for block, skip in zip(self.expanding, reversed(skips)):
                x = block(x, skip)
            return self.final(x)[:, :, :H, :W]

    tm = TorchUNet(model.in_channels, model.num_classes, model.base_channels, model.depth,
                   model.padding, model.batch_norm)
    state = {k: t.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    assert set(state) == set(tm.state_dict()), "module names differ from the PyTorch twin"
    tm.load_state_dict(state)
    return tm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "padding,batch_norm,depth,shape,train",
    [
        ("valid", False, 2, (44, 52), True),
        ("valid", True, 3, (92, 100), True),
        ("same", True, 2, (21, 30), True),
        ("same", True, 3, (40, 24), False),
        ("same", False, 1, (7, 9), True),
    ],
)
def test_parity_with_pytorch(pt, padding, batch_norm, depth, shape, train, dtype):
    t = pt
    msn.manual_seed(8)
    model = UNet(2, 3, base_channels=4, depth=depth, padding=padding, batch_norm=batch_norm)
    model.to(dtype)
    tm = torch_unet(t, model).to(getattr(t, np.dtype(dtype).name))
    model.train(train)
    tm.train(train)
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 2) + shape).astype(dtype)
    y = model(msn.Tensor(x))
    ty = tm(t.from_numpy(x))
    assert y.shape == tuple(ty.shape)
    scale = float(np.abs(ty.detach().numpy()).max())
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=tol, atol=tol * scale)
    v = r.standard_normal(y.shape).astype(dtype)
    y.backward(v)
    (ty * t.from_numpy(v)).sum().backward()
    tgrads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    # Per-tensor scale with a floor: an up-conv bias followed by batch norm has a gradient that is
    # zero in exact arithmetic, only rounding noise in both.
    floor = 1e-2 * max(float(np.abs(g).max()) for g in tgrads.values())
    for name, p in model.named_parameters():
        g = tgrads[name]
        scale = max(float(np.abs(g).max()), floor)
        np.testing.assert_allclose(p.grad, g, rtol=tol * 10, atol=tol * 10 * scale, err_msg=name)
    if batch_norm and train:  # running statistics updated alike
        ours, theirs = model.state_dict(), tm.state_dict()
        for k in ours:
            if "running" in k:
                np.testing.assert_allclose(
                    ours[k], theirs[k].numpy(), rtol=1e-4, atol=1e-6, err_msg=k
                )


# --------------------------------------------------------------------------------------------
# Overlap-tile inference


def whole_mirrored_pass(model, img):
    """One pass over the image mirrored by the halo (and to a valid size at the bottom/right)."""
    _, H, W = img.shape
    halo = model.halo
    sh, sw = model.input_size_for(H, W)
    mirrored = np.pad(img, ((0, 0), (halo, sh - H - halo), (halo, sw - W - halo)), mode="reflect")
    with msn.no_grad():
        return model.eval()(mirrored[None]).data[0, :, :H, :W]


@pytest.fixture(scope="module")
def valid_unet():
    msn.manual_seed(10)
    return UNet(2, 3, base_channels=2, depth=2, padding="valid", batch_norm=False)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (5, 3), (1, 9), (100, 21)])
@pytest.mark.parametrize("tile", [4, 12, (8, 20), None])
def test_predict_tiled_valid_equals_whole_mirrored_pass(valid_unet, shape, tile):
    img = np.random.default_rng(11).random((2,) + shape, np.float32)
    out = predict_tiled(valid_unet, img, tile=tile)
    ref = whole_mirrored_pass(valid_unet, img)
    assert out.shape == (3,) + shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.argmax(0), ref.argmax(0))


def test_predict_tiled_valid_depth3_many_tiles():
    msn.manual_seed(12)
    model = UNet(1, 2, base_channels=2, depth=3, padding="valid", batch_norm=True)
    model.train()
    img = np.random.default_rng(13).random((131, 70), np.float32)  # 2-D: one channel
    out = predict_tiled(model, img, tile=(16, 30))
    assert model.training, "the model's mode is restored"
    ref = whole_mirrored_pass(model, img[None])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.argmax(0), ref.argmax(0))


@pytest.mark.parametrize(
    "depth,shape,tile",
    [(2, (61, 90), 8), (2, (61, 90), (16, 24)), (2, (3, 5), 4), (3, (50, 33), 16),
     (2, (30, 70), None)],
)
def test_predict_tiled_same_equals_whole_pass(depth, shape, tile):
    msn.manual_seed(14)
    model = UNet(3, 2, base_channels=2, depth=depth).eval()
    img = np.random.default_rng(15).random((3,) + shape, np.float32)
    out = predict_tiled(model, img, tile=tile)
    assert not model.training
    with msn.no_grad():
        ref = model(img[None]).data[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.argmax(0), ref.argmax(0))


def test_predict_tiled_same_needs_its_margin(monkeypatch):
    # The margin is what makes tiles agree: with less than the zero-padding reach they differ.
    msn.manual_seed(16)
    model = UNet(1, 2, base_channels=2, depth=2).eval()
    img = np.random.default_rng(17).random((1, 64, 64), np.float32)
    with msn.no_grad():
        ref = model(img[None]).data[0]
    assert model._context() == 24  # reach 22 (2 -> 1 -> 3 -> 2 -> 4 -> 10 -> 22), on the 4-grid
    monkeypatch.setattr(model, "_context", lambda: 12)
    assert np.abs(predict_tiled(model, img, tile=8) - ref).max() > 1e-3


@pytest.mark.parametrize("tile", [0, -4, (4,), (4, 4, 4), 2.5, "8", True, 3, (16, 2)])
def test_predict_tiled_bad_tile(valid_unet, tile):
    with pytest.raises(ValueError, match="tile"):
        predict_tiled(valid_unet, np.zeros((2, 20, 20), np.float32), tile=tile)


def test_predict_tiled_bad_image(valid_unet):
    with pytest.raises(ValueError, match=r"image: expected \(2, H, W\).*\(3, 20, 20\)"):
        predict_tiled(valid_unet, np.zeros((3, 20, 20), np.float32))
    with pytest.raises(ValueError, match="image"):
        predict_tiled(valid_unet, np.zeros((20, 20), np.float32))
    with pytest.raises(TypeError, match="model"):
        predict_tiled(lambda x: x, np.zeros((2, 20, 20), np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (20, 3)])
def test_predict_tiled_paper_geometry_on_images_smaller_than_the_halo(shape):
    # Depth 4, halo 92: a one-tile image is mirrored many times over (np.pad's repeated reflect).
    msn.manual_seed(18)
    model = paper_unet(base_channels=1)
    img = np.random.default_rng(19).random(shape, np.float32)
    out = predict_tiled(model, img, tile=388)
    ref = whole_mirrored_pass(model, img[None])
    assert out.shape == (2,) + shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
