"""The helpers every op test shares (test files hold only cases):

* ``assert_close``: shape, dtype, then values within the dtype's tolerance;
* ``impls(kernel)``: pytest params of the implementations a kernel has (``cuda`` marked), to
  parametrize ``impl`` with; ``without=("reference",)`` where the reference is the oracle, so that
  no case compares the reference with itself; ``missing_impls`` for the NotImplementedError cases;
* ``numba_threads(n)``: run with exactly n Numba threads (fails, never skips, when n cannot be had);
* ``check_bad_input``: the SPEC's "Bad input" check, one call per table row;
* ``check_op(shapes, ours, torch_fn)``: tinygrad's ``helper_test_op``: the same inputs through
  minisegnet and PyTorch, forward values and every gradient compared;
* ``run_with_memory_limit``: run code in a child process under an address-space cap;
* shared constants: ``HYP`` (hypothesis settings), ``DTYPES``, ``SMALL``, ``out_len``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from conftest import SIMULATOR
from hypothesis import HealthCheck, settings

import minisegnet as msn
import minisegnet.functional  # noqa: F401 - registers every kernel (impls() reads the registry)

# The `impl` parameter is a plain string: sharing it across hypothesis examples is safe.
HYP = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
DTYPES = [np.float32, np.float64]
SMALL = 4 if SIMULATOR else 7  # largest side of drawn maps: the simulator runs few threads/second

# Tolerances for comparing two implementations of the same op. float32 sums of a few hundred terms
# differ in the last bits depending on summation order; scale atol by the magnitude involved.
TOL = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-10, 1e-12)}


def out_len(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """SPEC conv2d / max_pool2d / avg_pool2d: H_out = floor((H + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transpose_out_len(size: int, k: int, s: int, p: int, op: int, d: int) -> int:
    """SPEC conv_transpose2d: H_out = (H - 1)s - 2p + d(k-1) + output_padding + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def assert_close(actual, expected, dtype=None, scale: float = 1.0, what: str = "") -> None:
    """Shape, dtype, then values within the dtype's tolerance (atol scaled by ``scale``)."""
    actual = msn.backend.to_numpy(actual)
    expected = msn.backend.to_numpy(expected)
    assert actual.shape == expected.shape, f"{what} shape {actual.shape} != {expected.shape}"
    dt = np.dtype(dtype or expected.dtype)
    assert actual.dtype == expected.dtype, f"{what} dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOL.get(dt, (0, 0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * max(scale, 1.0),
                               err_msg=what)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- implementations ------------------------------------------------------------------------


def _param(impl: str) -> Any:
    return pytest.param(impl, id=impl, marks=[pytest.mark.cuda] if impl == "cuda" else [])


def impls(kernel: str, without: Sequence[str] = ()) -> list[Any]:
    """Params for ``@pytest.mark.parametrize("impl", ...)``: the implementations registered for
    ``kernel`` (read from the registry, so a new one is tested at once), minus ``without``."""
    return [_param(i) for i in msn.backend.implementations(kernel) if i not in without]


def missing_impls(kernel: str) -> list[Any]:
    """Params of the implementations ``kernel`` lacks (each must raise NotImplementedError)."""
    have = msn.backend.implementations(kernel)
    return [_param(i) for i in msn.backend.IMPLEMENTATIONS if i not in have]


@contextlib.contextmanager
def numba_threads(n: int) -> Iterator[None]:
    """Run the block with exactly ``n`` Numba threads (the CPU pool's worker count). tests/conftest
    starts Numba with 2+ threads even on a one-core runner, so 2 is always there."""
    import numba

    have = numba.config.NUMBA_NUM_THREADS
    assert have >= n, f"this test needs {n} Numba threads, NUMBA_NUM_THREADS is {have}"
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ---- bad input --------------------------------------------------------------------------------


def check_bad_input(fn: Callable[..., Any], defaults: dict[str, Any], kwargs: dict[str, Any],
                    exc: type[Exception] | None, words: Sequence[str]) -> None:
    """``fn(**defaults, **kwargs)`` raises ``exc`` whose message holds every one of ``words``
    (SPEC "Bad input": the argument's name and the shapes or values involved); ``exc=None``
    marks a table row of valid edge input, which must not raise."""
    if exc is None:
        fn(**{**defaults, **kwargs})
        return
    with pytest.raises(exc) as info:
        fn(**{**defaults, **kwargs})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ---- PyTorch comparison -----------------------------------------------------------------------


def check_op(shapes: Sequence[tuple[int, ...]], ours: Callable[..., Any],
             torch_fn: Callable[..., Any], *, inputs: Sequence[np.ndarray] | None = None,
             dtype: Any = np.float64, seed: int = 0, exact: bool = False,
             grad: bool = True, scale: float = 1.0) -> None:
    """tinygrad's ``helper_test_op``: random float inputs of ``shapes`` (or the given ``inputs``)
    go through ``ours`` (minisegnet Tensors) and ``torch_fn`` (torch tensors). Every output (a
    tuple's later items, such as indices, exactly) must match in shape, dtype and value, and, with
    ``grad``, the gradients of every float input for the same random output gradient."""
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(seed)
    arrays = list(inputs) if inputs is not None else [
        r.standard_normal(s).astype(dtype) for s in shapes]
    floats = [a.dtype.kind == "f" and grad for a in arrays]
    ts = [msn.Tensor(a, requires_grad=f) for a, f in zip(arrays, floats)]
    tt = [torch.tensor(a, requires_grad=f) for a, f in zip(arrays, floats)]
    ys, yts = ours(*ts), torch_fn(*tt)
    ys = ys if isinstance(ys, tuple) else (ys,)
    yts = yts if isinstance(yts, tuple) else (yts,)
    assert len(ys) == len(yts), (len(ys), len(yts))
    for i, (y, yt) in enumerate(zip(ys, yts)):
        expected = yt.detach().numpy()
        if exact or i > 0:
            got = y.numpy()
            assert got.shape == expected.shape and got.dtype == expected.dtype, (i, got.dtype)
            np.testing.assert_array_equal(got, expected, err_msg=f"output {i}")
        else:
            assert_close(y.numpy(), expected, scale=scale, what=f"output {i}")
    if not grad:
        return
    gy = r.standard_normal(ys[0].shape).astype(ys[0].dtype)
    ys[0].backward(gy)
    yts[0].backward(torch.tensor(gy))
    for i, (t, tt_) in enumerate(zip(ts, tt)):
        if t.requires_grad:
            assert_close(t.grad, tt_.grad.numpy(), scale=scale, what=f"gradient of input {i}")


# ---- resource limits -------------------------------------------------------------------------


def run_with_memory_limit(setup: str, body: str, budget_mb: int = 1500,
                          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``setup`` (imports, warm-up calls: compiling is not what is measured), then cap the
    child's address space at what it uses plus ``budget_mb`` (``RLIMIT_AS``), then run ``body``;
    the child prints "ok" at the end. A runaway allocation fails inside the child, never the
    machine. Returns the finished process (check ``returncode`` and ``stdout``)."""
    code = "\n".join([
        "import resource, numpy as np, minisegnet as msn, minisegnet.functional as F",
        setup,
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize'))",
        f"cap = (vm + {int(budget_mb)} * 1024) * 1024",
        "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))",
        body,
        "print('ok')",
    ])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)
