"""minisegnet.data: the dataset contract, the nuclei split and relabelling, the generators, and
the patch sampler's alignment of image, labels and weights under every augmentation."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from minisegnet import data

SMALL = {"nuclei": {}, "shapes": {"n": 6, "size": 32}, "digits": {"n": 6}}


def _needs(name: str) -> None:
    if name == "nuclei":
        pytest.importorskip("stardist")
    if name == "digits":
        pytest.importorskip("sklearn")


# ---------------------------------------------------------------------------------------------
# The contract every dataset keeps


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", data.list_datasets())
def test_dataset_contract(name, split):
    _needs(name)
    d = data.load(name, split, **SMALL[name])
    N, C, H, W = d.images.shape
    assert (d.name, d.split, len(d)) == (name, split, N) and N > 0
    assert d.images.dtype == np.float32 and 0 <= d.images.min() and d.images.max() <= 1
    assert d.labels.dtype == np.int64 and d.labels.shape == (N, H, W)
    assert d.labels.min() >= -1 and d.labels.max() < d.num_classes == len(d.class_names)
    assert d.class_names[0] == "background" and d.in_channels == C
    if d.instances is not None:
        assert d.instances.dtype == np.int32 and d.instances.shape == (N, H, W)
        for inst, lab in zip(d.instances, d.labels):
            ids = np.unique(inst)
            assert ids.tolist() == list(range(ids.max() + 1))  # 0 = background, then 1..n
            assert not (lab[inst == 0] > 0).any()  # no class outside every instance
    if d.weights is not None:
        assert d.weights.dtype == np.float32 and d.weights.shape == (N, H, W)
        assert d.weights.min() > 0
    assert d.normalization["method"] in ("percentile", "range")
    assert name in repr(d) and "images=float32" in repr(d)


def test_list_and_bad_names():
    assert data.list_datasets()[0] == "nuclei"
    assert set(data.list_datasets()) == {"nuclei", "shapes", "digits"}
    with pytest.raises(ValueError, match="nuclei, shapes, digits"):
        data.load("cityscapes")
    with pytest.raises(ValueError, match="split"):
        data.load("shapes", "val")
    with pytest.raises(TypeError, match="colour"):
        data.load("shapes", colour=True)


@pytest.mark.parametrize("name, modules", [
    ("nuclei", ["stardist", "stardist.data"]),
    ("digits", ["sklearn", "sklearn.datasets"]),
])
def test_missing_extra_names_it(monkeypatch, name, modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import of m now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'minisegnet\[data\]'"):
        data.load(name)


# ---------------------------------------------------------------------------------------------
# nuclei


@pytest.fixture(scope="module")
def raw_nuclei():
    sd = pytest.importorskip("stardist.data")
    return sd.test_image_nuclei_2d(return_mask=True)


def test_nuclei_halves_relabelled(raw_nuclei):
    raw, mask = raw_nuclei
    assert len(np.unique(mask)) - 1 == 125 and mask.max() == 183  # the sparse ids to fix
    counts = {}
    for split, rows in (("train", slice(0, 256)), ("test", slice(256, 512))):
        d = data.load("nuclei", split, weights=False)
        inst = d.instances[0]
        # the split's rows, normalised on their own as `predict` normalises a raw image
        np.testing.assert_array_equal(d.images[0, 0],
                                      data.normalize(raw[rows], d.normalization))
        old = mask[rows]
        n_old = len(np.unique(old)) - 1
        assert inst.max() == n_old  # 1..n, n = the nuclei present in this half
        # the relabelling is a bijection of ids: same partition of the pixels
        pairs = np.unique(np.stack([old.ravel(), inst.ravel()]), axis=1)
        assert pairs.shape[1] == n_old + 1 and ((pairs[0] == 0) == (pairs[1] == 0)).all()
        lo, hi = np.percentile(raw[rows], [1, 99.8])
        assert d.normalization == {"method": "percentile", "low": 1.0, "high": 99.8, "clip": True}
        assert d.info["raw_percentiles"] == pytest.approx([lo, hi])
        counts[split] = n_old
    # nuclei cut by row 256 are counted in both halves
    cut = len(np.intersect1d(np.unique(mask[255]), np.unique(mask[256]))[1:])
    assert counts["train"] + counts["test"] == 125 + cut
    assert (counts["train"], counts["test"]) == (64, 67)


def test_nuclei_separation_and_weights(raw_nuclei):
    from minisegnet.models.unet import separate_touching, weight_map

    tr = data.load("nuclei", "train")  # defaults: weights on, gaps carved
    inst = tr.instances[0]
    carved = separate_touching(inst)
    np.testing.assert_array_equal(tr.labels[0], (carved > 0).astype(np.int64))
    assert (tr.labels[0] != (inst > 0)).sum() > 0  # the top half has touching nuclei
    np.testing.assert_array_equal(tr.weights[0], weight_map(carved))
    te = data.load("nuclei", "test")  # evaluation labels: the annotation as drawn
    np.testing.assert_array_equal(te.labels[0], (te.instances[0] > 0).astype(np.int64))
    plain = data.load("nuclei", "train", weights=False)
    assert plain.weights is None
    np.testing.assert_array_equal(plain.labels[0], (inst > 0).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# normalize


def test_normalize_percentile_and_range():
    r = np.random.default_rng(0)
    raw = r.integers(0, 4000, size=(30, 40)).astype(np.uint16)
    norm = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": True}
    out = data.normalize(raw, norm)
    lo, hi = np.percentile(raw.astype(float), [1, 99.8])
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out, np.clip((raw - lo) / (hi - lo), 0, 1), rtol=1e-6, atol=1e-7)
    # gain and offset of the instrument do not matter
    np.testing.assert_allclose(data.normalize(raw.astype(float) * 3 + 100, norm), out, atol=1e-6)
    rng_norm = {"method": "range", "low": 0.0, "high": 1.0, "clip": True}
    u8 = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(data.normalize(u8, rng_norm), [[0, 0.2, 1]], rtol=1e-6)
    np.testing.assert_allclose(data.normalize(np.array([[-1, 0.5, 2.0]]), rng_norm), [[0, .5, 1]])
    assert (data.normalize(np.full((4, 4), 7, np.uint16), norm) == 0).all()  # constant: no NaN
    with pytest.raises(ValueError, match="raw"):
        data.normalize(np.zeros((2, 3, 4, 5)), norm)
    with pytest.raises(ValueError, match="method"):
        data.normalize(raw, {"method": "zscore"})


# ---------------------------------------------------------------------------------------------
# shapes and digits


def test_shapes_seeded_and_visible_consistent():
    a = data.load("shapes", n=12, size=48, seed=3)
    b = data.load("shapes", n=12, size=48, seed=3)
    for x, y in ((a.images, b.images), (a.labels, b.labels), (a.instances, b.instances)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, data.load("shapes", n=12, size=48, seed=4).images)
    assert not np.array_equal(a.images, data.load("shapes", "test", n=12, size=48, seed=3).images)
    # image i depends on (seed, split, i) only
    np.testing.assert_array_equal(a.images[:5], data.load("shapes", n=5, size=48, seed=3).images)
    assert set(np.unique(a.labels)) == {0, 1, 2, 3}
    for lab, inst in zip(a.labels, a.instances):
        assert ((lab > 0) == (inst > 0)).all()
        for k in range(1, inst.max() + 1):
            obj = inst == k
            assert len(np.unique(lab[obj])) == 1  # one class per object
            assert ndimage.label(obj)[1] == 1  # one visible piece per instance id


def test_shapes_weights_and_gaps():
    from minisegnet.models.unet import separate_touching, weight_map

    d = data.load("shapes", n=8, size=48, weights=True)
    for lab, inst, w in zip(d.labels, d.instances, d.weights):
        carved = separate_touching(inst)
        assert ((lab > 0) == (carved > 0)).all()
        np.testing.assert_array_equal(w, weight_map(carved))


def test_digits_split_and_labels():
    pytest.importorskip("sklearn")
    from minisegnet.data import digits

    tr, te = digits.split_indices("train"), digits.split_indices("test")
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 1797
    d = data.load("digits", n=40, noise=0.0, seed=1)
    # without noise a pixel is a digit's class exactly where the digit reaches the threshold
    np.testing.assert_array_equal(d.labels > 0, d.images[:, 0] >= 0.3)
    assert len(np.unique(d.labels)) == 11 and d.instances is None and d.images.shape[1] == 1
    again = data.load("digits", n=40, noise=0.0, seed=1)
    np.testing.assert_array_equal(d.images, again.images)


# ---------------------------------------------------------------------------------------------
# patches


def _coordinate_set(H=37, W=45, N=2):
    """Images whose channels are the pixel's own (row, col), labels its flat index, weights
    1 + row: after any augmentation each output pixel says where it came from."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    images = np.stack([np.stack([rows, cols])] * N)  # (N, 2, H, W)
    labels = np.stack([np.arange(H * W).reshape(H, W)] * N).astype(np.int64)
    weights = np.stack([1 + rows] * N)
    return SimpleNamespace(images=images, labels=labels, weights=weights), H, W


def _check_aligned(xb, yb, wb, W, tol):
    halo = (xb.shape[-1] - yb.shape[-1]) // 2
    inner = xb[:, :, halo:xb.shape[-1] - halo, halo:xb.shape[-1] - halo]
    valid = yb >= 0
    r, c = np.divmod(yb, W)
    assert np.abs(inner[:, 0][valid] - r[valid]).max() <= tol
    assert np.abs(inner[:, 1][valid] - c[valid]).max() <= tol
    assert np.abs(wb[valid] - (1 + r[valid])).max() <= tol
    assert (wb[~valid] == 0).all()


@pytest.mark.parametrize("label_size", [None, 16])
def test_patches_flips_and_rotations_keep_alignment(label_size):
    ds, H, W = _coordinate_set()
    it = data.patches(ds, 24, 16, seed=1, label_size=label_size)
    seen = set()
    for _ in range(4):
        xb, yb, wb = next(it)
        assert xb.shape == (16, 2, 24, 24) and xb.dtype == np.float32
        L = label_size or 24
        assert yb.shape == (16, L, L) and yb.dtype == np.int64 and wb.dtype == np.float32
        assert (yb >= 0).all()  # label crops lie inside the image
        _check_aligned(xb, yb, wb, W, tol=0)
        for y in yb:  # orientation of the patch: where its first row and column step to
            r, c = np.divmod(y, W)
            seen.add((r[0, 1] - r[0, 0], c[0, 1] - c[0, 0], r[1, 0] - r[0, 0], c[1, 0] - c[0, 0]))
    assert len(seen) == 8  # the 8 symmetries of the square all occur
    plain = data.patches(ds, 24, 16, seed=1, augment=False)
    r, c = np.divmod(next(plain)[1], W)
    assert (np.diff(c, axis=2) == 1).all() and (np.diff(r, axis=1) == 1).all()


@pytest.mark.parametrize("label_size", [None, 20])
def test_patches_elastic_keeps_alignment(label_size):
    ds, H, W = _coordinate_set()
    xb, yb, wb = next(data.patches(ds, 32, 12, seed=2, elastic=True, label_size=label_size))
    # bilinear image of a linear ramp = the sample position; nearest label within half a pixel
    _check_aligned(xb, yb, wb, W, tol=0.5 + 1e-4)
    rigid = next(data.patches(ds, 32, 12, seed=2, label_size=label_size))
    assert not np.array_equal(xb, rigid[0])  # it did deform
    assert (yb == -1).any()  # displaced samples beyond the border are ignored, not invented


@pytest.mark.parametrize("size, label_size, hw", [
    (24, None, (37, 45)), (40, 20, (37, 45)), (64, None, (37, 45)),
    (60, 20, (9, 14)),  # padding several times the image: mirrored again and again
])
def test_elastic_sigma_zero_is_identity(size, label_size, hw):
    ds, H, W = _coordinate_set(*hw)  # size > H: a too-small image, padded
    a = data.patches(ds, size, 6, seed=5, elastic=False, label_size=label_size)
    b = data.patches(ds, size, 6, seed=5, elastic=0.0, label_size=label_size)
    for _ in range(3):
        for u, v in zip(next(a), next(b)):
            np.testing.assert_array_equal(u, v)


def test_small_images_padded_with_ignore():
    ds, H, W = _coordinate_set(H=20, W=30, N=1)
    xb, yb, wb = next(data.patches(ds, 40, 3, seed=0))
    for y, x in zip(yb, xb):
        # every image pixel exactly once, -1 around it; the image itself is mirrored, not zero
        assert sorted(y[y >= 0].tolist()) == list(range(H * W))
        assert (x[:, y < 0] >= 0).all() and x[0][y < 0].max() > 0
    _check_aligned(xb, yb, wb, W, tol=0)


def test_elastic_displacement_is_the_papers():
    from minisegnet.data.patches import elastic_displacement

    size = 129  # odd: the grid's middle point falls on a pixel
    d = elastic_displacement(np.random.default_rng(7), size, sigma=10.0)
    g = np.random.default_rng(7).normal(0.0, 10.0, size=(2, 3, 3))
    at = [0, size // 2, size - 1]
    np.testing.assert_allclose(d[:, at][:, :, at], g, atol=1e-9)  # passes through the grid
    step = np.abs(np.diff(d, axis=1)).max(), np.abs(np.diff(d, axis=2)).max()
    assert max(step) < 4 * np.abs(g).max() / (size / 2)  # smooth: no jumps between pixels


def test_patches_seeded_and_weights_switch():
    pytest.importorskip("stardist")
    tr = data.load("nuclei")
    for kw in ({}, {"elastic": True}):
        a = data.patches(tr, 64, 4, seed=[3, 1], **kw)
        b = data.patches(tr, 64, 4, seed=[3, 1], **kw)
        c = data.patches(tr, 64, 4, seed=[3, 2], **kw)
        for _ in range(3):
            ba, bb, bc = next(a), next(b), next(c)
            for u, v in zip(ba, bb):
                np.testing.assert_array_equal(u, v)
            assert not np.array_equal(ba[0], bc[0])
    assert next(data.patches(tr, 64, 2, weights=False))[2] is None
    shapes = data.load("shapes", n=3, size=32)  # no weight maps
    assert next(data.patches(shapes, 32, 2))[2] is None


def test_patches_bad_input():
    ds, H, W = _coordinate_set()
    with pytest.raises(ValueError, match="label_size"):
        data.patches(ds, 24, 2, label_size=30)
    with pytest.raises(ValueError, match="label_size"):
        data.patches(ds, 24, 2, label_size=21)
    with pytest.raises(ValueError, match="elastic"):
        data.patches(ds, 24, 2, elastic=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        data.patches(ds, 24, 0)
    bad = SimpleNamespace(images=ds.images, labels=ds.labels[:, :10], weights=None)
    with pytest.raises(ValueError, match="labels"):
        data.patches(bad, 24, 2)
