"""roi_pool: Fast R-CNN's quantized RoIPool, on the same feature map and boxes as bench_roi_align.

``F.roi_pool(x, boxes, output_size, spatial_scale=1/16)`` on x (1, 256, 50, 50) with 256 random
boxes, 7x7 and 14x14. PyTorch's peer is ``torchvision.ops.roi_pool``, only when installed.
Work: output bins (``K * C * PH * PW`` per pass), reported as bins/s.

Run alone: ``python benchmarks/bench_roi_pool.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_roi_align import TARGET, roi_case
from benchmarks.common import Case

OP = "roi_pool"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [roi_case(2, 3, 12, 6, 7, pool=True), roi_case(1, 3, 12, 4, 14, mode="fwd", pool=True)]
    N, C, HW, K = TARGET
    return [
        roi_case(1, 4, 12, 4, 7, pool=True),  # the reference finishes here
        roi_case(N, C, HW, K, 7, pool=True),
        roi_case(N, C, HW, K, 14, pool=True),
    ]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
