"""batch_norm: ``F.batch_norm`` (what ``nn.BatchNorm2d`` runs), training and evaluation.

``F.batch_norm(x, running_mean, running_var, weight, bias, training)`` on (N, C, H, W) float32;
PyTorch's peer is ``torch.nn.functional.batch_norm`` with the same arguments. Training updates the
running statistics in place on both sides (the outputs do not depend on them).

Work (memory-bound), bytes the op must move at least: training forward reads x twice (statistics,
then output) and writes y; backward reads gy and x twice (the fused reductions, then gx) and
writes gx: ``4 * S * (3 + 5)`` for S elements; evaluation forward ``4 * S * 2``.

Run alone: ``python benchmarks/bench_batch_norm.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase

OP = "batch_norm"


def bn_case(N: int, C: int, HW: int, mode: str = "fwd+bwd", training: bool = True,
            with_small: bool = True) -> FunctionalCase:
    S = N * C * HW * HW
    passes = (3 + (5 if mode == "fwd+bwd" else 0)) if training else (2 + (3 if mode ==
                                                                          "fwd+bwd" else 0))
    work = 4 * S * passes
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": (rng.standard_normal((N, C, HW, HW)) * 2 + 1).astype(np.float32),
                "w": rng.standard_normal(C).astype(np.float32),
                "b": rng.standard_normal(C).astype(np.float32)}

    def small() -> Case:
        return bn_case(2, 3, 5, mode, training, with_small=False)

    def ours(F, x, w, b):
        return F.batch_norm(x, rm.copy(), rv.copy(), w, b, training)

    def theirs(tF, x, w, b):
        import torch

        return tF.batch_norm(x, torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()), w, b,
                             training)

    kind = "train" if training else "eval"
    return FunctionalCase(
        OP, f"{OP}/{kind}/{N}x{C}x{HW}x{HW}/{mode}", mode=mode, kind="mem", work=work,
        inputs=inputs, msn=ours, torch=theirs, grad=("x", "w", "b"), needs=("batch_norm",),
        ref_cost=S * 40, small=small if with_small else None,
        tags=dict(N=N, C=C, H=HW, training=training),
    )


def cases(quick: bool) -> list[Case]:
    if quick:
        return [bn_case(2, 4, 8), bn_case(2, 4, 8, "fwd", False)]
    return [bn_case(2, 3, 8),  # the reference finishes here
            bn_case(8, 64, 128), bn_case(8, 64, 128, "fwd"), bn_case(8, 64, 128, "fwd", False),
            bn_case(4, 16, 128), bn_case(4, 256, 8)]


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
