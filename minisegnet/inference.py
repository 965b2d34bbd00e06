"""Inference: a model's probabilities for whole images, and instance labels from a semantic map.

``predict_image`` runs one (C, H, W) image through a model: whole, or with U-Net's overlap-tile
scheme (:func:`minisegnet.models.unet.predict_tiled`) where the network needs it (a valid-padded
U-Net always; a same-padded one past ``max_pixels``). ``instances_from_semantic`` turns a class
map (and the class probabilities) into instance labels the way a model trained on U-Net's
carved gaps needs: seeds where the network is sure, grown back over the class's pixels by a
watershed on its probability, tiny specks dropped, then the gaps between instances filled back
from the nearest instance (the pixels ``separate_touching`` removed from the truth were the
touching instances' own).

``predict_dask`` runs the same overlap-tile scheme over a ``dask.array`` (images bigger than one
machine's memory; extra ``minisegnet[dask]``): one Dask block per run of output tiles, each block
read with the context its tiles need by ``map_overlap`` (mirrored at the image border), so its
result equals ``predict_tiled``'s. It runs on any Dask scheduler, ``dask.distributed`` included,
and writes to zarr without gathering: ``predict_dask(ckpt, "big.zarr").to_zarr("labels.zarr")``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

__all__ = ["predict_image", "instances_from_semantic", "predict_dask", "predict_to_zarr",
           "normalize_lazy", "tile_sizes", "ModelSpec"]


def predict_image(model: Any, image: Any, device: str = "cpu", tile: Any = None,
                  max_pixels: int = 1024 * 1024) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of one image (C, H, W), no_grad, in eval mode."""
    import minisegnet as msn
    import minisegnet.functional as F
    from minisegnet.models.unet import UNet, predict_tiled

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected (C, H, W), got shape {image.shape}")
    H, W = image.shape[1:]
    big = H * W > max_pixels or tile is not None
    if isinstance(model, UNet) and (model.padding == "valid" or big):
        logits = msn.Tensor(predict_tiled(model, image, tile=tile))
        return F.softmax(logits, dim=0).numpy().astype(np.float32)
    was_training = model.training
    model.eval()
    try:
        with msn.no_grad():
            logits = model(msn.Tensor(image[None]).to(device))
            return F.softmax(logits, dim=1).numpy()[0].astype(np.float32)
    finally:
        model.train(was_training)


def instances_from_semantic(labels: Any, probs: Any = None, interior: float = 0.9,
                            min_size: int = 8, grow: int = 1) -> np.ndarray:
    """Instance labels (H, W) int32, 0 = background, from a class map (H, W) (0 = background).

    Without ``probs``: connected components (4-connectivity) of each foreground class.
    With ``probs`` (K, H, W), the grow-back of interiors: the seeds are the connected components
    of the pixels the network is sure of (``probs[c] > interior``), and each seed grows over
    its class's pixels by a watershed on ``1 - probs[c]``, so a narrow low-confidence neck,
    which a network trained with U-Net's border weights learns to put between touching objects,
    becomes a border even where argmax did not cut it; pixels no seed reaches keep their own
    connected component. Either way components under ``min_size`` pixels are dropped, then
    each background pixel with two different instances within ``grow`` pixels (a carved gap)
    joins the nearest instance. (``interior=0.9`` was chosen on the nuclei *train* half.)
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: expected a 2-D class map, got shape {labels.shape}")
    if probs is not None:
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[1:] != labels.shape or probs.shape[0] <= labels.max():
            raise ValueError(f"probs: expected (K, H, W) with (H, W) = {labels.shape} and K above "
                             f"the largest label {labels.max()}, got shape {probs.shape}")
    out = np.zeros(labels.shape, np.int32)
    n = 0
    for c in np.unique(labels[labels > 0]):
        mask = labels == c
        comp, k = ndimage.label(mask)
        if probs is not None:
            comp, k = _grow_interiors(mask, probs[c], interior, comp, k)
        if k == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=k + 1)
        keep = sizes >= min_size
        keep[0] = False
        ids = np.zeros(k + 1, np.int32)
        ids[keep] = np.arange(n + 1, n + 1 + keep.sum(), dtype=np.int32)
        n += int(keep.sum())
        out = np.where(ids[comp] > 0, ids[comp], out)
    if grow > 0 and n > 0:
        # Gap pixels: background with two different instances within `grow`. Only those were
        # carved from the truth; an instance's outer border was not, so it does not grow there.
        size = 2 * grow + 1
        hi = ndimage.maximum_filter(out, size=size)
        lo = ndimage.minimum_filter(np.where(out > 0, out, np.iinfo(np.int32).max), size=size)
        gap = (out == 0) & (hi > 0) & (lo < hi)
        _, (iy, ix) = ndimage.distance_transform_edt(out == 0, return_indices=True)
        out = np.where(gap, out[iy, ix], out).astype(np.int32)
    return out


def _grow_interiors(mask: np.ndarray, p: np.ndarray, interior: float, comp: np.ndarray,
                    k: int) -> tuple[np.ndarray, int]:
    """Seeds = components of ``p > interior`` inside ``mask``, grown over ``mask`` by watershed."""
    from scipy import ndimage

    seeds, s = ndimage.label(mask & (p > interior))
    if s == 0:
        return comp, k
    try:  # scikit-image's watershed (the data extra): a float priority queue
        from skimage.segmentation import watershed

        grown = watershed(1.0 - p, seeds, mask=mask)
    except ImportError:  # SciPy's image-foresting transform on 16-bit levels
        markers = np.where(mask, seeds, -1).astype(np.int32)
        grown = ndimage.watershed_ift(np.round((1.0 - p) * 65535).astype(np.uint16), markers)
        grown[~mask | (grown < 0)] = 0
    # components without a seed keep their own label, after the seeds' ids
    orphan = mask & (grown == 0)
    extra, e = ndimage.label(orphan)
    grown = np.where(orphan, extra + s, grown)
    return grown.astype(np.int32), s + e


# --------------------------------------------------------------------------------------------
# Images bigger than one machine: overlap-tile prediction on Dask
#
# The plan, per axis (rows shown; columns are the same): predict_tiled's output tiles of T
# pixels start on the 2^depth grid at 0, s, 2s, ... (s = T rounded down to the grid; a
# valid-padded net's tiles overlap by T - s, a later tile overwriting). A Dask block is a run of
# k consecutive tiles (k tiles at least as long as the overlap depth, so Dask never rechunks);
# its core is the output rows it owns, from its first tile's origin to the next block's:
#
#   image rows     -d ...  0 ............ y0 ..... y1 ............. H ... H+pb
#   source         [mirror]|   image (float32, model's dtype)       |[mirror]
#   block b reads          [y0-d ........ y0 ..... y1 ........ y1+d)   (map_overlap, depth d)
#   its tiles read              [y-halo, y+T+halo)  for each tile origin y in [y0, y1)
#
# Valid-padded: d = halo + (T - s), the source is mirrored by d on top and at least d below
# (np.pad's "reflect", repeated for an image shorter than that), so every tile reads exactly the
# window predict_tiled gives it. Same-padded: d = the zero-padding reach m (UNet._context), the
# image is mirrored below to the 2^depth grid as the forward pass does, and the outer border is
# not extended (boundary "none"): tile windows are clipped to the image, as in predict_tiled.

_DASK_HINT = "pip install 'minisegnet[dask]'"

# Per process: how often a ModelSpec was unpickled and how often a model was built from one
# (tests read them from every worker to check that the model travels once per worker).
STATS = {"unpickled": 0, "built": 0}
_MODELS: OrderedDict[str, Any] = OrderedDict()  # token -> built model, a few per process
_MODELS_LOCK = threading.Lock()
_MODELS_KEEP = 4


def _import_dask() -> Any:
    try:
        import dask.array as da
    except ImportError as e:
        raise ImportError(f"predict_dask needs Dask and zarr: {_DASK_HINT} ({e})") from None
    return da


class ModelSpec:
    """What a Dask worker needs to rebuild a U-Net: its constructor arguments, its weights (NumPy)
    and ``token``, a hash of both. ``predict_dask`` puts one in the graph as a single key that
    every block depends on, so a scheduler ships it to each worker once (the threaded scheduler
    never copies it; ``dask.distributed`` sends it to a worker the first time one of its blocks
    needs it). ``model()`` builds the network once per process (cached by token) and, in the
    process that made the spec, returns a private copy of the original (no rebuild, no draw
    from the random generator). Pickles to the arguments and weights only.
    """

    def __init__(self, model: Any) -> None:
        from dask.base import tokenize

        from .models.unet import UNet

        if not isinstance(model, UNet):
            raise TypeError(f"model_or_checkpoint: predict_dask needs a UNet (or a checkpoint of "
                            f"one), got {type(model).__name__}")
        self.kwargs = {k: getattr(model, k) for k in
                       ("in_channels", "num_classes", "base_channels", "depth", "padding",
                        "batch_norm")}
        self.state = dict(model.state_dict())  # NumPy copies: later training does not leak in
        self.device = model.device
        self.token = tokenize("minisegnet.UNet", self.kwargs, self.state)
        local = copy.deepcopy(model)
        local.load_state_dict(self.state)
        self._model: Any = local.eval()

    def __getstate__(self) -> dict[str, Any]:
        return {"kwargs": self.kwargs, "state": self.state, "device": self.device,
                "token": self.token}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._model = None
        with _MODELS_LOCK:
            STATS["unpickled"] += 1

    def model(self) -> Any:
        """The network in eval mode; built at most once per process for this token."""
        if self._model is not None:
            return self._model
        with _MODELS_LOCK:
            model = _MODELS.get(self.token)
            if model is None:
                from .models.unet import UNet

                model = UNet(**self.kwargs)
                model.load_state_dict(self.state)
                model = model.to(self.device).eval()
                STATS["built"] += 1
                _MODELS[self.token] = model
                while len(_MODELS) > _MODELS_KEEP:
                    _MODELS.popitem(last=False)
            _MODELS.move_to_end(self.token)
            self._model = model
        return model


@dataclass(frozen=True)
class _Axis:
    """The tiling of one image axis of length ``n`` (see the plan above). Tile i reads the
    window ``windows[i]`` and owns output ``owns[i]``; its model output's first pixel is image
    pixel ``windows[i][0] + lost`` (``lost`` = halo, 0 when same-padded). Block b owns output
    ``cores[b]``, runs tiles ``tiles[b]``; its overlapped source starts at image ``starts[b]``."""

    n: int
    tile: int
    depth: int
    pad_before: int
    pad_after: int
    lost: int
    windows: tuple[tuple[int, int], ...]
    owns: tuple[tuple[int, int], ...]
    cores: tuple[tuple[int, int], ...]
    tiles: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]

    def source_chunks(self) -> tuple[int, ...]:
        c = [b - a for a, b in self.cores]
        c[0] += self.pad_before
        c[-1] += self.pad_after
        return tuple(c)

    def overlap(self) -> int:
        """map_overlap's depth: none for a single block (no neighbours; it may be shorter)."""
        return self.depth if len(self.cores) > 1 else 0

    def output_chunks(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.cores)


def tile_sizes(model: Any, H: int, W: int, tile: Any = None) -> tuple[int, int]:
    """The output tile (h, w) ``predict_tiled(model, image, tile)`` uses for an (H, W) image: the
    same choice (1 GiB per forward pass when ``tile`` is None, rounded to the model's valid
    sizes and the 2^depth grid, no larger than the image needs), so both runs tile alike.

    (A copy of predict_tiled's rule, kept in step with it by tests/test_inference.py.)"""
    from .models.unet import _TILE_BUDGET_BYTES, _tile_pair

    step, per_pixel = 2**model.depth, 96 * model.base_channels
    if model.padding == "valid":
        halo = model.halo
        o_min = model._out_1d(model._min_valid)
        smallest = o_min + -(-(step - o_min) // step) * step if o_min < step else o_min
        if tile is None:
            tile = max(int(math.sqrt(_TILE_BUDGET_BYTES / per_pixel)) - 2 * halo, smallest)
        sizes = []
        for name, t, n in (("height", _tile_pair(tile)[0], H), ("width", _tile_pair(tile)[1], W)):
            if t < smallest:
                raise ValueError(f"tile: the {name} {t} is below the smallest output tile of this "
                                 f"U-Net that can step on the 2^{model.depth} grid, {smallest}")
            cover = model.input_size_for(n, n)[0] - 2 * halo
            t = min(t, max(cover, smallest))
            sizes.append(o_min + (t - o_min) // step * step)
        return sizes[0], sizes[1]
    P, Q = H + -H % step, W + -W % step
    m = model._context()
    if tile is None:
        side = int(math.sqrt(_TILE_BUDGET_BYTES / per_pixel))
        tile = (P, Q) if P * Q <= side * side else max(side - 2 * m, step)
    th, tw = _tile_pair(tile)
    if min(th, tw) < step:
        raise ValueError(f"tile: {(th, tw)} is below the 2^depth = {step} grid of this U-Net")
    return min(th - th % step, P), min(tw - tw % step, Q)


def _mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """np.pad's "reflect" as an index map: the periodic even extension (period 2(n - 1))."""
    if n == 1:
        return np.zeros_like(i)
    p = 2 * (n - 1)
    i = np.mod(i, p)
    return np.where(i < n, i, p - i)


def _axis_plan(model: Any, n: int, t: int) -> _Axis:
    step = 2**model.depth
    if model.padding == "valid":
        halo, stride = model.halo, t - t % step
        origins = [i * stride for i in range(1 + -(-max(n - t, 0) // stride))]
        windows = [(y - halo, y + t + halo) for y in origins]
        owns = [(y, min(nxt, n)) for y, nxt in zip(origins, origins[1:] + [n])]
        depth = halo + (t - stride)
        before, after, lost = depth, max(depth, origins[-1] + t + halo - n), halo
    else:
        P, m, stride = n + -n % step, model._context(), t
        origins = list(range(0, P, t))
        windows = [(max(y - m, 0), min(y + t + m, P)) for y in origins]
        owns = [(y, min(y + t, n)) for y in origins]
        depth, before, after, lost = m, 0, P - n, 0
    k = max(1, -(-depth // stride))  # tiles per block: blocks at least as long as the depth
    groups = [list(range(i, min(i + k, len(origins)))) for i in range(0, len(origins), k)]
    # A short last block (its source shorter than the depth) joins the one before it.
    if len(groups) > 1 and n - origins[groups[-1][0]] + after < depth:
        groups[-2:] = [groups[-2] + groups[-1]]
    cores = [(origins[g[0]], origins[groups[i + 1][0]] if i + 1 < len(groups) else n)
             for i, g in enumerate(groups)]
    starts = [-before if i == 0 else a - depth for i, (a, _) in enumerate(cores)]
    return _Axis(n, t, depth, before, after, lost, tuple(windows), tuple(owns), tuple(cores),
                 tuple(tuple(g) for g in groups), tuple(starts))


def _mirror_extend(x: Any, axis: int, before: int, after: int) -> Any:
    """Dask array ``x`` extended along ``axis`` by np.pad-style reflection."""
    da = _import_dask()
    if before == 0 and after == 0:
        return x
    n = x.shape[axis]
    parts = []
    top = _mirror_index(np.arange(-before, 0), n)
    bottom = _mirror_index(np.arange(n, n + after), n)
    for idx in (top, None, bottom):
        if idx is None:
            parts.append(x)
        elif len(idx):
            parts.append(da.take(x, idx, axis=axis))
    return da.concatenate(parts, axis=axis)


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.min_scalar_type(max(num_classes - 1, 0)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, as F.softmax computes it (shift by the maximum, exp, divide)."""
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _predict_block(block: np.ndarray, rows: _Axis, cols: _Axis, output: str,
                   spec: ModelSpec | None = None, block_id: tuple[int, ...] = (0, 0, 0),
                   ) -> np.ndarray:
    """One Dask block: the block's tiles, one forward pass each (as predict_tiled runs them), then
    labels, probabilities or logits of the block's core."""
    from .backend import to_device, to_numpy
    from .tensor import Tensor, no_grad

    i, j = block_id[-2:]
    model = spec.model()
    dtype = next(iter(model.parameters())).dtype
    block = block.astype(dtype, copy=False)  # (C, rows + overlap, cols + overlap)
    (r0, r1), (c0, c1) = rows.cores[i], cols.cores[j]
    rs, cs = rows.starts[i], cols.starts[j]
    out = np.empty((model.num_classes, r1 - r0, c1 - c0), dtype)  # (K, rows, cols)
    with no_grad():
        for ti in rows.tiles[i]:
            (a, b), (o, p) = rows.windows[ti], rows.owns[ti]
            for tj in cols.tiles[j]:
                (c, d), (q, r) = cols.windows[tj], cols.owns[tj]
                inp = np.ascontiguousarray(block[None, :, a - rs : b - rs, c - cs : d - cs])
                logits = model(Tensor(to_device(inp, model.device))).data[0]  # (K, h, w)
                ya, xa = a + rows.lost, c + cols.lost  # image pixel of the output's (0, 0)
                out[:, o - r0 : p - r0, q - c0 : r - c0] = to_numpy(
                    logits[:, o - ya : p - ya, q - xa : r - xa])
    if output == "labels":
        return out.argmax(axis=0).astype(_label_dtype(model.num_classes))
    if output == "probabilities":
        return _softmax(out)
    return out


class _NpyFile:
    """A ``.npy`` file as an array-like for ``da.from_array``: pickles as its path (a worker opens
    its own memory map), never as the data."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        a = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        # A copy, never a view: a view keeps the whole file mapped (and its touched pages
        # resident) for as long as any slice of the block lives.
        return np.array(np.load(self.path, mmap_mode="r")[key], copy=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "ndim": self.ndim}


def _is_zarr_path(path: str) -> bool:
    p = path.rstrip("/\\")
    return p.endswith(".zarr") or os.path.isfile(os.path.join(p, ".zarray")) or os.path.isfile(
        os.path.join(p, "zarr.json"))


def _open_image(image: Any, model: Any, tile: Any) -> Any:
    """A dask array for an image given as a dask array, an array or a file path, chunked on the
    output-tile grid of ``model`` (files are read block by block, never whole)."""
    da = _import_dask()
    zarr_path = None
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.lower().endswith(".npy"):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image: no such file {path!r}")
            try:
                source: Any = _NpyFile(path)
            except ValueError as e:
                raise ValueError(f"image: cannot memory-map {path!r}: {e}") from None
        elif _is_zarr_path(path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"image: no such zarr array {path!r}")
            try:
                import zarr

                source, zarr_path = zarr.open_array(path, mode="r"), path
            except ImportError as e:
                raise ImportError(f"reading zarr needs zarr: {_DASK_HINT} ({e})") from None
            except Exception as e:  # noqa: BLE001 - a group, a broken store: one message
                raise ValueError(f"image: {path!r} is not a zarr array "
                                 f"({type(e).__name__}: {e})") from None
        else:
            raise ValueError(f"image: a path must name a .npy file or a zarr array, got {path!r}")
    elif isinstance(image, da.Array):
        source = image
    else:
        from .tensor import Tensor

        source = image.data if isinstance(image, Tensor) else image
        if type(source).__module__.startswith("cupy"):
            source = source.get()
        source = np.asarray(source)
    shape = tuple(int(n) for n in source.shape)
    if len(shape) in (2, 3) and min(shape) > 0:
        th, tw = tile_sizes(model, shape[-2], shape[-1], tile)
        chunks = shape[:-2] + (_axis_plan(model, shape[-2], th).output_chunks(),
                               _axis_plan(model, shape[-1], tw).output_chunks())
    else:
        chunks = shape  # rejected by _checked_image before anything is read
    if isinstance(source, da.Array):
        return source.rechunk(chunks)
    if zarr_path is not None:
        return da.from_zarr(zarr_path, chunks=chunks)
    if isinstance(source, _NpyFile):
        return da.from_array(source, chunks=chunks, asarray=True, fancy=False, lock=False,
                             name=f"npy-{source.path}-{os.path.getmtime(source.path)}")
    return da.from_array(source, chunks=chunks)


def _checked_image(x: Any, model: Any) -> Any:
    """(C, H, W) dask array of a real dtype for ``model``: a bad shape or dtype is an error here,
    before any block runs."""
    from .models.unet import check_image

    return check_image(x, model)


def predict_dask(model_or_checkpoint: Any, image: Any, tile: int | tuple[int, int] | None = None,
                 output: str = "labels") -> Any:
    """Overlap-tile prediction of an image of any size as a lazy ``dask.array``.

    ``model_or_checkpoint``: a :class:`~minisegnet.models.unet.UNet` or the path of a training
    checkpoint of one. ``image``: (H, W) or channel-first (C, H, W), as a ``dask.array``, a NumPy
    array, a ``.npy`` file (memory-mapped by each worker) or a zarr array path; it is the network's
    input (normalise it first, as for ``predict_tiled``). ``tile``: the output tile (int or (h, w))
    of one forward pass, chosen as ``predict_tiled`` chooses it when None (about 1 GiB of
    activations per pass).

    Returns, lazily, ``output="labels"``: (H, W) class ids (uint8 up to 256 classes);
    ``"probabilities"``: (K, H, W) float32 softmax; ``"logits"``: (K, H, W) raw scores.
    Blocks are runs of output tiles on the 2^depth grid, read with their context by
    ``dask.array.map_overlap`` (mirrored at the border exactly as ``predict_tiled`` mirrors), and
    each tile is the forward pass ``predict_tiled`` runs for it, so the result equals
    ``predict_tiled``'s (softmax/argmax of its logits) up to float rounding (bitwise in our
    tests). An image smaller than one tile is mirrored as ``predict_tiled`` mirrors it (one
    block). A worker holds the model, one tile's forward pass per thread, the blocks in flight and
    the overlap strips that the next row of blocks still needs: memory grows with the image's
    width, not its area (benchmarks/RESULTS_inference.md: 312 MB at 2048^2, 430 MB at 8192^2).

    The model is one key of the graph (a :class:`ModelSpec`), sent to each ``dask.distributed``
    worker once and built once per process (Dask's local process pool pickles a task's inputs
    with every task, so there the weights travel with each block; the build still happens once
    per process). Compute with any scheduler, or stream to disk without gathering::

        labels = predict_dask("runs/unet-nuclei/best.npz", "big.zarr")
        labels.to_zarr("labels.zarr")                       # threads, or the active Client
        labels.compute(scheduler="processes")               # a local process pool

    Needs ``pip install 'minisegnet[dask]'``.
    """
    da = _import_dask()
    import dask

    if output not in ("labels", "probabilities", "logits"):
        raise ValueError(f"output: must be 'labels', 'probabilities' or 'logits', got {output!r}")
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        from .training import model_from_checkpoint

        model_or_checkpoint, _ = model_from_checkpoint(os.fspath(model_or_checkpoint))
    spec = model_or_checkpoint if isinstance(model_or_checkpoint, ModelSpec) else ModelSpec(
        model_or_checkpoint)
    model = spec.model()
    x = _checked_image(_open_image(image, model, tile), model)
    C, H, W = (int(s) for s in x.shape)
    th, tw = tile_sizes(model, H, W, tile)
    rows, cols = _axis_plan(model, H, th), _axis_plan(model, W, tw)

    x = x.rechunk((C, rows.output_chunks(), cols.output_chunks()))
    src = _mirror_extend(x, 1, rows.pad_before, rows.pad_after)
    src = _mirror_extend(src, 2, cols.pad_before, cols.pad_after)
    src = src.rechunk((C, rows.source_chunks(), cols.source_chunks()))

    K = model.num_classes
    dtype = np.dtype(next(iter(model.parameters())).dtype)
    if output == "labels":
        out_dtype, chunks, extra = _label_dtype(K), (rows.output_chunks(), cols.output_chunks()), {
            "drop_axis": 0}
    else:
        out_dtype, chunks, extra = (np.dtype(np.float32) if output == "probabilities" else dtype,
                                    ((K,), rows.output_chunks(), cols.output_chunks()), {})
    from dask.base import tokenize

    key = dask.delayed(spec, name=f"minisegnet-model-{spec.token}", pure=True)
    name = f"predict-dask-{tokenize(spec.token, src.name, rows, cols, output)}"
    result = da.map_overlap(
        partial(_predict_block, rows=rows, cols=cols, output=output), src,
        depth={0: 0, 1: rows.overlap(), 2: cols.overlap()}, boundary="none", trim=False,
        allow_rechunk=False, chunks=chunks, dtype=out_dtype,
        meta=np.empty((0,) * len(chunks), out_dtype), name=name, spec=key, **extra,
    )
    # zarr needs equal chunks but the last: a last block merged into its neighbour is split again.
    if not all(_regular(c) for c in result.chunks):
        result = result.rechunk(tuple(c[0] for c in result.chunks))
    return result


def _regular(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def normalize_lazy(x: Any, normalization: dict[str, Any], max_samples: int = 1 << 24) -> Any:
    """:func:`minisegnet.data.normalize` for a (C, H, W) dask array, lazily except for the
    percentiles: ``"range"`` is elementwise (exact); ``"percentile"`` takes the image's
    percentiles from every pixel up to ``max_samples`` pixels (then identical to ``normalize``)
    and from an even strided subsample of about that many beyond (computed now, with the
    scheduler in use)."""
    if not isinstance(normalization, dict) or "method" not in normalization:
        raise TypeError(f"normalization: expected a dict with a 'method', got {normalization!r}")
    method, clip = normalization["method"], normalization.get("clip", True)
    xf = x.astype(np.float64)
    if method == "percentile":
        s = max(1, math.ceil(math.sqrt(x.size / max_samples)))
        sample = np.asarray(xf[:, ::s, ::s].compute())
        lo, hi = np.percentile(sample, [normalization["low"], normalization["high"]])
    elif method == "range":
        if x.dtype.kind in "iu":
            xf = xf / np.iinfo(x.dtype).max
        lo, hi = normalization["low"], normalization["high"]
    else:
        raise ValueError(f"normalization: unknown method {method!r} (expected 'percentile' or "
                         f"'range')")
    xf = (xf - lo) / max(hi - lo, 1e-12)
    if clip:
        xf = xf.clip(0.0, 1.0)
    return xf.astype(np.float32)


def predict_to_zarr(checkpoint: str, image: Any, out: str, scheduler: str | None = None,
                    tile: Any = None, progress: bool = False, connect_timeout: float | None = None,
                    ) -> tuple[int, int]:
    """``minisegnet predict --scheduler ...``: labels of one raw image written to the zarr array
    ``out`` block by block, never gathered. The image (a ``.npy``/zarr path or an array) is
    normalised as the checkpoint's training data was (:func:`normalize_lazy`); a colour image for
    a one-channel model is averaged over its first three channels, as the in-memory path does.

    ``scheduler``: None or "threads" (Dask's threads), "processes" (a local process pool), or a
    ``dask.distributed`` scheduler address ("tcp://host:8786"; connecting gives up after
    ``connect_timeout`` seconds, Dask's ``distributed.comm.timeouts.connect`` when None; its
    workers must see ``out`` and the image path). ``progress``: a bar over the blocks (Dask's
    ``ProgressBar`` locally, ``distributed.progress`` on a cluster). Returns (H, W)."""
    import dask

    _import_dask()
    from .training import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint)
    x = _open_image(image, model, tile)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3 and model.in_channels == 1 and x.shape[0] in (3, 4):
        x = x[:3].astype(np.float64).mean(axis=0, keepdims=True)  # colour picture, grey model
    _checked_image(x, model)
    if isinstance(image, (str, os.PathLike)) and os.path.abspath(out) == os.path.abspath(image):
        raise ValueError(f"out: {out!r} is the input image")

    client = None
    if scheduler not in (None, "threads", "processes", "sync", "synchronous"):
        try:
            from distributed import Client
        except ImportError as e:
            raise ImportError(f"--scheduler ADDRESS needs dask.distributed: {_DASK_HINT} "
                              f"({e})") from None
        timeout = connect_timeout if connect_timeout is not None else dask.config.get(
            "distributed.comm.timeouts.connect")
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            raise ConnectionError(f"scheduler: cannot reach a Dask scheduler at {scheduler!r} "
                                  f"within {timeout} ({why})") from None
    try:
        with dask.config.set(scheduler=client if client is not None else (scheduler or "threads")):
            x = normalize_lazy(x, meta["normalization"])
            labels = predict_dask(model, x, tile=tile)
            store = labels.to_zarr(out, overwrite=True, compute=False)
            if client is not None:
                fut = client.compute(store)
                if progress:
                    from distributed import progress as dist_progress

                    with client.as_current():  # progress() looks for the current client
                        dist_progress(fut)
                fut.result()
            elif progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar(dt=1.0, out=sys.stderr):
                    store.compute()
            else:
                store.compute()
    finally:
        if client is not None:
            client.close()
    return int(labels.shape[0]), int(labels.shape[1])
