"""The model zoo trained with equal budgets: mIoU, parameters and seconds per model and seed.

    python benchmarks/zoo_study.py                       # shapes, every model, seeds 0 1 2
    python benchmarks/zoo_study.py --data digits --models fcn32s fcn16s fcn8s --seeds 0 1
    python benchmarks/zoo_study.py --nuclei-ablation     # default U-Net with / without weight map

Each run is ``minisegnet.training.train`` (what ``minisegnet train`` runs) with the same budget
(epochs x steps x batch x patch, Adam with cosine decay) and the command line's per-model width;
the table gives the mean and the spread (min-max) over seeds, so an ordering such as
FCN-8s > FCN-16s > FCN-32s can be told apart from seed noise. Writes
``benchmarks/RESULTS_zoo.md`` (or ``--out``) with the CPU model and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(model: str, data: str, seed: int, budget: dict, weight_map: bool, workdir: str) -> dict:
    from minisegnet.training import TrainConfig, train

    out = os.path.join(workdir, f"{model}-{data}-{seed}-{int(weight_map)}")
    cfg = TrainConfig(model=model, data=data, seed=seed, out=out, weight_map=weight_map, **budget)
    t = time.perf_counter()
    result = train(cfg, log=lambda *_: None)
    result["wall_seconds"] = time.perf_counter() - t
    return result


def summarize(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"


def write_table(args: argparse.Namespace, rows: dict, budget: dict, command: str, done: int,
                total: int, loads: list[float], failed: dict[str, str]) -> None:
    load = os.getloadavg()
    title = ("Nuclei U-Net: weight map ablation" if args.nuclei_ablation
             else f"Model zoo on {args.data}")
    lines = [
        f"# {title}",
        "",
        f"`python benchmarks/zoo_study.py {command}` on {cpu_model()} ({os.cpu_count()} cores), "
        f"load average {min(loads):.1f}-{max(loads):.1f} at the runs' ends, {load[0]:.1f} when "
        f"written ({done} of {total} runs); budget per run: {json.dumps(budget)}, Adam with "
        f"cosine decay, each model at `minisegnet train`'s defaults (`MODEL_DEFAULTS`); mean "
        f"(min-max) over seeds {args.seeds}. Seconds are training time including each epoch's "
        "evaluation, and move with the machine's load.",
        "",
    ]
    if args.nuclei_ablation:
        lines += [
            "| model | weight map + gaps | parameters | mIoU | pixel accuracy | instance accuracy@0.5 "
            "| instance accuracy@0.5, plain CC | DSB | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    else:
        lines += ["| model | parameters | mIoU | mIoU per seed | pixel accuracy | seconds |",
                  "| --- | --- | --- | --- | --- | --- |"]
    for (model, wm), rs in rows.items():
        def col(key: str, rs: list = rs) -> str:
            return summarize([r[key] for r in rs]) if key in rs[0] else "-"

        seconds = f"{np.mean([r['seconds'] for r in rs]):.0f}"
        if args.nuclei_ablation:
            lines.append(
                f"| {model} | {'yes' if wm else 'no'} | {rs[0]['parameters']:,} | {col('miou')} | "
                f"{col('pixel_accuracy')} | {col('instance_accuracy_50')} | "
                f"{col('instance_accuracy_50_cc')} | {col('dsb_score')} | {seconds} |"
            )
        else:
            per_seed = ", ".join(f"{r['miou']:.3f}" for r in rs)
            lines.append(f"| {model} | {rs[0]['parameters']:,} | {col('miou')} | {per_seed} | "
                         f"{col('pixel_accuracy')} | {seconds} |")
    for model, msg in failed.items():
        lines.append(f"| {model} | failed: {msg} |" + " |" * (8 if args.nuclei_ablation else 4))
    Path(args.out).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from minisegnet import models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="shapes")
    p.add_argument("--models", nargs="+", default=models.list_models())
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--nuclei-ablation", action="store_true",
                   help="the default nuclei U-Net with and without the weight map and carved gaps")
    p.add_argument("--out", default=str(Path(__file__).parent / "RESULTS_zoo.md"))
    args = p.parse_args(argv)

    if args.nuclei_ablation:
        from minisegnet.cli import TRAIN_DEFAULTS

        budget = dict(TRAIN_DEFAULTS["nuclei"])
        runs = [("unet", "nuclei", s, wm) for wm in (True, False) for s in args.seeds]
    else:
        budget = dict(epochs=args.epochs, steps=args.steps, batch=args.batch, patch=args.patch,
                      lr=args.lr)
        runs = [(m, args.data, s, False) for m in args.models for s in args.seeds]
    rows: dict[tuple[str, bool], list[dict]] = {}
    loads: list[float] = []
    failed: dict[str, str] = {}
    command = " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as workdir:
        for i, (model, data, seed, wm) in enumerate(runs):
            try:
                r = run_one(model, data, seed, budget, wm, workdir)
            except ValueError as e:  # a model the training command cannot run: say so, go on
                failed.setdefault(model, str(e).splitlines()[0])
                print(f"{model:14s} {data} seed {seed}: failed: {failed[model]}", flush=True)
            else:
                rows.setdefault((model, wm), []).append(r)
                extra = (f" inst@0.5 {r['instance_accuracy_50']:.3f}"
                         if "instance_accuracy_50" in r else "")
                print(f"{model:14s} {data} seed {seed} weight_map={wm}: mIoU {r['miou']:.3f}{extra} "
                      f"{r['seconds']:.0f} s", flush=True)
            # the table so far, rewritten after every run (a long study can be read while it runs)
            loads.append(os.getloadavg()[0])
            write_table(args, rows, budget, command, done=i + 1, total=len(runs), loads=loads,
                        failed=failed)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
