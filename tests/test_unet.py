"""U-Net: the border weight map and touching-instance separation against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from minisegnet.models.unet import separate_touching, weight_map

# --------------------------------------------------------------------------------------------
# Instance label helpers


def random_instances(seed: int, shape: tuple[int, int], n: int, sparse_ids: bool = True) -> np.ndarray:
    """Random discs and boxes, later ones painted over earlier ones: many touch, ids non-consecutive."""
    r = np.random.default_rng(seed)
    H, W = shape
    lab = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[:H, :W]
    ids = r.choice(np.arange(1, 10 * n + 1), size=n, replace=False) if sparse_ids else np.arange(1, n + 1)
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
    np.testing.assert_allclose(wc[fg].sum(dtype=np.float64), wc[~fg].sum(dtype=np.float64), rtol=1e-6)
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
    # Measured on 2 shared cores: ~65 ms for the 512 x 512 image with 125 instances (10 ms for
    # separate_touching); the bound leaves room for a loaded CI machine.
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
