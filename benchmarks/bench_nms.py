"""nms: greedy non-maximum suppression of detection boxes.

``F.nms(boxes, scores, iou_threshold)`` with boxes (K, 4) xyxy, clustered around a few centres so
that suppression really happens, random scores; returns the kept indices (compared exactly).
PyTorch's peer is ``torchvision.ops.nms``, only when installed. Work: boxes per second (forward
only: NMS has no gradient).

Run alone: ``python benchmarks/bench_nms.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase

OP = "nms"


def nms_case(K: int, iou: float, with_small: bool = True) -> FunctionalCase:
    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        centres = rng.uniform(50, 750, size=(max(1, K // 20), 2))
        c = centres[rng.integers(0, len(centres), size=K)] + rng.normal(0, 8, size=(K, 2))
        wh = rng.uniform(20, 120, size=(K, 2))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)  # (K, 4)
        return {"boxes": boxes, "scores": rng.permutation(K).astype(np.float32) / K}  # distinct

    def small() -> Case:
        return nms_case(60, iou, with_small=False)

    return FunctionalCase(
        OP, f"{OP}/iou{iou}/K{K}/fwd", mode="fwd", kind="samples", work=float(K), inputs=inputs,
        msn=lambda F, boxes, scores: F.nms(boxes, scores, iou),
        torch=lambda ops, boxes, scores: ops.nms(boxes, scores, iou), grad=(), needs=("nms",),
        ref_cost=float(K * K / 2), small=small if with_small else None, torch_needs="torchvision",
        rate_unit="boxes", tags=dict(K=K, iou=iou),
    )


def cases(quick: bool) -> list[Case]:
    if quick:
        return [nms_case(50, 0.5), nms_case(200, 0.7)]
    return [nms_case(200, 0.5), nms_case(1000, 0.7), nms_case(4000, 0.5), nms_case(4000, 0.7)]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
