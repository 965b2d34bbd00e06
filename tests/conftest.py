"""Shared test setup.

* ``impl`` fixture: every kernel test is parametrized over the implementations; ``cuda`` cases are
  marked ``cuda``. Where no CUDA target exists (no GPU and no NUMBA_ENABLE_CUDASIM=1) they are
  *deselected*, not skipped-and-counted: CI runs them in their own process under the simulator
  (``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda``).
* Hypothesis profiles: ``ci`` (default: few, derandomized examples sized for 2 cores) and
  ``nightly`` (``HYPOTHESIS_PROFILE=nightly pytest -m "slow or not slow"``).
"""

from __future__ import annotations

import os
import sys

# Tests that compare one CPU worker with two (the conv's per-core blocks, thread-count
# independence) need 2+ Numba threads; Numba fixes its thread count at import from the CPU count,
# so a one-core runner would run them on one thread and prove nothing. Start it with 2 there.
if "numba" not in sys.modules and (os.cpu_count() or 1) < 2:
    os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import pytest  # noqa: E402 - after the thread count is settled
from hypothesis import HealthCheck, settings  # noqa: E402

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "sim",  # the CUDA simulator runs a few thousand threads per second
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "nightly",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sim" if SIMULATOR else "ci"))


def cuda_target_available() -> bool:
    """True when @cuda.jit kernels can run: under the simulator, or with a real GPU."""
    if SIMULATOR:
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


IMPL_PARAMS = [
    pytest.param("reference", id="reference"),
    pytest.param("numpy", id="numpy"),
    pytest.param("numba", id="numba"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(params=IMPL_PARAMS)
def impl(request):
    """The implementation name under test; use with ``minisegnet.use_impl(impl)``."""
    return request.param


def pytest_collection_modifyitems(config, items):
    if cuda_target_available():
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("cuda") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MINISEGNET_REQUIRE_TORCH=1 (CI, after installing PyTorch) a test skipped for want of
    torch fails: the PyTorch comparisons must really run there. torchvision is not required: its
    CPU build is not on the package indexes these machines reach."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("MINISEGNET_REQUIRE_TORCH") != "1" or not report.skipped:
        return
    longrepr = report.longrepr
    reason = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
    if ("'torch'" in reason or "PyTorch" in reason) and "torchvision" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped for want of PyTorch, which CI installs: {reason}"
