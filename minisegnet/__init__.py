"""minisegnet: image segmentation from scratch, down to the kernel.

    import minisegnet as msn
    from minisegnet import Tensor, no_grad
    import minisegnet.functional as F
    import minisegnet.nn as nn
"""

from . import backend
from .backend import current_impl, use_impl
from .random import manual_seed
from .tensor import (
    Function,
    Tensor,
    as_tensor,
    cat,
    enable_grad,
    is_grad_enabled,
    no_grad,
    stack,
    tensor,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavier subpackages load on first use so `import minisegnet` stays quick.
    import importlib

    if name in {"functional", "nn", "optim", "testing", "kernels", "metrics", "models", "data",
                "inference"}:
        return importlib.import_module(f".{name}", __name__)
    if name in {"save", "load"}:
        from . import serialization

        return getattr(serialization, name)
    raise AttributeError(f"module 'minisegnet' has no attribute {name!r}")


__all__ = [
    "Function", "Tensor", "as_tensor", "backend", "cat", "current_impl", "enable_grad",
    "is_grad_enabled", "manual_seed", "no_grad", "stack", "tensor", "use_impl",
]
