"""minisegnet.kernels: every performance-critical op, written three (or four) ways.

One op, one file: ``kernels/<op>.py`` (installed as ``minisegnet.kernels.<op>``). Each file opens
with the formula, the shapes and the versions it holds, then has these sections in this order:

1. **reference**: plain Python loops straight from the formula. The test oracle; slow on purpose.
2. shared per-element helpers: plain ``@numba.njit`` functions that both the CPU kernel and the
   ``@cuda.jit`` kernel call (one bilinear sample, one window max), so CPU and GPU share the math.
3. **numpy**: vectorised NumPy (where a vectorised form is natural; otherwise absent).
4. **numba**: ``@parallel_njit(cache=True)`` CPU kernels (``kernels/_parallel.py``: Numba's
   ``parallel=True``, safe to call from several Python threads at once).
5. **cuda**: ``@cuda.jit`` kernels plus launchers. Launchers take NumPy *or* CuPy arrays (Numba
   moves NumPy arrays to the device and back, which is how the CUDA simulator and the tests run
   them) and allocate outputs with the input's array module. Backward kernels are gathers
   wherever the structure allows (deterministic, no float atomics).
6. ``IMPLS = {kernel_name: {"reference": fn, "numpy": fn, "numba": fn, "cuda": fn}}``: every entry
   of one kernel has the same signature. ``minisegnet.backend.register`` adds it to the registry.
7. ``PTX = [(python_function, [signature, ...]), ...]``: the undecorated CUDA kernel functions with
   float32 and float64 signatures, compiled to PTX by ``tests/test_ptx.py`` (catches typing errors
   the simulator lets through).

Kernels trust their callers (``minisegnet.functional`` validates every argument first) but still
never index out of bounds: every thread checks its index, and indices read from data are clamped
or skipped.
"""
