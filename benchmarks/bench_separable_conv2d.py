"""depthwise-separable conv2d: a depthwise 3x3 ``F.conv2d(x, wd, groups=C)`` followed by a 1x1
``F.conv2d(., wp, b)``, exactly what ``nn.SeparableConv2d`` computes (DeepLabv3+'s ASPP and decoder).

PyTorch's peer is the same two ``torch.nn.functional.conv2d`` calls. Work: the depthwise FLOPs
``2 * N * C * 9 * OH * OW`` plus the pointwise ``2 * N * C * O * OH * OW``, 3x for fwd+bwd.

Run alone: ``python benchmarks/bench_separable_conv2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.bench_conv2d import conv_out
from benchmarks.common import Case, FunctionalCase

OP = "separable_conv2d"


def separable_case(N: int, C: int, O: int, HW: int, *, dilation: int = 1, stride: int = 1,
                   mode: str = "fwd+bwd", with_small: bool = True) -> FunctionalCase:
    k, pad = 3, dilation
    OH = conv_out(HW, k, stride, pad, dilation)
    variant = "3x3" + (f"-d{dilation}" if dilation > 1 else "") + (f"-s{stride}" if stride > 1 else "")
    name = f"{OP}/{variant}/{N}x{C}x{HW}x{HW}->{O}/{mode}"
    macs = N * C * k * k * OH * OH + N * C * O * OH * OH
    passes = 3 if mode == "fwd+bwd" else 1

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "x": rng.standard_normal((N, C, HW, HW)).astype(np.float32),           # (N, C, H, W)
            "wd": (rng.standard_normal((C, 1, k, k)) / 3.0).astype(np.float32),    # depthwise
            "wp": (rng.standard_normal((O, C, 1, 1)) / np.sqrt(C)).astype(np.float32),  # pointwise
            "b": rng.standard_normal(O).astype(np.float32),
        }

    def msn(F: Any, x: Any, wd: Any, wp: Any, b: Any) -> Any:
        h = F.conv2d(x, wd, None, stride=stride, padding=pad, dilation=dilation, groups=C)
        return F.conv2d(h, wp, b)

    def torch(tF: Any, x: Any, wd: Any, wp: Any, b: Any) -> Any:
        h = tF.conv2d(x, wd, None, stride=stride, padding=pad, dilation=dilation, groups=C)
        return tF.conv2d(h, wp, b)

    def small() -> Case:
        return separable_case(1, 3, 4, max(9, 2 * dilation + 1 - 2 * pad), dilation=dilation,
                              stride=stride, mode=mode, with_small=False)

    return FunctionalCase(
        OP, name, mode=mode, kind="flop", work=2.0 * macs * passes, inputs=inputs, msn=msn,
        torch=torch, grad=("x", "wd", "wp", "b"), needs=("conv2d",), ref_cost=float(macs * passes),
        small=small if with_small else None,
        tags=dict(N=N, C=C, O=O, H=HW, W=HW, dilation=dilation, stride=stride),
    )


def cases(quick: bool) -> list[Case]:
    if quick:
        return [separable_case(2, 4, 6, 8), separable_case(1, 4, 4, 8, dilation=6, mode="fwd")]
    return [
        separable_case(1, 4, 4, 12),  # the reference finishes here
        separable_case(8, 64, 128, 64),
        separable_case(8, 128, 128, 64, mode="fwd"),
        separable_case(8, 128, 128, 64),
        separable_case(8, 256, 256, 32, dilation=12),  # an ASPP branch at output stride 16
    ]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
