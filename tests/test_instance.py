"""The instance pipeline (minisegnet.instance): mask targets, jittered boxes, training, pasting,
scoring, proposals, the ``train --model maskhead`` run directory, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import minisegnet as msn
from minisegnet import cli, data, instance, metrics, nn
from minisegnet.models.mask_head import paste_masks
from minisegnet.training import load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def nuclei():
    return (data.load("nuclei", split="train", weights=False),
            data.load("nuclei", split="test", weights=False))


def rectangles(rng, shape=(64, 80), n=5, min_side=1):
    """An instance image of n non-overlapping axis-aligned rectangles and their (x0, y0, x1, y1)."""
    inst = np.zeros(shape, np.int32)
    rects = []
    while len(rects) < n:
        h, w = rng.integers(min_side, 40, 2)
        y0, x0 = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
        if inst[y0:y0 + h, x0:x0 + w].any():
            continue
        inst[y0:y0 + h, x0:x0 + w] = len(rects) + 1
        rects.append((x0, y0, x0 + w, y0 + h))
    return inst, np.array(rects, np.float64)


def inside_weight(u, lo, hi, n):
    """Bilinear weight that a sample at pixel-edge coordinate u puts on pixels lo..hi-1 of an
    axis of n pixels (RoIAlign's clamping: index coordinate c = u - 0.5)."""
    c = u - 0.5
    out = np.zeros_like(c)
    for k, ck in enumerate(c):
        if ck < -1 or ck > n:
            continue
        ck = max(ck, 0.0)
        i0 = int(ck)
        i1 = i0 + 1
        if i0 >= n - 1:
            i0 = i1 = n - 1
            ck = float(i0)
        lam = ck - i0
        out[k] = (1 - lam) * (lo <= i0 < hi) + lam * (lo <= i1 < hi)
    return out


# ----------------------------------------------------------------------------- mask targets


@pytest.mark.parametrize("seed", range(3))
def test_box_covering_a_rectangle_gives_an_all_ones_target(seed):
    """Sides >= 12 px: the corner cell's sample weighs (1/2 + w/56)(1/2 + h/56) >= 1/2 on the
    rectangle. (A thinner box loses its corner cells, as in detectron2; next test.)"""
    inst, rects = rectangles(np.random.default_rng(seed), min_side=12)
    boxes, ids = instance.boxes_from_instances(inst)
    np.testing.assert_array_equal(boxes, rects)  # pixel-edge boxes: [x0, y0, x1 + 1, y1 + 1]
    masks, _ = metrics.masks_from_instances(inst)
    t = instance.mask_targets(masks, boxes, np.arange(len(ids)), 28)
    assert t.shape == (len(ids), 28, 28) and t.dtype == np.float32
    assert (t == 1).all()


@pytest.mark.parametrize("seed", range(4))
def test_mask_target_is_the_thresholded_bilinear_sample_at_the_cell_centres(seed):
    """A box of at most 28 px has one sample per cell, at the cell centre
    ``x1 + (j + 0.5) w / 28``; on a rectangle the bilinear sample is the product of the two
    axes' inside weights, and the target is that product >= 0.5. Thin and partly covering boxes
    included."""
    rng = np.random.default_rng(seed)
    inst, rects = rectangles(rng, n=4)
    masks, _ = metrics.masks_from_instances(inst)
    H, W = inst.shape
    boxes, index = [], []
    for k in range(4):
        x0, y0, x1, y1 = rects[k]
        boxes.append([x0, y0, x1, y1])  # the exact box (thin ones lose corners)
        for _ in range(3):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            w, h = rng.uniform(2, 28, 2)
            b = np.array([cx - w * rng.uniform(0.1, 0.9), cy - h * rng.uniform(0.1, 0.9), 0, 0])
            b[2:] = b[:2] + (w, h)
            boxes.append(np.clip(b, 0, [W, H, W, H]).tolist())
        index += [k] * 4
    boxes, index = np.array(boxes), np.array(index)
    small = (boxes[:, 2:] - boxes[:, :2]).max(1) <= 28  # one sample per cell
    boxes, index = boxes[small], index[small]
    assert len(boxes) >= 10
    t = instance.mask_targets(masks, boxes, index, 28)
    for k, (b, g) in enumerate(zip(boxes, index, strict=True)):
        x0, y0, x1, y1 = rects[g]
        u = b[0] + (np.arange(28) + 0.5) * (b[2] - b[0]) / 28
        v = b[1] + (np.arange(28) + 0.5) * (b[3] - b[1]) / 28
        value = inside_weight(v, y0, y1, H)[:, None] * inside_weight(u, x0, x1, W)[None, :]
        expected = (value >= 0.5).astype(np.float32)
        close = np.abs(value - 0.5) < 1e-4  # float32 ties at exactly one half: either way
        np.testing.assert_array_equal(t[k][~close], expected[~close], err_msg=f"box {b}")


def test_other_instances_in_the_box_are_background():
    inst = np.zeros((40, 40), np.int32)
    inst[10:20, 10:20] = 1
    inst[10:20, 20:30] = 2  # touching neighbour to the right
    masks, _ = metrics.masks_from_instances(inst)
    t = instance.mask_targets(masks, np.array([[10.0, 10, 30, 20]]), np.array([0]), 28)[0]
    assert (t[:, :14] == 1).all() and (t[:, 14:] == 0).all()


# ----------------------------------------------------------------------------- jittered boxes


@pytest.mark.parametrize("jitter", [0.1, 0.3, 0.6])
def test_jittered_boxes_keep_iou_at_least_one_half(jitter):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (50, 2))
    gt = np.concatenate([xy, xy + rng.uniform(2, 40, (50, 2))], 1)
    out, idx = instance.jitter_boxes(gt, rng, jitter=jitter, per_box=3, image_size=(256, 256))
    assert out.shape == (150, 4)
    np.testing.assert_array_equal(idx, np.repeat(np.arange(50), 3))
    iou = np.diag(msn.functional.box_iou(out, gt[idx]).numpy())
    assert (iou >= 0.5 - 1e-12).all()
    assert (out[:, 2:] >= out[:, :2]).all() and (out >= 0).all() and (out <= 256).all()
    if jitter <= 0.3:  # they do move (past that, redraws fail more often and give the box)
        assert (iou < 1 - 1e-9).mean() > 0.9
    assert np.abs(out - gt[idx]).max() <= jitter * 40 + 1e-9


# ----------------------------------------------------------------------------- the network


def test_masknet_shapes_and_the_pooler_slot():
    msn.manual_seed(0)
    x = np.random.default_rng(0).random((2, 1, 48, 64)).astype(np.float32)
    boxes = np.array([[0, 3.2, 5.1, 30.7, 22.9], [1, 10, 10, 40, 40]], np.float32)
    a = instance.MaskNet(1, 2, width=2, head_width=4, stride=4)
    assert a.features(x).shape == (2, 8, 12, 16)
    assert a(x, boxes).shape == (2, 2, 28, 28)
    p = instance.MaskNet(1, 2, width=2, head_width=4, stride=4, pooler="pool")
    assert isinstance(p.mask_head.roi_align, nn.RoIPool)
    assert isinstance(a.mask_head.roi_align, nn.RoIAlign)
    p.load_state_dict(a.state_dict())  # same parameters: only the RoI operator differs
    ya, yp = a(x, boxes).numpy(), p(x, boxes).numpy()
    assert yp.shape == ya.shape and not np.allclose(ya, yp)


def test_head_overfits_a_few_nuclei(nuclei):
    train, _ = nuclei
    msn.manual_seed(0)
    net = instance.MaskNet(1, 1, width=4, head_width=8)
    batch = instance.sample_batch(train, np.random.default_rng(0), batch=1, patch=64)
    opt = msn.optim.Adam(net.parameters(), lr=3e-3)
    losses = [instance._step(net, opt, batch, "cpu") for _ in range(60)]
    assert len(batch[1]) >= 4
    assert losses[-1] < 0.4 * losses[0], (losses[0], losses[-1])


def box_filling_masks(dataset):
    """Every ground-truth box filled: the mask a head that learned nothing but the box gives."""
    dets = []
    for inst in dataset.instances:
        boxes, _ = instance.boxes_from_instances(inst)
        ones = np.ones((len(boxes), 28, 28), np.float32)
        masks = np.asarray(paste_masks(ones, boxes, inst.shape))
        scores = np.ones(len(boxes))
        dets.append(instance.Detections(masks, scores, boxes, np.ones(len(boxes), np.int64),
                                        instance._label_image(masks, scores, inst.shape)))
    return instance.score_detections(dets, dataset.instances)


def test_short_training_with_gt_boxes_beats_box_filling_masks(nuclei):
    """With ground-truth boxes, 40 steps of a tiny network: mask AP@0.5 >= 0.8, and well above
    the no-shape baseline where shape matters. (Nuclei fill ~3/4 of their box, so filling every
    box already scores AP@0.5 ~0.98 on the test half; at IoU 0.7-0.8 it drops to 0.5 / 0.15 /
    0.01, and the learned masks must beat that.)"""
    train, test = nuclei
    msn.manual_seed(0)
    net = instance.MaskNet(1, 1, width=4, head_width=8)
    instance.fit(net, train, steps=40, batch=2, patch=96, lr=3e-3, seed=0)
    res, dets = instance.evaluate(net, test)
    base = box_filling_masks(test)
    g = res["gt_boxes"]
    assert g["mask_ap50"] >= 0.8, g
    tight = slice(4, 7)  # IoU 0.7, 0.75, 0.8
    assert (np.mean(g["mask_ap_per_threshold"][tight])
            > np.mean(base["mask_ap_per_threshold"][tight]) + 0.08), (g, base)
    assert g["mask_ap"] > base["mask_ap"]
    assert len(dets["gt_boxes"][0].masks) <= test.instances.max()


@pytest.mark.slow
def test_longer_training_gt_boxes_ap50_at_least_0_8_and_proposals_work(nuclei):
    train, test = nuclei
    msn.manual_seed(1)
    net = instance.MaskNet(1, 1, width=8, head_width=16)
    losses = instance.fit(net, train, steps=150, batch=2, patch=128, lr=2e-3, seed=1)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    # proposals: the truth's own components grown by the margin, from a one-hot "probability"
    probs = np.stack([test.instances[0] == 0, test.instances[0] > 0]).astype(np.float32)
    props = [instance.proposals_from_semantic(probs)]
    res, _ = instance.evaluate(net, test, props)
    assert res["gt_boxes"]["mask_ap50"] >= 0.9 and res["gt_boxes"]["mask_ap"] >= 0.6, res
    assert res["proposals"]["mask_ap50"] >= 0.6, res


# ----------------------------------------------------------------------------- pasting and scoring


def test_paste_and_match_round_trip_on_ground_truth(nuclei):
    _, test = nuclei
    inst = test.instances[0]
    boxes, ids = instance.boxes_from_instances(inst)
    masks, _ = metrics.masks_from_instances(inst)
    targets = instance.mask_targets(masks, boxes, np.arange(len(ids)), 28)
    pasted = np.asarray(paste_masks(targets, boxes, inst.shape))
    iou = [metrics.mask_iou(p, m) for p, m in zip(pasted, masks, strict=True)]
    big = masks.sum((1, 2)) >= 100
    assert min(iou) >= 0.5 and np.median(np.array(iou)[big]) > 0.85
    scores = np.linspace(1, 0.5, len(ids))
    det = instance.Detections(pasted, scores, boxes, np.ones(len(ids), np.int64),
                              instance._label_image(pasted, scores, inst.shape))
    res = instance.score_detections([det], test.instances)
    assert res["instance_accuracy_50"] == 1.0 and res["mask_ap50"] == 1.0
    assert res["instances_true"] == res["instances_pred"] == len(ids)
    assert metrics.matching(inst, det.instances, 0.5)["accuracy"] == 1.0


def test_predict_masks_scores_nms_and_the_label_image():
    """A 'model' whose mask is the whole box: duplicates of one box are removed by NMS, the
    label image holds the survivors, scores are the mean probability inside the mask."""

    class Constant(instance.MaskNet):
        def forward(self, x, boxes):
            k = len(boxes)
            v = np.full((k, 1, 28, 28), -4.0, np.float32)
            v[:, :, 2:26, 2:26] = np.log(0.8 / 0.2)  # probability 0.8 inside
            return msn.Tensor(v)

    net = Constant(1, 1, width=1, head_width=1)
    img = np.zeros((1, 40, 60), np.float32)
    boxes = np.array([[2.0, 2, 30, 30], [3, 2, 30, 31], [35, 5, 55, 25]])
    d = instance.predict_masks(net, img, boxes)
    assert len(d.masks) == 2  # the second box duplicates the first
    np.testing.assert_allclose(d.scores, 0.8, rtol=1e-5)
    assert d.instances.max() == 2 and (d.instances > 0).sum() == d.masks.sum()
    none = instance.predict_masks(net, img, boxes, nms_threshold=None)
    assert len(none.masks) == 3


def test_proposals_from_semantic():
    probs = np.zeros((3, 50, 70), np.float32)
    probs[0] = 1
    yy, xx = np.mgrid[:50, :70]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 100   # class 1
    sq = (yy >= 30) & (yy < 40) & (xx >= 50) & (xx < 60)  # class 2
    probs[:, disc] = np.array([0.1, 0.9, 0.0])[:, None]
    probs[:, sq] = np.array([0.3, 0.0, 0.7])[:, None]
    p = instance.proposals_from_semantic(probs, margin=0.1, pad=1)
    assert len(p.boxes) == 2
    order = np.argsort(p.classes)
    np.testing.assert_array_equal(p.classes[order], [1, 2])
    np.testing.assert_allclose(p.scores[order], [0.9, 0.7], rtol=1e-6)
    tight = np.array([[11.0, 11, 30, 30], [50, 30, 60, 40]])
    grown = tight + np.array([-1, -1, 1, 1]) * (0.1 * np.array([19, 19, 19, 19.0]) + 1)
    np.testing.assert_allclose(p.boxes[order][0], grown[0])
    np.testing.assert_allclose(p.boxes[order][1], [48, 28, 62, 42])


def test_pool_vs_align_figure(tmp_path):
    path = tmp_path / "pool_vs_align.png"
    ious = instance.plot_pool_vs_align(str(path), stride=4)
    assert path.read_bytes()[:8] == PNG
    assert ious["RoIAlign"] > ious["RoIPool"] + 0.1 and ious["RoIAlign"] > 0.85


# ----------------------------------------------------------------------------- the CLI run


TINY = ["--model", "maskhead", "--data", "shapes", "--batch", "2", "--patch", "32", "--steps", "2",
        "--model-arg", "width=2", "--model-arg", "head_width=4",
        "--model-arg", 'proposal_kwargs={"base_channels": 4, "depth": 2}']


@pytest.fixture(scope="module")
def maskhead_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("maskhead")
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_cli_maskhead_writes_the_run_directory(maskhead_run):
    out = maskhead_run
    for name in ("config.json", "last.npz", "best.npz", "metrics.jsonl", "metrics.json",
                 "predictions.npz", "prediction.png", "curves.png", "masks.png",
                 "proposals/best.npz"):
        assert (out / name).is_file(), name
    for name in ("prediction.png", "curves.png", "masks.png"):
        assert (out / name).read_bytes()[:8] == PNG
    m = json.loads((out / "metrics.json").read_text())
    for key in ("model", "data", "miou", "pixel_accuracy", "per_class_iou", "seconds", "device",
                "minisegnet_version", "instance_accuracy_50", "instance_f1_50", "dsb_score",
                "mask_ap", "mask_ap50"):
        assert key in m, key
    for src in ("gt_boxes", "proposals", "connected_components"):
        assert {"mask_ap", "mask_ap50", "instance_accuracy_50", "dsb_score"} <= set(m[src])
    assert m["model"] == "maskhead" and m["steps"] == 2
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"mask_ap", "gt_mask_ap50", "loss"} <= set(rows[0])
    sd, meta, opt = load_checkpoint(str(out / "last.npz"))
    assert meta["task"] == "instance" and meta["config"]["model"] == "maskhead" and opt
    net, _ = instance.model_from_checkpoint(str(out / "best.npz"))
    assert isinstance(net, instance.MaskNet) and net.in_channels == 3
    assert net.num_classes == 3  # circle, rectangle, triangle
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_cli_maskhead_resumes(maskhead_run):
    out = maskhead_run
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_cli_maskhead_bad_model_arg(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--model-arg", "colour=3", "--out", str(tmp_path)]) == 2
    assert "colour" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    masks = np.zeros((2, 20, 20), bool)
    good = np.array([[1.0, 1, 5, 5]])
    with pytest.raises(ValueError, match="boxes"):
        instance.mask_targets(masks, np.zeros((1, 5)), np.array([0]))
    with pytest.raises(ValueError, match="boxes.*x2 < x1"):
        instance.mask_targets(masks, np.array([[5.0, 1, 1, 5]]), np.array([0]))
    with pytest.raises(ValueError, match="index"):
        instance.mask_targets(masks, good, np.array([2]))
    with pytest.raises(ValueError, match="index"):
        instance.mask_targets(masks, good, np.array([0, 1]))
    with pytest.raises(ValueError, match="masks"):
        instance.mask_targets(masks[0], good, np.array([0]))
    with pytest.raises(ValueError, match="boxes"):
        instance.jitter_boxes(np.array([[1.0, 5, 3, 2]]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="instances"):
        instance.boxes_from_instances(np.zeros((2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="probs"):
        instance.proposals_from_semantic(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="pooler"):
        instance.MaskNet(pooler="max")
    with pytest.raises(ValueError, match="stride"):
        instance.MaskNet(stride=3)

    net = instance.MaskNet(1, 1, width=1, head_width=1)
    img = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(ValueError, match="boxes"):
        instance.predict_masks(net, img, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="boxes.*x2 < x1"):
        instance.predict_masks(net, img, np.array([[4.0, 4, 2, 8]]))
    with pytest.raises(ValueError, match="classes"):
        instance.predict_masks(net, img, good, classes=np.array([2]))
    with pytest.raises(ValueError, match="batch index"):
        net(img[None], np.array([[1, 1.0, 1, 5, 5]]))
    with pytest.raises(ValueError, match="classes"):
        instance.mask_loss(msn.Tensor(np.zeros((1, 1, 28, 28), np.float32)),
                           np.zeros((1, 28, 28)), np.array([1]))

    truth = np.zeros((1, 16, 16), np.int32)
    det = instance.Detections(np.zeros((0, 16, 17), bool), np.zeros(0), np.zeros((0, 4)),
                              np.zeros(0, np.int64), np.zeros((16, 17), np.int32))
    with pytest.raises(ValueError, match="true_instances.*shape"):
        instance.score_detections([det], truth)
    with pytest.raises(ValueError, match="detections"):
        instance.score_detections([det, det], truth)


@pytest.mark.slow  # ~15-25 s on 2 cores: its proposal U-Net trains and runs on the test half
def test_instance_study_runs_small(tmp_path):
    """benchmarks/instance_study.py end to end at a toy size (its own proposal U-Net included)."""
    from benchmarks import instance_study

    out = tmp_path / "RESULTS_instance.md"
    res = instance_study.main(["--unet-epochs", "1", "--unet-steps", "1", "--seeds", "2",
                               "--steps", "2", "--patch", "48", "--width", "2",
                               "--head-width", "4", "--out", str(out),
                               "--figure", str(tmp_path / "fig.png"),
                               "--work", str(tmp_path / "work")])
    assert [(r["pooler"], r["seed"]) for r in res["runs"]] == [
        ("align", 0), ("align", 1), ("pool", 0), ("pool", 1)]
    text = out.read_text()
    assert "| RoIAlign (mean ± sd, 2 seeds) |" in text and "connected components" in text
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "RESULTS_instance.json").read_text())["runs"]


@pytest.mark.slow  # two tiny U-Net runs on the 64 shapes test images: ~20 s on 2 cores
def test_cli_maskhead_resume_after_an_interrupted_proposal_unet(tmp_path):
    """Ctrl-C while the in-run U-Net trains leaves only OUT/proposals/last.npz: --resume finishes
    that U-Net and then trains the head from the start."""
    tiny_unet = ["train", "--model", "unet", "--data", "shapes", "--batch", "2", "--patch", "32",
                 "--steps", "2", "--epochs", "1", "--model-arg", "base_channels=4",
                 "--model-arg", "depth=2", "--out", str(tmp_path / "proposals")]
    assert cli.main(tiny_unet) == 0
    (tmp_path / "proposals" / "metrics.json").unlink()  # as if it had stopped before the end
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path), "--resume"]) == 0
    assert (tmp_path / "metrics.json").is_file()
    assert (tmp_path / "proposals" / "metrics.json").is_file()
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "empty"), "--resume"]) == 2
