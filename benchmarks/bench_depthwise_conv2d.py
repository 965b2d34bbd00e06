"""depthwise conv2d: ``F.conv2d(x, w, b, groups=C)`` with w (C, 1, 3, 3), the building block of
separable convolutions (DeepLabv3+'s Xception/MobileNet backbones).

minisegnet dispatches it to a direct depthwise kernel (``kernels/depthwise_conv2d.py``) rather
than im2col; the "numpy" implementation is that kernel's vectorised form (one multiply-add per
tap over strided views). PyTorch's peer is ``torch.nn.functional.conv2d(..., groups=C)``.
Work: ``2 * N * C * KH * KW * OH * OW`` FLOPs forward, 3x for fwd+bwd (a memory-bound op: its
fraction of the GEMM ceiling is expected to be small).

Run alone: ``python benchmarks/bench_depthwise_conv2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_conv2d import conv2d_case
from benchmarks.common import Case, Results, geomean

OP = "depthwise_conv2d"

# (N, C, H = W) of the stride-1 3x3 fwd+bwd cases whose geomean ratio to PyTorch is reported
SHAPES = ((8, 64, 128), (1, 64, 128), (8, 128, 64), (8, 256, 32))


def dw(variant: str, N: int, C: int, HW: int, **kw: Any) -> Case:
    return conv2d_case(OP, variant, N, C, C, HW, HW, 3, groups=C, **kw)


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            dw("3x3", 2, 4, 8, padding=1),
            dw("3x3", 1, 4, 8, padding=1, mode="fwd"),
            dw("3x3-s2", 2, 4, 9, stride=2, padding=1),
            dw("3x3-d2", 1, 4, 8, padding=2, dilation=2),
        ]
    out = [dw("3x3", 1, 4, 12, padding=1)]  # the reference finishes here
    out += [dw("3x3", N, C, HW, padding=1, tags={"target": "depthwise"}) for N, C, HW in SHAPES]
    out.append(dw("3x3", 8, 64, 128, padding=1, mode="fwd"))
    out.append(dw("3x3-s2", 8, 64, 128, stride=2, padding=1))
    out.append(dw("3x3-d6", 8, 128, 64, padding=6, dilation=6))
    return out


def targets(res: Results) -> list[dict[str, Any]]:
    out = []
    pairs = [("numba", "torch", "CPU")]
    if any(r.impl == "cuda" and r.status == "ok" for r in res.rows):
        pairs.append(("cuda", "torch-cuda", "GPU"))
    for ours, peer, dev in pairs:
        names = [f"{OP}/3x3/{N}x{C}x{HW}x{HW}->{C}/fwd+bwd" for N, C, HW in SHAPES]
        ratios = {}
        for nm in names:
            a, b = res.time(nm, ours), res.time(nm, peer)
            if a and b:
                ratios[nm] = a / b
        g = geomean(list(ratios.values()))
        # The issue: "depthwise 3x3 forward+backward faster than PyTorch's default (NCHW) layout".
        out.append(dict(
            op=OP, device=dev,
            what=f"depthwise 3x3 fwd+bwd f32: geomean t_{ours} / t_{peer} over {len(names)} shapes "
                 f"(faster than PyTorch's NCHW conv2d(groups=C))",
            goal="< 1", value=g, measured=f"{g:.2f}" if g else "not measured",
            met=None if g is None or len(ratios) < len(names) else g < 1.0,
            detail=", ".join(f"{k.split('/')[2]}: {v:.2f}" for k, v in ratios.items()),
        ))
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
