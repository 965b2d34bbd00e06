"""conv2d on the CPU and GPU: the plain-loop reference, and the blocked im2col + GEMM driver.

Formula (SPEC "conv2d", cross-correlation; reads outside the input are 0)::

    y[n, o, i, j] = b[o] + sum_{c < C/G, p < KH, q < KW}
                    x[n, g(o)*C/G + c, i*sh - ph + p*dh, j*sw - pw + q*dw] * w[o, c, p, q]

with g(o) = o // (O/G) the group of output channel o. Shapes: x (N, C, H, W), w (O, C/G, KH, KW),
b (O,) or None -> y (N, O, OH, OW), ``OH = floor((H + 2ph - dh(KH-1) - 1) / sh) + 1`` (likewise OW).
The input gradient is the adjoint C_w^T gy (conv_transpose2d's forward); the weight gradient is
``gw[o, c, p, q] = sum_{n, i, j} gy[n, o, i, j] * x[n, g(o)*C/G + c, i*sh - ph + p*dh, ...]``.

Versions in this file:

* ``reference`` (:func:`conv2d_reference`): the formula as scalar loops, accumulated in float64.
  The oracle of every conv test; slow on purpose, keep shapes tiny.
* ``cuda`` (:func:`conv2d_direct_cuda`): the same formula with one GPU thread per output element.
  A direct oracle on the device (the fast GPU path is im2col + a CuPy GEMM, below).
* The **blocked driver** (:func:`conv2d_array`, :func:`conv_transpose2d_array`,
  :func:`conv2d_backward_array`): im2col + GEMM for every implementation, the im2col/col2im
  kernels taken from ``kernels/im2col.py`` through the registry for the implementation in use
  (``reference``, ``numpy`` = the textbook method, ``numba``, ``cuda``). How the CPU ("numba") path
  is fast (``benchmarks/bench_conv2d.py`` has the numbers):

  - Blocks. The columns are 9x the input for a 3x3 kernel. Instead of building them all, the batch
    is walked in blocks of images or of output rows (:data:`BLOCK_BYTES` of columns each), written
    into a reused scratch buffer, and each block's GEMM writes its slice of y in place. No big
    allocation (fresh pages cost a page fault each), and the block is still in cache when the GEMM
    reads it.
  - One block per core. Each core takes its own share of the blocks and runs both steps itself: a
    single-threaded im2col (``im2col_serial``, GIL released) and a single-threaded GEMM
    (:mod:`minisegnet._cpu_pool`). Alternating a parallel Numba kernel with a parallel BLAS call
    instead makes the two thread pools fight over the cores (OpenBLAS spins after each call):
    measured on 2 cores, 3x3 fwd+bwd went from 1.3-3.3x PyTorch's time to 0.95-2.0x.
  - Stride-1 adjoint as a conv. With stride 1, C_w^T gy is itself a conv2d of gy with the kernel
    rotated 180 degrees and its channel axes swapped (padding d(k-1) - p): a GEMM summing over
    O*KH*KW terms instead of O, and no col2im (:data:`ROTATED_KERNEL_IMPLS`). Measured on one
    core: 1.4-1.6x faster than W^T @ gy + col2im at 16 channels, the same at 64 and 128.
  - One pass for both gradients. That conv of gy has x as its output gradient, and its weight
    gradient is conv2d's weight gradient rotated the same way, so one ``conv2d_array(gy,
    rotated w, gy=x)`` returns both from the same columns of gy: one im2col instead of two
    (:func:`conv2d_backward_array`). Measured on 2 cores: the backward of 1x16x64x64 took 0.77 ms
    against 1.05 ms.
  - The weight gradient is accumulated as ``cols @ gy^T`` (long inner dimension), then transposed.
  - Wide passes. Where the weight is bigger than the columns (O/G >= N*OH*OW: FCN's fc6 and fc7,
    4096 channels on a few pixels) blocks would each re-read the whole weight and the per-core
    weight-gradient sums would each be weight-sized, so the whole batch's columns are built at
    once and one GEMM is cut among the cores by output channels (:func:`_wide`). The
    rotated-kernel adjoint is skipped there, and where it would compute the conv of gy on a grid
    much larger than gy's (a valid conv on a small plane, :data:`ADJOINT_MAX_GROWTH`). FCN-32s's
    training step at width 64: 20 s -> 6 s, fc6's backward 13 s -> 0.4 s.

  Depthwise convolutions (``groups == C_in`` and ``weight.shape[1] == 1``) go to the direct kernels
  of ``kernels/depthwise_conv2d.py`` when those are registered for the implementation in use: an
  im2col for them builds C*KH*KW rows only to multiply them block-diagonally.

* **Winograd F(2x2, 3x3)** (Lavin and Gray, 2016) for 3x3, stride-1, dilation-1, one-group convs:
  ``Y = A^T [sum_c (G g G^T) * (B^T d B)] A`` per 4x4 input tile d (2x2 outputs), i.e. an input
  transform, 16 independent GEMMs (O x C) @ (C x tiles) and an output transform: 16
  multiplications per tile and channel pair instead of 36. :func:`conv2d_winograd_reference` is
  the formula with G, B^T, A^T written out; :func:`conv2d_winograd_numba` the fast one (Numba
  transforms, BLAS GEMMs, per-core blocks like the im2col driver). The forward, and the input
  gradient (the stride-1 adjoint is itself such a conv), may run it; the weight gradient stays
  im2col. ``conv2d_algorithm("winograd" | "im2col" | "auto")`` (a context manager, also
  ``minisegnet.functional.conv2d_algorithm``; environment ``MINISEGNET_CONV_ALGORITHM``) forces
  either path; "auto" takes Winograd only where it measured faster (:data:`WINOGRAD_MIN_CHANNELS`).

Kernels in the table (same signature for each implementation)::

    conv2d_direct(x, w, b, stride, padding, dilation, groups) -> y
    conv2d_winograd(x, w, padding) -> y             (w 3x3, stride 1)

How to benchmark: ``python -m benchmarks --op conv2d`` (forward and backward against PyTorch and
against the textbook ``numpy`` im2col).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from numba import cuda, types

from .. import _cpu_pool
from ..backend import current_impl, get_array_module, implementations, kernel
from ._cuda import FLOAT_DTYPES, float_array, launch, to_dev, to_host_like

Pair = tuple[int, int]

_DEPTHWISE_KERNELS = (
    "depthwise_conv2d", "depthwise_conv2d_backward_input", "depthwise_conv2d_backward_weight")


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """conv2d output length ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (may be <= 0)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


# ============================================================================================
# reference: loops straight from the formula
# ============================================================================================


def conv2d_reference(x: np.ndarray, w: np.ndarray, b: Any = None, stride: Pair = (1, 1),
                     padding: Pair = (0, 0), dilation: Pair = (1, 1),
                     groups: int = 1) -> np.ndarray:
    """y (N, O, OH, OW) from x (N, C, H, W), w (O, C/G, KH, KW), b (O,) or None: the SPEC formula
    as scalar loops, each output summed in float64, returned in x's dtype."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH, OW = conv_output_size(H, KH, sh, ph, dh), conv_output_size(W, KW, sw, pw, dw)
    y = np.zeros((N, O, OH, OW), dtype=np.float64)
    for n in range(N):
        for o in range(O):
            c0 = (o // (O // groups)) * Cg  # first input channel of o's group
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        for p in range(KH):
                            for q in range(KW):
                                h, v = i * sh - ph + p * dh, j * sw - pw + q * dw
                                if 0 <= h < H and 0 <= v < W:
                                    acc += float(x[n, c0 + c, h, v]) * float(w[o, c, p, q])
                    y[n, o, i, j] = acc
    return y.astype(x.dtype)


# ============================================================================================
# cuda: the formula, one thread per output element
# ============================================================================================


def _conv2d_direct_cuda(x, w, sh, sw, ph, pw, dh, dw, groups, y, total):
    t = cuda.grid(1)
    if t >= total:
        return
    OW, OH, O = y.shape[3], y.shape[2], y.shape[1]
    j = t % OW
    i = (t // OW) % OH
    o = (t // (OW * OH)) % O
    n = t // (OW * OH * O)
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    c0 = (o // (O // groups)) * Cg
    acc = y.dtype.type(0)
    for c in range(Cg):
        for p in range(KH):
            h = i * sh - ph + p * dh
            if h < 0 or h >= x.shape[2]:
                continue
            for q in range(KW):
                v = j * sw - pw + q * dw
                if 0 <= v < x.shape[3]:
                    acc += x[n, c0 + c, h, v] * w[o, c, p, q]
    y[n, o, i, j] += acc


_conv2d_direct_cuda_kernel = cuda.jit(_conv2d_direct_cuda)


def conv2d_direct_cuda(x: Any, w: Any, b: Any = None, stride: Pair = (1, 1),
                       padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1) -> Any:
    """:func:`conv2d_reference` on the GPU (or the simulator for NumPy input)."""
    N, _, H, W = x.shape
    O, _, KH, KW = w.shape
    oh = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    ow = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    xp = get_array_module(x)
    y0 = xp.zeros((N, O, oh, ow), dtype=x.dtype)
    if b is not None:
        y0 += xp.asarray(b, dtype=x.dtype).reshape(1, O, 1, 1)
    y = to_dev(y0)
    launch(_conv2d_direct_cuda_kernel, y0.size, to_dev(x), to_dev(w), *stride, *padding,
           *dilation, groups, y, y0.size)
    return to_host_like(x, y)


# ============================================================================================
# the blocked im2col + GEMM driver (every implementation; per-core blocks on the CPU)
# ============================================================================================

BLOCK_BYTES: dict[str, int] = {"numba": 2 << 20, "cuda": 512 << 20}
"""Largest im2col column block per implementation, in bytes. The CPU walks the batch in blocks of
images, or of output rows of one image, each built in a reused per-thread scratch buffer, instead
of building the full column matrix (9x the input for a 3x3 kernel); a GPU takes big blocks.
Implementations not listed ("reference", and "numpy", the textbook method the benchmarks compare
against) build all the columns at once. On the CPU each core runs whole blocks, im2col then GEMM
(see :func:`_run_blocks`), so a block should stay in that core's cache share until its GEMM reads
it. Measured on 2 cores (3x3 fwd+bwd, N in {1, 8}, C in {16, 64, 128}, geomean of 10 shapes): 2 MB
blocks ran 10% faster than 512 KB ones (each GEMM re-packs the weights), 2% faster than 4 MB and
7% faster than 8 MB."""


ROTATED_KERNEL_IMPLS = {"numba"}
"""Implementations whose stride-1 transposed conv runs as a conv2d with the rotated kernel."""


def _use_depthwise(impl: str, in_channels: int, w_shape: tuple, groups: int, x_hw: Pair,
                   out_hw: Pair, stride: Pair, padding: Pair, dilation: Pair) -> bool:
    """Whether the direct depthwise kernels take this conv (x_hw: the conv2d input plane)."""
    if groups != in_channels or w_shape[1] != 1 or groups == 1:
        return False
    if not all(impl in implementations(k) for k in _DEPTHWISE_KERNELS):
        return False
    # Those kernels size their output with the conv2d formula; a transposed conv whose grid is
    # not that one (output_padding >= stride, possible when dilation > stride) uses im2col.
    return all(conv_output_size(x_hw[k], w_shape[2 + k], stride[k], padding[k], dilation[k])
               == out_hw[k] for k in range(2))


_scratch_local = threading.local()


def _scratch(name: str, shape: tuple, dtype: Any) -> np.ndarray:
    """A reused C-contiguous NumPy array for one block's columns. Fresh multi-megabyte arrays
    page-fault on every call (measured 2 ms per 4 MB block on a VM); a kept buffer does not.
    One per name, dtype and thread; callers never hold two blocks of one name at once."""
    size = math.prod(shape)
    key = (name, np.dtype(dtype).str)
    bufs = _scratch_local.__dict__.setdefault("bufs", {})
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _matmul_into(xp: Any, a: Any, b: Any, out: Any) -> None:
    """out[...] = a @ b; NumPy's BLAS writes a strided ``out`` directly, CuPy gets a copy."""
    if xp is np:
        np.matmul(a, b, out=out)
    else:
        out[...] = xp.matmul(a, b)


PER_CORE_MIN_FLOPS = 16e6
"""Below this many FLOPs (2 x multiply-adds) in one GEMM pass, a CPU conv runs in the calling
thread alone: handing blocks to another thread costs a thread wake-up each way and the GIL back
and forth, some 250 us a pass on the 2-core VMs here, more than a small conv's whole pass.
Measured there (3x3 fwd+bwd, per-core time / one-thread time): 4.7-6.3 at 1x8x16x16 and
1x8x32x32, 1.5-2.2 at 1x16x32x32 (4.7 MFLOP), 0.87-0.95 at 1x16x64x64 (19 MFLOP), 0.77-0.92 at
2x16x64x64; between 10 and 75 MFLOP the two are within the machine's noise."""


def _workers(impl: str, xp: Any, flops: float) -> int:
    """How many cores run the blocks of one conv pass: 0 for an implementation without the
    single-threaded GIL-free kernels (its own kernels run as they are, in this thread), 1 for a
    small pass (serial kernels in this thread), else Numba's thread count
    (:mod:`minisegnet._cpu_pool`)."""
    if xp is not np or impl not in implementations("im2col_serial"):
        return 0
    return _cpu_pool.workers() if flops >= PER_CORE_MIN_FLOPS else 1


SMALL_BLOCK_ROWS = 288
SMALL_BLOCK_BYTES = 1 << 20
"""Column blocks with at most SMALL_BLOCK_ROWS rows (C*KH*KW: 3x3 convs over <= 32 channels) are
cut to SMALL_BLOCK_BYTES. Their GEMM's weight matrix is small, so re-packing it per block costs
little, and a (16, 144) @ (144, P) GEMM ran at half the GFLOP/s with P = 3640 columns (2 MB) as
with P = 256-910 on the Intel Xeon here. Measured there on one core (3x3 fwd+bwd, CPU time,
interleaved), time with 1 MB blocks / 2 MB blocks: 0.87-0.89 at 16 channels (1x16x128x128,
8x16x64x64, 4x16x128x128), 0.95 at 4x32x64x64; at 64-128 channels 0.95-1.16, so those keep
BLOCK_BYTES."""


def _block_budget(impl: str, rows: int) -> int | None:
    """The column block size in bytes for an im2col of ``rows`` rows (None: all at once)."""
    budget = BLOCK_BYTES.get(impl)
    if budget is not None and impl == "numba" and rows <= SMALL_BLOCK_ROWS:
        return min(budget, SMALL_BLOCK_BYTES)
    return budget


def _blocks(impl: str, N: int, row_bytes: int, oh: int, parts: int = 1,
            budget: int | None = None) -> list[tuple[int, int, int, int]]:
    """(n0, n1, r0, r1) blocks covering images [0, N) x output rows [0, oh): either groups of whole
    images or row ranges of one image, each within ``budget`` bytes of columns (default
    BLOCK_BYTES; give or take an image or a row), and, for ``parts`` workers, at least ``parts``
    blocks of near-equal size (a multiple of ``parts`` where the sizes allow) so that no core
    idles."""
    if budget is None:  # an implementation without an entry builds all columns at once
        budget = BLOCK_BYTES.get(impl)
    image_bytes = row_bytes * oh
    if budget is None or (parts == 1 and image_bytes * N <= budget):
        return [(0, N, 0, oh)]
    if image_bytes <= budget and N >= parts:  # groups of whole images
        count = min(N, _round_up(_ceil_div(image_bytes * N, budget), parts))
        return [(n0, n1, 0, oh) for n0, n1 in _cpu_pool.split(N, count)]
    # row ranges of one image; with fewer images than parts, enough ranges to go round
    per_image = _ceil_div(_round_up(N * _ceil_div(image_bytes, budget), parts), N)
    return [(n, n + 1, r0, r1) for n in range(N) for r0, r1 in _cpu_pool.split(oh, per_image)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, m: int) -> int:
    return _ceil_div(a, m) * m


def _run_blocks(workers: int, job: Any, blocks: list) -> list:
    """``job(chunk)`` for consecutive chunks of ``blocks``: one chunk per core with 2+ workers
    (each core walks its own blocks, im2col then GEMM, with BLAS single-threaded), else one chunk
    of all blocks in this thread. The chunking depends only on the block list and the worker count,
    so sums over chunk results are deterministic."""
    if workers <= 1:
        if workers == 0:  # an implementation without the per-core kernels: BLAS as it is
            return [job(blocks)]
        with _cpu_pool.single_threaded_blas():  # see there: no OpenBLAS threads left spinning
            return [job(blocks)]
    chunks = [blocks[a:b] for a, b in _cpu_pool.split(len(blocks), workers)]
    return _cpu_pool.map_blocks(job, chunks)


def _wide(workers: int, N: int, Og: int, P: int) -> bool:
    """Whether a CPU pass runs as one GEMM over all its columns, cut by rows of the weight side
    (:func:`_conv2d_wide`): when the per-group weight matrix (O/G x K) is at least as big as the
    columns (K x N*OH*OW), as in FCN's fc6/fc7 (7x7 and 1x1 over 4096 channels on a few pixels).
    Column blocks then cost a full pass over the weight each, and a weight gradient summed per
    core costs a weight-sized partial sum per core plus temporaries (FCN-32s at width 64: fc6's
    backward took 13 s and ~2 GB above PyTorch's 1 GB peak for the whole step)."""
    return workers > 0 and Og >= N * P


def _side_by_side(a: np.ndarray, N: int, G: int, R: int, P: int) -> np.ndarray:
    """(N, G, R, P) -> (G, R, N*P), contiguous: the batch's images side by side, so that one GEMM
    per group covers them all."""
    return np.ascontiguousarray(a.reshape(N, G, R, P).transpose(1, 2, 0, 3)).reshape(G, R, N * P)


def _apart(a: np.ndarray, N: int, P: int) -> np.ndarray:
    """(G, R, N*P) -> (N, G*R, P), contiguous: :func:`_side_by_side` undone."""
    G, R = a.shape[:2]
    return np.ascontiguousarray(a.reshape(G, R, N, P).transpose(2, 0, 1, 3)).reshape(N, G * R, P)


def _conv2d_wide(x: Any, w: Any, gy: Any, stride: Pair, padding: Pair, dilation: Pair, G: int,
                 out_hw: Pair, w_shape: tuple, workers: int) -> tuple[Any, Any]:
    """:func:`conv2d_array` where :func:`_wide`: the columns of the whole batch at once (no bigger
    than the weight), then y = W @ cols cut by output channels and gw = gy @ cols^T cut the same
    way, one piece per core; every piece writes its own rows of the result, so nothing is summed
    across cores and no weight-sized temporary exists."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w_shape
    oh, ow = out_hw
    Og, K, P = O // G, Cg * kh * kw, oh * ow
    cols = kernel("im2col_serial", x)(x, (kh, kw), stride, padding, dilation, out_hw)
    cols = _side_by_side(cols, N, G, K, P)  # (G, Cg*KH*KW, N*OH*OW)
    y = gw = yT = gyT = None
    if w is not None:
        w3 = w.reshape(G, Og, K)  # (G, O/G, Cg*KH*KW)
        yT = np.empty((G, Og, N * P), dtype=x.dtype)  # (G, O/G, N*OH*OW)
    if gy is not None:
        gyT = _side_by_side(gy, N, G, Og, P)  # (G, O/G, N*OH*OW)
        gw = np.empty((O, Cg, kh, kw), dtype=x.dtype)
        gw3 = gw.reshape(G, Og, K)  # (G, O/G, Cg*KH*KW), a view

    def run(rows: tuple[int, int]) -> None:
        o = slice(*rows)
        if w is not None:
            np.matmul(w3[:, o], cols, out=yT[:, o])
        if gy is not None:
            np.matmul(gyT[:, o], cols.transpose(0, 2, 1), out=gw3[:, o])

    _run_blocks(workers, lambda chunk: [run(r) for r in chunk], _cpu_pool.split(Og, workers))
    if w is not None:
        y = _apart(yT, N, P).reshape(N, O, oh, ow)
    return y, gw


def _conv_transpose2d_wide(gy: Any, w: Any, x_shape: tuple, stride: Pair, padding: Pair,
                           dilation: Pair, G: int, workers: int) -> Any:
    """:func:`conv_transpose2d_array` where :func:`_wide`: gcols = W^T @ gy for the whole batch
    in one GEMM, cut by column rows (one piece of W^T per core, W read once), then one col2im."""
    N, O, oh, ow = gy.shape
    _, Cg, kh, kw = w.shape
    Og, K, P = O // G, Cg * kh * kw, oh * ow
    wT = w.reshape(G, Og, K).transpose(0, 2, 1)  # (G, Cg*KH*KW, O/G), a view
    gyT = _side_by_side(gy, N, G, Og, P)  # (G, O/G, N*OH*OW)
    gcols = np.empty((G, K, N * P), dtype=gy.dtype)

    def run(rows: tuple[int, int]) -> None:
        np.matmul(wT[:, rows[0]:rows[1]], gyT, out=gcols[:, rows[0]:rows[1]])

    _run_blocks(workers, lambda chunk: [run(r) for r in chunk], _cpu_pool.split(K, workers))
    return kernel("col2im_serial", gy)(_apart(gcols, N, P), tuple(x_shape), (kh, kw), stride,
                                       padding, dilation, (oh, ow))  # from (N, C*KH*KW, OH*OW)


def conv2d_array(x: Any, w: Any, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                  out_hw: Pair, gy: Any = None, w_shape: tuple | None = None) -> tuple[Any, Any]:
    """conv2d and/or its weight gradient from the same im2col columns of x (N, C, H, W).

    ``y (N, O, OH, OW) = W (O, C/G*KH*KW) @ cols`` when ``w`` is given, and
    ``gw (O, C/G, KH, KW) = sum_n gy[n] @ cols[n]^T`` when ``gy (N, O, OH, OW)`` is given (then
    ``w_shape`` too): the weight gradient of conv2d(x, .) for output gradient gy. Returns (y, gw),
    None for what was not asked. Columns are built block by block (:data:`BLOCK_BYTES`).
    """
    if w is None and gy is None:
        return None, None
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape if w is not None else w_shape
    oh, ow = out_hw
    G, Og, K = groups, O // groups, Cg * kh * kw
    impl = current_impl(x)
    if _use_depthwise(impl, C, (O, Cg, kh, kw), G, (H, W), out_hw, stride, padding, dilation):
        y = gw = None
        if w is not None:
            y = kernel("depthwise_conv2d", x)(x, w, stride, padding, dilation)
        if gy is not None:
            gw = kernel("depthwise_conv2d_backward_weight", x)(
                x, gy, tuple(w_shape), stride, padding, dilation)
        return y, gw
    if gy is None and _use_winograd(impl, x.shape, w.shape, stride, padding, dilation, groups,
                                    out_hw):
        return conv2d_winograd_numba(x, w, padding), None
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    workers = _workers(impl, xp, 2.0 * N * O * K * oh * ow)
    if _wide(workers, N, Og, oh * ow):
        return _conv2d_wide(x, w, gy, stride, padding, dilation, G, out_hw,
                            w.shape if w is not None else w_shape, workers)
    im2col = kernel("im2col_serial" if workers else "im2col", x)
    blocks = _blocks(impl, N, C * kh * kw * ow * x.itemsize, oh, max(workers, 1),
                     _block_budget(impl, Cg * kh * kw))
    if w is not None:
        w3 = w.reshape(G, Og, K)  # (G, O/G, Cg*KH*KW)
        # The result is allocated in its final shape and written through a view, so that it is
        # returned as a fresh base array (autograd copies gradients that are views).
        y = xp.empty((N, O, oh, ow), dtype=x.dtype)
        y4 = y.reshape(N, G, Og, oh * ow)  # (N, G, O/G, OH*OW), a view
    if gy is not None:
        gy4 = xp.ascontiguousarray(gy).reshape(N, G, Og, oh * ow)  # (N, G, O/G, OH*OW)

    def run(chunk: list) -> Any:
        gwT = xp.zeros((G, K, Og), dtype=x.dtype) if gy is not None else None
        for n0, n1, r0, r1 in chunk:
            out = None
            if impl in BLOCK_BYTES and xp is np:
                out = _scratch("cols", (n1 - n0, C * kh * kw, (r1 - r0) * ow), x.dtype)
            cols = im2col(x[n0:n1], (kh, kw), stride, padding, dilation, out_hw, (r0, r1), out)
            cols = cols.reshape(n1 - n0, G, K, (r1 - r0) * ow)  # (B, G, Cg*KH*KW, R*OW)
            cs = slice(r0 * ow, r1 * ow)
            if w is not None:
                _matmul_into(xp, w3, cols, y4[n0:n1, :, :, cs])  # (B, G, O/G, R*OW), in place
            if gy is not None:
                # cols @ gy^T, summed over the block's images: (G, Cg*KH*KW, O/G) accumulated
                # transposed. In OpenBLAS this orientation (the small O/G last) measured faster
                # than gy @ cols^T: up to 2x on one core.
                gwT += xp.matmul(cols, gy4[n0:n1, :, :, cs].transpose(0, 1, 3, 2)).sum(axis=0)
        return gwT

    partial = _run_blocks(workers, run, blocks)
    gw = None
    if gy is not None:
        gwT = partial[0]
        for part in partial[1:]:  # in chunk order: the same sum on every run
            gwT += part
        gw = xp.empty((O, Cg, kh, kw), dtype=x.dtype)
        gw.reshape(G, Og, K)[...] = gwT.transpose(0, 2, 1)  # (G, O/G, Cg*KH*KW)
    return (y if w is not None else None), gw


def conv_transpose2d_array(gy: Any, w: Any, x_shape: tuple, stride: Pair, padding: Pair,
                            dilation: Pair, groups: int) -> Any:
    """gx (N, C, H, W) = C_w^T gy: the adjoint of conv2d with weight w (O, C/G, KH, KW).

    gy is (N, O, OH, OW). This is conv2d's input gradient and conv_transpose2d's forward:
    per block, ``gcols = W^T @ gy`` then col2im adds the block back into gx.
    """
    N, O, oh, ow = gy.shape
    _, C, H, W = x_shape
    _, Cg, kh, kw = w.shape
    G, Og, K = groups, O // groups, Cg * kh * kw
    impl = current_impl(gy)
    if _use_depthwise(impl, C, w.shape, G, (H, W), (oh, ow), stride, padding, dilation):
        return kernel("depthwise_conv2d_backward_input", gy)(
            gy, w, tuple(x_shape), stride, padding, dilation)
    xp = get_array_module(gy)
    workers = _workers(impl, xp, 2.0 * N * O * K * oh * ow)
    if _wide(workers, N, Og, oh * ow):
        return _conv_transpose2d_wide(gy, w, x_shape, stride, padding, dilation, G, workers)
    if _adjoint_is_a_conv(impl, stride, padding, dilation, w.shape, (H, W), (oh, ow)):
        # With stride 1 the adjoint is itself a conv2d: of gy, with the kernel rotated by 180
        # degrees and its two channel axes swapped, padding d(k-1) - p, on x's grid. That GEMM
        # sums over O/G*KH*KW terms instead of O/G and needs no col2im.
        pad = _adjoint_padding(padding, dilation, w.shape)
        return conv2d_array(gy, _rotated(w, G), (1, 1), pad, dilation, G, (H, W))[0]
    gy4 = xp.ascontiguousarray(gy).reshape(N, G, Og, oh * ow)  # (N, G, O/G, OH*OW)
    wT = w.reshape(G, Og, K).transpose(0, 2, 1)  # (G, Cg*KH*KW, O/G)
    # GEMMs run in this thread below hold BLAS to one thread too (see _cpu_pool)
    hold = _cpu_pool.single_threaded_blas() if workers else contextlib.nullcontext()
    blocks = _blocks(impl, N, C * kh * kw * ow * gy.itemsize, oh, max(workers, 1))
    phases = None
    if workers > 1:
        phases = _col2im_phases(blocks, stride[0], padding[0], dilation[0] * (kh - 1), H, workers)
        if phases is None:  # the parallel col2im, blocks one after another in this thread
            workers = 0
    col2im = kernel("col2im_serial" if workers else "col2im", gy)
    if len(blocks) == 1:  # all columns at once
        with hold:
            gcols = xp.matmul(wT, gy4).reshape(N, C * kh * kw, oh * ow)  # (N, C*KH*KW, OH*OW)
        return col2im(gcols, tuple(x_shape), (kh, kw), stride, padding, dilation, (oh, ow))
    gx = xp.zeros(tuple(x_shape), dtype=gy.dtype)

    def run(chunk: list) -> None:
        for n0, n1, r0, r1 in chunk:
            out = None
            if xp is np:
                out = _scratch("gcols", (n1 - n0, G, K, (r1 - r0) * ow), gy.dtype)
            # (B, G, Cg*KH*KW, R*OW)
            gcols = xp.matmul(wT, gy4[n0:n1, :, :, r0 * ow:r1 * ow], out=out)
            col2im(gcols.reshape(n1 - n0, C * kh * kw, (r1 - r0) * ow), (n1 - n0, C, H, W),
                   (kh, kw), stride, padding, dilation, (oh, ow), (r0, r1), gx[n0:n1])

    if phases is None:
        with hold:
            run(blocks)
    for chunks in phases or []:
        _cpu_pool.map_blocks(run, chunks)
    return gx


ADJOINT_MAX_GROWTH = 1.5
"""The rotated-kernel adjoint computes the conv of gy on x's whole grid: (H*W) / (OH*OW) times the
multiply-adds of ``W^T @ gy`` + col2im, which sums over gy's grid. Past this ratio (a valid conv
on a small plane: FCN's fc6, 7x7 on 11x11 -> 5x5, ratio 4.8) the col2im path is taken."""


def _adjoint_is_a_conv(impl: str, stride: Pair, padding: Pair, dilation: Pair,
                       w_shape: tuple, x_hw: Pair, out_hw: Pair) -> bool:
    """Whether conv2d's adjoint (input gradient) runs as a conv2d with :func:`_rotated` weights:
    stride 1, padding at most d(k-1) and x's grid at most :data:`ADJOINT_MAX_GROWTH` times the
    output's, on implementations in :data:`ROTATED_KERNEL_IMPLS`."""
    return (impl in ROTATED_KERNEL_IMPLS and stride == (1, 1)
            and all(padding[a] <= dilation[a] * (w_shape[2 + a] - 1) for a in range(2))
            and x_hw[0] * x_hw[1] <= ADJOINT_MAX_GROWTH * out_hw[0] * out_hw[1])


def _adjoint_padding(padding: Pair, dilation: Pair, w_shape: tuple) -> Pair:
    """The padding d(k-1) - p of the conv that is a stride-1 conv2d's adjoint."""
    return (dilation[0] * (w_shape[2] - 1) - padding[0],
            dilation[1] * (w_shape[3] - 1) - padding[1])


def _rotated(w: Any, groups: int) -> Any:
    """w (G*A, B, KH, KW) -> (G*B, A, KH, KW): in each group the two channel axes swapped and the
    kernel turned by 180 degrees. conv2d with _rotated(w) is the stride-1 adjoint of conv2d with w
    (padding d(k-1) - p); _rotated(_rotated(w, G), G) is w again."""
    GA, B, kh, kw = w.shape
    A = GA // groups
    r = w.reshape(groups, A, B, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]  # (G, B, A, ..)
    return get_array_module(w).ascontiguousarray(r).reshape(groups * B, A, kh, kw)


def _col2im_phases(blocks: list, s: int, p: int, reach: int, H: int,
                   workers: int) -> list[list] | None:
    """The blocks as two phases of chunks that the cores can add into gx at the same time, or None.

    col2im of output rows [r0, r1) adds into input rows ``[r0*s - p, (r1-1)*s - p + reach]``
    (reach = d(KH-1)), so neighbouring row blocks of one image touch common rows when the kernel
    reaches further than the stride. Cut the blocks into 2 x workers consecutive chunks; the even
    chunks run first, all at once, then the odd ones: two chunks of one phase are separated by a
    whole chunk, and that is checked to be enough. The phase order fixes the order of the sums,
    so the result is deterministic. None when some phase would still overlap (a kernel reaching
    past a whole chunk): then one thread adds all the blocks, with the parallel col2im.
    """
    chunks = [blocks[a:b] for a, b in _cpu_pool.split(len(blocks), 2 * workers)]

    def rows(chunk: list) -> dict[int, tuple[int, int]]:  # image -> input rows it adds into
        out: dict[int, tuple[int, int]] = {}
        for n0, n1, r0, r1 in chunk:
            lo, hi = max(0, r0 * s - p), min(H - 1, (r1 - 1) * s - p + reach)
            for n in range(n0, n1):
                a, b = out.get(n, (lo, hi))
                out[n] = (min(a, lo), max(b, hi))
        return out

    spans = [rows(c) for c in chunks]
    for i in range(len(chunks) - 2):  # rows only grow along the chunks: neighbours in a phase
        for n, (lo, _) in spans[i + 2].items():
            if n in spans[i] and lo <= spans[i][n][1]:
                return None
    return [chunks[0::2], chunks[1::2]]


def conv2d_backward_array(gy: Any, x: Any, w: Any, stride: Pair, padding: Pair, dilation: Pair,
                          groups: int, out_hw: Pair, need_x: bool = True,
                          need_w: bool = True) -> tuple[Any, Any]:
    """(gx, gw) of conv2d for output gradient gy (N, O, OH, OW); None for what is not needed.

    Where the stride-1 adjoint is a conv (:func:`_adjoint_is_a_conv`) and both are needed, one pass:
    the input gradient is the conv2d of gy with the rotated kernel, and the weight gradient of
    *that* conv (its output gradient being x) is the rotated weight gradient of this one, so both
    come from one im2col of gy. Otherwise gx = C_w^T gy and gw from the columns of x.
    """
    G, (N, C, H, W) = groups, x.shape
    impl = current_impl(gy)
    # A wide pass (:func:`_wide`) gains nothing from the rotated kernel, which would copy the weight
    rotate = (not _wide(1, N, w.shape[0] // G, out_hw[0] * out_hw[1])
              and _adjoint_is_a_conv(impl, stride, padding, dilation, w.shape, (H, W), out_hw))
    if need_x and rotate:
        pad = _adjoint_padding(padding, dilation, w.shape)
        if _use_winograd(impl, gy.shape, (C, w.shape[0] // G, *w.shape[2:]), (1, 1), pad,
                         dilation, G, (H, W), adjoint=True):
            # The adjoint conv runs as Winograd; the weight gradient from the columns of x.
            gx = conv2d_winograd_numba(gy, _rotated(w, G), pad)
            gw = None
            if need_w:
                _, gw = conv2d_array(x, None, stride, padding, dilation, groups, out_hw, gy=gy,
                                     w_shape=w.shape)
            return gx, gw
    if (need_x and need_w and rotate
            and not _use_depthwise(impl, C, w.shape, G, (H, W), out_hw, stride, padding,
                                   dilation)):
        pad = _adjoint_padding(padding, dilation, w.shape)
        gx, gw_rot = conv2d_array(gy, _rotated(w, G), (1, 1), pad, dilation, G, (H, W),
                                  gy=x, w_shape=(C, w.shape[0] // G, *w.shape[2:]))
        return gx, _rotated(gw_rot, G)
    gx = (conv_transpose2d_array(gy, w, x.shape, stride, padding, dilation, groups)
          if need_x else None)
    gw = None
    if need_w:
        _, gw = conv2d_array(x, None, stride, padding, dilation, groups, out_hw, gy=gy,
                             w_shape=w.shape)
    return gx, gw


# ============================================================================================
# Winograd F(2x2, 3x3) (Lavin and Gray, 2016): stride 1, dilation 1, one group, 3x3
# ============================================================================================
#
# A 4x4 input tile d gives a 2x2 output tile with 16 multiplications per (o, c) instead of 36:
#
#     Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, summed over c)
#
# With U = G g G^T (16, O, C) and V = B^T d B (16, C, tiles), the sum over c is 16 independent
# GEMMs M[k] = U[k] @ V[k] (O x C by C x tiles): 2.25x fewer multiply-adds than im2col's GEMM,
# plus the two transforms (memory-bound, a few adds per value). Tiles step by 2 over the
# zero-padded input; the last tile row/column may hang over the output and is cropped.

WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def conv2d_winograd_reference(x: np.ndarray, w: np.ndarray, padding: Pair) -> np.ndarray:
    """conv2d(x, w, stride 1, padding) for a 3x3 w (O, C, 3, 3), tile by tile from the formula
    ``Y = A^T [sum_c (G g G^T) * (B^T d B)] A`` with the matrices written out above."""
    N, C, H, W = x.shape
    O = w.shape[0]
    ph, pw = padding
    OH, OW = H + 2 * ph - 2, W + 2 * pw - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2))  # the zero-padded input, tiles hanging over
    xp[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, O, 2 * TH, 2 * TW))
    U = [[WINO_G @ w[o, c].astype(np.float64) @ WINO_G.T for c in range(C)] for o in range(O)]
    for n in range(N):
        for ti in range(TH):
            for tj in range(TW):
                V = [WINO_BT @ xp[n, c, 2 * ti:2 * ti + 4, 2 * tj:2 * tj + 4] @ WINO_BT.T
                     for c in range(C)]
                for o in range(O):
                    m = sum(U[o][c] * V[c] for c in range(C))
                    y[n, o, 2 * ti:2 * ti + 2, 2 * tj:2 * tj + 2] = WINO_AT @ m @ WINO_AT.T
    return y[:, :, :OH, :OW].astype(x.dtype)


def winograd_weights(w: Any) -> Any:
    """U (16, O, C) = G g G^T for every (o, c), row-major over the 4x4 tile, in w's dtype."""
    xp = get_array_module(w)
    G = xp.asarray(WINO_G, dtype=w.dtype)
    U = G @ w @ G.T  # (O, C, 4, 4)
    O, C = w.shape[:2]
    return xp.ascontiguousarray(U.transpose(2, 3, 0, 1)).reshape(16, O, C)  # (16, O, C)


_FAST = {"reassoc", "contract", "nsz"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _winograd_input_serial(x, ph, pw, r0, r1, TW, V):
    """V (16, C, B*(r1-r0)*TW) = B^T d B for the tiles of tile rows [r0, r1) of x (B, C, H, W)."""
    B, C, H, W = x.shape
    R = r1 - r0
    buf = np.zeros((4, 2 * TW + 2), dtype=x.dtype)  # 4 zero-padded input rows of one tile row
    for b in range(B):
        for c in range(C):
            for ti in range(r0, r1):
                for a in range(4):
                    h = 2 * ti - ph + a
                    buf[a, :] = 0
                    if 0 <= h < H:
                        buf[a, pw:pw + W] = x[b, c, h, :]
                p0 = (b * R + ti - r0) * TW
                for tj in range(TW):
                    q = 2 * tj
                    # t = B^T d (rows), then v = t B (columns)
                    t00 = buf[0, q] - buf[2, q]
                    t01 = buf[0, q + 1] - buf[2, q + 1]
                    t02 = buf[0, q + 2] - buf[2, q + 2]
                    t03 = buf[0, q + 3] - buf[2, q + 3]
                    t10 = buf[1, q] + buf[2, q]
                    t11 = buf[1, q + 1] + buf[2, q + 1]
                    t12 = buf[1, q + 2] + buf[2, q + 2]
                    t13 = buf[1, q + 3] + buf[2, q + 3]
                    t20 = buf[2, q] - buf[1, q]
                    t21 = buf[2, q + 1] - buf[1, q + 1]
                    t22 = buf[2, q + 2] - buf[1, q + 2]
                    t23 = buf[2, q + 3] - buf[1, q + 3]
                    t30 = buf[1, q] - buf[3, q]
                    t31 = buf[1, q + 1] - buf[3, q + 1]
                    t32 = buf[1, q + 2] - buf[3, q + 2]
                    t33 = buf[1, q + 3] - buf[3, q + 3]
                    p = p0 + tj
                    V[0, c, p] = t00 - t02
                    V[1, c, p] = t01 + t02
                    V[2, c, p] = t02 - t01
                    V[3, c, p] = t01 - t03
                    V[4, c, p] = t10 - t12
                    V[5, c, p] = t11 + t12
                    V[6, c, p] = t12 - t11
                    V[7, c, p] = t11 - t13
                    V[8, c, p] = t20 - t22
                    V[9, c, p] = t21 + t22
                    V[10, c, p] = t22 - t21
                    V[11, c, p] = t21 - t23
                    V[12, c, p] = t30 - t32
                    V[13, c, p] = t31 + t32
                    V[14, c, p] = t32 - t31
                    V[15, c, p] = t31 - t33


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _winograd_output_serial(M, r0, r1, TW, y):
    """y (B, O, OH, OW) rows of tile rows [r0, r1) = A^T m A of M (16, O, B*(r1-r0)*TW)."""
    B, O, OH, OW = y.shape
    R = r1 - r0
    for b in range(B):
        for o in range(O):
            for ti in range(r0, r1):
                p0 = (b * R + ti - r0) * TW
                i = 2 * ti
                for tj in range(TW):
                    p = p0 + tj
                    # s = A^T m (rows), then A^T s^T (columns)
                    s00 = M[0, o, p] + M[4, o, p] + M[8, o, p]
                    s01 = M[1, o, p] + M[5, o, p] + M[9, o, p]
                    s02 = M[2, o, p] + M[6, o, p] + M[10, o, p]
                    s03 = M[3, o, p] + M[7, o, p] + M[11, o, p]
                    s10 = M[4, o, p] - M[8, o, p] - M[12, o, p]
                    s11 = M[5, o, p] - M[9, o, p] - M[13, o, p]
                    s12 = M[6, o, p] - M[10, o, p] - M[14, o, p]
                    s13 = M[7, o, p] - M[11, o, p] - M[15, o, p]
                    j = 2 * tj
                    y[b, o, i, j] = s00 + s01 + s02
                    if j + 1 < OW:
                        y[b, o, i, j + 1] = s01 - s02 - s03
                    if i + 1 < OH:
                        y[b, o, i + 1, j] = s10 + s11 + s12
                        if j + 1 < OW:
                            y[b, o, i + 1, j + 1] = s11 - s12 - s13


def conv2d_winograd_numba(x: np.ndarray, w: np.ndarray, padding: Pair) -> np.ndarray:
    """conv2d(x, w, stride 1, padding) for 3x3 w by Winograd F(2x2, 3x3), in blocks like the
    im2col driver: per block (images, or tile rows of one image) the input transform into a
    reused V (16, C, tiles), 16 GEMMs into a reused M (16, O, tiles), the output transform into y;
    one core per block (single-threaded BLAS, serial nogil transforms)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    ph, pw = padding
    OH, OW = H + 2 * ph - 2, W + 2 * pw - 2
    TH, TW = -(-OH // 2), -(-OW // 2)
    x = np.ascontiguousarray(x)
    U = winograd_weights(w)  # (16, O, C)
    y = np.empty((N, O, OH, OW), dtype=x.dtype)
    workers = 1 if 16.0 * O * C * N * TH * TW < PER_CORE_MIN_FLOPS else _cpu_pool.workers()
    blocks = _blocks("numba", N, 16 * (C + O) * TW * x.itemsize, TH, workers)

    def run(chunk: list) -> None:
        for n0, n1, r0, r1 in chunk:
            P = (n1 - n0) * (r1 - r0) * TW
            V = _scratch("wino_v", (16, C, P), x.dtype)
            _winograd_input_serial(x[n0:n1], ph, pw, r0, r1, TW, V)
            M = _scratch("wino_m", (16, O, P), x.dtype)
            np.matmul(U, V, out=M)  # 16 GEMMs (O, C) @ (C, P)
            _winograd_output_serial(M, r0, r1, TW, y[n0:n1])

    _run_blocks(workers, run, blocks)
    return y


WINOGRAD_IMPLS = {"numba"}
"""Implementations whose 3x3 stride-1 convs may run as Winograd F(2x2, 3x3)."""

_algorithm = threading.local()


@contextlib.contextmanager
def conv2d_algorithm(name: str) -> Iterator[str]:
    """Force the CPU algorithm of conv2d in this thread: ``"winograd"`` (every eligible conv:
    3x3, stride 1, dilation 1, one group, on an implementation in :data:`WINOGRAD_IMPLS`),
    ``"im2col"`` (never Winograd), or ``"auto"`` (the default: Winograd where it measured faster,
    :func:`_winograd_wins`). The environment variable ``MINISEGNET_CONV_ALGORITHM`` sets the
    default for every thread."""
    if name not in ("auto", "im2col", "winograd"):
        raise ValueError(f"conv2d_algorithm: name must be 'auto', 'im2col' or 'winograd', "
                         f"got {name!r}")
    before = getattr(_algorithm, "name", None)
    _algorithm.name = name
    try:
        yield name
    finally:
        _algorithm.name = before


def current_algorithm() -> str:
    """The conv2d algorithm in force in this thread (see :func:`conv2d_algorithm`)."""
    name = getattr(_algorithm, "name", None)
    return name or os.environ.get("MINISEGNET_CONV_ALGORITHM", "auto")


WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_PIXELS = 16384
"""Auto mode runs a *forward* conv as Winograd when both channel counts reach
WINOGRAD_MIN_CHANNELS and N*OH*OW reaches WINOGRAD_MIN_PIXELS; the input gradient only when
forced. Measured on the 2-core Xeon here (AVX-512, OpenBLAS; load 4-6, interleaved repeats),
Winograd / im2col time: forward 0.83-0.88 at 4x128x64x64, 0.97-1.03 at 8x64x64x64, 4x256x32x32
and 1x256x64x64, 1.1-1.8 at 16-64 channels and on small planes. Its 16 GEMMs have an inner
dimension of C (16-256) where im2col's has 9C, and OpenBLAS runs them at about half the
GFLOP/s (measured 26 against 60 GFLOP/s at C=64), which eats most of the 2.25x fewer
multiplications; the transforms cost the rest. fwd+bwd: the adjoint as Winograd gives up the
one-pass backward (both gradients from one im2col of gy), 0.91-1.55x of the im2col time."""


def _winograd_wins(C: int, O: int, pixels: int, adjoint: bool) -> bool:
    return (not adjoint and min(C, O) >= WINOGRAD_MIN_CHANNELS
            and pixels >= WINOGRAD_MIN_PIXELS)


def _use_winograd(impl: str, x_shape: tuple, w_shape: tuple, stride: Pair, padding: Pair,
                  dilation: Pair, groups: int, out_hw: Pair, adjoint: bool = False) -> bool:
    """Whether conv2d(x, w) runs as Winograd F(2x2, 3x3) here (``adjoint``: the conv is a
    stride-1 conv2d's input gradient)."""
    algo = current_algorithm()
    if algo == "im2col" or impl not in WINOGRAD_IMPLS:
        return False
    if tuple(w_shape[2:]) != (3, 3) or stride != (1, 1) or dilation != (1, 1) or groups != 1:
        return False
    H, W = x_shape[2:]
    if out_hw != (H + 2 * padding[0] - 2, W + 2 * padding[1] - 2):
        return False
    return algo == "winograd" or _winograd_wins(x_shape[1], w_shape[0],
                                                x_shape[0] * out_hw[0] * out_hw[1], adjoint)


# ============================================================================================
# tables
# ============================================================================================

IMPLS = {
    # The direct formula: the oracle, on the host and on the device. conv2d itself runs the blocked
    # driver above, whose im2col/col2im kernels come from kernels/im2col.py's table.
    "conv2d_direct": {
        "reference": conv2d_reference,
        "cuda": conv2d_direct_cuda,
    },
    # Winograd F(2x2, 3x3), (x, w (O, C, 3, 3), padding) -> y, stride 1: the formula tile by tile,
    # and the blocked CPU version that conv2d runs (conv2d_algorithm).
    "conv2d_winograd": {
        "reference": conv2d_winograd_reference,
        "numba": conv2d_winograd_numba,
    },
}

_I = types.int64
PTX = [
    (_conv2d_direct_cuda, [(float_array(4, dt), float_array(4, dt), *[_I] * 7,
                            float_array(4, dt), _I) for dt in FLOAT_DTYPES]),
]
