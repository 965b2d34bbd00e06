"""minisegnet kernel benchmarks: every op and implementation, validated, then timed.

Run everything (writes ``benchmarks/RESULTS.md``, ``benchmarks/results.json``, ``benchmarks/plots/``)::

    python -m benchmarks                       # full run, a few minutes on 2 cores
    python -m benchmarks --quick               # every case at small sizes (CI smoke run) -> bench-out/
    python -m benchmarks --filter '^conv2d/'   # one op (regex on case names) -> bench-out/
    python benchmarks/bench_max_pool2d.py      # the same, for one op file

Layout: one file per op, ``bench_<op>.py``, each with a ``cases(quick)`` function returning the
cases to run (and optionally ``targets(results)``, the issue's goals for that op); the harness in
:mod:`benchmarks.common` validates every implementation against the reference (or, at sizes where
the reference would not finish, against a trusted implementation that was itself checked against
the reference at a small size) *before* timing it, keeps JIT compilation and GPU start-up out of the
timing, synchronises the GPU, and reports the median and the minimum of the repeats together with
the achieved GFLOP/s or GB/s and its fraction of the machine's ceiling measured in the same run.
:mod:`benchmarks.report` writes the JSON, the markdown table and the plots.

PyTorch (and torchvision) are optional peers: imported only when installed, never required.
"""
