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
read with the context its tiles need (from the file by the block's own task for a ``.npy``/zarr
image, by ``map_overlap`` for an array), mirrored at the image border, so its result equals
``predict_tiled``'s. It runs on any Dask scheduler, ``dask.distributed`` included, and writes to
zarr without gathering: ``predict_dask(ckpt, "big.zarr").to_zarr("labels.zarr")``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
import weakref
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
# consecutive tiles; its core is the output rows it owns, from its first tile's origin to the
# next block's, and it reads the union of its tiles' windows:
#
#   image rows     -d ...  0 ............ y0 ..... y1 ............. H ... H+pb
#   source         [mirror]|   image (float32, model's dtype)       |[mirror]
#   block b reads          [y0-d ........ y0 ..... y1 ........ y1+d)
#   its tiles read              [y-halo, y+T+halo)  for each tile origin y in [y0, y1)
#
# Valid-padded: d = halo + (T - s), the image mirrored by np.pad's "reflect" (repeated for an
# image shorter than that), so every tile reads exactly the window predict_tiled gives it.
# Same-padded: d = the zero-padding reach m (UNet._context), the image mirrored below to the
# 2^depth grid as the forward pass does, tile windows clipped to that, as in predict_tiled.
#
# Two graphs feed one block function. A file (.npy, zarr; with the command line's normalisation
# applied per window) has no input graph: each block is one task that reads its own window from
# the file (a .npy row by row, never through a memory map), mirrored by index into a fresh array,
# and runs its one tile. Tasks share no data and carry only their own part of the plan, so a
# worker holds the model and the windows of the blocks it is running, whatever the image's
# size (benchmarks/RESULTS_inference.md). An image in memory (a dask or NumPy array) goes
# through map_overlap: blocks of enough tiles to be at least d long, the overlap taken from the
# neighbours (boundary "none" after the mirroring above); its overlap strips are views that keep
# their neighbours' blocks alive, so there a worker holds up to about a row of blocks (memory
# grows with the image's width).

_DASK_HINT = "pip install 'minisegnet[dask]'"

# Per process: how often a model's weights were deserialised from bytes ("unpickled": a
# ModelSpec, or a handle moved by dask.distributed), read from a weights file ("loaded": a
# handle from Dask's process pool) and built into a network ("built"). Tests read them from
# every worker to check that the model travels once per worker, not once per block.
STATS = {"unpickled": 0, "loaded": 0, "built": 0}
_MODELS: OrderedDict[str, Any] = OrderedDict()  # token -> built model, a few per process
_MODELS_LOCK = threading.Lock()
_MODELS_KEEP = 4


def _import_dask() -> Any:
    try:
        import dask.array as da
    except ImportError as e:
        raise ImportError(f"predict_dask needs Dask and zarr: {_DASK_HINT} ({e})") from None
    return da


def _count(name: str) -> None:
    with _MODELS_LOCK:
        STATS[name] += 1


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class ModelSpec:
    """A U-Net as a Dask graph carries it: its constructor arguments, its weights (NumPy) and
    ``token``, a hash of both. It pickles *with* its weights, so a graph holds it once, as the
    key ``minisegnet-weights-TOKEN``; one task turns it into the small :class:`ModelHandle`
    (key ``minisegnet-model-TOKEN``) that every block depends on. In the process that made it,
    ``model()`` is a private copy of the original (no rebuild, no draw from the random
    generator). The first time it is pickled (a process pool or a cluster is about to run the
    graph) it also writes its weights to a temporary ``.npz`` (``path``; removed when the spec
    is garbage-collected or the process exits), from which handles load on the same machine.
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
        self.path: str | None = None
        local = copy.deepcopy(model)
        local.load_state_dict(self.state)
        self._model: Any = local.eval()
        self._lock = threading.Lock()

    def weights_file(self) -> str:
        """The weights as an ``.npz`` on this machine, written once."""
        with self._lock:
            if self.path is None or not os.path.isfile(self.path):
                import tempfile

                fd, path = tempfile.mkstemp(prefix=f"minisegnet-weights-{self.token[:16]}-",
                                            suffix=".npz")
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **self.state)
                self.path = path
                weakref.finalize(self, _remove_quietly, path)
            return self.path

    def __getstate__(self) -> dict[str, Any]:
        path = self.path if self._model is None else self.weights_file()
        return {"kwargs": self.kwargs, "state": self.state, "device": self.device,
                "token": self.token, "path": path}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._model = None
        self._lock = threading.Lock()
        _count("unpickled")

    def handle(self) -> ModelHandle:
        return ModelHandle(self.token, self.kwargs, self.device, self.path, self.state,
                           self._model)

    def model(self) -> Any:
        """The network in eval mode; built at most once per process for this token."""
        if self._model is None:
            self._model = self.handle().model()
        return self._model


class ModelHandle:
    """What a Dask block needs of the model: the token, the constructor arguments, where the
    weights are, and the network once built (at most once per process, cached by token).

    Pickles small, to the token, the arguments and the path of the weights file (Dask's local
    process pool pickles each task's inputs with the task: a few hundred bytes per block, and
    each process reads the file once). ``dask.distributed`` moves it between workers with its
    weights (a registered Dask serializer), so workers on other machines need no shared file;
    it does that once per worker, since a worker keeps the key in memory.
    """

    def __init__(self, token: str, kwargs: dict[str, Any], device: str, path: str | None,
                 state: dict[str, np.ndarray] | None = None, model: Any = None) -> None:
        self.token, self.kwargs, self.device, self.path = token, kwargs, device, path
        self.state, self._model = state, model

    def __reduce__(self) -> tuple[Any, ...]:
        if self.path is None:  # nowhere to load from: the weights travel
            return (_handle_from_bytes, (self.token, self.kwargs, self.device, self._state()))
        return (ModelHandle, (self.token, self.kwargs, self.device, self.path))

    def _state(self) -> dict[str, np.ndarray]:
        if self.state is not None:
            return self.state
        return {k: np.asarray(v) for k, v in self.model().state_dict().items()}

    def model(self) -> Any:
        """The network in eval mode; built at most once per process for this token."""
        if self._model is not None:
            return self._model
        with _MODELS_LOCK:
            model = _MODELS.get(self.token)
            if model is None:
                from .models.unet import UNet

                state = self.state
                if state is None:
                    if self.path is None or not os.path.isfile(self.path):
                        raise FileNotFoundError(
                            f"model_or_checkpoint: the weights file {self.path!r} is not "
                            f"readable in process {os.getpid()} (a worker on another machine "
                            f"gets the weights from dask.distributed, not from this file)")
                    with np.load(self.path, allow_pickle=False) as f:
                        state = {k: f[k] for k in f.files}
                    STATS["loaded"] += 1
                model = UNet(**self.kwargs)
                model.load_state_dict(state)
                model = model.to(self.device).eval()
                STATS["built"] += 1
                _MODELS[self.token] = model
                while len(_MODELS) > _MODELS_KEEP:
                    _MODELS.popitem(last=False)
            _MODELS.move_to_end(self.token)
            self._model = model
        return model


def _handle_from_bytes(token: str, kwargs: dict[str, Any], device: str,
                       state: dict[str, np.ndarray]) -> ModelHandle:
    _count("unpickled")
    return ModelHandle(token, kwargs, device, None, state)


def _handle_of(spec: ModelSpec) -> ModelHandle:
    """The graph's model task: the spec's handle, its network built here (the blocks that run
    in this process need it; elsewhere handles load it once per process)."""
    handle = spec.handle()
    handle.model()
    return handle


def _register_distributed() -> None:
    """Teach dask.distributed to move a ModelHandle with its weights (not the path of a file
    that a worker on another machine cannot read). Runs on import when distributed is loaded
    (a worker imports this module to unpickle the graph's spec) and from predict_dask."""
    try:
        from distributed.protocol import dask_deserialize, dask_serialize
    except ImportError:
        return
    if ModelHandle in dask_serialize._lookup:
        return

    @dask_serialize.register(ModelHandle)
    def _serialize(h: ModelHandle) -> tuple[dict[str, Any], list[bytes]]:
        import pickle

        return {}, [pickle.dumps((h.token, h.kwargs, h.device, h.path, h._state()), protocol=5)]

    @dask_deserialize.register(ModelHandle)
    def _deserialize(header: dict[str, Any], frames: list[Any]) -> ModelHandle:
        import pickle

        token, kwargs, device, path, state = pickle.loads(b"".join(bytes(f) for f in frames))
        _count("unpickled")
        return ModelHandle(token, kwargs, device, path, state)


if "distributed" in sys.modules:
    _register_distributed()


@dataclass(frozen=True)
class _Axis:
    """The tiling of one image axis of length ``n`` (see the plan above). Tile i reads the
    window ``windows[i]`` and owns output ``owns[i]``; its model output's first pixel is image
    pixel ``windows[i][0] + lost`` (``lost`` = halo, 0 when same-padded). Block b owns output
    ``cores[b]``, runs tiles ``tiles[b]``; its overlapped source starts at image ``starts[b]``
    (map_overlap's layout: the image mirrored by ``pad_before``/``pad_after``, overlap
    ``depth``); ``run(b)`` is block b alone (the part of the image its tiles read, mirrored)."""

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

    def run(self, b: int) -> _Run:
        """Block ``b`` alone: what its task needs, of a size that does not grow with ``n``."""
        t = self.tiles[b]
        return _Run(self.cores[b], (self.windows[t[0]][0], max(self.windows[i][1] for i in t)),
                    tuple((self.windows[i], self.owns[i]) for i in t), self.lost)


@dataclass(frozen=True)
class _Run:
    """One block along one axis: it owns output ``core``, its tiles read image ``span`` (mirrored
    beyond the image), and each tile is (its window, the output it owns); a tile's model output
    starts at image pixel ``window[0] + lost``."""

    core: tuple[int, int]
    span: tuple[int, int]
    tiles: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    lost: int


def tile_sizes(model: Any, H: int, W: int, tile: Any = None) -> tuple[int, int]:
    """The output tile (h, w) ``predict_tiled(model, image, tile)`` uses for an (H, W) image
    (:func:`minisegnet.models.unet.tile_plan`, which predict_tiled itself calls)."""
    from .models.unet import tile_plan

    return tile_plan(model, H, W, tile)


def _mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """np.pad's "reflect" as an index map: the periodic even extension (period 2(n - 1))."""
    if n == 1:
        return np.zeros_like(i)
    p = 2 * (n - 1)
    i = np.mod(i, p)
    return np.where(i < n, i, p - i)


def _axis_plan(model: Any, n: int, t: int, one_tile_blocks: bool = False) -> _Axis:
    """The plan of one axis; blocks of one tile each (``one_tile_blocks``, for blocks that read
    their own windows) or, for map_overlap, of enough tiles to be at least the overlap long."""
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
    k = 1 if one_tile_blocks else max(1, -(-depth // stride))
    groups = [list(range(i, min(i + k, len(origins)))) for i in range(0, len(origins), k)]
    # A short last block (its source shorter than the depth) joins the one before it.
    if not one_tile_blocks and len(groups) > 1 and n - origins[groups[-1][0]] + after < depth:
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


def _predict_block(block: np.ndarray, rows: _Run, cols: _Run, output: str, spec: ModelHandle,
                   origin: tuple[int, int]) -> np.ndarray:
    """One Dask block: the block's tiles, one forward pass each (as predict_tiled runs them), then
    labels, probabilities or logits of the block's core. ``block`` is the mirrored image from
    image pixel ``origin`` on."""
    from .backend import to_device, to_numpy
    from .tensor import Tensor, no_grad

    model = spec.model()
    dtype = next(iter(model.parameters())).dtype
    block = block.astype(dtype, copy=False)  # (C, rows + context, cols + context)
    (r0, r1), (c0, c1), (rs, cs) = rows.core, cols.core, origin
    out = np.empty((model.num_classes, r1 - r0, c1 - c0), dtype)  # (K, rows, cols)
    with no_grad():
        for (a, b), (o, p) in rows.tiles:
            for (c, d), (q, r) in cols.tiles:
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


def _predict_overlap_block(block: np.ndarray, rows: _Axis, cols: _Axis, output: str,
                           spec: ModelHandle | None = None,
                           block_id: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """One map_overlap block (its source starts at ``rows.starts[i]``, ``cols.starts[j]``)."""
    i, j = block_id[-2:]
    return _predict_block(block, rows.run(i), cols.run(j), output, spec,
                          (rows.starts[i], cols.starts[j]))


def _predict_file_block(source: _FileImage, spec: ModelHandle, rows: _Run, cols: _Run,
                        output: str) -> np.ndarray:
    """One block of a file: its window read (and mirrored) here, then :func:`_predict_block`."""
    (a, b), (c, d) = rows.span, cols.span
    return _predict_block(source.window(a, b, c, d), rows, cols, output, spec, (a, c))


def _grey(x: np.ndarray) -> np.ndarray:
    """(1, h, w) float64: the mean of the first three channels (a colour picture, grey model)."""
    return x[:3].astype(np.float64).mean(axis=0, keepdims=True)


class _FileImage:
    """A ``.npy`` file or a zarr array as a reader that pickles as its path (a worker opens its
    own memory map or store), never as the data, with elementwise ``steps`` applied to what it
    reads (the command line's channel mean and normalisation). ``x[key]`` reads raw pixels (for
    ``da.from_array``); ``window`` reads a mirrored (C, h, w) window, steps applied. Both copy:
    a view of a memory map keeps the file mapped, and its touched pages resident, while it lives.
    """

    def __init__(self, path: str, kind: str, steps: tuple[Any, ...] = ()) -> None:
        self.path, self.kind, self.steps = os.path.abspath(path), kind, steps
        a = self._open()
        self.shape, self.dtype, self.ndim = tuple(a.shape), np.dtype(a.dtype), a.ndim
        self.mtime = os.path.getmtime(self.path)
        # A C-ordered .npy is read row by row (pread) where its data starts: no memory map, whose
        # pages (a fault maps up to 64 KiB around each row) would count as this process's memory
        # in proportion to the image's width while a window is read.
        self.offset = None
        if kind == "npy" and isinstance(a, np.memmap) and a.flags.c_contiguous and a.ndim >= 2:
            self.offset = int(a.offset)

    def _open(self) -> Any:
        if self.kind == "npy":
            return np.load(self.path, mmap_mode="r")
        import zarr

        return zarr.open_array(self.path, mode="r")

    def with_steps(self, *steps: Any) -> _FileImage:
        other = copy.copy(self)
        other.steps = self.steps + steps
        return other

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self._open()[key], copy=True)

    def _box(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Raw pixels [..., r0:r1, c0:c1], a fresh array."""
        if self.offset is None:
            return np.array(self._open()[..., r0:r1, c0:c1], copy=True)
        H, W = self.shape[-2:]
        out = np.empty((*self.shape[:-2], r1 - r0, c1 - c0), self.dtype)
        rows = out.reshape(-1, r1 - r0, c1 - c0)  # (planes, rows, cols), a view of out
        size = self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            for p in range(rows.shape[0]):
                for i in range(r1 - r0):
                    at = self.offset + ((p * H + r0 + i) * W + c0) * size
                    if os.preadv(f.fileno(), [rows[p, i]], at) != (c1 - c0) * size:
                        raise OSError(f"image: {self.path!r} ended early (truncated .npy?)")
        return out

    def window(self, a: int, b: int, c: int, d: int) -> np.ndarray:
        """Image rows a:b and columns c:d, mirrored (np.pad's reflect) where they leave it."""
        H, W = self.shape[-2:]
        ri, ci = _mirror_index(np.arange(a, b), H), _mirror_index(np.arange(c, d), W)
        r0, r1, c0, c1 = int(ri.min()), int(ri.max()) + 1, int(ci.min()), int(ci.max()) + 1
        x = self._box(r0, r1, c0, c1)  # the box it reads from
        if x.ndim == 2:
            x = x[None]
        if r1 - r0 != b - a or a < 0:  # mirrored rows: gather them (a copy)
            x = x[:, ri - r0]
        if c1 - c0 != d - c or c < 0:
            x = x[:, :, ci - c0]
        for step in self.steps:
            x = step(x)
        return x


def _is_zarr_path(path: str) -> bool:
    p = path.rstrip("/\\")
    return p.endswith(".zarr") or os.path.isfile(os.path.join(p, ".zarray")) or os.path.isfile(
        os.path.join(p, "zarr.json"))


def _open_image(image: Any, model: Any, tile: Any) -> tuple[Any, _FileImage | None]:
    """A dask array for an image given as a dask array, an array or a file path, chunked on the
    output-tile grid of ``model`` (files are read block by block, never whole), and for a file
    its reader (whose blocks then read their own windows)."""
    da = _import_dask()
    reader = None
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.lower().endswith(".npy"):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image: no such file {path!r}")
            try:
                reader = _FileImage(path, "npy")
            except ValueError as e:
                raise ValueError(f"image: cannot memory-map {path!r}: {e}") from None
        elif _is_zarr_path(path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"image: no such zarr array {path!r}")
            try:
                reader = _FileImage(path, "zarr")
            except ImportError as e:
                raise ImportError(f"reading zarr needs zarr: {_DASK_HINT} ({e})") from None
            except Exception as e:  # noqa: BLE001 - a group, a broken store: one message
                raise ValueError(f"image: {path!r} is not a zarr array "
                                 f"({type(e).__name__}: {e})") from None
        else:
            raise ValueError(f"image: a path must name a .npy file or a zarr array, got {path!r}")
        source: Any = reader
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
        return source.rechunk(chunks), None
    if reader is not None:
        return da.from_array(reader, chunks=chunks, asarray=True, fancy=False, lock=False,
                             name=f"{reader.kind}-{reader.path}-{reader.mtime}"), reader
    return da.from_array(source, chunks=chunks), None


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
    activations per pass; :func:`~minisegnet.models.unet.tile_plan`).

    Returns, lazily, ``output="labels"``: (H, W) class ids (uint8 up to 256 classes);
    ``"probabilities"``: (K, H, W) float32 softmax; ``"logits"``: (K, H, W) raw scores.
    Blocks are runs of output tiles on the 2^depth grid, each read with the context its tiles
    need, mirrored at the border exactly as ``predict_tiled`` mirrors, and each tile is the
    forward pass ``predict_tiled`` runs for it, so the result equals ``predict_tiled``'s
    (softmax/argmax of its logits) up to float rounding (bitwise in our tests). An image smaller
    than one tile is mirrored as ``predict_tiled`` mirrors it (one block).

    Memory: for a ``.npy`` or zarr path each block is one tile that reads its own window from
    the file, so a worker holds the model and the tiles it is running, whatever the image's size
    (benchmarks/RESULTS_inference.md). An image already in memory (a dask or NumPy array) is
    tiled with ``dask.array.map_overlap``, whose overlap strips keep neighbouring blocks alive:
    there a worker's memory grows with the image's width. Save a large image to zarr or ``.npy``
    first.

    The model travels once per worker, not per block: it is one key of the graph (a
    :class:`ModelSpec` with the weights), and blocks depend on a small :class:`ModelHandle` of
    it. Dask's threads share the caller's model; ``dask.distributed`` sends the weights to each
    worker once; Dask's local process pool, which pickles a task's inputs with every task,
    sends each block the handle (a few hundred bytes) and each process reads the weights from
    a temporary file once. Compute with any scheduler, or stream to disk without gathering::

        labels = predict_dask("runs/unet-nuclei/best.npz", "big.zarr")
        labels.to_zarr("labels.zarr")                       # threads, or the active Client
        labels.compute(scheduler="processes")               # a local process pool

    Needs ``pip install 'minisegnet[dask]'``.
    """
    _import_dask()
    if output not in ("labels", "probabilities", "logits"):
        raise ValueError(f"output: must be 'labels', 'probabilities' or 'logits', got {output!r}")
    spec = _spec_of(model_or_checkpoint)
    x, reader = _open_image(image, spec.model(), tile)
    return _predict(spec, x, reader, tile, output)


def _spec_of(model_or_checkpoint: Any) -> ModelSpec:
    if isinstance(model_or_checkpoint, ModelSpec):
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        from .training import model_from_checkpoint

        model_or_checkpoint, _ = model_from_checkpoint(os.fspath(model_or_checkpoint))
    return ModelSpec(model_or_checkpoint)


def _predict(spec: ModelSpec, x: Any, reader: _FileImage | None, tile: Any, output: str) -> Any:
    """predict_dask's graph for the dask array ``x`` (the network's input): blocks that read
    their windows from ``reader`` (a file giving the same values as ``x``) or map_overlap."""
    da = _import_dask()
    import dask
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if "distributed" in sys.modules:
        _register_distributed()
    model = spec.model()
    x = _checked_image(x, model)
    C, H, W = (int(s) for s in x.shape)
    th, tw = tile_sizes(model, H, W, tile)
    direct = reader is not None
    rows, cols = _axis_plan(model, H, th, direct), _axis_plan(model, W, tw, direct)

    K = model.num_classes
    dtype = np.dtype(next(iter(model.parameters())).dtype)
    if output == "labels":
        out_dtype, chunks = _label_dtype(K), (rows.output_chunks(), cols.output_chunks())
    else:
        out_dtype = np.dtype(np.float32) if output == "probabilities" else dtype
        chunks = ((K,), rows.output_chunks(), cols.output_chunks())
    meta = np.empty((0,) * len(chunks), out_dtype)
    weights = dask.delayed(spec, name=f"minisegnet-weights-{spec.token}", pure=True)
    handle = dask.delayed(_handle_of, pure=True)(
        weights, dask_key_name=f"minisegnet-model-{spec.token}")
    if direct:
        token = tokenize(spec.token, reader.path, reader.mtime, reader.steps, rows, cols, output)
        name = f"predict-dask-{token}"
        lead = () if output == "labels" else (0,)
        row_runs, col_runs = [rows.run(i) for i in range(len(rows.cores))], [
            cols.run(j) for j in range(len(cols.cores))]
        dsk = {(name, *lead, i, j): (_predict_file_block, reader, handle.key, r, c, output)
               for i, r in enumerate(row_runs) for j, c in enumerate(col_runs)}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[handle])
        result = da.Array(graph, name, chunks=chunks, dtype=out_dtype, meta=meta)
    else:
        x = x.rechunk((C, rows.output_chunks(), cols.output_chunks()))
        src = _mirror_extend(x, 1, rows.pad_before, rows.pad_after)
        src = _mirror_extend(src, 2, cols.pad_before, cols.pad_after)
        src = src.rechunk((C, rows.source_chunks(), cols.source_chunks()))
        name = f"predict-dask-{tokenize(spec.token, src.name, rows, cols, output)}"
        result = da.map_overlap(
            partial(_predict_overlap_block, rows=rows, cols=cols, output=output), src,
            depth={0: 0, 1: rows.overlap(), 2: cols.overlap()}, boundary="none", trim=False,
            allow_rechunk=False, chunks=chunks, dtype=out_dtype, meta=meta, name=name,
            spec=handle, **({"drop_axis": 0} if output == "labels" else {}),
        )
    # zarr needs equal chunks but the last: a last block longer than the others is split again.
    if not all(_regular(c) for c in result.chunks):
        result = result.rechunk(tuple(c[0] for c in result.chunks))
    return result


def _regular(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


@dataclass(frozen=True)
class _Normalize:
    """:func:`minisegnet.data.normalize`'s arithmetic with its bounds fixed: the same NumPy
    operations on a dask block or on a window a block reads from a file (float64, then float32).
    """

    lo: float
    hi: float
    clip: bool
    scale: float | None = None  # integer images under "range": divided by their dtype's max

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xf = x.astype(np.float64)
        if self.scale is not None:
            xf = xf / self.scale
        xf = (xf - self.lo) / max(self.hi - self.lo, 1e-12)
        if self.clip:
            xf = xf.clip(0.0, 1.0)
        return xf.astype(np.float32)


def _normalization(x: Any, normalization: dict[str, Any], max_samples: int) -> _Normalize:
    if not isinstance(normalization, dict) or "method" not in normalization:
        raise TypeError(f"normalization: expected a dict with a 'method', got {normalization!r}")
    method, clip = normalization["method"], bool(normalization.get("clip", True))
    if method == "percentile":
        s = max(1, math.ceil(math.sqrt(x.size / max_samples)))
        sample = np.asarray(x[:, ::s, ::s].compute()).astype(np.float64)
        lo, hi = np.percentile(sample, [normalization["low"], normalization["high"]])
        return _Normalize(float(lo), float(hi), clip)
    if method == "range":
        scale = float(np.iinfo(x.dtype).max) if x.dtype.kind in "iu" else None
        return _Normalize(normalization["low"], normalization["high"], clip, scale)
    raise ValueError(f"normalization: unknown method {method!r} (expected 'percentile' or "
                     f"'range')")


def normalize_lazy(x: Any, normalization: dict[str, Any], max_samples: int = 1 << 24) -> Any:
    """:func:`minisegnet.data.normalize` for a (C, H, W) dask array, lazily except for the
    percentiles: ``"range"`` is elementwise (exact); ``"percentile"`` takes the image's
    percentiles from every pixel up to ``max_samples`` pixels (then identical to ``normalize``)
    and from an even strided subsample of about that many beyond (computed now, with the
    scheduler in use)."""
    return x.map_blocks(_normalization(x, normalization, max_samples), dtype=np.float32)


def predict_to_zarr(checkpoint: str, image: Any, out: str, scheduler: str | None = None,
                    tile: Any = None, progress: bool = False, connect_timeout: float | None = None,
                    ) -> tuple[int, int]:
    """``minisegnet predict --scheduler ...``: labels of one raw image written to the zarr array
    ``out`` block by block, never gathered. The image (a ``.npy``/zarr path or an array) is
    normalised as the checkpoint's training data was (:func:`normalize_lazy`; for a file, each
    block normalises the window it reads); a colour image for a one-channel model is averaged
    over its first three channels, as the in-memory path does.

    ``scheduler``: None or "threads" (Dask's threads), "processes" (a local process pool), or a
    ``dask.distributed`` scheduler address ("tcp://host:8786"; connecting gives up after
    ``connect_timeout`` seconds, Dask's ``distributed.comm.timeouts.connect`` when None; its
    workers must see ``out`` and the image path). ``progress``: a bar over the blocks (Dask's
    ``ProgressBar`` locally, ``distributed.progress`` on a cluster). Returns (H, W)."""
    import dask

    _import_dask()
    from .training import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint)
    spec = ModelSpec(model)
    x, reader = _open_image(image, model, tile)
    if x.ndim == 2:
        x = x[None]
    steps: tuple[Any, ...] = ()
    if x.ndim == 3 and model.in_channels == 1 and x.shape[0] in (3, 4):
        x = x[:3].map_blocks(_grey, chunks=((1,), *x.chunks[1:]), dtype=np.float64)
        steps = (_grey,)  # colour picture, grey model
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
            norm = _normalization(x, meta["normalization"], 1 << 24)
            x = x.map_blocks(norm, dtype=np.float32)
            reader = reader.with_steps(*steps, norm) if reader is not None else None
            labels = _predict(spec, x, reader, tile, "labels")
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
