"""Implementation dispatch (use_impl, MINISEGNET_IMPL, the kernel registry) and devices."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import minisegnet as msn
from minisegnet import Tensor, backend


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry holding one dummy kernel with two implementations."""
    monkeypatch.setattr(backend, "REGISTRY", {k: dict(v) for k, v in backend.REGISTRY.items()})
    backend.register(
        {"dummy_op": {"reference": lambda a: ("reference", a), "numpy": lambda a: ("numpy", a)}}
    )
    return backend.REGISTRY


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MINISEGNET_IMPL", raising=False)


def test_use_impl_nests_and_restores(no_env):
    assert msn.current_impl() == "numba"  # the default for NumPy arrays
    with msn.use_impl("reference") as name:
        assert name == "reference" and msn.current_impl(np.ones(1)) == "reference"
        with msn.use_impl("numpy"):
            assert msn.current_impl() == "numpy"
            with msn.use_impl("cuda"):
                assert msn.current_impl() == "cuda"
            assert msn.current_impl() == "numpy"
        assert msn.current_impl() == "reference"
    assert msn.current_impl() == "numba"
    with pytest.raises(KeyError):
        with msn.use_impl("numpy"):
            raise KeyError("boom")
    assert msn.current_impl() == "numba"  # restored after an exception too


def test_use_impl_is_per_thread(no_env):
    seen = []
    with msn.use_impl("reference"):
        t = threading.Thread(target=lambda: seen.append(msn.current_impl()))
        t.start()
        t.join()
    assert seen == ["numba"]


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("MINISEGNET_IMPL", "numpy")
    assert msn.current_impl() == "numpy"
    with msn.use_impl("reference"):  # use_impl wins over the environment
        assert msn.current_impl() == "reference"
    monkeypatch.setenv("MINISEGNET_IMPL", "")
    assert msn.current_impl() == "numba"
    monkeypatch.setenv("MINISEGNET_IMPL", "fortran")
    with pytest.raises(ValueError, match="'fortran'"):
        msn.current_impl()


def test_invalid_impl_name():
    with pytest.raises(ValueError, match=r"implementation must be one of .*got 'fast'"):
        with msn.use_impl("fast"):
            pass
    with pytest.raises(ValueError, match="'gpu'"):
        backend.register({"x": {"gpu": lambda: None}})


def test_kernel_dispatch_and_missing_implementation(registry, no_env):
    a = np.ones(2)
    with msn.use_impl("reference"):
        assert backend.kernel("dummy_op", a)(a)[0] == "reference"
    with msn.use_impl("numpy"):
        assert backend.kernel("dummy_op", a)(a)[0] == "numpy"
    assert backend.kernel("dummy_op", a, impl="reference")(a)[0] == "reference"
    assert backend.implementations("dummy_op") == ("reference", "numpy")
    # no silent fallback: the default ("numba") is missing, and so is "cuda"
    with pytest.raises(NotImplementedError, match=r"op 'dummy_op' has no 'numba' implementation"):
        backend.kernel("dummy_op", a)
    with msn.use_impl("cuda"):
        with pytest.raises(
            NotImplementedError, match=r"'dummy_op' has no 'cuda'.*it has: numpy, reference"
        ):
            backend.kernel("dummy_op", a)
    with pytest.raises(NotImplementedError, match="no kernel named 'nope'"):
        backend.kernel("nope", a)


def test_cuda_device_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "_cupy_checked", True)
    monkeypatch.setattr(backend, "_cupy", None)
    t = Tensor(np.ones(3))
    with pytest.raises(RuntimeError, match="device='cuda' needs CuPy"):
        t.to("cuda")
    with pytest.raises(RuntimeError, match="needs CuPy"):
        backend.check_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        backend.check_device("metal")


def test_cpu_arrays_and_tensor_to_cpu():
    a = np.arange(4.0)
    assert backend.get_array_module(a) is np and not backend.is_cupy_array(a)
    assert backend.array_device(a) == "cpu" and backend.current_impl() in backend.IMPLEMENTATIONS
    assert backend.to_device(a, "cpu") is a and backend.to_numpy(a) is a
    t = Tensor(a, requires_grad=True)
    assert t.to("cpu") is t and t.device == "cpu"
