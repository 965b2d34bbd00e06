"""Checkpoints: bit-exact round trips, atomic writes, and clear errors on mismatched models."""

from __future__ import annotations

import os

import numpy as np
import pytest

import minisegnet as msn
import minisegnet.nn as nn
from minisegnet import Tensor


def make_model():
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def test_module_round_trip_is_bit_exact(tmp_path):
    msn.manual_seed(0)
    model = make_model()
    model(
        Tensor(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    )  # moves BN stats
    path = tmp_path / "model.npz"
    msn.save(model, path)
    loaded = msn.load(path)
    sd = model.state_dict()
    assert list(loaded) == list(sd)
    for k in sd:
        assert loaded[k].dtype == sd[k].dtype and loaded[k].shape == sd[k].shape, k
        assert loaded[k].tobytes() == sd[k].tobytes(), k  # bit for bit
    msn.manual_seed(1)
    other = make_model()
    other.load_state_dict(loaded)
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32))
    np.testing.assert_array_equal(other.eval()(x).numpy(), model.eval()(x).numpy())
    # the file is a plain .npz: NumPy reads it without pickle
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(sd)


def test_dicts_are_flattened_with_dots(tmp_path):
    obj = {
        "model": {
            "w": np.arange(6, dtype=np.float64).reshape(2, 3),
            "b": Tensor(np.ones(2, np.float32)),
        },
        "step": 17,
        "lr": 0.5,
        "file": np.zeros(1),  # a name np.savez's keyword API could not take
        "name": "unet",
        "scalar": np.float32(2.5),
    }
    path = str(tmp_path / "ckpt.npz")
    msn.save(obj, path)
    d = msn.load(path)
    assert list(d) == ["model.w", "model.b", "step", "lr", "file", "name", "scalar"]
    np.testing.assert_array_equal(d["model.w"], obj["model"]["w"])
    assert d["model.b"].dtype == np.float32 and d["step"] == 17 and d["lr"] == 0.5
    assert str(d["name"]) == "unet" and d["scalar"].shape == () and d["scalar"].dtype == np.float32


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    msn.save({"a": np.ones(3)}, path)
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind

    calls = {"n": 0}
    real = np.lib.format.write_array

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        msn.save({"a": np.zeros(3), "b": np.zeros(2)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    np.testing.assert_array_equal(msn.load(path)["a"], np.ones(3))  # the old checkpoint survives


def test_loading_into_a_different_model_names_key_and_shapes(tmp_path):
    path = tmp_path / "small.npz"
    msn.save(nn.Sequential(nn.Linear(3, 5)), path)
    with pytest.raises(
        ValueError, match=r"'0.weight'.*checkpoint has \(5, 3\).*model has \(4, 3\)"
    ):
        nn.Sequential(nn.Linear(3, 4)).load_state_dict(msn.load(path))
    with pytest.raises(ValueError, match=r"missing keys \['1.weight', '1.bias'\]"):
        nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 1)).load_state_dict(msn.load(path))


def test_save_load_bad_input(tmp_path):
    with pytest.raises(TypeError, match="obj: save takes a Module or a dict"):
        msn.save([np.ones(2)], tmp_path / "x.npz")
    with pytest.raises(TypeError, match="'bad'"):
        msn.save({"bad": object()}, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="'a.b' occurs twice"):
        msn.save({"a.b": np.ones(1), "a": {"b": np.ones(1)}}, tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="path"):
        msn.load(tmp_path / "missing.npz")
    assert os.listdir(tmp_path) == []


def _truncated(path, good):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bit_flipped(path, good):
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the stored (uncompressed) array data: a CRC mismatch
    path.write_bytes(bytes(data))


def _pickled_object(path, good):
    np.savez(path, w=np.ones(3), meta=np.array([{"run": 1}], dtype=object))  # pickles "meta"


def _single_array(path, good):
    with open(path, "wb") as f:
        np.save(f, np.ones(3))


def _not_an_array(path, good):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")


CORRUPT = {
    "truncated": _truncated, "bit flipped": _bit_flipped, "pickled object": _pickled_object,
    "single .npy": _single_array, "zip of text": _not_an_array,
    "empty": lambda path, good: path.write_bytes(b""),
    "text": lambda path, good: path.write_text("not a checkpoint\n"),
    "pickle": lambda path, good: path.write_bytes(__import__("pickle").dumps({"w": [1.0]})),
}


@pytest.mark.parametrize("damage", list(CORRUPT), ids=list(CORRUPT))
def test_a_damaged_or_foreign_file_is_a_value_error_naming_it(tmp_path, damage):
    good = tmp_path / "good.npz"
    msn.save({"w": np.arange(4096.0), "b": np.ones(3)}, good)
    path = tmp_path / "bad.npz"
    CORRUPT[damage](path, good)
    with pytest.raises(ValueError, match="not a minisegnet checkpoint") as info:
        msn.load(path)
    assert str(path) in str(info.value)
    assert "allow_pickle" not in str(info.value)  # our words, not NumPy's
