"""Convolutions: ``conv2d`` and ``conv_transpose2d``, with autograd.

Both ops are built from two array-level functions, and each op's backward is the *other* op:

* ``_conv2d_array(x, w, gy=None)``: y = C_w x, the cross-correlation, as im2col then a GEMM
  ``W (O, C*KH*KW) @ cols (N, C*KH*KW, OH*OW) -> (N, O, OH*OW)``, already NCHW. Given ``gy`` it
  also returns the weight gradient ``sum_n gy[n] @ cols[n]^T`` from the *same* columns.
* ``_conv_transpose2d_array(gy, w)``: C_w^T gy, the adjoint, as ``W^T @ gy`` then col2im. It is
  conv_transpose2d's forward *and* conv2d's input gradient: one function.

So (as in DeZero's ``functions_conv.py``)::

    conv2d.backward(gy)           = (conv_transpose2d(gy, w),  weight grad from im2col(x)  & gy)
    conv_transpose2d.backward(gy) = (conv2d(gy, w),            weight grad from im2col(gy) & x)

and conv_transpose2d's backward gets both gradients from one pass over the columns of gy.

How the CPU path is fast (the "numba" implementation; ``benchmarks/`` has the numbers):

* Blocks. The columns are 9x the input for a 3x3 kernel. Instead of building them all, the batch
  is walked in blocks of images or of output rows (:data:`BLOCK_BYTES` of columns each), written
  into a reused scratch buffer, and each block's GEMM writes its slice of y in place. No big
  allocation (fresh pages cost a page fault each), and the block is still in cache when the GEMM
  reads it.
* One block per core. Each core takes its own share of the blocks and runs both steps itself: a
  single-threaded im2col (``im2col_serial``, GIL released) and a single-threaded GEMM
  (:mod:`minisegnet._cpu_pool`). Alternating a parallel Numba kernel with a parallel BLAS call
  instead makes the two thread pools fight over the cores (OpenBLAS spins after each call):
  measured on 2 cores, 3x3 fwd+bwd went from 1.3-3.3x PyTorch's time to 0.95-2.0x.
* Stride-1 adjoint as a conv. With stride 1, C_w^T gy is itself a conv2d of gy with the kernel
  rotated 180 degrees and its channel axes swapped (padding d(k-1) - p): a GEMM summing over
  O*KH*KW terms instead of O, and no col2im (:data:`ROTATED_KERNEL_IMPLS`). Measured on one
  core: 1.4-1.6x faster than W^T @ gy + col2im at 16 channels, the same at 64 and 128.
* One pass for both gradients. That conv of gy has x as its output gradient, and its weight
  gradient is conv2d's weight gradient rotated the same way, so one ``_conv2d_array(gy,
  rotated w, gy=x)`` returns both from the same columns of gy: one im2col instead of two.
  Measured on 2 cores: the backward of 1x16x64x64 took 0.77 ms against 1.05 ms.
* The weight gradient is accumulated as ``cols @ gy^T`` (long inner dimension), then transposed.

Depthwise convolutions (``groups == C_in`` and ``weight.shape[1] == 1``) go to the direct kernels
of ``kernels/depthwise_conv2d.py`` when those are registered for the implementation in use: an
im2col for them builds C*KH*KW rows only to multiply them block-diagonally.

Output sizes (SPEC): conv2d ``H_out = floor((H + 2p - d(k-1) - 1) / s) + 1``; conv_transpose2d
``H_out = (H - 1)s - 2p + d(k-1) + output_padding + 1`` with ``output_padding < max(s, d)``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .. import _cpu_pool
from ..backend import (current_impl, get_array_module, implementations, is_cupy_array, kernel,
                       register)
from ..kernels import im2col as _im2col_kernels
from ..tensor import Function, Tensor, as_tensor

__all__ = ["conv2d", "conv_transpose2d", "conv_output_size", "conv_transpose_output_size"]

register(_im2col_kernels.IMPLS)
try:  # the direct depthwise kernels are optional: without them the grouped im2col path runs
    from ..kernels import depthwise_conv2d as _depthwise_kernels

    register(_depthwise_kernels.IMPLS)
except ImportError:  # pragma: no cover - only while that module is absent
    pass

Pair = tuple[int, int]

_DEPTHWISE_KERNELS = (
    "depthwise_conv2d", "depthwise_conv2d_backward_input", "depthwise_conv2d_backward_weight")


# ============================================================================================
# argument handling
# ============================================================================================


def _pair(value: Any, name: str) -> Pair:
    """``value`` as an (h, w) pair of ints: an int, or a tuple/list of two ints."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
        if all(is_int(v) for v in value):
            return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """conv2d output length ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (may be <= 0)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """conv_transpose2d output length ``(size - 1)s - 2p + d(k-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _check_tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor) and not (isinstance(t, np.ndarray) or is_cupy_array(t)):
        raise TypeError(f"{name} must be a Tensor or an array, got {type(t).__name__}")
    t = as_tensor(t)
    if t.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {t.dtype}")
    return t


def _check_common(op: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                  dilation: Any, groups: Any):
    """Shared validation; returns tensors and (h, w) pairs. Raises per SPEC "Bad input"."""
    x = _check_tensor(x, "input")
    weight = _check_tensor(weight, "weight")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D, got shape {weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    if x.device != weight.device:
        raise TypeError(f"{op}: input is on {x.device} but weight is on {weight.device}")
    if bias is not None:
        bias = _check_tensor(bias, "bias")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"{op}: bias ({bias.dtype}, {bias.device}) does not match input "
                            f"({x.dtype}, {x.device})")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(s) <= 0:
        raise ValueError(f"{op}: stride must be positive, got {s}")
    if min(d) <= 0:
        raise ValueError(f"{op}: dilation must be positive, got {d}")
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {p}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"{op}: groups must be positive, got {groups}")
    if min(weight.shape[2:]) <= 0:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {weight.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{op}: input has an empty batch or channel axis: shape {x.shape}")
    return x, weight, bias, s, p, d, groups


# ============================================================================================
# array level: conv2d (and its weight gradient), its adjoint (= conv_transpose2d)
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


def _blocks(impl: str, N: int, row_bytes: int, oh: int,
            parts: int = 1) -> list[tuple[int, int, int, int]]:
    """(n0, n1, r0, r1) blocks covering images [0, N) x output rows [0, oh): either groups of whole
    images or row ranges of one image, each within BLOCK_BYTES of columns (give or take an image
    or a row), and, for ``parts`` workers, at least ``parts`` blocks of near-equal size (a
    multiple of ``parts`` where the sizes allow) so that no core idles."""
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
        return [job(blocks)]
    chunks = [blocks[a:b] for a, b in _cpu_pool.split(len(blocks), workers)]
    return _cpu_pool.map_blocks(job, chunks)


def _conv2d_array(x: Any, w: Any, stride: Pair, padding: Pair, dilation: Pair, groups: int,
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
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    workers = _workers(impl, xp, 2.0 * N * O * K * oh * ow)
    im2col = kernel("im2col_serial" if workers else "im2col", x)
    blocks = _blocks(impl, N, C * kh * kw * ow * x.itemsize, oh, max(workers, 1))
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


def _conv_transpose2d_array(gy: Any, w: Any, x_shape: tuple, stride: Pair, padding: Pair,
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
    if _adjoint_is_a_conv(impl, stride, padding, dilation, w.shape):
        # With stride 1 the adjoint is itself a conv2d: of gy, with the kernel rotated by 180
        # degrees and its two channel axes swapped, padding d(k-1) - p, on x's grid. That GEMM
        # sums over O/G*KH*KW terms instead of O/G and needs no col2im.
        pad = _adjoint_padding(padding, dilation, w.shape)
        return _conv2d_array(gy, _rotated(w, G), (1, 1), pad, dilation, G, (H, W))[0]
    gy4 = xp.ascontiguousarray(gy).reshape(N, G, Og, oh * ow)  # (N, G, O/G, OH*OW)
    wT = w.reshape(G, Og, K).transpose(0, 2, 1)  # (G, Cg*KH*KW, O/G)
    workers = _workers(impl, xp, 2.0 * N * O * K * oh * ow)
    blocks = _blocks(impl, N, C * kh * kw * ow * gy.itemsize, oh, max(workers, 1))
    phases = None
    if workers > 1:
        phases = _col2im_phases(blocks, stride[0], padding[0], dilation[0] * (kh - 1), H, workers)
        if phases is None:  # the parallel col2im, blocks one after another in this thread
            workers = 0
    col2im = kernel("col2im_serial" if workers else "col2im", gy)
    if len(blocks) == 1:  # all columns at once
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
        run(blocks)
    for chunks in phases or []:
        _cpu_pool.map_blocks(run, chunks)
    return gx


def _adjoint_is_a_conv(impl: str, stride: Pair, padding: Pair, dilation: Pair,
                       w_shape: tuple) -> bool:
    """Whether conv2d's adjoint (input gradient) runs as a conv2d with :func:`_rotated` weights:
    stride 1 and padding at most d(k-1), on implementations in :data:`ROTATED_KERNEL_IMPLS`."""
    return (impl in ROTATED_KERNEL_IMPLS and stride == (1, 1)
            and all(padding[a] <= dilation[a] * (w_shape[2 + a] - 1) for a in range(2)))


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
        for n, (lo, hi) in spans[i + 2].items():
            if n in spans[i] and lo <= spans[i][n][1]:
                return None
    return [chunks[0::2], chunks[1::2]]


# ============================================================================================
# autograd Functions
# ============================================================================================


class Conv2d(Function):
    """conv2d as a Function: forward(x, w[, b]) -> y; backward via conv_transpose2d."""

    def __init__(self, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                 out_hw: Pair) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_hw = out_hw

    def forward(self, x, w, b=None):
        y, _ = _conv2d_array(x, w, self.stride, self.padding, self.dilation, self.groups,
                             self.out_hw)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = x, w
        return y

    def backward(self, gy):
        x, w = self.x, self.w
        geo = (self.stride, self.padding, self.dilation, self.groups)
        need = self.needs_input_grad
        G, (_, C, H, W) = self.groups, x.shape
        impl = current_impl(gy)
        if (need[0] and need[1] and _adjoint_is_a_conv(impl, *geo[:3], w.shape)
                and not _use_depthwise(impl, C, w.shape, G, (H, W), self.out_hw, *geo[:3])):
            # Both gradients from one im2col, of gy: the input gradient is the conv2d of gy with
            # the rotated kernel, and the weight gradient of *that* conv (its output gradient
            # being x) is the rotated weight gradient of this one. One pass instead of two.
            pad = _adjoint_padding(self.padding, self.dilation, w.shape)
            gx, gw_rot = _conv2d_array(gy, _rotated(w, G), (1, 1), pad, self.dilation, G, (H, W),
                                       gy=x, w_shape=(C, w.shape[0] // G, *w.shape[2:]))
            gw = _rotated(gw_rot, G)
        else:
            gx = _conv_transpose2d_array(gy, w, x.shape, *geo) if need[0] else None
            gw = None
            if need[1]:
                _, gw = _conv2d_array(x, None, *geo, self.out_hw, gy=gy, w_shape=w.shape)
        if len(need) == 2:
            return gx, gw
        return gx, gw, (gy.sum(axis=(0, 2, 3)) if need[2] else None)


class ConvTranspose2d(Function):
    """conv_transpose2d as a Function: forward(x, w[, b]) -> y; backward via conv2d."""

    def __init__(self, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                 out_shape: tuple) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_shape = out_shape

    def forward(self, x, w, b=None):
        # conv_transpose2d with weight (C_in, O/G, KH, KW) is the adjoint of the conv2d that maps
        # (N, O, H_out, W_out) to (N, C_in, H, W) with that same weight.
        y = _conv_transpose2d_array(x, w, self.out_shape, self.stride, self.padding,
                                    self.dilation, self.groups)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        self.x, self.w = x, w
        return y

    def backward(self, gy):
        x, w = self.x, self.w
        geo = (self.stride, self.padding, self.dilation, self.groups)
        need = self.needs_input_grad
        # Input gradient = conv2d(gy); weight gradient = conv2d's weight gradient with the roles
        # of input (gy) and output gradient (x) swapped, from the same columns of gy.
        gx, gw = _conv2d_array(gy, w if need[0] else None, *geo, tuple(x.shape[2:]),
                               gy=x if need[1] else None, w_shape=w.shape)
        if len(need) == 2:
            return gx, gw
        return gx, gw, (gy.sum(axis=(0, 2, 3)) if need[2] else None)


# ============================================================================================
# public functions
# ============================================================================================


def conv2d(x: Any, weight: Any, bias: Any = None, stride: int | Pair = 1,
           padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1) -> Tensor:
    """2-D cross-correlation, PyTorch's ``conv2d``.

    ``y[n, o, i, j] = b[o] + sum_{c in group(o), p, q} x[n, c, i*s - pad + p*d, j*s - pad + q*d]
    * weight[o, c - c0(o), p, q]``, reads outside the input being 0.

    Shapes: x (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,) or None -> y (N, O, OH, OW)
    with ``OH = floor((H + 2p - d(KH-1) - 1) / s) + 1`` (likewise OW). stride, padding and
    dilation take an int or an (h, w) pair. ``groups = C`` with ``O = m*C`` is depthwise.
    Differentiable in x, weight and bias.
    """
    x, weight, bias, s, p, d, g = _check_common("conv2d", x, weight, bias, stride, padding,
                                                dilation, groups)
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    if C % g != 0 or O % g != 0:
        raise ValueError(f"conv2d: groups={g} must divide input channels {C} and output "
                         f"channels {O} (input {x.shape}, weight {weight.shape})")
    if Cg * g != C:
        raise ValueError(f"conv2d: weight.shape[1] * groups must equal input channels: "
                         f"{Cg} * {g} != {C} (input {x.shape}, weight {weight.shape})")
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"conv2d: bias must have shape ({O},), got {bias.shape}")
    oh, ow = (conv_output_size(H, kh, s[0], p[0], d[0]), conv_output_size(W, kw, s[1], p[1], d[1]))
    if oh <= 0 or ow <= 0:
        raise ValueError(
            f"conv2d: empty output {(N, O, oh, ow)}: input {x.shape} is smaller than the dilated "
            f"kernel ({d[0] * (kh - 1) + 1}, {d[1] * (kw - 1) + 1}) plus padding {p}")
    fn = Conv2d(s, p, d, g, (oh, ow))
    return fn(x, weight) if bias is None else fn(x, weight, bias)


def conv_transpose2d(x: Any, weight: Any, bias: Any = None, stride: int | Pair = 1,
                     padding: int | Pair = 0, output_padding: int | Pair = 0, groups: int = 1,
                     dilation: int | Pair = 1) -> Tensor:
    """2-D transposed convolution, PyTorch's ``conv_transpose2d``: the adjoint of conv2d.

    If ``A`` is the matrix of ``conv2d(., weight, stride, padding, dilation, groups)`` mapping
    (N, O, H_out, W_out) to (N, C_in, H, W), this computes ``A^T x`` (plus bias). Equivalently each
    input pixel scatters ``x[n, c, i, j] * weight[c, o', p, q]`` to output
    ``(i*s - pad + p*d, j*s - pad + q*d)``.

    Shapes: x (N, C_in, H, W), weight (C_in, O/groups, KH, KW), bias (O,) or None ->
    y (N, O, H_out, W_out) with ``H_out = (H - 1)s - 2p + d(KH-1) + output_padding + 1``;
    ``output_padding < max(s, d)`` and the rows it adds are computed, not zero-filled.
    Differentiable in x, weight and bias.
    """
    x, weight, bias, s, p, d, g = _check_common("conv_transpose2d", x, weight, bias, stride,
                                                padding, dilation, groups)
    op = _pair(output_padding, "output_padding")
    N, C, H, W = x.shape
    Cw, Og, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(f"conv_transpose2d: weight.shape[0] must equal input channels: "
                         f"{Cw} != {C} (input {x.shape}, weight {weight.shape})")
    if C % g != 0:
        raise ValueError(f"conv_transpose2d: groups={g} must divide input channels {C} "
                         f"(input {x.shape}, weight {weight.shape})")
    O = Og * g
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"conv_transpose2d: bias must have shape ({O},), got {bias.shape}")
    for k in range(2):
        if op[k] < 0 or op[k] >= max(s[k], d[k]):
            raise ValueError(f"conv_transpose2d: output_padding {op} must be non-negative and "
                             f"smaller than max(stride, dilation) = "
                             f"{(max(s[0], d[0]), max(s[1], d[1]))}")
    oh = conv_transpose_output_size(H, kh, s[0], p[0], op[0], d[0])
    ow = conv_transpose_output_size(W, kw, s[1], p[1], op[1], d[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f"conv_transpose2d: empty output {(N, O, oh, ow)} for input {x.shape}, "
                         f"weight {weight.shape}, stride {s}, padding {p}, dilation {d}")
    fn = ConvTranspose2d(s, p, d, g, (N, O, oh, ow))
    return fn(x, weight) if bias is None else fn(x, weight, bias)
