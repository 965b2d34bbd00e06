"""One seedable random source per backend (dropout, initialisation, shuffling)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

_generators: dict[str, Any] = {"numpy": np.random.default_rng()}


def manual_seed(seed: int) -> None:
    """Seed minisegnet's random generators (NumPy, and CuPy when it is in use)."""
    _generators["numpy"] = np.random.default_rng(seed)
    _generators.pop("cupy", None)
    _generators["seed"] = seed


def rng_for(xp: ModuleType) -> Any:
    """The generator for array module ``xp`` (``numpy`` or ``cupy``)."""
    if xp is np:
        return _generators["numpy"]
    if "cupy" not in _generators:
        _generators["cupy"] = xp.random.default_rng(_generators.get("seed"))
    return _generators["cupy"]


def default_rng() -> np.random.Generator:
    """The NumPy generator behind parameter initialisation."""
    return _generators["numpy"]
