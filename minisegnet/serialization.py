"""Checkpoints as ``.npz`` files: ``msn.save(model_or_state_dict, path)`` and ``msn.load(path)``.

A checkpoint is a flat mapping of dotted names to NumPy arrays, stored with ``numpy.lib.format``
inside a zip (exactly what ``np.savez`` writes, so ``np.load`` reads it too, without pickle).
Writing is atomic: the file is written beside its destination under a temporary name, flushed
to disk, then renamed over ``path`` with ``os.replace``, so an interrupted save never leaves a
truncated checkpoint behind.

    msn.save(model, "ckpt.npz")
    model.load_state_dict(msn.load("ckpt.npz"))      # rejects missing keys or wrong shapes
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
import zlib
from typing import Any

import numpy as np

from .backend import to_numpy
from .tensor import Tensor

__all__ = ["save", "load"]


def _flatten(obj: dict[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if not isinstance(key, (str, int)):
            raise TypeError(
                f"obj: keys must be strings (or ints), got {key!r} of type {type(key).__name__}"
            )
        if isinstance(value, dict):
            _flatten(value, name + ".", out)
            continue
        if isinstance(value, Tensor):
            value = value.data
        arr = to_numpy(value) if hasattr(value, "shape") else np.asarray(value)
        if arr.dtype == object:
            raise TypeError(
                f"obj: the value at {name!r} ({type(value).__name__}) is not an array, number or "
                "string; checkpoints hold arrays only"
            )
        if name in out:
            raise ValueError(f"obj: the name {name!r} occurs twice after flattening nested dicts")
        out[name] = arr


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` to ``path`` (exactly that name; ``.npz`` is the convention) atomically.

    ``obj`` is a Module (its ``state_dict()`` is saved) or a dict of name -> array / Tensor /
    number; nested dicts are flattened with dots (``{"model": {"w": a}}`` -> ``"model.w"``).
    """
    from .nn.module import Module  # local: nn imports functional, which we do not need here

    if isinstance(obj, Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise TypeError(f"obj: save takes a Module or a dict of arrays, got {type(obj).__name__}")
    flat: dict[str, np.ndarray] = {}
    _flatten(obj, "", flat)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # What np.savez does, minus its keyword-argument API (a key named "file" would clash).
            with zipfile.ZipFile(
                f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
            ) as zf:
                for name, arr in flat.items():
                    with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it normal permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
               pickle.UnpicklingError)  # what NumPy and zipfile raise on a damaged or foreign file


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint written by :func:`save`: a dict of dotted name -> NumPy array, in order.

    No pickle is involved (``allow_pickle=False``): loading an untrusted file runs no code. A file
    that is not such a checkpoint (truncated, corrupt, not a zip of ``.npy`` arrays, or holding
    pickled objects) is a ValueError naming the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no checkpoint at {path!r}")

    def not_a_checkpoint(reason: str | BaseException, entry: str = "") -> ValueError:
        if isinstance(reason, BaseException):
            if isinstance(reason, ValueError) and "pickle" in str(reason):
                reason = ("it holds pickled Python objects, which are never loaded "
                          "(they can run code)")
            else:
                reason = f"{type(reason).__name__}: {reason}"
        if entry:
            reason = f"entry {entry!r}: {reason}"
        return ValueError(f"path: {path!r} is not a minisegnet checkpoint (an .npz of arrays "
                          f"written by msn.save): {reason}")

    try:
        z = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError):
        raise
    except _UNREADABLE as e:
        raise not_a_checkpoint(e) from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise not_a_checkpoint(f"it holds a single {type(z).__name__}, not a zip of named arrays")
    out: dict[str, np.ndarray] = {}
    with z:
        for name in z.files:
            try:
                value = z[name]
            except _UNREADABLE as e:
                raise not_a_checkpoint(e, name) from e
            if not isinstance(value, np.ndarray):
                raise not_a_checkpoint("not a .npy array", name)
            out[name] = value
    return out
