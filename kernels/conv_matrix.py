"""Convolution as a matrix: conv2d is ``C @ vec(x)``, transposed convolution is ``C^T @ vec(y)``.

A teaching tool and a test oracle, in NumPy only (no Numba or CUDA versions, no ``IMPLS`` table:
it is not a dispatched kernel, and a dense matrix of (O*OH*OW) x (C*H*W) numbers is only sensible
for small shapes). For one image, conv2d is linear in its input, so it is a matrix:

    conv2d(x, w, stride, padding, dilation, groups)[n].ravel() == C @ x[n].ravel()

Row ``(o*OH + i)*OW + j`` of C (output pixel (o, i, j)) holds, in column ``(c*H + h)*W + v``,
the weight ``w[o, c - c0(o), p, q]`` for every tap (p, q) whose input pixel
``(h, v) = (i*s_h - p_h + p*d_h, j*s_w - p_w + q*d_w)`` lies inside the input; taps that fall on
padding read zeros, so they leave no entry. The matrix is as sparse as the kernel is small.

Transposed convolution is C^T (SPEC: conv_transpose2d is *defined* as the adjoint of conv2d): the
same weight, stride, padding, dilation and groups, read backwards, map an output-sized tensor back
to an input-sized one. That is also conv2d's input gradient, which is why the autograd of a conv
needs no new math.

Worked example (Dumoulin & Visin, "A guide to convolution arithmetic for deep learning", 2016,
section 4.1): a 4x4 input and a 3x3 kernel (no padding, stride 1) give a 2x2 output, so C is 4x16;
its transpose maps a 2x2 map back to 4x4.

>>> import numpy as np
>>> w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)    # kernel [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
>>> C = conv_matrix((1, 4, 4), w)
>>> C.shape
(4, 16)
>>> C.astype(int)
array([[1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0],
       [0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0],
       [0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0],
       [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9]])
>>> (C.T @ np.ones(4)).reshape(4, 4).astype(int)     # conv_transpose2d of a 2x2 map of ones
array([[ 1,  3,  5,  3],
       [ 5, 12, 16,  9],
       [11, 24, 28, 15],
       [ 7, 15, 17,  9]])

Each row is the kernel laid over the flattened input, shifted by one output position; each column
lists which outputs an input pixel feeds. Reading the matrix by columns is the transposed conv: an
input pixel of the transposed conv "paints" a weighted copy of the kernel into the output.

Public functions: :func:`conv_matrix`, :func:`conv_transpose_matrix`. ``sparse=True`` returns a
``scipy.sparse.csr_matrix`` when SciPy is installed (it comes with scikit-image, but minisegnet does
not require it). Benchmark: none (not a performance path).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Pair = tuple[int, int]


def _pair(value: Any, name: str) -> Pair:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")


def _weight_array(weight: Any) -> np.ndarray:
    """A NumPy array from an array, a CuPy array or a Tensor (anything with ``.data``)."""
    w = getattr(weight, "data", weight)
    if hasattr(w, "get") and type(w).__module__.startswith("cupy"):
        w = w.get()
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)
    return w


def _to_sparse_or_dense(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: Pair,
                        dtype: Any, sparse: bool) -> Any:
    if sparse:
        try:
            import scipy.sparse
        except ImportError as e:  # keep SciPy optional
            raise ImportError("conv_matrix(..., sparse=True) needs SciPy (pip install scipy); "
                              "call it with sparse=False for a dense NumPy matrix") from e
        return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=shape, dtype=dtype)
    M = np.zeros(shape, dtype=dtype)
    M[rows, cols] = vals  # no (row, col) repeats: one entry per (output, tap) inside the input
    return M


def conv_matrix(in_shape: tuple[int, int, int], weight: Any, stride: int | Pair = 1,
                padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1,
                sparse: bool = False) -> Any:
    """The matrix C of ``conv2d(., weight, stride, padding, dilation, groups)`` on one image.

    ``conv2d(x, weight, ...)[n].ravel() == C @ x[n].ravel()`` for x of shape (N, *in_shape).

    Shapes: in_shape = (C_in, H, W), weight (O, C_in/groups, KH, KW) -> C (O*OH*OW, C_in*H*W),
    with ``OH = floor((H + 2p - d(KH-1) - 1) / s) + 1`` (likewise OW). Entry
    ``C[(o*OH + i)*OW + j, (c*H + h)*W + v] = weight[o, c - c0(o), p, q]`` where
    ``(h, v) = (i*s - pad + p*d, j*s - pad + q*d)`` is inside the input and c0(o) is the first
    input channel of o's group. Dense NumPy (the weight's float dtype) unless ``sparse=True``,
    which gives a ``scipy.sparse.csr_matrix`` (ImportError without SciPy).
    Raises ValueError for shapes that do not fit together or an empty output.
    """
    return _conv_matrix(in_shape, weight, stride, padding, dilation, groups, sparse)


def _conv_matrix(in_shape: tuple[int, int, int], weight: Any, stride: int | Pair,
                 padding: int | Pair, dilation: int | Pair, groups: int, sparse: bool,
                 out_hw: Pair | None = None) -> Any:
    """conv_matrix on the output grid ``out_hw`` (default: the conv2d formula's)."""
    w = _weight_array(weight)
    if len(tuple(in_shape)) != 3:
        raise ValueError(f"conv_matrix: in_shape must be (C, H, W), got {in_shape!r}")
    Cin, H, W = (int(v) for v in in_shape)
    if min(Cin, H, W) <= 0:
        raise ValueError(f"conv_matrix: in_shape must be positive, got {in_shape!r}")
    if w.ndim != 4:
        raise ValueError(f"conv_matrix: weight must be 4-D (O, C/groups, KH, KW), got shape "
                         f"{w.shape}")
    (sh, sw), (ph, pw), (dh, dw) = (_pair(stride, "stride"), _pair(padding, "padding"),
                                    _pair(dilation, "dilation"))
    if min(sh, sw) <= 0 or min(dh, dw) <= 0 or min(ph, pw) < 0:
        raise ValueError(f"conv_matrix: stride {(sh, sw)} and dilation {(dh, dw)} must be positive "
                         f"and padding {(ph, pw)} non-negative")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"conv_matrix: groups must be a positive int, got {groups!r}")
    O, Cg, KH, KW = w.shape
    if min(O, Cg, KH, KW) <= 0:
        raise ValueError(f"conv_matrix: weight shape {w.shape} has an empty axis")
    if Cin % groups or O % groups or Cg * groups != Cin:
        raise ValueError(f"conv_matrix: weight {w.shape} with groups={groups} does not fit "
                         f"{Cin} input channels (need O % groups == 0 and C/groups == {Cg})")
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    if out_hw is not None:
        OH, OW = min(OH, out_hw[0]), min(OW, out_hw[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"conv_matrix: empty output ({O}, {OH}, {OW}) for input "
                         f"{tuple(in_shape)}, kernel ({KH}, {KW}), stride {(sh, sw)}, "
                         f"padding {(ph, pw)}, dilation {(dh, dw)}")
    # One axis per index of the formula, broadcast together: (O, OH, OW, Cg, KH, KW).
    o = np.arange(O).reshape(O, 1, 1, 1, 1, 1)
    i = np.arange(OH).reshape(1, OH, 1, 1, 1, 1)
    j = np.arange(OW).reshape(1, 1, OW, 1, 1, 1)
    cl = np.arange(Cg).reshape(1, 1, 1, Cg, 1, 1)
    p = np.arange(KH).reshape(1, 1, 1, 1, KH, 1)
    q = np.arange(KW).reshape(1, 1, 1, 1, 1, KW)
    c = (o // (O // groups)) * Cg + cl  # absolute input channel
    h = i * sh - ph + p * dh
    v = j * sw - pw + q * dw
    shape6 = (O, OH, OW, Cg, KH, KW)
    inside = np.broadcast_to((h >= 0) & (h < H) & (v >= 0) & (v < W), shape6)
    rows = np.broadcast_to((o * OH + i) * OW + j, shape6)[inside]
    cols = np.broadcast_to((c * H + h) * W + v, shape6)[inside]
    vals = np.broadcast_to(w[:, None, None], shape6)[inside]  # w[o, cl, p, q] for every (i, j)
    return _to_sparse_or_dense(rows, cols, vals, (O * OH * OW, Cin * H * W), w.dtype, sparse)


def conv_transpose_matrix(in_shape: tuple[int, int, int], weight: Any, stride: int | Pair = 1,
                          padding: int | Pair = 0, output_padding: int | Pair = 0,
                          groups: int = 1, dilation: int | Pair = 1, sparse: bool = False) -> Any:
    """The matrix of ``conv_transpose2d(., weight, ...)`` on one image: a conv matrix, transposed.

    ``conv_transpose2d(y, weight, ...)[n].ravel() == T @ y[n].ravel()``.

    Shapes: in_shape = (C_in, H, W) (the transposed conv's input), weight (C_in, O/groups, KH, KW)
    -> T (O*H_out*W_out, C_in*H*W) with ``H_out = (H - 1)s - 2p + d(KH-1) + output_padding + 1``.
    T is ``conv_matrix((O, H_out, W_out), weight, stride, padding, dilation, groups).T``: the
    same weight array, read as a conv2d weight, maps O channels to C_in channels.
    """
    w = _weight_array(weight)
    if len(tuple(in_shape)) != 3:
        raise ValueError(f"conv_transpose_matrix: in_shape must be (C, H, W), got {in_shape!r}")
    if w.ndim != 4:
        raise ValueError(f"conv_transpose_matrix: weight must be 4-D (C_in, O/groups, KH, KW), "
                         f"got shape {w.shape}")
    Cin, H, W = (int(v) for v in in_shape)
    if w.shape[0] != Cin:
        raise ValueError(f"conv_transpose_matrix: weight.shape[0] {w.shape[0]} != input "
                         f"channels {Cin}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"conv_transpose_matrix: groups must be a positive int, got {groups!r}")
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
        _pair(output_padding, "output_padding"))
    if not (0 <= oph < max(sh, dh) and 0 <= opw < max(sw, dw)):
        raise ValueError(f"conv_transpose_matrix: output_padding {(oph, opw)} must be "
                         f"non-negative and smaller than max(stride, dilation) = "
                         f"{(max(sh, dh), max(sw, dw))}")
    _, Og, KH, KW = w.shape
    Hout = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    Wout = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    if Hout <= 0 or Wout <= 0:
        raise ValueError(f"conv_transpose_matrix: empty output ({Og * groups}, {Hout}, {Wout}) "
                         f"for input {tuple(in_shape)} and weight {w.shape}")
    # With output_padding >= stride (allowed when dilation > stride) the natural conv2d grid of the
    # (H_out, W_out) plane is larger than (H, W): the transposed conv uses its first H x W outputs.
    C = _conv_matrix((Og * groups, Hout, Wout), w, (sh, sw), (ph, pw), (dh, dw), groups, sparse,
                     out_hw=(H, W))
    return C.T
