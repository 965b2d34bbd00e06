"""The benchmark suite runs end to end and validates before it times (no timing assertions).

* the smoke run: ``python -m benchmarks --quick --out DIR`` in a subprocess (what CI runs) must exit
  0 and write ``results.json``, ``RESULTS.md`` and the plots, with every timed row validated;
* the harness itself: a deliberately wrong implementation is reported as a mismatch and not timed,
  a missing op is "pending", a missing implementation "n/a".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks/` is a top-level folder of the repository
    sys.path.insert(0, str(REPO))


def test_quick_run_writes_validated_results(tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the benchmarks never time the simulator
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "-q", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    doc = json.loads((tmp_path / "results.json").read_text())
    meta, rows = doc["meta"], doc["rows"]
    assert meta["mode"] == "quick"
    for key in ("cpu", "cores", "versions", "ceilings", "git_commit"):
        assert key in meta
    assert {"numpy", "numba", "torch", "cupy"} <= set(meta["versions"])
    assert meta["ceilings"]["gemm_gflops"] > 0 and meta["ceilings"]["copy_gbs"] > 0
    assert rows, "no rows"

    statuses = {r["status"] for r in rows}
    assert statuses <= {"ok", "pending", "n/a"}, statuses
    ok = [r for r in rows if r["status"] == "ok"]
    # "pending" is for ops minisegnet does not have yet, never a way to pass without running:
    # each pending row names what is missing, and it really is missing; every other op ran its
    # Numba implementation, validated.
    from benchmarks.common import missing_functional

    for r in rows:
        if r["status"] == "pending":
            names = r["note"].split(": ", 1)[-1].split(", ")
            assert names and missing_functional(names) == names, r
    have = {r["op"] for r in rows if r["status"] != "pending"}
    assert have, "every case is pending: nothing was run"
    assert {r["op"] for r in ok if r["impl"] == "numba"} == have
    for r in ok:
        assert r["validated_against"], r
        assert r["max_err"] is not None and r["max_err"] >= 0, r
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] and r["repeats"] >= 1, r
        if r["kind"] in ("flop", "mem"):
            assert r["achieved"] > 0 and r["ceiling_fraction"] > 0, r
    # every op of the suite appears, run or pending
    from benchmarks.run import BENCH_MODULES

    assert {r["op"] for r in rows} == set(BENCH_MODULES)

    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in md and "## Conditions" in md
    for op in BENCH_MODULES:
        assert f"## {op}" in md
    ran = {r["op"] for r in ok}
    for op in ran:
        png = tmp_path / "plots" / f"time_{op}.png"
        assert png.exists() and png.stat().st_size > 1000, png
        assert f"plots/time_{op}.png" in md
    if any(r["ceiling_fraction"] for r in ok):
        assert list((tmp_path / "plots").glob("ceiling_*.png"))


def test_harness_catches_a_wrong_implementation() -> None:
    import minisegnet as msn
    from benchmarks.common import FunctionalCase, Harness, Settings

    def wrong_under_numpy(F, x):
        y = F.relu(x)
        return y * 2.0 if msn.current_impl() == "numpy" else y

    case = FunctionalCase(
        "test", "test/relu/4x4/fwd+bwd", mode="fwd+bwd", kind="mem", work=128.0,
        inputs=lambda rng: {"x": rng.standard_normal((4, 4)).astype(np.float32)},
        msn=wrong_under_numpy, torch=None, grad=("x",), needs=("relu",), ref_cost=16,
    )
    settings = Settings.for_mode(True, impls=("reference", "numpy", "numba", "torch"),
                                 verbose=False)
    harness = Harness(settings, {"gemm_gflops": 1.0, "copy_gbs": 1.0})
    rows = {r.impl: r for r in harness.run_case(case)}
    assert rows["reference"].status == "ok"
    assert rows["reference"].validated_against.startswith("itself")
    assert rows["numba"].status == "ok" and rows["numba"].max_err == 0.0
    assert rows["numpy"].status == "mismatch" and rows["numpy"].median_s is None
    assert rows["torch"].status == "n/a"


def test_harness_reports_pending_ops() -> None:
    from benchmarks.common import FunctionalCase, Harness, Settings

    case = FunctionalCase(
        "test", "test/none/fwd", mode="fwd", kind="time", work=0.0,
        inputs=lambda rng: {}, msn=lambda F: None, needs=("no_such_op_anywhere",),
    )
    rows = Harness(Settings.for_mode(True, verbose=False), {}).run_case(case)
    assert [r.status for r in rows] == ["pending"]
    assert "no_such_op_anywhere" in rows[0].note
