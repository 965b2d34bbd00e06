"""Training, evaluation and checkpoints behind ``minisegnet train / evaluate / predict``.

A run directory holds (SPEC, "Command line"):

    config.json      the run's settings (model, data, budget, seed, model keyword arguments)
    last.npz         model + optimizer + scheduler + random state, written atomically each epoch
                     and on Ctrl-C: ``--resume`` continues from it exactly
    best.npz         the model of the best evaluation so far (same format)
    metrics.jsonl    one JSON object per evaluation (epoch, step, loss, metrics, seconds)
    metrics.json     the final model's metrics on the test split
    predictions.npz  the final model's test-split predictions (labels, and instances where the
                     data has them), from which metrics.json can be recomputed
    prediction.png   image / ground truth / prediction / errors
    curves.png       training loss and test metrics against steps

A checkpoint is an ``msn.save`` ``.npz`` of arrays (no pickle): ``model.*`` (the state dict),
``optimizer.*`` (per-parameter buffers) and one ``meta`` string holding JSON (configuration,
position in training, optimizer hyper-parameters, scheduler and random-generator states, the
training data's normalisation), so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "TrainConfig", "train", "evaluate", "load_checkpoint", "save_checkpoint", "build_model",
    "CheckpointError", "Interrupted",
]

CHECKPOINT_FORMAT = "minisegnet-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a minisegnet checkpoint, or one that does not fit what it is used for."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a resumable ``last.npz``."""

    def __init__(self, out: str, step: int) -> None:
        super().__init__(f"interrupted at step {step}; resumable checkpoint in {out}/last.npz")
        self.out, self.step = out, step


# Per-model defaults of the command line: sizes that train in a few minutes on 2 cores.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"base_channels": 16, "depth": 4},
    "unet-valid": {"base_channels": 16, "depth": 3},
    # FCN: VGG16-BN stages at width 4; the plain (paper) net, trained from scratch, stays at the
    # class prior for hundreds of steps (benchmarks/RESULTS_zoo.md)
    "fcn32s": {"width": 4, "batch_norm": True},
    "fcn16s": {"width": 4, "batch_norm": True},
    "fcn8s": {"width": 4, "batch_norm": True},
    "deeplabv3plus": {"width": 8},
    "pspnet": {"width": 8},
    "segnet": {"width": 8},
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to ``config.json``)."""

    model: str = "unet"
    data: str = "nuclei"
    epochs: int = 8
    steps: int = 40  # optimizer steps per epoch
    batch: int = 4
    patch: int = 128
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/unet-nuclei"
    weight_map: bool = True  # U-Net border weights and carved gaps (datasets with instances)
    elastic: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- checkpoints


def build_model(name: str, num_classes: int, in_channels: int, model_kwargs: dict[str, Any]) -> Any:
    """``models.create`` with the command line's per-model defaults under ``model_kwargs``."""
    from . import models

    kwargs = {**MODEL_DEFAULTS.get(name, {}), **model_kwargs}
    return models.create(name, num_classes, in_channels=in_channels, **kwargs)


def save_checkpoint(path: str, model: Any, meta: dict[str, Any], optimizer: Any = None) -> None:
    """Write model weights, optimizer buffers and ``meta`` (JSON) to ``path`` atomically."""
    from .serialization import save

    payload: dict[str, Any] = {"model": model.state_dict()}
    meta = dict(meta, format=CHECKPOINT_FORMAT)
    if optimizer is not None:
        sd = optimizer.state_dict()
        payload["optimizer"] = {str(i): s for i, s in sd["state"].items()}
        meta["optimizer_param_groups"] = sd["param_groups"]
    payload["meta"] = np.array(json.dumps(meta))
    save(payload, path)


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(model state dict, meta, optimizer state dict or {}) of a ``save_checkpoint`` file.

    Anything else (a truncated file, a plain weights file, a pickle) is a ``CheckpointError``
    naming the file.
    """
    from .serialization import load

    try:
        flat = load(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, format and pickle errors all mean "not ours"
        raise CheckpointError(
            f"checkpoint: {path!r} is not a minisegnet checkpoint ({type(e).__name__}: {e})"
        ) from None
    try:
        meta = json.loads(str(flat.pop("meta")))
        assert meta.get("format") == CHECKPOINT_FORMAT
    except Exception:  # noqa: BLE001
        raise CheckpointError(
            f"checkpoint: {path!r} is not a minisegnet training checkpoint (no readable 'meta' "
            f"record of format {CHECKPOINT_FORMAT})"
        ) from None
    model_sd = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in flat.items():
        if k.startswith("optimizer."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    opt = {}
    if "optimizer_param_groups" in meta:
        opt = {"state": opt_state, "param_groups": meta["optimizer_param_groups"]}
    return model_sd, meta, opt


def model_from_checkpoint(path: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, with its weights; returns (model, meta)."""
    sd, meta, _ = load_checkpoint(path)
    cfg = meta["config"]
    if cfg["model"] == "maskhead":
        raise CheckpointError(
            f"checkpoint: {path!r} is a maskhead (instance) checkpoint; its metrics are in its run "
            "directory, and minisegnet.instance.model_from_checkpoint loads it (evaluate and "
            "predict take semantic models)"
        )
    model = build_model(cfg["model"], meta["num_classes"], meta["in_channels"], cfg["model_kwargs"])
    try:
        model.load_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint: {path!r} does not fit model {cfg['model']!r}: {e}") from None
    return model.to(device), meta


# ----------------------------------------------------------------------------- prediction


def predict_labels(model: Any, images: np.ndarray,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, H, W) int64, foreground-or-class probabilities (N, K, H, W)) for a batch.

    Each image goes through :func:`minisegnet.inference.predict_image` (whole, or overlap-tiled
    where the model needs it).
    """
    from .inference import predict_image

    probs = np.stack([predict_image(model, img, device=device) for img in images])
    return probs.argmax(1).astype(np.int64), probs


def evaluate(model: Any, dataset: Any,
             device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of ``model`` on ``dataset`` and the predictions they were computed from.

    Semantic: pixel accuracy, per-class IoU and mIoU over the whole split (one confusion matrix).
    With instance labels: instances from the prediction (:func:`inference.instances_from_semantic`)
    matched one to one with the truth: accuracy and F1 at IoU 0.5, and the DSB score.
    """
    from .inference import instances_from_semantic

    preds, probs = predict_labels(model, dataset.images, device=device)
    out = {"labels": preds}
    if dataset.instances is not None:
        out["instances"] = np.stack([instances_from_semantic(p, q) for p, q in zip(preds, probs)])
        # plain connected components of the argmax map, for comparison (metrics.json reports both)
        out["instances_cc"] = np.stack([instances_from_semantic(p) for p in preds])
    result = metrics_from_predictions(preds, dataset, out.get("instances"), out.get("instances_cc"))
    return result, out


def metrics_from_predictions(preds: np.ndarray, dataset: Any, instances: np.ndarray | None = None,
                             instances_cc: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of ``metrics.json`` from saved predictions (a test recomputes them this way)."""
    from . import metrics

    K = len(dataset.class_names)
    meter = metrics.SegmentationMeter(K)
    for p, t in zip(preds, dataset.labels, strict=True):
        meter.update(p, t)
    result = meter.summary()
    result["per_class_iou"] = {
        name: (None if np.isnan(v) else float(v))
        for name, v in zip(dataset.class_names, meter.iou_per_class(), strict=True)
    }
    if instances is not None and dataset.instances is not None:
        # one matching over all test images: sum TP/FP/FN, then the ratios
        tp = fp = fn = 0
        dsb = []
        for t, p in zip(dataset.instances, instances, strict=True):
            m = metrics.matching(t, p, threshold=0.5)
            tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
            dsb.append(metrics.dsb_score(t, p))
        result["instance_accuracy_50"] = tp / max(tp + fp + fn, 1)
        result["instance_f1_50"] = 2 * tp / max(2 * tp + fp + fn, 1)
        result["dsb_score"] = float(np.mean(dsb))
        result["instances_true"], result["instances_pred"] = tp + fn, tp + fp
    if instances_cc is not None and dataset.instances is not None:
        m = metrics.matching_dataset(list(dataset.instances), list(instances_cc), threshold=0.5)
        result["instance_accuracy_50_cc"] = m["accuracy"]
    return result


# ----------------------------------------------------------------------------- training


class _SigintGuard:
    """First Ctrl-C: finish the step, then save and stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _SigintGuard:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
            self._previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal; nothing in CI logs or pipes (one line per epoch is printed)."""
    from tqdm import tqdm

    quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=quiet, dynamic_ncols=True,
                unit="step", leave=True)


def _patch_sizes(model: Any, patch: int) -> tuple[int, int]:
    """(image crop, label crop) of a training patch. A valid-padded U-Net sees the smallest valid
    input whose output covers ``patch`` and is trained on its whole output (the paper's tiles:
    the context around the labels comes from the image, mirrored where the image ends); every
    other model maps a patch to a patch."""
    if getattr(model, "padding", None) == "valid" and hasattr(model, "input_size_for"):
        size = model.input_size_for(patch, patch)[0]
        return size, model.output_size(size, size)[0]
    return patch, patch


def _epoch_batches(data_mod: Any, train_set: Any, cfg: TrainConfig, epoch: int,
                   sizes: tuple[int, int]) -> Any:
    # One iterator per epoch, seeded by (seed, epoch): resuming mid-epoch replays the same draws.
    return data_mod.patches(train_set, sizes[0], cfg.batch, augment=True,
                            seed=[cfg.seed, epoch], elastic=cfg.elastic, weights=cfg.weight_map,
                            label_size=sizes[1])


def train(cfg: TrainConfig, resume: bool = False, log: Any = print) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``, evaluating on the test split each epoch.

    Writes the run directory described in the module docstring and returns the final metrics.
    Raises :class:`Interrupted` (after saving ``last.npz``) when Ctrl-C stops it.
    """
    import minisegnet as msn
    import minisegnet.functional as F
    from minisegnet import data, optim
    from minisegnet import random as msn_random

    os.makedirs(cfg.out, exist_ok=True)
    last_path, best_path = os.path.join(cfg.out, "last.npz"), os.path.join(cfg.out, "best.npz")
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": None,
                             "history": [], "losses": [], "seconds": 0.0}
    saved_opt: dict[str, Any] = {}
    if resume:
        if not os.path.exists(last_path):
            raise FileNotFoundError(f"--resume: no checkpoint {last_path!r} to resume from")
        sd, meta, saved_opt = load_checkpoint(last_path)
        saved_cfg = TrainConfig(**meta["config"])
        # budget and place may change on resume; what defines the network and its data may not
        for k in ("model", "data", "seed", "model_kwargs", "weight_map", "patch", "batch"):
            if getattr(saved_cfg, k) != getattr(cfg, k):
                log(f"resume: using the checkpoint's {k}={getattr(saved_cfg, k)!r}")
                setattr(cfg, k, getattr(saved_cfg, k))
        state = meta["state"]

    msn.manual_seed(cfg.seed)
    train_set = data.load(cfg.data, split="train", weights=cfg.weight_map)
    test_set = data.load(cfg.data, split="test")
    num_classes, in_channels = len(train_set.class_names), train_set.images.shape[1]
    model = build_model(cfg.model, num_classes, in_channels, cfg.model_kwargs)
    total_steps = cfg.epochs * cfg.steps
    opt = optim.Adam(model.parameters(), lr=cfg.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if resume:
        model.load_state_dict(sd)
        model.to(cfg.device)
        opt.load_state_dict(saved_opt)
        sched.load_state_dict(meta["scheduler"])
        msn_random.default_rng().bit_generator.state = meta["rng"]
    else:
        model.to(cfg.device)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
        open(os.path.join(cfg.out, "metrics.jsonl"), "w").close()

    def meta_now() -> dict[str, Any]:
        return {
            "config": asdict(cfg), "state": state, "num_classes": num_classes,
            "in_channels": in_channels, "class_names": list(train_set.class_names),
            "normalization": train_set.normalization, "scheduler": sched.state_dict(),
            "has_instances": test_set.instances is not None,
            "rng": msn_random.default_rng().bit_generator.state,
            "minisegnet_version": msn.__version__,
        }

    select = "instance_accuracy_50" if test_set.instances is not None else "miou"
    n_params = model.num_parameters()
    log(f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {cfg.epochs} epochs x "
        f"{cfg.steps} steps of {cfg.batch} patches {cfg.patch}x{cfg.patch}, device {cfg.device}")
    t_start = time.perf_counter() - state["seconds"]
    with _SigintGuard() as guard:
        for epoch in range(state["epoch"], cfg.epochs):
            model.train()
            batches = _epoch_batches(data, train_set, cfg, epoch, _patch_sizes(model, cfg.patch))
            for _ in range(state["step_in_epoch"]):  # resume: replay this epoch's draws
                next(batches)
            bar = _progress(cfg.steps, state["step_in_epoch"], f"epoch {epoch + 1}/{cfg.epochs}")
            t_epoch, seen = time.perf_counter(), 0
            while state["step_in_epoch"] < cfg.steps:
                xb, yb, wb = next(batches)
                x, y = msn.Tensor(xb).to(cfg.device), msn.Tensor(yb).to(cfg.device)
                w = None if wb is None else msn.Tensor(wb).to(cfg.device)
                loss = F.cross_entropy(model(x), y, weight=w, ignore_index=-1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                state["step"] += 1
                state["step_in_epoch"] += 1
                state["losses"].append(round(float(loss.item()), 5))
                seen += len(xb)
                rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{state['losses'][-1]:.4f}", img_s=f"{rate:.1f}",
                                lr=f"{sched.get_last_lr()[0]:.2e}")
                bar.update(1)
                if guard.requested:
                    bar.close()
                    state["seconds"] = time.perf_counter() - t_start
                    save_checkpoint(last_path, model, meta_now(), opt)
                    raise Interrupted(cfg.out, state["step"])
            bar.close()
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
            result, _ = evaluate(model, test_set, device=cfg.device)
            state["seconds"] = time.perf_counter() - t_start
            recent = state["losses"][-cfg.steps:]
            row = {"epoch": epoch + 1, "step": state["step"], "loss": float(np.mean(recent)),
                   "seconds": round(state["seconds"], 2), **_scalars(result)}
            state["history"].append(row)
            with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            log(_summary_line(row))
            if state["best"] is None or result[select] > state["best"]["value"]:
                state["best"] = {"epoch": epoch + 1, "metric": select, "value": result[select]}
                save_checkpoint(best_path, model, meta_now())
            save_checkpoint(last_path, model, meta_now(), opt)

    final, preds = evaluate(model, test_set, device=cfg.device)
    final.update(model=cfg.model, data=cfg.data, device=cfg.device, epochs=cfg.epochs,
                 steps=state["step"], parameters=n_params, seconds=round(state["seconds"], 2),
                 best=state["best"], minisegnet_version=msn.__version__)
    write_run_outputs(cfg.out, final, preds, test_set, state["history"], state["losses"])
    return final


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _summary_line(row: dict[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}", f"step {row['step']}", f"loss {row['loss']:.4f}",
             f"mIoU {row['miou']:.3f}", f"pixel acc {row['pixel_accuracy']:.3f}"]
    if "instance_accuracy_50" in row:
        parts += [f"instance acc@0.5 {row['instance_accuracy_50']:.3f}",
                  f"DSB {row['dsb_score']:.3f}"]
    return ", ".join(parts) + f" ({row['seconds']:.0f} s)"


def write_run_outputs(out: str, result: dict[str, Any], preds: dict[str, np.ndarray], dataset: Any,
                      history: list[dict[str, Any]], losses: list[float]) -> None:
    """metrics.json, predictions.npz, prediction.png and curves.png of a run directory."""
    from .plots import save_curves, save_prediction_figure
    from .serialization import save

    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    save(preds, os.path.join(out, "predictions.npz"))
    i = 0  # the first test image
    title = f"{result['model']} on {result['data']} (test): mIoU {result['miou']:.3f}"
    if "instance_accuracy_50" in result:
        title += f", instance accuracy@0.5 {result['instance_accuracy_50']:.3f}"
    save_prediction_figure(
        os.path.join(out, "prediction.png"), dataset.images[i], dataset.labels[i],
        preds["labels"][i], title,
        truth_instances=None if dataset.instances is None else dataset.instances[i],
        pred_instances=preds.get("instances", [None])[i],
    )
    if history:
        save_curves(os.path.join(out, "curves.png"), losses, history)
