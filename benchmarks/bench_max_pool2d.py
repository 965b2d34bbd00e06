"""max_pool2d with indices, and max_unpool2d with those indices (SegNet's decoder).

Cases: 2x2 stride 2 with ``return_indices=True`` alone; 3x3 stride 2 padding 1; and the chain
``y, idx = F.max_pool2d(x, 2, 2, return_indices=True); F.max_unpool2d(y, idx, 2, 2)`` (the issue's
target at N=8, C=64, 128x128, forward and forward+backward). PyTorch's peers are
``torch.nn.functional.max_pool2d(..., return_indices=True)`` and ``max_unpool2d``; indices are
compared exactly.

Work (memory-bound: bytes the op must move once; S input elements, s pooled elements, float32
values, int64 indices): pool forward reads x and writes y and idx (``4S + 12s``), its backward
reads gy and idx and writes gx (``12s + 4S``); unpool forward reads y and idx and writes the
full-size output (``12s + 4S``), its backward reads the output gradient and idx and writes gy
(``4S + 12s``).

Run alone: ``python benchmarks/bench_max_pool2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase, Results

OP = "max_pool2d"
TARGET = (8, 64, 128)  # N, C, H = W of the pool + unpool target


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - (k - 1) - 1) // s + 1


def pool_case(variant: str, N: int, C: int, HW: int, k: int, s: int, p: int = 0, *,
              unpool: bool = False, indices: bool = True, mode: str = "fwd+bwd",
              with_small: bool = True, tags: dict[str, Any] | None = None) -> FunctionalCase:
    OH = _out(HW, k, s, p)
    S, so = N * C * HW * HW, N * C * OH * OH
    pool_f, pool_b = 4 * S + 4 * so + (8 * so if indices or mode == "fwd+bwd" else 0), 12 * so + 4 * S
    unpool_f, unpool_b = 12 * so + 4 * S, 4 * S + 12 * so
    work = pool_f + (unpool_f if unpool else 0)
    if mode == "fwd+bwd":
        work += pool_b + (unpool_b if unpool else 0)
    chain = "+unpool" if unpool else ""
    name = f"{OP}/{variant}{chain}/{N}x{C}x{HW}x{HW}/{mode}"

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((N, C, HW, HW)).astype(np.float32)}  # (N, C, H, W)

    def msn(F: Any, x: Any) -> Any:
        if not (indices or unpool):
            return F.max_pool2d(x, k, s, p)
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        if not unpool:
            return y, idx
        return F.max_unpool2d(y, idx, k, s, p, output_size=(HW, HW)), y, idx

    def torch(tF: Any, x: Any) -> Any:
        if not (indices or unpool):
            return tF.max_pool2d(x, k, s, p)
        y, idx = tF.max_pool2d(x, k, s, p, return_indices=True)
        if not unpool:
            return y, idx
        return tF.max_unpool2d(y, idx, k, s, p, output_size=(HW, HW)), y, idx

    def small() -> Case:
        return pool_case(variant, 1, 3, 9 if s == 2 and p else 8, k, s, p, unpool=unpool,
                         indices=indices, mode=mode, with_small=False)

    ref_cost = N * C * OH * OH * k * k * (2 if mode == "fwd+bwd" else 1) + (S if unpool else 0)
    return FunctionalCase(
        OP, name, mode=mode, kind="mem", work=work, inputs=inputs, msn=msn, torch=torch, grad=("x",),
        needs=("max_pool2d", "max_unpool2d") if unpool else ("max_pool2d",), ref_cost=ref_cost,
        small=small if with_small else None, tags=dict(tags or {}, N=N, C=C, H=HW, k=k, s=s, p=p),
    )


def target_name(mode: str) -> str:
    N, C, HW = TARGET
    return f"{OP}/k2s2+unpool/{N}x{C}x{HW}x{HW}/{mode}"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            pool_case("k2s2", 2, 3, 8, 2, 2),
            pool_case("k3s2p1", 1, 3, 9, 3, 2, 1, indices=False),
            pool_case("k2s2", 2, 3, 8, 2, 2, unpool=True, mode="fwd"),
            pool_case("k2s2", 2, 3, 8, 2, 2, unpool=True),
        ]
    N, C, HW = TARGET
    return [
        pool_case("k2s2", 1, 4, 16, 2, 2, unpool=True),  # the reference finishes here
        pool_case("k2s2", N, C, HW, 2, 2),
        pool_case("k3s2p1", N, C, HW, 3, 2, 1, indices=False),
        pool_case("k2s2", N, C, HW, 2, 2, unpool=True, mode="fwd", tags={"target": "pool+unpool"}),
        pool_case("k2s2", N, C, HW, 2, 2, unpool=True, tags={"target": "pool+unpool"}),
    ]


def targets(res: Results) -> list[dict[str, Any]]:
    out = []
    pairs = [("numba", "torch", "CPU")]
    if any(r.impl == "cuda" and r.status == "ok" for r in res.rows):
        pairs.append(("cuda", "torch-cuda", "GPU"))
    for ours, peer, dev in pairs:
        for mode in ("fwd", "fwd+bwd"):
            nm = target_name(mode)
            a, b = res.time(nm, ours), res.time(nm, peer)
            sp = b / a if a and b else None
            out.append(dict(
                op=OP, device=dev, what=f"max-pool 2x2 with indices + unpool, {nm.split('/')[2]}, {mode}: "
                f"speed-up of {ours} over {peer} (t_{peer} / t_{ours})",
                goal=">= 2", value=sp, measured=f"{sp:.2f}x" if sp else "not measured",
                met=None if sp is None else sp >= 2.0,
                detail=f"{a * 1e3:.2f} ms vs {b * 1e3:.2f} ms" if sp else "",
            ))
            row = res.row(nm, ours)
            frac = row.ceiling_fraction if row is not None and row.status == "ok" else None
            out.append(dict(
                op=OP, device=dev, what=f"max-pool 2x2 with indices + unpool, {mode}, {ours}: "
                "achieved bandwidth / copy bandwidth",
                goal=">= 50%", value=frac, measured=f"{100 * frac:.0f}%" if frac else "not measured",
                met=None if frac is None else frac >= 0.5,
                detail=f"{row.achieved:.1f} GB/s" if frac else "",
            ))
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
