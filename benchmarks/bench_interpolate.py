"""interpolate: bilinear (align_corners False and True) and nearest upsampling, x2, x4 and to a size.

``F.interpolate(x, scale_factor=2, mode="bilinear")`` and friends; PyTorch's peer is
``torch.nn.functional.interpolate`` with the same arguments (its coordinate mapping is the one
SPEC gives). The issue's target: bilinear x2 at N=8, C=64, 128x128 within 1.2x of PyTorch.

Work (memory-bound): forward reads x and writes y, backward reads gy and writes gx:
``4 * (S_in + S_out)`` bytes each way.

Run alone: ``python benchmarks/bench_interpolate.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase, Results

OP = "interpolate"
TARGET = (8, 64, 128)


def interp_case(variant: str, N: int, C: int, HW: int, *, mode: str = "bilinear",
                scale: int | None = 2, size: int | None = None, align_corners: bool | None = None,
                run: str = "fwd+bwd", with_small: bool = True, tags: dict[str, Any] | None = None) -> FunctionalCase:
    OHW = size if size is not None else HW * scale
    S, so = N * C * HW * HW, N * C * OHW * OHW
    work = 4 * (S + so) * (2 if run == "fwd+bwd" else 1)
    kw: dict[str, Any] = dict(mode=mode)
    if size is not None:
        kw["size"] = (size, size)
    else:
        kw["scale_factor"] = scale
    if align_corners is not None:
        kw["align_corners"] = align_corners

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((N, C, HW, HW)).astype(np.float32)}  # (N, C, H, W)

    def small() -> Case:
        hs = 7
        return interp_case(variant, 1, 3, hs, mode=mode, scale=scale,
                           size=None if size is None else max(2, size * hs // HW),
                           align_corners=align_corners, run=run, with_small=False)

    return FunctionalCase(
        OP, f"{OP}/{variant}/{N}x{C}x{HW}x{HW}/{run}", mode=run, kind="mem", work=work,
        inputs=inputs, msn=lambda F, x: F.interpolate(x, **kw), torch=lambda tF, x: tF.interpolate(x, **kw),
        grad=("x",), needs=("interpolate",), ref_cost=so * 4 * (2 if run == "fwd+bwd" else 1),
        small=small if with_small else None, tags=dict(tags or {}, N=N, C=C, H=HW, out=OHW),
    )


def target_name(run: str) -> str:
    N, C, HW = TARGET
    return f"{OP}/bilinear-x2/{N}x{C}x{HW}x{HW}/{run}"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            interp_case("bilinear-x2", 2, 3, 8),
            interp_case("bilinear-x2", 1, 3, 8, run="fwd"),
            interp_case("bilinear-x2-ac", 1, 3, 8, align_corners=True),
            interp_case("bilinear-to13", 1, 3, 8, scale=None, size=13),
            interp_case("nearest-x2", 2, 3, 8, mode="nearest"),
        ]
    N, C, HW = TARGET
    return [
        interp_case("bilinear-x2", 1, 3, 16),  # the reference finishes here
        interp_case("bilinear-x2", N, C, HW, run="fwd", tags={"target": "bilinear"}),
        interp_case("bilinear-x2", N, C, HW, tags={"target": "bilinear"}),
        interp_case("bilinear-x2-ac", N, C, HW, align_corners=True),
        interp_case("bilinear-x4", N, C, 64, scale=4),  # DeepLabv3+'s decoder upsampling
        interp_case("bilinear-to200", N, C, HW, scale=None, size=200),
        interp_case("nearest-x2", N, C, HW, mode="nearest"),
    ]


def targets(res: Results) -> list[dict[str, Any]]:
    out = []
    pairs = [("numba", "torch", "CPU")]
    if any(r.impl == "cuda" and r.status == "ok" for r in res.rows):
        pairs.append(("cuda", "torch-cuda", "GPU"))
    for ours, peer, dev in pairs:
        for run in ("fwd", "fwd+bwd"):
            nm = target_name(run)
            a, b = res.time(nm, ours), res.time(nm, peer)
            r = a / b if a and b else None
            out.append(dict(
                op=OP, device=dev, what=f"bilinear x2, {nm.split('/')[2]}, {run}: t_{ours} / t_{peer}",
                goal="<= 1.2", value=r, measured=f"{r:.2f}" if r else "not measured",
                met=None if r is None else r <= 1.2,
                detail=f"{a * 1e3:.2f} ms vs {b * 1e3:.2f} ms" if r else "",
            ))
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
