"""benchmarks/bench_models.py's time-and-memory run: the peak it reports is real memory.

* ``PeakRSS`` (VmHWM reset through ``/proc/self/clear_refs``, or 1 ms sampling) sees an
  allocation that lives only inside the measured interval, and not one freed before it;
* ``run_memory`` at quick size: the U-Net step in fresh processes for minisegnet and PyTorch,
  PyTorch's first step validated against ours, positive times and peaks.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import REPO, needs_torch

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="resident memory is read from /proc (Linux)")


@linux_only
def test_peak_rss_sees_a_transient_allocation() -> None:
    from benchmarks.bench_models import PeakRSS, _release_free_memory

    warm = np.ones(48 * 2**20 // 8)  # 48 MB, touched, then freed: must not count below
    del warm
    _release_free_memory()
    peak = PeakRSS()
    before = peak.start()
    a = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
    del a
    top = peak.stop()
    grown = (top - before) / 1024
    assert 60 <= grown <= 64 + 32, (grown, peak.method)


@linux_only
@needs_torch
def test_quick_memory_run_of_unet() -> None:
    from benchmarks.bench_models import render_memory, run_memory

    doc = run_memory(True, models=["unet"], verbose=False)
    rows = {r["impl"]: r for r in doc["rows"]}
    assert set(rows) == {"numba", "torch"}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["median_s"] > 0 and r["parameters"] == rows["numba"]["parameters"], r
        assert r["input"] == [2, 3, 32, 32]
        # a training step allocates activations and gradients: it must show above "before"
        assert r["step_mb"] > 0.5, r
    assert rows["torch"]["max_err"] is not None  # compared with minisegnet's first step
    assert rows["numba"]["numpy_peak_mb"] > 0.5
    table = render_memory(doc)
    assert "| unet | 2x3x32x32; base_channels 8 |" in table
