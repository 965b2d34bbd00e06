"""The benchmark entry point: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

    python -m benchmarks                         # full run -> benchmarks/{RESULTS.md,results.json,plots/}
    python -m benchmarks --quick                 # every case at small sizes -> bench-out/
    python -m benchmarks --filter 'd(6|12)'      # cases whose name matches a regex -> bench-out/
    python -m benchmarks --op max_pool2d         # one bench_<op>.py -> bench-out/
    python -m benchmarks --list                  # the case names, nothing run

Only a full, unfiltered run writes into ``benchmarks/`` by default (the committed results); every
partial run goes to ``bench-out/`` (git-ignored) unless ``--out`` says otherwise. The exit status is
1 when any implementation disagrees with the oracle or raises; "pending" (op not written yet) and
"n/a" (no such implementation or peer) are not failures.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import sys
import time
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.common import ALL_IMPLS, Harness, Results, Settings

# One file per op, in report order.
BENCH_MODULES = (
    "conv2d",
    "depthwise_conv2d",
    "separable_conv2d",
    "conv_transpose2d",
    "batch_norm",
    "max_pool2d",
    "adaptive_avg_pool2d",
    "interpolate",
    "roi_align",
    "roi_pool",
    "nms",
    "models",
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def load_modules(ops: list[str] | None = None) -> list[ModuleType]:
    names = BENCH_MODULES if not ops else [o for o in BENCH_MODULES if o in ops]
    unknown = sorted(set(ops or []) - set(BENCH_MODULES))
    if unknown:
        raise SystemExit(f"--op: unknown op(s) {unknown}; choose from {list(BENCH_MODULES)}")
    return [importlib.import_module(f"benchmarks.bench_{n}") for n in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every case at small sizes (CI smoke run, < 1 min)")
    p.add_argument("--filter", default=None, help="regex searched in case names, e.g. '^conv2d/3x3/'")
    p.add_argument("--op", action="append", default=None, help="only this bench_<op>.py (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/ for a full "
                   "unfiltered run, else bench-out/)")
    p.add_argument("--impl", default=None, help=f"comma-separated subset of {','.join(ALL_IMPLS)}")
    p.add_argument("--budget", type=float, default=None, help="seconds of repeats per implementation")
    p.add_argument("--min-repeats", type=int, default=None)
    p.add_argument("--max-repeats", type=int, default=None)
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--note", default=None, help="conditions to record in RESULTS.md (e.g. 'machine busy')")
    p.add_argument("--render", default=None, metavar="RESULTS_JSON",
                   help="rewrite RESULTS.md and the plots from a saved results.json (nothing is run)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-row progress lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    modules = load_modules(args.op)
    if args.render:
        return render(Path(args.render), Path(args.out) if args.out else None, modules,
                      plots=not args.no_plots)
    pattern = re.compile(args.filter) if args.filter else None
    plan = []
    for mod in modules:
        for case in mod.cases(args.quick):
            if pattern is None or pattern.search(case.name):
                plan.append((mod, case))
    if args.list:
        for _, case in plan:
            print(case.name)
        return 0

    partial = args.quick or args.filter is not None or args.op is not None
    out = Path(args.out) if args.out else (REPO / "bench-out" if partial else HERE)
    impls = tuple(i.strip() for i in args.impl.split(",")) if args.impl else ALL_IMPLS
    bad = sorted(set(impls) - set(ALL_IMPLS))
    if bad:
        raise SystemExit(f"--impl: unknown implementation(s) {bad}; choose from {list(ALL_IMPLS)}")
    settings = Settings.for_mode(args.quick, budget_s=args.budget, min_repeats=args.min_repeats,
                                 max_repeats=args.max_repeats, impls=impls, verbose=not args.quiet)

    meta = common.machine_metadata()
    print(f"minisegnet benchmarks ({'quick' if args.quick else 'full'}): {len(plan)} cases, "
          f"{meta['cpu']}, {meta['cores']} cores, GPU: {meta['gpu'] or 'none'}, "
          f"torch: {meta['versions']['torch'] or 'not installed'}", flush=True)
    ceilings = common.measure_ceilings(args.quick)
    print(f"ceilings: float32 GEMM {ceilings['gemm_gflops']:.1f} GFLOP/s, "
          f"copy {ceilings['copy_gbs']:.1f} GB/s", flush=True)

    # Everything imported so far (PyTorch alone is hundreds of thousands of objects) moves to the
    # collector's permanent generation, so the collections between timed repeats stay cheap.
    gc.collect()
    gc.freeze()
    harness = Harness(settings, ceilings)
    rows = []
    current, t_mod = None, time.perf_counter()
    for mod, case in plan:
        if mod is not current:
            if current is not None:
                print(f"  ({time.perf_counter() - t_mod:.1f} s)", flush=True)
            current, t_mod = mod, time.perf_counter()
            print(f"[{mod.__name__.rsplit('bench_', 1)[1]}]", flush=True)
        rows.extend(harness.run_case(case))
    if current is not None:
        print(f"  ({time.perf_counter() - t_mod:.1f} s)", flush=True)

    meta.update(
        mode="quick" if args.quick else "full",
        filter=args.filter,
        ops=args.op,
        command=common.python_command(),
        conditions=args.note,
        ceilings=ceilings,
        settings={k: v for k, v in vars(settings).items() if k != "verbose"},
        duration_s=time.perf_counter() - t_start,
        loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    results = Results(rows, meta)

    from benchmarks import report

    written = report.write_all(out, results, modules, plots=not args.no_plots)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    print(f"done in {meta['duration_s']:.1f} s: "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for path in written:
        print(f"wrote {path}")
    failed = [r for r in rows if r.status in ("mismatch", "error")]
    for r in failed:
        print(f"FAILED {r.case} [{r.impl}]: {r.status}: {r.note}", file=sys.stderr)
    return 1 if failed else 0


def render(path: Path, out: Path | None, modules: list[ModuleType], plots: bool = True) -> int:
    """Rewrite the report (markdown, plots, targets) of a saved run, next to it unless ``out``."""
    import json

    from benchmarks import report
    from benchmarks.common import Row

    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = [Row(**r) for r in doc["rows"]]
    ops = {r.op for r in rows}
    results = Results(rows, doc["meta"])
    for p in report.write_all(out or path.parent, results, [m for m in modules if
                              m.__name__.rsplit("bench_", 1)[1] in ops], plots=plots):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
