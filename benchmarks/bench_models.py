"""models: one training step of each segmentation model (forward, cross-entropy, backward, Adam).

Two measurements of the step ``opt.zero_grad(); loss = F.cross_entropy(model(x), target);
loss.backward(); opt.step()`` (Adam, lr 1e-3) of ``minisegnet.models.create(name, num_classes=4,
in_channels=3)`` on a batch of random images, for every name SPEC lists, against the same
network in PyTorch (``benchmarks/torch_models.py``, the twins the parity tests use, with our
initial weights copied in, the same batch and the same Adam step; dropout off so that the step is
deterministic across frameworks):

* **time and memory** (``python benchmarks/bench_models.py [--quick]``): each (model, library)
  in its own fresh process (``measure_step``): two warm-up steps, then the median time of the
  timed steps and the peak resident memory they reach above the resident memory just before them
  (Linux VmHWM, reset through ``/proc/self/clear_refs``, after ``malloc_trim`` so that memory
  freed by the warm-up is not reused unseen); PyTorch's first-step loss and gradients are
  compared with minisegnet's. A full run writes ``RESULTS_models.json`` and the table below (this
  section of ``RESULTS.md``); ``python -m benchmarks`` keeps the table (it is this module's
  ``NOTES``).
* **the harness** (``python -m benchmarks [--quick] --op models``, or this script with
  ``--harness``): every implementation in one process, validated before timed: the loss and
  every parameter gradient of the first step (same seed, same weights) against the numba
  implementation's (each op is validated against its reference separately, in the other files;
  the reference is far too slow for a whole network). Work: images per second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, device_of, seed_of

OP = "models"
MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "unet-valid", "deeplabv3plus", "pspnet", "segnet")
NUM_CLASSES = 4


class ModelCase(Case):
    """One training step of ``models.create(name, ...)`` on an (N, 3, H, W) batch."""

    def __init__(self, model: str, N: int, HW: int, kwargs: dict[str, Any] | None = None) -> None:
        self.model, self.N, self.HW, self.kwargs = model, N, HW, dict(kwargs or {})
        self.op, self.mode, self.kind = OP, "step", "samples"
        self.name = f"{OP}/{model}/{N}x3x{HW}x{HW}/step"
        self.work, self.rate_unit = float(N), "images"
        self.dtype = np.dtype(np.float32)
        self.needs, self.ref_cost = ("models.create",), float("inf")
        self.tags = dict(model=model, N=N, H=HW)
        # Whole networks in float32: summation orders differ across dozens of layers, and where
        # two values of a max-pool window are within float32 rounding of each other the
        # implementations may pick different maxima, moving that pixel's gradient. Measured:
        # FCN-16s, width 8, 1x3x32x32: conv1_1's weight gradient 2.2% of its largest entry
        # apart from PyTorch's in float32, 1e-15 in float64. A wiring error is O(1).
        self.tolerance = (2e-2, 5e-2)

    def pending(self) -> str | None:
        try:
            import minisegnet.models as M
            from minisegnet import optim  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"minisegnet.models not importable yet ({type(e).__name__})"
        if not hasattr(M, "create"):
            return "minisegnet.models.create not written yet"
        try:
            M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        except Exception as e:  # noqa: BLE001
            return f"models.create({self.model!r}) fails: {type(e).__name__}: {e}"
        return None

    def torch_unavailable(self) -> str | None:
        from benchmarks.common import torch_module

        if torch_module() is None:
            return "PyTorch not installed"
        from benchmarks import torch_models

        if not torch_models.has_twin(self.model):
            return f"no PyTorch twin of {self.model} in benchmarks/torch_models.py"
        return None

    def _batch(self, model: Any) -> np.ndarray:
        H = W = self.HW
        size_for = getattr(model, "input_size_for", None)
        if callable(size_for) and self.model.endswith("valid"):
            H, W = size_for(self.HW, self.HW)  # the input whose output is HW x HW
        rng = np.random.default_rng(seed_of(self.name))
        return rng.standard_normal((self.N, 3, H, W)).astype(np.float32)

    def _target(self, shape: tuple[int, ...]) -> np.ndarray:
        n, _, h, w = shape
        return np.random.default_rng(seed_of(self.name) + 1).integers(0, NUM_CLASSES, (n, h, w))

    def runner(self, impl: str, keep: bool = True):
        """One training step as a callable. ``keep``: it returns the loss and a copy of every
        parameter gradient (the harness compares them); without, it returns nothing and holds
        no copies (the memory measurement), and ``gradients()`` reads the last step's."""
        if impl.startswith("torch"):
            return self._torch_runner(device_of(impl), keep)
        return self._msn_runner(impl, keep)

    def _torch_runner(self, device: str, keep: bool = True):
        import torch
        import torch.nn.functional as tF

        import minisegnet as msn
        import minisegnet.models as M
        from benchmarks import torch_models

        msn.manual_seed(0)  # our initial weights, copied into the twin
        ours = M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        twin = torch_models.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        torch_models.load_from(twin, ours).to(device)
        names = [n for n, _ in ours.named_parameters()]  # our order, for the comparison
        x = torch.from_numpy(self._batch(ours)).to(device)
        del ours
        params = dict(twin.named_parameters())
        opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            opt.zero_grad()
            logits = twin(x)
            if "target" not in state:
                state["target"] = torch.from_numpy(self._target(tuple(logits.shape))).to(device)
            loss = tF.cross_entropy(logits, state["target"])
            loss.backward()
            state["loss"] = loss.detach()
            outs = [loss.detach()] + [params[n].grad.detach().clone() for n in names] if keep else []
            opt.step()
            return outs

        call.gradients = lambda: [state["loss"].cpu().numpy()] + [  # type: ignore[attr-defined]
            params[n].grad.detach().cpu().numpy() for n in names]
        call.parameters = sum(p.numel() for p in params.values())  # type: ignore[attr-defined]
        call.input_shape = tuple(x.shape)  # type: ignore[attr-defined]
        return call

    def _msn_runner(self, impl: str, keep: bool = True):
        import minisegnet as msn
        import minisegnet.functional as F
        import minisegnet.models as M
        from minisegnet import optim
        from minisegnet.backend import to_device, to_numpy

        device = device_of(impl)
        msn.manual_seed(0)  # the same initial weights for every implementation
        model = M.create(self.model, NUM_CLASSES, in_channels=3, **self.kwargs)
        if device == "cuda":
            model.to("cuda")
        x = to_device(self._batch(model), device)
        params = list(model.parameters())
        opt = optim.Adam(params, lr=1e-3)
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            with msn.use_impl(impl):
                msn.manual_seed(1)  # dropout masks identical across implementations
                opt.zero_grad()
                logits = model(msn.Tensor(x))
                if "target" not in state:
                    state["target"] = to_device(self._target(logits.shape), device)
                loss = F.cross_entropy(logits, msn.Tensor(state["target"]))
                loss.backward()
                state["loss"] = loss.data
                outs = [loss.data] + [p.grad for p in params] if keep else []
                opt.step()
                return outs

        call.gradients = lambda: [to_numpy(state["loss"])] + [  # type: ignore[attr-defined]
            to_numpy(p.grad) for p in params]
        call.parameters = sum(int(p.data.size) for p in params)  # type: ignore[attr-defined]
        call.input_shape = tuple(x.shape)  # type: ignore[attr-defined]
        return call


# dropout off: the step must be the same computation in every implementation and in PyTorch
NO_DROPOUT = {m: {"dropout": 0.0} for m in ("fcn32s", "fcn16s", "fcn8s", "deeplabv3plus", "pspnet")}
# --quick: narrow instances (FCN's VGG16 alone is 134M parameters)
QUICK_WIDTH = {"fcn32s": {"width": 4}, "fcn16s": {"width": 4}, "fcn8s": {"width": 4},
               "unet": {"base_channels": 8}, "unet-valid": {"base_channels": 8},
               "deeplabv3plus": {"width": 4}, "pspnet": {"width": 4}, "segnet": {"width": 8}}


def cases(quick: bool) -> list[Case]:
    if quick:
        # batch 2: with one image, BatchNorm after DeepLab's ASPP projection removes the
        # image-pooling branch (a per-image constant): its gradient is 0, compared as noise
        return [ModelCase(m, 2, 32 if m != "unet-valid" else 4,
                          {**NO_DROPOUT.get(m, {}), **QUICK_WIDTH[m]}) for m in MODELS]
    return [ModelCase(m, 2, 128 if m != "unet-valid" else 68, NO_DROPOUT.get(m)) for m in MODELS]


# =============================================================================================
# Time and memory of one training step, each (model, library) in a fresh process
# =============================================================================================

MEMORY_IMPLS = ("numba", "torch")  # minisegnet (its default CPU implementation) and PyTorch
RESULTS_JSON = Path(__file__).resolve().parent / "RESULTS_models.json"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
# what each model is at its default width (the full run's sizes); --quick passes QUICK_WIDTH
DEFAULT_WIDTH = {"fcn32s": "width 64 (VGG16)", "fcn16s": "width 64 (VGG16)",
                 "fcn8s": "width 64 (VGG16)", "unet": "base 64, depth 4, BN",
                 "unet-valid": "base 64, depth 4 (the paper's)", "deeplabv3plus": "width 32, OS 16",
                 "pspnet": "width 32, OS 8", "segnet": "width 64, depth 4"}


def _status_kb(key: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmRSS: resident now; VmHWM: its peak), None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); False where absent.

    Without it, memory the warm-up steps freed stays resident in malloc's arenas, the timed steps
    reuse it, and the peak above "before" reads ~0 whatever the step needs. Both libraries
    allocate their CPU arrays with malloc (NumPy, Numba's runtime, PyTorch's CPU allocator), so
    after the trim "before" is what is live between steps and the peak is what a step adds.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0) is not None)
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """The peak resident memory (kB) from ``start()`` to ``stop()``.

    Linux keeps the peak itself (VmHWM); writing "5" to ``/proc/self/clear_refs`` resets it to
    the current resident size, so the peak of one interval is exact and costs nothing. Where that
    reset is refused, a thread samples VmRSS every millisecond instead (a peak shorter than that
    can be missed; ``method`` says which one measured).
    """

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs"
        self._peak = 0
        self._stop = None

    def start(self) -> int:
        before = _status_kb("VmRSS")
        if before is None:
            raise RuntimeError("no /proc/self/status: resident memory is only measured on Linux")
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            hwm = _status_kb("VmHWM")
            if hwm is None or hwm > _status_kb("VmRSS") + 1024:  # the reset did not happen
                raise OSError("VmHWM not reset")
        except OSError:
            import threading

            self.method = "VmRSS sampled every 1 ms"
            self._peak, self._stop = before, threading.Event()

            def sample() -> None:
                while not self._stop.wait(0.001):
                    self._peak = max(self._peak, _status_kb("VmRSS") or 0)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return before

    def stop(self) -> int:
        if self._stop is None:
            return int(_status_kb("VmHWM") or 0)
        self._stop.set()
        self._thread.join()
        return max(self._peak, _status_kb("VmRSS") or 0)


def measure_step(model: str, impl: str, N: int, HW: int, kwargs: dict[str, Any], min_steps: int,
                 budget_s: float, save_to: str | None = None) -> dict[str, Any]:
    """Time and peak memory of one training step of ``model`` under ``impl``, in this process.

    Run it in a fresh child process (``run_memory`` does): build the model, the batch and the
    optimizer; the first step (whose loss and gradients are saved to ``save_to`` for the
    comparison across libraries) and a second one warm up (Numba's compiled kernels load, Adam
    creates its state, allocators reach their steady state); then the resident size ("before":
    weights, gradients, Adam's state, the batch, the libraries themselves), the peak is reset and
    at least ``min_steps`` steps run, until ``budget_s`` seconds have passed. For minisegnet one
    more step runs under ``tracemalloc``, which sees the arrays NumPy allocates (NumPy reports
    them to it), not memory allocated inside Numba kernels.
    """
    import gc
    import time

    case = ModelCase(model, N, HW, kwargs)
    if case.pending():
        raise RuntimeError(case.pending())
    if impl.startswith("torch") and case.torch_unavailable():
        raise RuntimeError(case.torch_unavailable())
    rss_empty = _status_kb("VmRSS")
    step = case.runner(impl, keep=False)
    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    if save_to:
        np.savez(save_to, *step.gradients())
    step()
    gc.collect()
    gc.disable()  # no collection inside the timed steps (as in the harness)
    trimmed = _release_free_memory()
    peak = PeakRSS()
    before = peak.start()
    times: list[float] = []
    while len(times) < min_steps or (sum(times) < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    top = peak.stop()
    gc.enable()
    numpy_peak = None
    if not impl.startswith("torch"):
        import tracemalloc

        tracemalloc.start()
        step()
        numpy_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return dict(model=model, impl=impl, input=list(step.input_shape), kwargs=kwargs,
                parameters=int(step.parameters), first_s=first_s, times=times,
                median_s=float(np.median(times)), min_s=float(min(times)),
                rss_start_mb=(rss_empty or 0) / 1024, rss_before_mb=before / 1024,
                rss_peak_mb=top / 1024, step_mb=(top - before) / 1024, numpy_peak_mb=numpy_peak,
                method=peak.method + (", after malloc_trim(0)" if trimmed else ""))


def run_memory(quick: bool, impls: tuple[str, ...] = MEMORY_IMPLS, models: list[str] | None = None,
               min_steps: int | None = None, budget_s: float | None = None,
               verbose: bool = True) -> dict[str, Any]:
    """``measure_step`` for every case of ``cases(quick)`` and every implementation, each in its
    own spawned process; PyTorch's first-step loss and gradients are compared with minisegnet's."""
    import multiprocessing
    import os
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.common import _cpu_model, compare, torch_module

    min_steps = min_steps or (1 if quick else 3)
    budget_s = budget_s if budget_s is not None else (0.0 if quick else 2.0)
    ctx = multiprocessing.get_context("spawn")
    t_start = time.perf_counter()
    meta = dict(cpu=_cpu_model(), cores=os.cpu_count(), loadavg_start=list(os.getloadavg()),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), quick=quick,
                torch=getattr(torch_module(), "__version__", None), min_steps=min_steps,
                budget_s=budget_s, command=" ".join(["python", "benchmarks/bench_models.py",
                                                      *sys.argv[1:]]))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_models_") as tmp:
        for case in cases(quick):
            if models and case.model not in models:
                continue
            saved: dict[str, str] = {}
            for impl in impls:
                row = dict(model=case.model, impl=impl, kwargs=case.kwargs, status="ok", note="")
                why = case.pending() or (case.torch_unavailable() if impl.startswith("torch") else None)
                if why:
                    rows.append({**row, "status": "n/a", "note": why})
                    continue
                path = os.path.join(tmp, f"{case.model}-{impl}.npz")
                try:
                    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                        row.update(pool.submit(measure_step, case.model, impl, case.N, case.HW,
                                               case.kwargs, min_steps, budget_s, path).result())
                    saved[impl] = path
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", note=f"{type(e).__name__}: {e}")
                rows.append(row)
                if verbose:
                    print(_progress(row), flush=True)
            # validation: PyTorch's first step against minisegnet's (same weights, same batch)
            if "torch" in saved and "numba" in saved:
                with np.load(saved["numba"]) as a, np.load(saved["torch"]) as b:
                    oracle = [a[k] for k in a.files]
                    ok, err, msg = compare([b[k] for k in b.files], oracle, case.tolerance)
                for row in rows[-len(impls):]:
                    if row["impl"] == "torch" and row["status"] == "ok":
                        row["max_err"] = err
                        if not ok:
                            row.update(status="mismatch", note=msg)
            for path in saved.values():
                os.remove(path)
    meta.update(loadavg_end=list(os.getloadavg()), duration_s=time.perf_counter() - t_start)
    return dict(meta=meta, rows=rows)


def _progress(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"  {row['model']:>14} [{row['impl']}] {row['status']}: {row['note']}"
    return (f"  {row['model']:>14} [{row['impl']:>5}] {row['median_s'] * 1e3:9.1f} ms/step "
            f"(n={len(row['times'])}), peak {row['step_mb']:7.1f} MB above {row['rss_before_mb']:.0f} MB")


def _width(row: dict[str, Any]) -> str:
    kw = {k: v for k, v in row["kwargs"].items() if k != "dropout"}
    return ", ".join(f"{k} {v}" for k, v in kw.items()) if kw else DEFAULT_WIDTH[row["model"]]


def render_memory(doc: dict[str, Any]) -> str:
    """The markdown table of a ``run_memory`` result (RESULTS.md's models section)."""
    m, rows = doc["meta"], doc["rows"]
    by = {(r["model"], r["impl"]): r for r in rows}
    L = [f"**Time and memory of one training step**, each model and library in its own fresh "
         f"process (`{m['command']}`, {m['duration_s']:.0f} s, {m['date']}; {m['cpu']}, "
         f"{m['cores']} cores; **load average (1 min) {m['loadavg_start'][0]:.2f} at the start, "
         f"{m['loadavg_end'][0]:.2f} at the end**{'; QUICK sizes, not results' if m['quick'] else ''}"
         f"). The step: `zero_grad`, forward, cross-entropy, backward, Adam step (lr 1e-3), "
         f"4 classes, dropout off, on a random batch; minisegnet with its Numba kernels, PyTorch "
         f"{m['torch']} CPU with minisegnet's initial weights copied in. Two warm-up steps "
         f"(compilation, Adam's state, allocators), then the median of at least {m['min_steps']} "
         f"steps (until {m['budget_s']:g} s). **Memory**: the peak resident set size (RSS) of the "
         f"process during the timed steps minus its RSS just before them (Linux VmHWM, reset "
         f"through `/proc/self/clear_refs`); \"before\" already holds the weights, the previous "
         f"step's gradients, Adam's two moments and the batch, so the peak is what the step adds "
         f"on top: activations kept for backward, the new gradients, workspaces. Both libraries "
         f"are measured the same way. \"NumPy peak\": the largest total of the arrays NumPy "
         f"allocates during one more step, under `tracemalloc` started just before it (memory "
         f"inside Numba kernels is not seen; the previous step's gradients, freed by `zero_grad`, "
         f"were allocated before tracing started and are not subtracted, so it can exceed the RSS "
         f"peak by up to their size). PyTorch's first-step "
         f"loss and gradients are checked against minisegnet's (float32 tolerance as the "
         f"harness's model rows) before its numbers are shown.", ""]
    if m.get("note"):
        L[0] += f" **Conditions**: {m['note']}"
    L.append("| model | size (batch x channels x H x W; width) | parameters | minisegnet ms/step "
             "| PyTorch ms/step | t / t_torch | minisegnet peak above before (MB) | PyTorch peak above "
             "before (MB) | memory / PyTorch's | minisegnet NumPy peak (MB) | RSS before: ours / "
             "PyTorch (MB) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    seen: list[str] = []
    for r in rows:
        if r["model"] not in seen:
            seen.append(r["model"])
    for name in seen:
        a, b = by.get((name, "numba")), by.get((name, "torch"))
        ok_a = a is not None and a["status"] == "ok"
        ok_b = b is not None and b["status"] == "ok"
        ref = a if ok_a else b
        if ref is None or ref["status"] != "ok":
            note = "; ".join(f"{r['impl']}: {r['status']} ({r['note']})" for r in (a, b) if r)
            L.append(f"| {name} | | | {note} | | | | | | | |")
            continue
        size = "x".join(str(d) for d in ref["input"]) + "; " + _width(ref)

        def cell(r: dict[str, Any] | None, key: str, fmt: str) -> str:
            if r is None:
                return "n/a"
            if r["status"] != "ok":
                return f"{r['status']}: {r['note']}"
            v = r.get(key)
            return "" if v is None else format(v, fmt)

        ratio_t = f"{a['median_s'] / b['median_s']:.2f}" if ok_a and ok_b else ""
        ratio_m = (f"{a['step_mb'] / b['step_mb']:.2f}" if ok_a and ok_b and b["step_mb"] > 0 else "")
        before = (f"{a['rss_before_mb']:.0f} / {b['rss_before_mb']:.0f}" if ok_a and ok_b else "")
        L.append(f"| {name} | {size} | {ref['parameters']:,} | {_ms(a)} | {_ms(b)} | {ratio_t} | {cell(a, 'step_mb', '.1f')} | {cell(b, 'step_mb', '.1f')} "
                 f"| {ratio_m} | {cell(a, 'numpy_peak_mb', '.1f')} | {before} |")
    L += ["", MEMORY_NOTE]
    return "\n".join(L)


# What the memory columns showed and what changed (a property of the code, not of a run)
MEMORY_NOTE = (
    "Until 2026-12-03 minisegnet's FCN steps peaked at 2.9 GB above the weights, 2.8x PyTorch's. "
    "Not Adam (it updates in 64K-element chunks, no whole-parameter temporaries) but fc6's "
    "backward: a 7x7 conv from 512 to 4096 channels on 11x11 -> 5x5, whose 411 MB weight is far "
    "bigger than its columns. The conv driver summed a weight-sized gradient per core, each with "
    "weight-sized temporaries, and ran the stride-1 adjoint as the conv of gy on x's 4.8x larger "
    "grid (13 s of a 20 s step). Such wide passes now run as one GEMM cut among the cores by "
    "output channels (`kernels/conv2d.py`, `_wide`). The U-Nets' deepest levels (512-1024 "
    "channels on 8x8-16x16 here) are wide passes too. Quiet machine, before -> after: FCN-32s "
    "19.1 s / 2912 MB -> 6.0 s / 612 MB, U-Net 3.26 s / 340 MB -> 1.75 s / 130 MB, unet-valid "
    "5.07 s / 487 MB -> 2.15 s / 370 MB.")


def _ms(r: dict[str, Any] | None) -> str:
    if r is None:
        return "n/a"
    if r["status"] != "ok":
        return f"{r['status']}: {r['note']}"
    return f"{r['median_s'] * 1e3:.1f}"


def __getattr__(name: str) -> Any:
    # report.py puts a module's NOTES under its section: the saved time-and-memory table, so a
    # full `python -m benchmarks` rewriting RESULTS.md keeps it
    if name == "NOTES":
        if not RESULTS_JSON.exists():
            return None
        import json

        return render_memory(json.loads(RESULTS_JSON.read_text(encoding="utf-8")))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_section(text: str, path: Path = RESULTS_MD) -> None:
    """Replace the body of ``## models`` in RESULTS.md (up to the next ``## `` heading)."""
    doc = path.read_text(encoding="utf-8")
    head = "\n## models\n"
    i = doc.index(head) + len(head)
    j = doc.find("\n## ", i)
    j = len(doc) if j < 0 else j
    body = "\n" + _first_paragraph(__doc__) + "\n\n" + text + "\n\n"
    path.write_text(doc[:i] + body + doc[j:], encoding="utf-8")


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python benchmarks/bench_models.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="narrow models, small images, one step")
    p.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--impl", default=",".join(MEMORY_IMPLS),
                   help="comma-separated implementations (default numba,torch)")
    p.add_argument("--steps", type=int, default=None, help="at least this many timed steps")
    p.add_argument("--budget", type=float, default=None, help="time steps until this many seconds")
    p.add_argument("--out", default=None, help="write the JSON here and do not touch "
                   "benchmarks/RESULTS.md (default for --quick: print only)")
    p.add_argument("--note", default=None, help="conditions to record with the table "
                   "(e.g. 'machine busy')")
    p.add_argument("--render", action="store_true", help="rewrite the models section of "
                   "RESULTS.md from RESULTS_models.json (nothing is run; --note replaces its note)")
    p.add_argument("--harness", action="store_true", help="instead: the in-process harness run "
                   "(`python -m benchmarks --op models`, every implementation validated and timed)")
    args, rest = p.parse_known_args(argv)
    if args.harness:
        from benchmarks.run import main as harness_main

        return harness_main(["--op", OP, *(["--quick"] if args.quick else []), *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.render:
        doc = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
        if args.note is not None:
            doc["meta"]["note"] = args.note
            RESULTS_JSON.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        write_section(render_memory(doc))
        print(f"wrote the models section of {RESULTS_MD}")
        return 0
    models = args.models.split(",") if args.models else None
    bad = sorted(set(models or []) - set(MODELS))
    if bad:
        p.error(f"--models: unknown {bad}; choose from {list(MODELS)}")
    doc = run_memory(args.quick, tuple(i for i in args.impl.split(",") if i), models,
                     args.steps, args.budget)
    doc["meta"]["note"] = args.note
    text = render_memory(doc)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    elif not args.quick and not models:
        RESULTS_JSON.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        write_section(text)
        print(f"wrote {RESULTS_JSON} and the models section of {RESULTS_MD}")
    bad_rows = [r for r in doc["rows"] if r["status"] in ("error", "mismatch")]
    return 1 if bad_rows else 0


if __name__ == "__main__":
    from benchmarks import bench_models  # the importable module: spawned children find it

    raise SystemExit(bench_models.main())
