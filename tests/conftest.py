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

import pytest
from hypothesis import HealthCheck, settings

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
