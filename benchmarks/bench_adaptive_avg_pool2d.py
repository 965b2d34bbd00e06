"""adaptive_avg_pool2d (PSPNet's pyramid pooling bins 1, 2, 3, 6) and avg_pool2d 2x2.

``F.adaptive_avg_pool2d(x, o)``: bin i covers rows ``[floor(i*H/o), ceil((i+1)*H/o))``; PyTorch's
peer is ``torch.nn.functional.adaptive_avg_pool2d`` (and ``avg_pool2d``).

Work (memory-bound): forward reads x and writes y, backward reads gy and writes gx:
``4 * (S + s)`` bytes each way for S input and s output float32 elements.

Run alone: ``python benchmarks/bench_adaptive_avg_pool2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase

OP = "adaptive_avg_pool2d"


def adaptive_case(N: int, C: int, HW: int, o: int, mode: str = "fwd+bwd",
                  with_small: bool = True) -> FunctionalCase:
    S, so = N * C * HW * HW, N * C * o * o
    work = 4 * (S + so) * (2 if mode == "fwd+bwd" else 1)

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((N, C, HW, HW)).astype(np.float32)}  # (N, C, H, W)

    def small() -> Case:
        return adaptive_case(1, 3, 7 + o % 3, o, mode, with_small=False)

    return FunctionalCase(
        OP, f"{OP}/bins{o}/{N}x{C}x{HW}x{HW}/{mode}", mode=mode, kind="mem", work=work,
        inputs=inputs, msn=lambda F, x: F.adaptive_avg_pool2d(x, o),
        torch=lambda tF, x: tF.adaptive_avg_pool2d(x, o), grad=("x",),
        needs=("adaptive_avg_pool2d",), ref_cost=S * (2 if mode == "fwd+bwd" else 1) * 1.5,
        small=small if with_small else None, tags=dict(N=N, C=C, H=HW, bins=o),
    )


def avg_case(N: int, C: int, HW: int, mode: str = "fwd+bwd", with_small: bool = True) -> FunctionalCase:
    S = N * C * HW * HW
    work = 4 * (S + S // 4) * (2 if mode == "fwd+bwd" else 1)

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((N, C, HW, HW)).astype(np.float32)}

    def small() -> Case:
        return avg_case(1, 3, 8, mode, with_small=False)

    return FunctionalCase(
        OP, f"avg_pool2d/k2s2/{N}x{C}x{HW}x{HW}/{mode}", mode=mode, kind="mem", work=work,
        inputs=inputs, msn=lambda F, x: F.avg_pool2d(x, 2, 2), torch=lambda tF, x: tF.avg_pool2d(x, 2, 2),
        grad=("x",), needs=("avg_pool2d",), ref_cost=S * (2 if mode == "fwd+bwd" else 1),
        small=small if with_small else None, tags=dict(N=N, C=C, H=HW),
    )


def cases(quick: bool) -> list[Case]:
    if quick:
        return [adaptive_case(2, 3, 12, o) for o in (1, 2, 3, 6)] + [avg_case(2, 3, 8)]
    out: list[Case] = [adaptive_case(1, 4, 12, 6)]  # the reference finishes here
    out += [adaptive_case(8, 256, 60, o) for o in (1, 2, 3, 6)]
    out.append(adaptive_case(8, 256, 60, 6, mode="fwd"))
    out.append(avg_case(8, 64, 128))
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
