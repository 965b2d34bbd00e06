"""roi_align: Mask R-CNN's RoIAlign on a stride-16 feature map, 7x7 (box head) and 14x14 (mask head).

``F.roi_align(x, boxes, output_size, spatial_scale=1/16, sampling_ratio=2, aligned=True)`` on
x (1, 256, 50, 50) (an 800x800 image at stride 16) with 256 random boxes (K, 5) rows
``[0, x1, y1, x2, y2]`` in image coordinates, 32 to 400 pixels wide. Gradients flow to x only.
The issue's targets: forward + backward under 25 ms at 7x7 and under 100 ms at 14x14.
PyTorch's peer is ``torchvision.ops.roi_align``, used only when torchvision is installed.

Work: bilinear samples, ``K * C * PH * PW * sampling_ratio^2`` per pass (each reads 4 taps), so
fwd+bwd counts twice; reported as samples/s.

Run alone: ``python benchmarks/bench_roi_align.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase, Results

OP = "roi_align"
SCALE = 1.0 / 16
SAMPLING = 2
TARGET = (1, 256, 50, 256)  # N, C, H = W, K
GOALS_MS = {7: 25.0, 14: 100.0}


def random_boxes(rng: np.random.Generator, K: int, N: int, image: float, dtype: Any = np.float32) -> np.ndarray:
    """(K, 5) boxes [batch, x1, y1, x2, y2] inside an image x image picture, 1/25 to 1/2 of it wide."""
    wh = rng.uniform(image / 25, image / 2, size=(K, 2))
    xy = rng.uniform(0, 1, size=(K, 2)) * (image - wh)
    b = rng.integers(0, N, size=(K, 1))
    return np.concatenate([b, xy, xy + wh], axis=1).astype(dtype)  # (K, 5)


def roi_case(N: int, C: int, HW: int, K: int, P: int, mode: str = "fwd+bwd", *, pool: bool = False,
             with_small: bool = True, tags: dict[str, Any] | None = None) -> FunctionalCase:
    """A RoIAlign case (or RoIPool with ``pool=True``, shared with bench_roi_pool.py)."""
    op = "roi_pool" if pool else OP
    passes = 2 if mode == "fwd+bwd" else 1
    per_pass = K * C * P * P * (1 if pool else SAMPLING * SAMPLING)

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "x": rng.standard_normal((N, C, HW, HW)).astype(np.float32),  # (N, C, H, W)
            "boxes": random_boxes(rng, K, N, HW / SCALE),                # (K, 5)
        }

    if pool:
        def msn(F: Any, x: Any, boxes: Any) -> Any:
            return F.roi_pool(x, boxes, (P, P), spatial_scale=SCALE)

        def torch(ops: Any, x: Any, boxes: Any) -> Any:
            return ops.roi_pool(x, boxes, (P, P), spatial_scale=SCALE)
    else:
        def msn(F: Any, x: Any, boxes: Any) -> Any:
            return F.roi_align(x, boxes, (P, P), spatial_scale=SCALE, sampling_ratio=SAMPLING, aligned=True)

        def torch(ops: Any, x: Any, boxes: Any) -> Any:
            return ops.roi_align(x, boxes, (P, P), spatial_scale=SCALE, sampling_ratio=SAMPLING, aligned=True)

    def small() -> Case:
        return roi_case(2, 3, 12, 6, P if P <= 7 else 5, mode, pool=pool, with_small=False)

    # the reference visits every sample's 4 taps (RoIPool: every pixel of every bin, ~box area * C)
    ref_cost = per_pass * passes * (4 if not pool else 1) * (1 if not pool else max(1, HW * HW // (P * P) // 8))
    return FunctionalCase(
        op, f"{op}/{P}x{P}/{N}x{C}x{HW}x{HW}-K{K}/{mode}", mode=mode, kind="samples",
        work=float(per_pass * passes), inputs=inputs, msn=msn, torch=torch, grad=("x",),
        needs=(op,), ref_cost=float(ref_cost), small=small if with_small else None,
        torch_needs="torchvision", rate_unit="bins" if pool else "samples",
        tags=dict(tags or {}, N=N, C=C, H=HW, K=K, P=P),
    )


def target_name(P: int, mode: str = "fwd+bwd") -> str:
    N, C, HW, K = TARGET
    return f"{OP}/{P}x{P}/{N}x{C}x{HW}x{HW}-K{K}/{mode}"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [roi_case(2, 3, 12, 6, 7), roi_case(1, 3, 12, 4, 14, mode="fwd")]
    N, C, HW, K = TARGET
    return [
        roi_case(1, 4, 12, 4, 7),  # the reference finishes here
        roi_case(N, C, HW, K, 7, mode="fwd"),
        roi_case(N, C, HW, K, 7, tags={"target": "roi_align"}),
        roi_case(N, C, HW, K, 14, mode="fwd"),
        roi_case(N, C, HW, K, 14, tags={"target": "roi_align"}),
    ]


def targets(res: Results) -> list[dict[str, Any]]:
    out = []
    impls = ["numba"] + (["cuda"] if any(r.impl == "cuda" and r.status == "ok" for r in res.rows) else [])
    for impl in impls:
        for P, goal in GOALS_MS.items():
            nm = target_name(P)
            t = res.time(nm, impl)
            row = res.row(nm, impl)
            out.append(dict(
                op=OP, device="GPU" if impl == "cuda" else "CPU",
                what=f"RoIAlign fwd+bwd {nm.split('/')[2]}, {P}x{P}, sampling 2, {impl}",
                goal=f"< {goal:.0f} ms", value=t, measured=f"{t * 1e3:.1f} ms" if t else "not measured",
                met=None if t is None else t * 1e3 < goal,
                detail=f"{row.achieved / 1e6:.0f} M samples/s" if t and row and row.achieved else "",
            ))
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
