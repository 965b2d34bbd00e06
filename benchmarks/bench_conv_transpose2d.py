"""conv_transpose2d: the learned upsamplings of U-Net (k2 s2) and FCN (k4 s2 p1), and k3 s2 p1
with output_padding 1. ``F.conv_transpose2d(x, w, b, stride, padding, output_padding)`` with
w (C_in, O, k, k); PyTorch's peer is ``torch.nn.functional.conv_transpose2d``.

Work: every input pixel meets every weight once, ``2 * N * C_in * O * KH * KW * H * W`` FLOPs
forward (the conv2d it is the adjoint of), 3x for fwd+bwd.

Run alone: ``python benchmarks/bench_conv_transpose2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase

OP = "conv_transpose2d"


def convT_case(variant: str, N: int, C: int, O: int, HW: int, k: int, stride: int, padding: int = 0,
               output_padding: int = 0, mode: str = "fwd+bwd", with_small: bool = True) -> FunctionalCase:
    name = f"{OP}/{variant}/{N}x{C}x{HW}x{HW}->{O}/{mode}"
    macs = N * C * O * k * k * HW * HW
    passes = 3 if mode == "fwd+bwd" else 1
    kw = dict(stride=stride, padding=padding, output_padding=output_padding)

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "x": rng.standard_normal((N, C, HW, HW)).astype(np.float32),  # (N, C_in, H, W)
            "w": (rng.standard_normal((C, O, k, k)) / np.sqrt(C * k * k)).astype(np.float32),
            "b": rng.standard_normal(O).astype(np.float32),
        }

    def msn(F: Any, x: Any, w: Any, b: Any) -> Any:
        return F.conv_transpose2d(x, w, b, **kw)

    def torch(tF: Any, x: Any, w: Any, b: Any) -> Any:
        return tF.conv_transpose2d(x, w, b, **kw)

    def small() -> Case:
        return convT_case(variant, 1, 3, 4, 5, k, stride, padding, output_padding, mode, with_small=False)

    return FunctionalCase(
        OP, name, mode=mode, kind="flop", work=2.0 * macs * passes, inputs=inputs, msn=msn,
        torch=torch, grad=("x", "w", "b"), needs=("conv_transpose2d",), ref_cost=float(macs * passes),
        small=small if with_small else None,
        tags=dict(N=N, C=C, O=O, H=HW, W=HW, k=k, stride=stride, padding=padding,
                  output_padding=output_padding),
    )


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            convT_case("k2s2", 2, 4, 3, 6, 2, 2),
            convT_case("k4s2p1", 1, 4, 4, 6, 4, 2, 1),
            convT_case("k3s2p1op1", 1, 3, 4, 5, 3, 2, 1, 1, mode="fwd"),
        ]
    return [
        convT_case("k2s2", 1, 4, 4, 8, 2, 2),  # the reference finishes here
        convT_case("k2s2", 8, 64, 32, 64, 2, 2),  # U-Net's last up-convolution
        convT_case("k2s2", 8, 128, 64, 32, 2, 2),
        convT_case("k2s2", 8, 64, 32, 64, 2, 2, mode="fwd"),
        convT_case("k4s2p1", 8, 64, 64, 64, 4, 2, 1),
        convT_case("k4s2p1", 8, 21, 21, 64, 4, 2, 1),  # FCN's score upsampling (21 classes)
        convT_case("k3s2p1op1", 8, 64, 32, 64, 3, 2, 1, 1),
    ]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
