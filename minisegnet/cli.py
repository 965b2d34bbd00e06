"""The ``minisegnet`` command: ``train``, ``evaluate`` and ``predict``.

``minisegnet train`` with no options trains the default model, a same-padded U-Net, on the real
nuclei image that ships inside the ``stardist`` package (``pip install 'minisegnet[data]'``), with
the U-Net paper's border weight map and gaps carved between touching nuclei, and evaluates it
on the held-out half each epoch. See ``minisegnet.training`` for the run directory it writes.

Exit codes: 0 success, 2 bad usage or input (one line, no traceback), 130 interrupted (a
resumable checkpoint was saved; the message says how to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from typing import Any

import numpy as np


class UsageError(Exception):
    """Bad usage or input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _model_arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> _Parser:
    p = _Parser(prog="minisegnet", description="Image segmentation from scratch: train, evaluate, "
                "predict. `minisegnet train` trains a U-Net on real nuclei images.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: U-Net on the nuclei image)")
    t.add_argument("--model", default="unet", help="model name (`minisegnet train --model list`)")
    t.add_argument("--data", default="nuclei", help="dataset name (`--data list`)")
    t.add_argument("--epochs", type=int, default=None, help="epochs (evaluation after each)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps per epoch")
    t.add_argument("--batch", type=int, default=None, help="patches per step")
    t.add_argument("--patch", type=int, default=None, help="patch size in pixels")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (cosine decay)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATA)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.npz")
    t.add_argument("--no-weight-map", dest="weight_map", action="store_false",
                   help="plain cross-entropy: no border weights, no carved gaps (the ablation)")
    t.add_argument("--elastic", action="store_true", help="elastic deformation augmentation")
    t.add_argument("--model-arg", action="append", type=_model_arg, default=[], metavar="KEY=VALUE",
                   help="a model constructor argument, e.g. base_channels=32 (repeatable)")

    e = sub.add_parser("evaluate",
                       help="recompute a checkpoint's metrics on a dataset's test split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    e.add_argument("--out", default=None, help="where metrics.json goes (default: beside CKPT)")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu")

    r = sub.add_parser("predict",
                       help="segment image files (.npy, .png, .tif, .zarr) with a checkpoint")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("images", nargs="+", metavar="IMAGE")
    r.add_argument("--out", default="predictions",
                   help="output directory, or OUT.zarr: the labels of one image as a zarr array")
    r.add_argument("--tile", type=int, default=None,
                   help="output tile size for overlap-tile U-Nets")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--scheduler", default=None, metavar="threads|processes|ADDRESS",
                   help="predict out of core with Dask (U-Nets; needs 'minisegnet[dask]'): local "
                        "threads, a local process pool, or a dask.distributed scheduler address "
                        "(tcp://host:8786); implied by a .zarr input or --out")
    return p


# Budgets of `minisegnet train` per (model, data), sized to train in minutes on 2 cores.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "nuclei": {"epochs": 8, "steps": 40, "batch": 4, "patch": 128, "lr": 3e-3},
    "shapes": {"epochs": 4, "steps": 40, "batch": 8, "patch": 64, "lr": 3e-3},
    "digits": {"epochs": 4, "steps": 40, "batch": 8, "patch": 64, "lr": 3e-3},
}


def _check_names(model: str | None, data_name: str | None) -> None:
    from . import data, models

    names = models.list_models() + ["maskhead"]  # maskhead: the instance pipeline (instance.py)
    if model is not None and model not in names:
        raise UsageError(f"--model: unknown model {model!r}; choose from {', '.join(names)}")
    if data_name is not None and data_name not in data.list_datasets():
        raise UsageError(f"--data: unknown dataset {data_name!r}; "
                         f"choose from {', '.join(data.list_datasets())}")


def _check_out_dir(path: str, flag: str = "--out") -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag}: cannot create {path!r}: {e.strerror}") from None


def _check_device(device: str) -> None:
    if device == "cuda":
        from .backend import cupy_module

        if cupy_module() is None:
            raise UsageError("--device cuda: CuPy is not installed or finds no GPU; install "
                             "'minisegnet[cuda12]' (or [cuda13]) on a machine with an NVIDIA GPU")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import Interrupted, TrainConfig, train

    if args.model == "list" or args.data == "list":
        from . import data, models

        print("models:", ", ".join(models.list_models()))
        print("datasets:", ", ".join(data.list_datasets()))
        return 0
    _check_names(args.model, args.data)
    _check_device(args.device)
    budget = dict(TRAIN_DEFAULTS.get(args.data, TRAIN_DEFAULTS["shapes"]))
    for k in budget:
        if getattr(args, k) is not None:
            budget[k] = getattr(args, k)
    for k in ("epochs", "steps", "batch", "patch"):
        if budget[k] <= 0:
            raise UsageError(f"--{k}: must be positive, got {budget[k]}")
    if budget["lr"] <= 0:
        raise UsageError(f"--lr: must be positive, got {budget['lr']}")
    out = args.out or os.path.join("runs", f"{args.model}-{args.data}")
    _check_out_dir(out)
    cfg = TrainConfig(model=args.model, data=args.data, seed=args.seed, device=args.device, out=out,
                      weight_map=args.weight_map, elastic=args.elastic,
                      model_kwargs=dict(args.model_arg), **budget)
    if cfg.model == "maskhead":  # instance segmentation: Mask R-CNN's mask head on proposals
        from .instance import train
    try:
        result = train(cfg, resume=args.resume)
    except Interrupted as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # saved: a late second Ctrl-C changes nothing
        argv = ["minisegnet", "train"] + [a for a in sys.argv[2:] if a != "--resume"]
        if "--out" not in argv:
            argv += ["--out", out]
        print(f"interrupted at step {e.step}; saved {out}/last.npz. Resume with:\n  "
              f"{shlex.join(argv + ['--resume'])}", file=sys.stderr)
        return 130
    line = f"test split: mIoU {result['miou']:.3f}, pixel accuracy {result['pixel_accuracy']:.3f}"
    if "instance_accuracy_50" in result:
        line += (f", instance accuracy@0.5 {result['instance_accuracy_50']:.3f}, "
                 f"DSB score {result['dsb_score']:.3f}")
    print(f"{line}; {result['seconds']:.0f} s training. Wrote {out}/")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import data
    from .training import evaluate, model_from_checkpoint, write_run_outputs

    _check_device(args.device)
    model, meta = model_from_checkpoint(args.checkpoint, device=args.device)
    name = args.data or meta["config"]["data"]
    _check_names(None, name)
    test_set = data.load(name, split="test")
    if (len(test_set.class_names) != meta["num_classes"]
            or test_set.images.shape[1] != meta["in_channels"]):
        raise UsageError(
            f"--checkpoint: {args.checkpoint!r} is a {meta['num_classes']}-class, "
            f"{meta['in_channels']}-channel {meta['config']['model']} model; dataset {name!r} has "
            f"{len(test_set.class_names)} classes and {test_set.images.shape[1]} channels"
        )
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    _check_out_dir(out)
    result, preds = evaluate(model, test_set, device=args.device)
    from . import __version__

    result.update(model=meta["config"]["model"], data=name, device=args.device,
                  checkpoint=os.path.abspath(args.checkpoint), seconds=meta["state"]["seconds"],
                  minisegnet_version=__version__)
    history = meta["state"].get("history", [])
    write_run_outputs(out, result, preds, test_set, history, meta["state"].get("losses", []))
    print(f"{name} test split: mIoU {result['miou']:.3f}; wrote {out}/metrics.json")
    return 0


def read_image(path: str) -> np.ndarray:
    """A raw image file as float32 (C, H, W): ``.npy`` (2-D or channel-first), ``.png``, ``.tif``.
    """
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise UsageError(f"IMAGE: no such file {path!r}")
    try:
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext in (".tif", ".tiff"):
            try:
                import tifffile
            except ImportError:
                raise UsageError("IMAGE: reading .tif needs tifffile: "
                                 "pip install 'minisegnet[data]'") from None
            a = tifffile.imread(path)
        elif ext in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as im:
                a = np.asarray(im)
            if a.ndim == 3:
                a = a[..., :3].transpose(2, 0, 1)  # (H, W, C) -> (C, H, W), alpha dropped
        else:
            raise UsageError(f"IMAGE: {path!r}: unsupported type {ext or '(none)'}; "
                             "use .npy, .png or .tif")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
        raise UsageError(f"IMAGE: cannot read {path!r}: {type(e).__name__}: {e}") from None
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.dtype.kind not in "biuf":
        raise UsageError(f"IMAGE: {path!r}: expected a 2-D or channel-first 3-D numeric image, "
                         f"got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.float32)


def cmd_predict(args: argparse.Namespace) -> int:
    from . import data
    from .inference import instances_from_semantic, predict_image
    from .plots import label_colors
    from .training import model_from_checkpoint

    _check_device(args.device)
    if (args.scheduler is not None or args.out.rstrip("/").endswith(".zarr")
            or any(p.rstrip("/").endswith(".zarr") for p in args.images)):
        # Out of core on Dask: labels written block by block to zarr, never gathered.
        from .inference import predict_to_zarr

        if args.device != "cpu":
            raise UsageError("--scheduler/.zarr: Dask prediction runs on the CPU; drop --device")
        if args.out.rstrip("/").endswith(".zarr"):
            if len(args.images) != 1:
                raise UsageError(f"--out {args.out!r}: one .zarr holds one image's labels, got "
                                 f"{len(args.images)} images; give a directory instead")
            outs = [args.out]
        else:
            _check_out_dir(args.out)
            outs = [os.path.join(args.out, os.path.splitext(os.path.basename(p.rstrip("/")))[0]
                                 + "_labels.zarr") for p in args.images]
        sources = []
        for p in args.images:  # all inputs checked before any work
            if not os.path.exists(p):
                raise UsageError(f"IMAGE: no such file {p!r}")
            lazy = p.lower().endswith(".npy") or p.rstrip("/").endswith(".zarr")
            sources.append(p if lazy else read_image(p))
        progress = sys.stderr.isatty() and not os.environ.get("CI")
        for path, src, out in zip(args.images, sources, outs, strict=True):
            try:
                h, w = predict_to_zarr(args.checkpoint, src, out, scheduler=args.scheduler,
                                       tile=args.tile, progress=progress)
            except ConnectionError as e:  # "scheduler: cannot reach ..." -> "--scheduler: ..."
                raise UsageError(f"--{e}") from None
            except TypeError as e:  # a checkpoint of a model that is not a U-Net
                raise UsageError(f"--checkpoint: {e}") from None
            print(f"{path}: {h}x{w} -> {out}")
        return 0
    model, meta = model_from_checkpoint(args.checkpoint, device=args.device)
    _check_out_dir(args.out)
    images = [read_image(p) for p in args.images]  # all inputs checked before any work
    C = meta["in_channels"]
    for p, a in zip(args.images, images, strict=True):
        if a.shape[0] != C and not (C == 1 and a.shape[0] in (3, 4)):
            raise UsageError(f"IMAGE: {p!r} has {a.shape[0]} channels; the model takes {C}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for path, raw in zip(args.images, images, strict=True):
        if C == 1 and raw.shape[0] != 1:
            raw = raw[:3].mean(0, keepdims=True)  # colour picture, grey model
        image = data.normalize(raw, meta["normalization"])
        probs = predict_image(model, image, device=args.device, tile=args.tile)
        labels = probs.argmax(0).astype(np.int64)
        stem = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
        np.save(stem + "_labels.npy", labels)
        K = meta["num_classes"]
        plt.imsave(stem + "_labels.png", labels, cmap="viridis", vmin=0, vmax=max(K - 1, 1))
        shown = labels
        if meta.get("has_instances"):
            inst = instances_from_semantic(labels)
            np.save(stem + "_instances.npy", inst)
            shown = inst
        grey = image.mean(0) if image.shape[0] != 3 else image.transpose(1, 2, 0).mean(2)
        overlay = np.repeat(grey[..., None], 3, axis=2)
        colour = label_colors(shown)
        fg = shown > 0
        overlay[fg] = 0.55 * overlay[fg] + 0.45 * colour[fg]
        plt.imsave(stem + "_overlay.png", np.clip(overlay, 0, 1))
        n = f", {int(shown.max())} instances" if meta.get("has_instances") else ""
        print(f"{path}: {labels.shape[0]}x{labels.shape[1]}{n} -> {stem}_labels.npy")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
        return commands[args.command](args)
    except UsageError as e:
        print(f"minisegnet: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ImportError) as e:
        # bad input found by the library (a checkpoint that is not one, a missing extra, ...)
        print(f"minisegnet: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C: stop at once (checkpoint writes are atomic)
        print("\nstopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
