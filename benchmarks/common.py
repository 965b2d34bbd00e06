"""The benchmark harness: cases, runners, validation, timing, the machine's ceilings.

A :class:`Case` is one op at one shape in one mode ("fwd", "fwd+bwd" or a training "step").
For every case the harness:

1. says ``pending`` if the op is not importable yet (``needs`` names missing from
   ``minisegnet.functional``), instead of crashing;
2. builds the oracle: the ``reference`` implementation when its Python loops finish at this size
   (``ref_cost`` estimated iterations under ``Settings.ref_limit``), otherwise a *trusted*
   implementation (numba, else numpy) that is first checked against the reference on
   ``case.small()``, the same op and parameters at a small size;
3. runs each implementation once (that call also compiles the Numba kernels and starts the GPU),
   compares every output and every gradient with the oracle (shape, dtype, values within a float32
   or float64 tolerance, integers exactly) and times it only if it agrees;
4. times each validated implementation in its own block (:func:`time_blocks`): one more warm-up
   call, then repeats (device synchronised before and after each call) until its calls add up to
   ``Settings.budget_s`` and at least ``min_repeats`` ran, or ``max_repeats``; median and minimum
   are reported;
5. turns the work of one call (FLOPs, bytes or samples) into GFLOP/s, GB/s or samples/s, and the
   fraction of the ceiling (:func:`measure_ceilings`: NumPy float32 GEMM, ``np.copyto`` bandwidth).

Implementations: "reference", "numpy", "numba" (minisegnet on NumPy arrays, chosen with
``minisegnet.use_impl``), "cuda" (minisegnet on CuPy arrays; only with a real GPU, never under
Numba's simulator), "torch" (PyTorch CPU, only when installed) and "torch-cuda".
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import importlib.util
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MSN_IMPLS = ("reference", "numpy", "numba", "cuda")
ALL_IMPLS = MSN_IMPLS + ("torch", "torch-cuda")
TRUSTED_ORDER = ("numba", "numpy", "cuda")  # oracle at sizes the reference cannot reach
JIT_IMPLS = ("numba", "cuda", "torch-cuda")  # whose first call compiles or starts a device
SETTLE_S = 0.15  # OpenBLAS worker threads spin ~2^28 cycles (~0.1 s) after a call before sleeping

# Comparison tolerances: |a - b| <= atol * max|b| + rtol * |b|. float32 sums over up to ~10^5 terms
# (a weight gradient over N*H*W) differ with summation order at about 1e-5 of the largest value.
TOLERANCE = {np.dtype(np.float32): (1e-3, 2e-4), np.dtype(np.float64): (1e-8, 1e-10)}

Runner = Callable[[], list[Any]]


# =============================================================================================
# What is installed
# =============================================================================================


@functools.cache
def torch_module() -> Any:
    """``torch`` if it is installed (and not disabled with MINISEGNET_BENCH_NO_TORCH=1), else None."""
    if os.environ.get("MINISEGNET_BENCH_NO_TORCH", "0") == "1":
        return None
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        return torch
    except Exception:  # a broken install must not break the benchmarks
        return None


@functools.cache
def torchvision_ops() -> Any:
    """``torchvision.ops`` (RoIAlign, RoIPool, NMS peers) if importable, else None."""
    if torch_module() is None or importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision.ops

        return torchvision.ops
    except Exception:
        return None


@functools.cache
def gpu_available() -> bool:
    """A real GPU for minisegnet's CUDA kernels: CuPy with a device, not Numba's simulator."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return False
    from minisegnet.backend import cupy_module

    if cupy_module() is None:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def torch_cuda_available() -> bool:
    torch = torch_module()
    return bool(torch is not None and torch.cuda.is_available())


def missing_functional(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that ``minisegnet.functional`` (or ``.models``) does not export."""
    import minisegnet.functional as F

    missing = []
    for n in names:
        if n.startswith("models."):
            try:
                importlib.import_module("minisegnet.models")
            except Exception:
                missing.append("minisegnet.models")
        elif not hasattr(F, n):
            missing.append(n)
    return missing


def device_of(impl: str) -> str:
    return "cuda" if impl in ("cuda", "torch-cuda") else "cpu"


def synchronizer(impl: str) -> Callable[[], None]:
    """Wait for the device to finish (a no-op on the CPU)."""
    if impl == "cuda":
        import cupy

        dev = cupy.cuda.Device()
        return dev.synchronize
    if impl == "torch-cuda":
        return torch_module().cuda.synchronize
    return lambda: None


# =============================================================================================
# Settings and results
# =============================================================================================


@dataclasses.dataclass
class Settings:
    """How long to time and which implementations to run."""

    quick: bool = False
    budget_s: float = 1.0  # time each implementation until this much has passed ...
    min_repeats: int = 3  # ... and at least this many repeats ran
    max_repeats: int = 50
    ref_limit: float = 2e5  # the reference runs where its estimated Python iterations are below this
    impls: tuple[str, ...] = ALL_IMPLS
    verbose: bool = True

    @classmethod
    def for_mode(cls, quick: bool, **kw: Any) -> Settings:
        if quick:
            base = dict(quick=True, budget_s=0.02, min_repeats=1, max_repeats=3, ref_limit=2e5)
        else:
            base = dict(quick=False)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


@dataclasses.dataclass
class Row:
    """One (case, implementation) result; ``status`` is ok, pending, n/a, mismatch or error."""

    op: str
    case: str
    mode: str
    kind: str
    dtype: str
    impl: str
    status: str
    note: str = ""
    validated_against: str = ""
    max_err: float | None = None
    median_s: float | None = None
    min_s: float | None = None
    repeats: int = 0
    work: float = 0.0
    achieved: float | None = None  # GFLOP/s, GB/s or samples/s of the median
    unit: str = ""
    ceiling_fraction: float | None = None
    vs_torch: float | None = None  # t / t_torch (same device): below 1 is faster than PyTorch
    vs_numpy: float | None = None  # t_numpy / t: the speed-up over the NumPy implementation
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Results:
    """The rows of a run, with lookups by case name and implementation (used by targets)."""

    def __init__(self, rows: list[Row], meta: dict[str, Any]) -> None:
        self.rows = rows
        self.meta = meta
        self._index = {(r.case, r.impl): r for r in rows}

    def row(self, case: str, impl: str) -> Row | None:
        return self._index.get((case, impl))

    def time(self, case: str, impl: str) -> float | None:
        r = self.row(case, impl)
        return r.median_s if r is not None and r.status == "ok" else None

    def cases(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r.case, None)
        return list(seen)


# =============================================================================================
# Cases
# =============================================================================================


def seed_of(name: str) -> int:
    """A stable per-case seed (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def raw(a: Any) -> Any:
    """The array inside a minisegnet or PyTorch tensor (as-is for arrays)."""
    import minisegnet as msn

    if isinstance(a, msn.Tensor):
        return a.data
    return a


class Case:
    """One op at one shape in one mode. Subclasses build the runners."""

    op: str
    name: str
    mode: str
    kind: str  # "flop" | "mem" | "samples" | "time"
    work: float
    dtype: Any
    needs: tuple[str, ...]
    ref_cost: float
    tags: dict[str, Any]
    rate_unit: str = ""  # for kind "samples": what is counted ("samples", "images", "boxes")
    tolerance: tuple[float, float] | None = None  # (rtol, atol) override for compare()

    def small(self) -> Case | None:
        """The same op and parameters at a size where the reference finishes (None: no check)."""
        return None

    def pending(self) -> str | None:
        missing = missing_functional(self.needs)
        if missing:
            return "not in minisegnet yet: " + ", ".join(missing)
        return None

    def runner(self, impl: str) -> Runner:
        raise NotImplementedError

    def torch_unavailable(self) -> str | None:
        """Why there is no PyTorch peer for this case (None: there is one)."""
        return None


class FunctionalCase(Case):
    """A ``minisegnet.functional`` op and its ``torch.nn.functional`` twin on the same arrays.

    ``inputs(rng)`` returns the NumPy input arrays by name; ``msn(F, **tensors)`` and
    ``torch(tF, **tensors)`` compute the outputs (one tensor or a tuple; in "fwd+bwd" mode the
    backward pass starts from the first output, with a fixed random output gradient, and every
    output plus the gradients of ``grad`` inputs are validated). ``torch`` is None when PyTorch
    has no equivalent; ``torch_needs="torchvision"`` when the peer lives there.
    """

    def __init__(
        self,
        op: str,
        name: str,
        *,
        mode: str,
        kind: str,
        work: float,
        inputs: Callable[[np.random.Generator], dict[str, np.ndarray]],
        msn: Callable[..., Any],
        torch: Callable[..., Any] | None = None,
        grad: Sequence[str] = ("x",),
        needs: Sequence[str] = (),
        ref_cost: float = math.inf,
        small: Callable[[], Case] | None = None,
        dtype: Any = np.float32,
        torch_needs: str = "torch",
        rate_unit: str = "",
        tags: dict[str, Any] | None = None,
    ) -> None:
        assert mode in ("fwd", "fwd+bwd"), mode
        assert kind in ("flop", "mem", "samples", "time"), kind
        self.op, self.name, self.mode, self.kind, self.work = op, name, mode, kind, float(work)
        self.make_inputs, self.msn, self.torch = inputs, msn, torch
        self.grad = tuple(grad) if mode == "fwd+bwd" else ()
        self.needs = tuple(needs)
        self.ref_cost = ref_cost
        self._small = small
        self.dtype = np.dtype(dtype)
        self.torch_needs = torch_needs
        self.rate_unit = rate_unit
        self.tags = dict(tags or {})
        self._inputs: dict[str, np.ndarray] | None = None
        self._gy: np.ndarray | None = None

    def small(self) -> Case | None:
        return self._small() if self._small is not None else None

    def inputs(self) -> dict[str, np.ndarray]:
        if self._inputs is None:
            self._inputs = self.make_inputs(np.random.default_rng(seed_of(self.name)))
        return self._inputs

    def grad_output(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The output gradient fed to backward: fixed per case, the same for every implementation."""
        if self._gy is None or self._gy.shape != tuple(shape):
            rng = np.random.default_rng(seed_of(self.name) + 1)
            self._gy = rng.standard_normal(tuple(shape)).astype(dtype)
        return self._gy

    def release(self) -> None:
        """Drop the cached arrays (big cases hold hundreds of MB)."""
        self._inputs = self._gy = None

    def torch_unavailable(self) -> str | None:
        if self.torch is None:
            return "no PyTorch equivalent"
        if torch_module() is None:
            return "PyTorch not installed"
        if self.torch_needs == "torchvision" and torchvision_ops() is None:
            return "torchvision not installed"
        return None

    # -- runners: each returns a zero-argument callable doing one iteration, returning its outputs

    def runner(self, impl: str) -> Runner:
        if impl.startswith("torch"):
            return self._torch_runner(device_of(impl))
        return self._msn_runner(impl)

    def _msn_runner(self, impl: str) -> Runner:
        import minisegnet as msn
        import minisegnet.functional as F
        from minisegnet.backend import to_device

        device = device_of(impl)
        arrays = {k: to_device(v, device) for k, v in self.inputs().items()}
        fwd_bwd = self.mode == "fwd+bwd"
        state: dict[str, Any] = {}

        def call() -> list[Any]:
            with msn.use_impl(impl):
                ts = {k: msn.Tensor(a, requires_grad=k in self.grad) for k, a in arrays.items()}
                if not fwd_bwd:
                    with msn.no_grad():
                        return [raw(o) for o in as_list(self.msn(F, **ts))]
                outs = as_list(self.msn(F, **ts))
                if "gy" not in state:
                    gy = self.grad_output(outs[0].shape, outs[0].dtype)
                    state["gy"] = to_device(gy, device)
                outs[0].backward(state["gy"])
                return [raw(o) for o in outs] + [ts[k].grad for k in self.grad]

        return call

    def _torch_runner(self, device: str) -> Runner:
        torch = torch_module()
        import torch.nn.functional as tF

        arrays = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in self.inputs().items()}
        fwd_bwd = self.mode == "fwd+bwd"
        state: dict[str, Any] = {}
        ns = tF
        if self.torch_needs == "torchvision":
            ns = torchvision_ops()

        def call() -> list[Any]:
            ts = {k: (a.detach().requires_grad_(True) if k in self.grad else a) for k, a in arrays.items()}
            if not fwd_bwd:
                with torch.no_grad():
                    return list(as_list(self.torch(ns, **ts)))
            outs = as_list(self.torch(ns, **ts))
            if "gy" not in state:
                gy = self.grad_output(tuple(outs[0].shape), _np_dtype(outs[0]))
                state["gy"] = torch.from_numpy(gy).to(device)
            outs[0].backward(state["gy"])
            return [o.detach() for o in outs] + [ts[k].grad for k in self.grad]

        return call


def _np_dtype(t: Any) -> np.dtype:
    torch = torch_module()
    return torch.empty((), dtype=t.dtype).numpy().dtype


def to_numpy(a: Any) -> np.ndarray | None:
    """A NumPy copy of a NumPy/CuPy array, a minisegnet Tensor or a torch tensor (None stays None)."""
    if a is None:
        return None
    a = raw(a)
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    from minisegnet.backend import to_numpy as msn_to_numpy

    return np.asarray(msn_to_numpy(a))


# =============================================================================================
# Validation
# =============================================================================================


def compare(outs: list[Any], oracle: list[np.ndarray | None],
            tolerance: tuple[float, float] | None = None) -> tuple[bool, float, str]:
    """(agrees, worst normalised error, message) of ``outs`` against the oracle outputs.

    Floats agree when ``|a - b| <= atol * max|b| + rtol * |b|`` elementwise, with (rtol, atol) from
    ``tolerance`` or :data:`TOLERANCE` by dtype; integers must be equal.
    """
    if len(outs) != len(oracle):
        return False, math.inf, f"{len(outs)} outputs, oracle has {len(oracle)}"
    worst = 0.0
    for i, (a, b) in enumerate(zip(outs, oracle)):
        a = to_numpy(a)
        if a is None or b is None:
            if a is None and b is None:
                continue
            return False, math.inf, f"output {i}: one side has no gradient"
        if a.shape != b.shape:
            return False, math.inf, f"output {i}: shape {a.shape} != {b.shape}"
        if np.issubdtype(b.dtype, np.integer) or b.dtype == bool:
            if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
                return False, math.inf, f"output {i}: dtype {a.dtype}, expected integers"
            bad = int(np.count_nonzero(a.astype(np.int64) != b.astype(np.int64)))
            if bad:
                return False, math.inf, f"output {i}: {bad} of {b.size} integers differ"
            continue
        if a.dtype != b.dtype:
            return False, math.inf, f"output {i}: dtype {a.dtype} != {b.dtype}"
        rtol, atol = tolerance or TOLERANCE.get(np.dtype(b.dtype), (1e-3, 1e-3))
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        scale = scale if scale > 0 else 1.0
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        err = float(np.max(diff)) / scale if diff.size else 0.0
        if not np.all(np.isfinite(a) == np.isfinite(b)):
            return False, math.inf, f"output {i}: non-finite values differ"
        finite = np.isfinite(b)
        ok = np.all(diff[finite] <= atol * scale + rtol * np.abs(b[finite].astype(np.float64)))
        worst = max(worst, err)
        if not ok:
            return False, err, f"output {i}: max |diff| / max|oracle| = {err:.3g}"
    return True, worst, ""


def snapshot(outs: list[Any]) -> list[np.ndarray | None]:
    """Host copies of the outputs (copies: a runner may reuse or zero its arrays in place later)."""
    return [None if o is None else np.array(to_numpy(o), copy=True) for o in outs]


# =============================================================================================
# Timing
# =============================================================================================


def time_blocks(
    fns: dict[str, tuple[Runner, Callable[[], None], float]], settings: Settings
) -> dict[str, list[float] | Exception]:
    """Timed repeats of each validated runner, one implementation after the other.

    ``fns`` maps an implementation to (runner, device synchronisation, seconds of its first call).
    Each block starts with a warm-up call (always for JIT-compiled or GPU code; for the rest only
    when one call is shorter than the budget, as a long call is warm enough by itself), then
    repeats until its calls add up to ``budget_s`` and ``min_repeats`` ran (2 when one call alone
    exceeds the budget), or ``max_repeats``; each call is bracketed by device synchronisation.

    Why blocks and not implementations taking turns call by call: the thread pools of OpenBLAS,
    PyTorch's OpenMP and Numba spin for a while after a call and then sleep; alternating
    libraries would make every call pay for another library's spinning threads or wake its own
    (measured here: a 0.1 ms PyTorch conv took 40+ ms right after a NumPy matmul), a cost that a
    training loop, which runs one library back to back, does not pay.

    The cyclic garbage collector is off meanwhile (as in ``timeit``): arrays are freed by
    reference counting, and a collection pass over the many objects that PyTorch and Numba's
    compiler leave behind would land inside some calls only.
    """
    s = settings
    out: dict[str, list[float] | Exception] = {}
    for impl, (fn, sync, first_s) in fns.items():
        times: list[float] = []
        min_rep = s.min_repeats if first_s <= s.budget_s else min(2, s.min_repeats)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if impl in JIT_IMPLS or first_s <= s.budget_s:
                _once(fn, sync)
            else:
                time.sleep(SETTLE_S)  # let the previous block's spinning threads go to sleep
            spent = 0.0
            while True:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                dt = time.perf_counter() - t0
                times.append(dt)
                spent += dt
                if len(times) >= s.max_repeats or (len(times) >= min_rep and spent >= s.budget_s):
                    break
            out[impl] = times
        except Exception as e:  # noqa: BLE001 - reported as this implementation's error
            out[impl] = e
        finally:
            if gc_was_enabled:
                gc.enable()
    return out


def _once(fn: Runner, sync: Callable[[], None]) -> tuple[list[Any], float]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


# =============================================================================================
# The machine's ceilings and metadata
# =============================================================================================


def measure_ceilings(quick: bool) -> dict[str, Any]:
    """float32 GEMM GFLOP/s (NumPy matmul of square matrices) and copy GB/s (np.copyto, read+write).

    Best of several repeats: a ceiling is what the machine *can* do. On a GPU the same two numbers
    are measured with CuPy.
    """
    n = 1024 if quick else 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up: BLAS threads start
    best = math.inf
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    gemm = 2.0 * n**3 / best / 1e9
    del a, b, c

    size = (8 if quick else 64) * 2**20  # float32 elements: 32 MiB / 256 MiB, far beyond the caches
    src = np.ones(size, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch of dst's pages stays out of the timing
    best = math.inf
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    copy = 2.0 * src.nbytes / best / 1e9
    del src, dst
    out: dict[str, Any] = {
        "gemm_gflops": gemm,
        "gemm_n": n,
        "copy_gbs": copy,
        "copy_bytes": 2 * size * 4,
    }
    torch = torch_module()
    if torch is not None:  # for reference only: PyTorch's own GEMM (oneDNN/MKL) may beat NumPy's BLAS
        ta = torch.randn(n, n)
        tc = ta @ ta
        best = math.inf
        for _ in range(3 if quick else 7):
            t0 = time.perf_counter()
            torch.matmul(ta, ta, out=tc)
            best = min(best, time.perf_counter() - t0)
        out["torch_gemm_gflops"] = 2.0 * n**3 / best / 1e9
        del ta, tc
    if gpu_available():
        out.update(_gpu_ceilings(quick))
    return out


def _gpu_ceilings(quick: bool) -> dict[str, Any]:
    import cupy

    dev = cupy.cuda.Device()
    n = 2048 if quick else 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = a @ b
    dev.synchronize()
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        cupy.matmul(a, b, out=c)
        dev.synchronize()
        best = min(best, time.perf_counter() - t0)
    gemm = 2.0 * n**3 / best / 1e9
    del a, b, c
    size = 256 * 2**20
    src = cupy.ones(size, cupy.float32)
    dst = cupy.empty_like(src)
    cupy.copyto(dst, src)
    dev.synchronize()
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        cupy.copyto(dst, src)
        dev.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {"gpu_gemm_gflops": gemm, "gpu_copy_gbs": 2.0 * src.nbytes / best / 1e9}


def _version(mod: str) -> str | None:
    if importlib.util.find_spec(mod) is None:
        return None
    if mod == "torch" and torch_module() is None:
        return None
    try:
        return getattr(importlib.import_module(mod), "__version__", "?")
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except Exception:
        return None


def machine_metadata() -> dict[str, Any]:
    """CPU, cores, library versions, GPU, git revision, load: what a reader needs to trust a number."""
    import numba

    import minisegnet

    meta: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "minisegnet": minisegnet.__version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "torch": _version("torch"),
            "torchvision": _version("torchvision") if torchvision_ops() is not None else None,
            "cupy": _version("cupy") if gpu_available() else None,
            "matplotlib": _version("matplotlib"),
        },
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_threading_layer": str(numba.config.THREADING_LAYER),
        "gpu": None,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        cfg = np.show_config(mode="dicts")
        meta["blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name")
    except Exception:
        meta["blas"] = None
    # OpenBLAS picks its kernels per CPU (OPENBLAS_CORETYPE overrides): on the AMD EPYC machines
    # here the AVX2 "Haswell" kernels run float32 GEMM at about half the AVX-512 "SkylakeX" speed,
    # which moves every im2col conv row. Record what this run used.
    meta["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
    try:
        from threadpoolctl import threadpool_info

        meta["blas_kernels"] = next(
            (i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"),
            None,
        )
    except Exception:  # threadpoolctl is optional (it comes with scikit-learn)
        meta["blas_kernels"] = None
    torch = torch_module()
    if torch is not None:
        meta["torch_threads"] = torch.get_num_threads()
    if gpu_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        meta["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    elif torch_cuda_available():
        meta["gpu"] = torch_module().cuda.get_device_name(0)
    return meta


# =============================================================================================
# Running one case
# =============================================================================================


def _log(settings: Settings, msg: str) -> None:
    if settings.verbose:
        print(msg, flush=True)


def _rate(case: Case, impl: str, seconds: float, ceilings: dict[str, Any]) -> tuple[float | None, str, float | None]:
    """(achieved, unit, fraction of the ceiling) of one call taking ``seconds``."""
    if not seconds or seconds <= 0 or case.work <= 0:
        return None, "", None
    gpu = device_of(impl) == "cuda"
    if case.kind == "flop":
        v = case.work / seconds / 1e9
        ceil = ceilings.get("gpu_gemm_gflops" if gpu else "gemm_gflops")
        return v, "GFLOP/s", (v / ceil if ceil else None)
    if case.kind == "mem":
        v = case.work / seconds / 1e9
        ceil = ceilings.get("gpu_copy_gbs" if gpu else "copy_gbs")
        return v, "GB/s", (v / ceil if ceil else None)
    if case.kind == "samples":
        return case.work / seconds, f"{case.rate_unit or 'samples'}/s", None
    return None, "", None


class Harness:
    """Runs cases with one Settings and one set of ceilings; remembers small-size validations."""

    def __init__(self, settings: Settings, ceilings: dict[str, Any]) -> None:
        self.settings = settings
        self.ceilings = ceilings
        self._trusted_checks: dict[str, tuple[str | None, str]] = {}

    # -- which implementations apply

    def impls_for(self, case: Case) -> list[tuple[str, str | None]]:
        """[(impl, reason it cannot run or None)] in canonical order."""
        out: list[tuple[str, str | None]] = []
        for impl in ALL_IMPLS:
            if impl not in self.settings.impls:
                continue
            why: str | None = None
            if impl == "reference" and case.ref_cost > self.settings.ref_limit:
                why = "reference too slow at this size (validated at a small size instead)"
            elif impl == "cuda" and not gpu_available():
                continue  # no GPU: no row at all
            elif impl == "torch":
                why = case.torch_unavailable()
            elif impl == "torch-cuda":
                if not torch_cuda_available():
                    continue
                why = case.torch_unavailable()
            out.append((impl, why))
        return out

    # -- the oracle

    def _call(self, case: Case, impl: str) -> tuple[list[Any], float, Runner]:
        fn = case.runner(impl)
        sync = synchronizer(impl)
        outs, seconds = _once(fn, sync)
        return outs, seconds, fn

    def trusted_check(self, case: Case) -> tuple[str | None, str]:
        """(trusted implementation, note): which implementation may serve as the oracle for
        ``case`` at its size, after checking it against the reference on ``case.small()``."""
        small = case.small()
        if small is None:
            return "numba", "numba (not checked against the reference: too slow at any size here)"
        key = small.name
        if key in self._trusted_checks:
            return self._trusted_checks[key]
        result: tuple[str | None, str]
        try:
            ref_outs = snapshot(self._call(small, "reference")[0])
        except Exception as e:  # noqa: BLE001 - report, do not crash
            result = (None, f"reference failed at small size: {type(e).__name__}: {e}")
            self._trusted_checks[key] = result
            return result
        result = (None, "no implementation agrees with the reference at a small size")
        for impl in TRUSTED_ORDER:
            if impl == "cuda" and not gpu_available():
                continue
            try:
                outs = self._call(small, impl)[0]
            except NotImplementedError:
                continue
            except Exception as e:  # noqa: BLE001
                result = (None, f"{impl} failed at small size: {type(e).__name__}: {e}")
                continue
            ok, err, msg = compare(outs, ref_outs, small.tolerance)
            if ok:
                result = (impl, f"{impl} (checked vs reference at small size)")
                break
            result = (None, f"{impl} disagrees with the reference on {small.name}: {msg}")
        if isinstance(small, FunctionalCase):
            small.release()
        self._trusted_checks[key] = result
        return result

    # -- one case, every implementation

    def run_case(self, case: Case) -> list[Row]:
        s = self.settings
        base = dict(op=case.op, case=case.name, mode=case.mode, kind=case.kind,
                    dtype=np.dtype(case.dtype).name, work=case.work, tags=case.tags)
        why = case.pending()
        if why:
            _log(s, f"  {case.name}: pending ({why})")
            return [Row(impl="*", status="pending", note=why, **base)]

        plan = self.impls_for(case)
        rows: dict[str, Row] = {}
        oracle: list[np.ndarray | None] | None = None
        oracle_name = ""
        first: dict[str, tuple[list[Any], float, Runner]] = {}
        runnable = [impl for impl, why_not in plan if why_not is None]
        oracle_name_note = "the reference failed"

        # 1. the oracle: the reference if it runs at this size, else a trusted implementation
        if "reference" in runnable:
            order = ["reference"]
        else:
            trusted, note = self.trusted_check(case)
            order = [trusted] if trusted is not None and trusted in runnable else []
            if not order:
                _log(s, f"  {case.name}: no oracle ({note})")
            oracle_name_note = note
            trusted_label = note
        for impl in order:
            try:
                outs, sec, fn = self._call(case, impl)
                first[impl] = (outs, sec, fn)
                oracle = snapshot(outs)
                oracle_name = impl if impl == "reference" else trusted_label
            except NotImplementedError as e:
                rows[impl] = Row(impl=impl, status="n/a", note=str(e), **base)
            except Exception as e:  # noqa: BLE001
                rows[impl] = Row(impl=impl, status="error", note=f"{type(e).__name__}: {e}", **base)

        # 2. every implementation: validate against the oracle (its first call)
        ready: dict[str, tuple[Runner, Callable[[], None], float]] = {}
        checked: dict[str, tuple[str, float]] = {}
        for impl, why_not in plan:
            if why_not is not None:
                rows[impl] = Row(impl=impl, status="n/a", note=why_not, **base)
                continue
            if impl in rows:
                continue
            sync = synchronizer(impl)
            try:
                if impl in first:
                    outs, sec, fn = first.pop(impl)
                else:
                    outs, sec, fn = self._call(case, impl)
            except NotImplementedError as e:
                rows[impl] = Row(impl=impl, status="n/a", note=str(e), **base)
                continue
            except Exception as e:  # noqa: BLE001
                rows[impl] = Row(impl=impl, status="error", note=f"{type(e).__name__}: {e}", **base)
                _log(s, f"  {case.name} [{impl}] ERROR {type(e).__name__}: {e}")
                continue
            if oracle is None:
                rows[impl] = Row(impl=impl, status="mismatch",
                                 note="not timed: no validated oracle (" + oracle_name_note + ")", **base)
                continue
            if oracle_name.startswith(impl):
                ok, err, msg = True, 0.0, ""
                against = "itself (the oracle)" if impl == "reference" else oracle_name
            else:
                ok, err, msg = compare(outs, oracle, case.tolerance)
                against = oracle_name
            del outs
            if not ok:
                rows[impl] = Row(impl=impl, status="mismatch", note=msg, validated_against=against,
                                 max_err=err if math.isfinite(err) else None, **base)
                _log(s, f"  {case.name} [{impl}] MISMATCH vs {against}: {msg}")
                continue
            ready[impl] = (fn, sync, sec)
            checked[impl] = (against, err)
        oracle = None

        # 3. time the validated ones
        for impl, times in time_blocks(ready, s).items():
            against, err = checked[impl]
            if isinstance(times, Exception):
                rows[impl] = Row(impl=impl, status="error", note=f"{type(times).__name__}: {times}",
                                 **base)
                continue
            med, mn = float(np.median(times)), float(min(times))
            ach, unit, frac = _rate(case, impl, med, self.ceilings)
            rows[impl] = Row(impl=impl, status="ok", validated_against=against, max_err=err,
                             median_s=med, min_s=mn, repeats=len(times), achieved=ach, unit=unit,
                             ceiling_fraction=frac, **base)
            _log(s, f"  {case.name} [{impl}] {med * 1e3:9.3f} ms (min {mn * 1e3:.3f}, n={len(times)})"
                 + (f"  {ach:.3g} {unit}" if ach is not None else ""))
        del ready
        if isinstance(case, FunctionalCase):
            case.release()

        # 4. ratios: t / t_torch on the same device, t_numpy / t
        t_torch = {"cpu": _ok_time(rows.get("torch")), "cuda": _ok_time(rows.get("torch-cuda"))}
        t_numpy = _ok_time(rows.get("numpy"))
        for impl, r in rows.items():
            if r.status != "ok":
                continue
            peer = t_torch[device_of(impl)]
            if peer and not impl.startswith("torch"):
                r.vs_torch = r.median_s / peer
            if t_numpy and impl != "numpy":
                r.vs_numpy = t_numpy / r.median_s
        return [rows[i] for i, _ in plan if i in rows]


def _ok_time(r: Row | None) -> float | None:
    return r.median_s if r is not None and r.status == "ok" else None


def geomean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def python_command() -> str:
    """The command line of this run, as a reader would type it."""
    argv0 = sys.argv[0].replace(os.sep, "/")
    if argv0.endswith("benchmarks/__main__.py"):
        head = ["python", "-m", "benchmarks"]
    else:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = ["python", os.path.relpath(sys.argv[0], here) if os.path.isabs(sys.argv[0]) else sys.argv[0]]
    return shlex.join(head + sys.argv[1:])
