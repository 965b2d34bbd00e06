"""RoIAlign vs RoIPool in Mask R-CNN's mask head, on the nuclei image (Mask R-CNN, Table 2c).

The same network (:class:`minisegnet.instance.MaskNet`: a small conv backbone at stride 4 and
``MaskHead``), the same budget and the same seeds, once with RoIAlign (aligned, 2x2 samples per
bin) and once with RoIPool in the head's RoI slot. Each is trained on the train half with
jittered ground-truth boxes and scored on the test half by COCO mask AP:

* with ground-truth boxes (mask quality alone),
* from proposals: the connected components of a semantic U-Net (trained by
  ``minisegnet.training.train``; ``--proposals CKPT`` reuses one) grown by a margin, masks pasted,
  scored and NMS'd; beside it the U-Net's components themselves, scored as masks with their mean
  foreground probability (the baseline the mask head has to beat).

Writes ``benchmarks/RESULTS_instance.md`` (+ ``.json``) and the figure
``benchmarks/plots/instance_pool_vs_align.png``. Sized for ~10 minutes on 2 cores::

    python -m benchmarks.instance_study                       # trains the proposal U-Net too
    python -m benchmarks.instance_study --proposals runs/unet-nuclei/best.npz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{info.get('Model name', '?').strip()}, {os.cpu_count()} cores visible"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"


def mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> dict:
    import minisegnet as msn
    from minisegnet import data, instance, training

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proposals", default=None, help="semantic checkpoint (default: train a U-Net)")
    p.add_argument("--unet-epochs", type=int, default=6)
    p.add_argument("--unet-steps", type=int, default=40)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--head-width", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS_instance.md"))
    p.add_argument("--figure", default=os.path.join(HERE, "plots", "instance_pool_vs_align.png"))
    p.add_argument("--work", default="runs/instance-study", help="where the U-Net run goes")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only rewrite --out from a saved study record")
    a = p.parse_args(argv)
    if a.render:
        with open(a.render) as f:
            text = render(json.load(f))
        with open(a.out, "w") as f:
            f.write(text)
        print(text)
        return {}

    t_all = time.perf_counter()
    train_set = data.load("nuclei", split="train", weights=False)
    test_set = data.load("nuclei", split="test", weights=False)
    if a.proposals is None:
        cfg = training.TrainConfig(model="unet", epochs=a.unet_epochs, steps=a.unet_steps,
                                   out=os.path.join(a.work, "unet"))
        training.train(cfg)
        a.proposals = os.path.join(cfg.out, "best.npz")
    semantic, meta = training.model_from_checkpoint(a.proposals)
    st, ucfg = meta["state"], meta["config"]
    kwargs = ucfg["model_kwargs"] or training.MODEL_DEFAULTS.get(ucfg["model"])
    unet_note = (f"{ucfg['model']} {kwargs}"
                 f", {ucfg['epochs']} epochs x {ucfg['steps']} steps of {ucfg['batch']} patches "
                 f"{ucfg['patch']}, {st['seconds']:.0f} s (`{os.path.relpath(a.proposals)}`, "
                 f"best epoch {st['best']['epoch']})")
    pipe = dict(instance.PIPELINE_DEFAULTS)
    proposals = instance._proposals_for(semantic, test_set, pipe, "cpu")

    runs = []
    models = {}
    for pooler in ("align", "pool"):
        for seed in range(a.seeds):
            msn.manual_seed(seed)
            net = instance.MaskNet(1, 1, width=a.width, head_width=a.head_width, stride=a.stride,
                                   pooler=pooler)
            t = time.perf_counter()
            losses = instance.fit(net, train_set, a.steps, a.batch, a.patch, a.lr, seed=seed)
            secs = time.perf_counter() - t
            res, _ = instance.evaluate(net, test_set, proposals)
            row = {"pooler": pooler, "seed": seed, "seconds": secs,
                   "loss_start": float(np.mean(losses[:10])),
                   "loss_end": float(np.mean(losses[-10:])), **res}
            runs.append(row)
            if seed == 0:
                models["RoIAlign" if pooler == "align" else "RoIPool"] = net
            print(f"{pooler} seed {seed}: {secs:.0f} s, loss {row['loss_start']:.3f} -> "
                  f"{row['loss_end']:.3f}; GT boxes AP {res['gt_boxes']['mask_ap']:.3f} "
                  f"(@0.5 {res['gt_boxes']['mask_ap50']:.3f}); proposals AP "
                  f"{res['proposals']['mask_ap']:.3f} (@0.5 {res['proposals']['mask_ap50']:.3f})",
                  flush=True)
    cc = runs[0]["connected_components"]
    os.makedirs(os.path.dirname(a.figure), exist_ok=True)
    ious = instance.plot_pool_vs_align(a.figure, test_set.images[0], test_set.instances[0],
                                       stride=a.stride, models=models)
    total = time.perf_counter() - t_all

    info = {
        "command": shlex.join(["python", "-m", "benchmarks.instance_study",
                               *(sys.argv[1:] if argv is None else argv)]),
        "stamp": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": total / 60,
        "cpu": cpu_model(), "args": vars(a), "unet_note": unet_note, "unet_seconds": st["seconds"],
        "parameters": sum(int(np.prod(q.shape)) for q in models["RoIAlign"].parameters()),
        "test_nuclei": int(test_set.instances.max()), "pipeline": pipe,
        "figure": os.path.relpath(a.figure, os.path.dirname(os.path.abspath(a.out))),
        "runs": runs, "connected_components": cc, "ious": ious,
    }
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1, default=float)
    text = render(info)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)
    return info


def render(info: dict) -> str:
    """RESULTS_instance.md from the study's JSON record (``--render JSON`` redoes just this)."""
    a, runs, cc, pipe = info["args"], info["runs"], info["connected_components"], info["pipeline"]

    def col(pooler: str, src: str, key: str) -> list[float]:
        return [r[src][key] for r in runs if r["pooler"] == pooler]

    def gain(src: str) -> str:
        d = np.array(col("align", src, "mask_ap")) - np.array(col("pool", src, "mask_ap"))
        return ", ".join(f"{v:+.3f}" for v in d)

    # matched components, from accuracy = TP / (TP + FP + FN) and the two counts
    n_true, n_pred, acc = cc["instances_true"], cc["instances_pred"], cc["instance_accuracy_50"]
    tp = int(round(acc * (n_true + n_pred) / (1 + acc)))
    lines = [
        "# Instance segmentation: RoIAlign vs RoIPool in the mask head (nuclei)",
        "",
        f"`{info['command']}` ({info['stamp']}; {info['minutes']:.1f} min in all). CPU: "
        f"{info['cpu']}; float32, Numba kernels; the 2 cores are shared with other jobs, so "
        "seconds are indicative.",
        "",
        f"Network: `MaskNet(width={a['width']}, head_width={a['head_width']}, "
        f"stride={a['stride']})` ({info['parameters']:,} parameters): a conv+BN+ReLU backbone at "
        f"stride {a['stride']}, then `MaskHead` (RoI 14x14, four 3x3 convs, deconv to 28x28). "
        f"Training: {a['steps']} Adam steps (lr {a['lr']}, cosine), {a['batch']} random "
        f"{a['patch']}x{a['patch']} crops of the train half per step with flips/rotations, "
        f"{pipe['boxes_per_instance']} jittered boxes per nucleus (corners moved by up to "
        f"{pipe['jitter']:.0%} of the size, IoU >= 0.5 kept), at most {pipe['max_boxes']} boxes "
        "per step, per-pixel BCE against 28x28 targets from aligned RoIAlign of the true mask. "
        f"Seeds 0..{a['seeds'] - 1} (weights and crops). Test half: {info['test_nuclei']} nuclei.",
        "",
        f"Proposals: connected components of a U-Net ({info['unet_note']}), boxes grown by "
        f"{pipe['margin']:.0%} + {pipe['pad']:g} px per side; masks scored by their mean "
        f"probability, NMS at IoU {pipe['nms']}. COCO mask AP (101-point, no detection cap).",
        "",
        "| | seconds / run | GT boxes AP@0.5 | GT boxes AP@[.5:.95] | proposals AP@0.5 | "
        "proposals AP@[.5:.95] | proposals accuracy@0.5 | proposals DSB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pooler, name in (("align", "RoIAlign"), ("pool", "RoIPool")):
        secs = [r["seconds"] for r in runs if r["pooler"] == pooler]
        lines.append(
            f"| {name} (mean ± sd, {a['seeds']} seeds) | {np.mean(secs):.0f} | "
            f"{mean_sd(col(pooler, 'gt_boxes', 'mask_ap50'))} | "
            f"{mean_sd(col(pooler, 'gt_boxes', 'mask_ap'))} | "
            f"{mean_sd(col(pooler, 'proposals', 'mask_ap50'))} | "
            f"{mean_sd(col(pooler, 'proposals', 'mask_ap'))} | "
            f"{mean_sd(col(pooler, 'proposals', 'instance_accuracy_50'))} | "
            f"{mean_sd(col(pooler, 'proposals', 'dsb_score'))} |")
    lines.append("| U-Net connected components (no mask head) | "
                 f"{info['unet_seconds']:.0f} (U-Net) | | | {cc['mask_ap50']:.3f} | "
                 f"{cc['mask_ap']:.3f} | {cc['instance_accuracy_50']:.3f} | "
                 f"{cc['dsb_score']:.3f} |")
    lines += [
        "",
        f"RoIAlign minus RoIPool, AP@[.5:.95] seed by seed: GT boxes {gain('gt_boxes')}; "
        f"proposals {gain('proposals')}.",
        "",
        f"End to end, the proposals bound the result: the U-Net gives {n_pred} components for "
        f"{n_true} nuclei, {tp} of which match a nucleus at IoU >= 0.5 (recall "
        f"{tp / max(n_true, 1):.2f}). A mask head cannot recover a nucleus that has no box, nor "
        "split two nuclei that share one; with ground-truth boxes the same heads reach AP@0.5 "
        "~1.",
        "",
        "Mask AP per IoU threshold (mean over seeds), with GT boxes and from proposals:",
        "",
        "| | " + " | ".join(f"{t:.2f}" for t in np.arange(0.5, 0.96, 0.05)) + " |",
        "| --- |" + " --- |" * 10,
    ]
    for src, what in (("gt_boxes", "GT boxes"), ("proposals", "proposals")):
        for pooler, name in (("align", "RoIAlign"), ("pool", "RoIPool")):
            per = np.mean([r[src]["mask_ap_per_threshold"] for r in runs
                           if r["pooler"] == pooler], 0)
            lines.append(f"| {name}, {what} | " + " | ".join(f"{v:.3f}" for v in per) + " |")
    lines += [
        "",
        "Per run:",
        "",
        "| pooler | seed | s | loss first 10 -> last 10 | GT AP@0.5 | GT AP | prop. AP@0.5 "
        "| prop. AP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(f"| {r['pooler']} | {r['seed']} | {r['seconds']:.0f} | "
                     f"{r['loss_start']:.3f} -> {r['loss_end']:.3f} | "
                     f"{r['gt_boxes']['mask_ap50']:.3f} | {r['gt_boxes']['mask_ap']:.3f} | "
                     f"{r['proposals']['mask_ap50']:.3f} | {r['proposals']['mask_ap']:.3f} |")
    lines += [
        "",
        f"Figure `{info['figure']}` (`minisegnet.instance.plot_pool_vs_align`): RoIPool's "
        "rounded bins against RoIAlign's sample points on one test nucleus at stride "
        f"{a['stride']}, the true mask pooled each way and the seed-0 heads' masks at its box "
        "(IoU with the truth: " + ", ".join(f"{k} {v:.3f}" for k, v in info["ious"].items())
        + ").",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
