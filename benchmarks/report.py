"""Writers: ``results.json`` (every row plus machine metadata), ``RESULTS.md`` (tables, targets) and
the plots (time per case per implementation; achieved fraction of the machine's ceiling)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.common import ALL_IMPLS, Results, Row

COLORS = {
    "reference": "#999999",
    "numpy": "#e6a23c",
    "numba": "#2a7ab9",
    "cuda": "#1b9e77",
    "torch": "#d9534f",
    "torch-cuda": "#8e44ad",
}


def op_of(mod: ModuleType) -> str:
    return mod.__name__.rsplit("bench_", 1)[1]


def collect_targets(results: Results, modules: list[ModuleType]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for mod in modules:
        fn = getattr(mod, "targets", None)
        if fn is None:
            continue
        try:
            out.extend(fn(results))
        except Exception as e:  # noqa: BLE001 - a broken target must not lose the run's results
            out.append(dict(op=op_of(mod), device="", what=f"targets of {op_of(mod)}", goal="",
                            value=None, measured=f"error: {type(e).__name__}: {e}", met=None, detail=""))
    return out


def write_all(out: Path, results: Results, modules: list[ModuleType], plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    targets = collect_targets(results, modules)
    written = [write_json(out / "results.json", results, targets)]
    images: dict[str, list[str]] = {}
    if plots:
        images = write_plots(out / "plots", results, modules)
        written += [out / "plots" / p for ps in images.values() for p in ps]
    written.append(write_markdown(out / "RESULTS.md", results, modules, targets, images))
    return written


# =============================================================================================
# JSON
# =============================================================================================


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, results: Results, targets: list[dict[str, Any]]) -> Path:
    doc = {"meta": results.meta, "targets": targets, "rows": [r.as_dict() for r in results.rows]}
    path.write_text(json.dumps(_clean(doc), indent=1, default=str) + "\n", encoding="utf-8")
    return path


# =============================================================================================
# Markdown
# =============================================================================================


def _ms(s: float | None) -> str:
    if s is None:
        return ""
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "" if v is None else format(v, fmt)


def _rate(r: Row) -> str:
    if r.achieved is None:
        return ""
    if r.unit.endswith("/s") and r.unit not in ("GFLOP/s", "GB/s"):
        v = r.achieved
        for div, pre in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if v >= div:
                return f"{v / div:.3g} {pre}{r.unit}"
        return f"{v:.3g} {r.unit}"
    return f"{r.achieved:.3g} {r.unit}"


def _validated(r: Row) -> str:
    if not r.validated_against:
        return ""
    against = r.validated_against.split(" ")[0]
    if r.validated_against.startswith("itself"):
        return "oracle"
    err = "" if r.max_err is None else f" ({r.max_err:.0e})"
    star = "*" if "small size" in r.validated_against else ""
    return f"{against}{star}{err}"


def _table(rows: list[Row]) -> list[str]:
    head = ("| case | impl | median ms | min ms | n | achieved | of ceiling | t / t_torch "
            "| t_numpy / t | validated vs (max err) |")
    lines = [head, "|" + "---|" * 10]
    last = None
    for r in rows:
        if r.status == "n/a" and r.impl == "reference":
            continue  # "too slow at this size" on every big case: said once, in the method notes
        case = "" if r.case == last else "`" + r.case.split("/", 1)[1] + "`"
        last = r.case
        if r.status == "ok":
            lines.append(
                f"| {case} | {r.impl} | {_ms(r.median_s)} | {_ms(r.min_s)} | {r.repeats} | {_rate(r)} "
                f"| {_num(r.ceiling_fraction and 100 * r.ceiling_fraction, '.1f') + ('%' if r.ceiling_fraction else '')} "
                f"| {_num(r.vs_torch, '.2f')} | {_num(r.vs_numpy, '.2f')} | {_validated(r)} |"
            )
        else:
            note = r.note.replace("|", "/").replace("\n", " ")
            if len(note) > 140:
                note = note[:137] + "..."
            lines.append(f"| {case} | {r.impl} | **{r.status}** | | | | | | | {note} |")
    return lines


def _always_na(rows: list[Row]) -> dict[str, str]:
    """Implementations that are n/a, for one and the same reason, in every case of an op."""
    out: dict[str, str] = {}
    cases = {r.case for r in rows if r.status != "pending"}
    for impl in dict.fromkeys(r.impl for r in rows):
        mine = [r for r in rows if r.impl == impl]
        notes = {r.note for r in mine}
        if impl != "reference" and len(mine) == len(cases) and all(r.status == "n/a" for r in mine) \
                and len(notes) == 1:
            note = notes.pop()
            out[impl] = note.split(" (it has")[0]
    return out


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def write_markdown(path: Path, results: Results, modules: list[ModuleType],
                   targets: list[dict[str, Any]], images: dict[str, list[str]]) -> Path:
    m = results.meta
    c = m.get("ceilings", {})
    v = m.get("versions", {})
    L: list[str] = []
    L.append("# minisegnet benchmark results")
    L.append("")
    L.append("Regenerate with **`python -m benchmarks`** from the repository root, on a quiet machine "
             "(full run: writes this file, `results.json` and `plots/` here). "
             "`python -m benchmarks --quick` is the CI smoke run (every case at small sizes, output in "
             "`bench-out/`); `--filter REGEX` (case names) or `--op NAME` (one `bench_<op>.py`, also "
             "`python benchmarks/bench_<op>.py`) run a part; `--list` prints the cases; `--note TEXT` records "
             "the conditions here; `--render results.json` rewrites this file and the plots from a "
             "saved run.")
    L.append("")
    if m.get("mode") != "full" or m.get("filter") or m.get("ops"):
        L.append(f"> **This is a partial run** (mode {m.get('mode')}, filter {m.get('filter')!r}, "
                 f"ops {m.get('ops')}): sizes or cases differ from the full run; numbers here are not "
                 "the project's results.")
        L.append("")
    L.append("## Conditions")
    L.append("")
    load0, load1 = m.get("loadavg_start"), m.get("loadavg_end")
    L.append(f"- run: {m.get('date')}, `{m.get('command')}`, {m.get('duration_s', 0):.0f} s, "
             f"git {m.get('git_commit')}{' (with uncommitted changes)' if m.get('git_dirty') else ''}")
    load = (f"; load average (1 min) {load0[0]:.2f} at the start, {load1[0]:.2f} at the end"
            if load0 and load1 else "")
    L.append(f"- machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
             f"GPU: {m.get('gpu') or 'none'}{load}")
    if m.get("conditions"):
        L.append(f"- note: {m['conditions']}")
    L.append(f"- versions: python {m.get('python')}, " + ", ".join(
        f"{k} {val}" for k, val in v.items() if val) + "; not installed: " + (", ".join(
        k for k, val in v.items() if not val) or "nothing"))
    L.append(f"- threads: numba {m.get('numba_threads')} ({m.get('numba_threading_layer')} layer), "
             f"torch {m.get('torch_threads', '-')}, BLAS {m.get('blas') or '?'} "
             f"(kernels: {m.get('blas_kernels') or '?'}, OPENBLAS_CORETYPE="
             f"{m.get('openblas_coretype_env') or 'unset'})")
    L.append(f"- **ceilings**, measured in this run: float32 GEMM **{c.get('gemm_gflops', 0):.1f} GFLOP/s** "
             f"(NumPy matmul of {c.get('gemm_n')}x{c.get('gemm_n')} matrices, best of repeats); "
             f"memory copy **{c.get('copy_gbs', 0):.1f} GB/s** (`np.copyto` of "
             f"{c.get('copy_bytes', 0) / 2 / 2**20:.0f} MiB, read + write bytes counted)"
             + (f". For comparison, PyTorch's own float32 GEMM reaches {c['torch_gemm_gflops']:.1f} "
                "GFLOP/s here: rows above 100% of the ceiling are possible"
                if "torch_gemm_gflops" in c else "")
             + (f"; GPU: GEMM {c['gpu_gemm_gflops']:.0f} GFLOP/s, copy {c['gpu_copy_gbs']:.0f} GB/s"
                if "gpu_gemm_gflops" in c else ""))
    L.append("")

    # -- targets
    L.append("## Targets (from the issue)")
    L.append("")
    if targets:
        L.append("| target | goal | measured | met? | detail |")
        L.append("|---|---|---|---|---|")
        for t in targets:
            met = {True: "**met**", False: "**not met**", None: "not measured"}[t.get("met")]
            if t.get("info") and t.get("value") is not None:
                met = "(no goal)"
            dev = f" [{t['device']}]" if t.get("device") else ""
            L.append(f"| {t['what']}{dev} | {t['goal']} | {t['measured']} | {met} | {t.get('detail', '')} |")
    else:
        L.append("No target cases in this run.")
    L.append("")

    # -- method
    L.append("## How the numbers are made")
    L.append("")
    L.append("- **Validated before timed.** Every implementation's outputs *and gradients* are compared "
             "with an oracle first (float32: `|a - b| <= 2e-4 max|b| + 1e-3 |b|`; integer outputs such as "
             "pooling indices or NMS picks must match exactly); a row that disagrees is reported as "
             "`mismatch` and not timed. The oracle is the `reference` implementation (plain loops from "
             "the formula) where it finishes (its own rows say `oracle`); at bigger sizes it is a trusted "
             "implementation (numba) that was itself checked against the reference on the same op and "
             "parameters at a small size (marked `*`). PyTorch is validated the same way.")
    L.append("- **Timing.** Through the public `minisegnet.functional` ops on `Tensor`s under "
             "`minisegnet.use_impl(impl)`: forward under `no_grad`, or forward + `backward` from a fixed "
             "random output gradient (inputs and weights `requires_grad`). PyTorch runs the "
             "`torch.nn.functional` equivalent the same way. The first call (which also JIT-compiles "
             "Numba kernels and starts the GPU) is the validation call; one more warm-up call follows "
             "(always for numba and the GPU; for code without a JIT only when the first call was shorter "
             "than the budget); then repeats, each call between device synchronisations, until the calls add "
             "up to ~"
             f"{m.get('settings', {}).get('budget_s', '?')} s have passed and at least "
             f"{m.get('settings', {}).get('min_repeats', '?')} ran (2 when one call is longer than that). "
             "Each implementation is timed in its own block, after all were validated (thread pools of "
             "OpenBLAS, PyTorch's OpenMP and Numba spin, then sleep, between calls: alternating libraries "
             "call by call would charge each call for the others' threads). The cyclic garbage collector "
             "is off while timing. Median and minimum are shown; "
             "achieved rates use the median.")
    L.append("- **Work models.** Convolutions: `2 * N * O * C/groups * KH * KW * OH * OW` FLOPs forward, "
             "3x that for forward + backward; % of the GEMM ceiling. Pooling, unpooling, upsampling: the "
             "bytes the op must read and write once (inputs, outputs, int64 indices), % of the copy "
             "ceiling. RoIAlign: bilinear samples per second (boxes x channels x bins x samples per bin). "
             "NMS: boxes per second. Models: images per second of one training step.")
    L.append("- **Columns.** `t / t_torch`: time over PyTorch's time on the same device (below 1 is faster "
             "than PyTorch). `t_numpy / t`: the speed-up over minisegnet's NumPy implementation (for "
             "convolutions that is the textbook vectorised im2col). The reference's rows are left out "
             "where it would not finish; `n/a` marks a missing implementation or peer; `pending` an op "
             "not written yet.")
    L.append("")

    by_op: dict[str, list[Row]] = {}
    for r in results.rows:
        by_op.setdefault(r.op, []).append(r)
    for mod in modules:
        op = op_of(mod)
        rows = by_op.get(op)
        L.append(f"## {op}")
        L.append("")
        para = _first_paragraph(mod.__doc__)
        if para:
            L.append(para)
            L.append("")
        extra = getattr(mod, "NOTES", None)
        if extra:
            L.append(extra.strip())
            L.append("")
        if not rows:
            L.append("No cases of this op in this run.")
            L.append("")
            continue
        if all(r.status == "pending" for r in rows):
            L.append(f"**Pending**: {rows[0].note}. The cases are defined in `benchmarks/bench_{op}.py` "
                     f"and run as soon as it lands: " + ", ".join(f"`{r.case}`" for r in rows[:12])
                     + (" ..." if len(rows) > 12 else ""))
            L.append("")
            continue
        always_na = _always_na(rows)
        if always_na:
            L.append("Not run for any case here: " + "; ".join(
                f"**{impl}** ({note})" for impl, note in always_na.items()) + ".")
            L.append("")
        L.extend(_table([r for r in rows if r.impl not in always_na]))
        L.append("")
        for img in images.get(op, []):
            L.append(f"![{img}](plots/{img})")
        L.append("")
    path.write_text("\n".join(L) + "\n", encoding="utf-8")
    return path


# =============================================================================================
# Plots
# =============================================================================================


def write_plots(folder: Path, results: Results, modules: list[ModuleType]) -> dict[str, list[str]]:
    """Per op: ``time_<op>.png`` (median time, log scale) and ``ceiling_<op>.png`` (fraction of the
    GEMM or copy ceiling) with one bar per implementation for each case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("time_*.png"), *folder.glob("ceiling_*.png")]:
        old.unlink()  # plots of an earlier run must not outlive it
    images: dict[str, list[str]] = {}
    for mod in modules:
        op = op_of(mod)
        rows = [r for r in results.rows if r.op == op and r.status == "ok"]
        if not rows:
            continue
        names = list(dict.fromkeys(r.case for r in rows))
        impls = [i for i in ALL_IMPLS if any(r.impl == i for r in rows)]
        index = {(r.case, r.impl): r for r in rows}
        made = []
        for what in ("time", "ceiling"):
            if what == "ceiling" and not any(r.ceiling_fraction for r in rows):
                continue
            fig_h = 1.2 + 0.22 * len(names) * max(1, len(impls)) ** 0.8
            fig, ax = plt.subplots(figsize=(9, min(fig_h, 40)), dpi=80)
            bar = 0.8 / max(1, len(impls))
            for j, impl in enumerate(impls):
                ys, xs = [], []
                for i, nm in enumerate(names):
                    r = index.get((nm, impl))
                    if r is None:
                        continue
                    val = r.median_s * 1e3 if what == "time" else (r.ceiling_fraction or 0) * 100
                    if what == "ceiling" and not r.ceiling_fraction:
                        continue
                    ys.append(i + (j - (len(impls) - 1) / 2) * bar)
                    xs.append(val)
                if xs:
                    ax.barh(ys, xs, height=bar, color=COLORS.get(impl), label=impl)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels([nm.split("/", 1)[1] for nm in names], fontsize=7)
            ax.invert_yaxis()
            if what == "time":
                ax.set_xscale("log")
                ax.set_xlabel("median time per call, ms (log scale)")
                ax.set_title(f"{op}: time per call")
            else:
                ax.set_xlabel("% of the machine's ceiling (GEMM GFLOP/s or copy GB/s)")
                ax.axvline(100, color="k", lw=0.5)
                ax.set_title(f"{op}: achieved fraction of the ceiling")
            ax.grid(axis="x", which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            name = f"{what}_{op}.png"
            fig.savefig(folder / name)
            plt.close(fig)
            made.append(name)
        images[op] = made
    return images
