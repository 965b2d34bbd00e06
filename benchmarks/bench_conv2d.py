"""conv2d: 3x3 (the issue's target grid), 1x1, dilated at the ASPP rates, strided, a 7x7 stem.

Every case is ``F.conv2d(x, w, b, stride, padding, dilation, groups)`` with a bias, as in
``nn.Conv2d``; "fwd+bwd" also computes the gradients of x, w and b. The "numpy" implementation is
the classic textbook vectorised im2col (one strided slice per kernel tap, then a GEMM): that is the
baseline of the "t_numpy / t" column. PyTorch's peer is ``torch.nn.functional.conv2d``.

Work: ``2 * N * O * C/groups * KH * KW * OH * OW`` FLOPs forward; the backward pass adds the same
again twice (input gradient and weight gradient), so fwd+bwd counts 3x.

Run alone: ``python benchmarks/bench_conv2d.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import Case, FunctionalCase, Results, geomean

OP = "conv2d"

# The target grid: 3x3, stride 1, padding 1, float32, fwd+bwd.
TARGET_N = (1, 8)
TARGET_C = (16, 64, 128)
TARGET_HW = (64, 128)
ASPP_RATES = (2, 4, 6, 12, 18)
DILATED_SHAPE = (8, 64, 64)  # N, C (= O), H = W: compared with the undilated 3x3 of that shape


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    """``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d_case(
    op: str,
    variant: str,
    N: int,
    C: int,
    O: int,
    H: int,
    W: int,
    k: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    mode: str = "fwd+bwd",
    dtype: Any = np.float32,
    tags: dict[str, Any] | None = None,
    with_small: bool = True,
) -> FunctionalCase:
    """One ``F.conv2d`` case; ``small()`` is the same geometry at N=1 and a few channels."""
    OH, OW = conv_out(H, k, stride, padding, dilation), conv_out(W, k, stride, padding, dilation)
    macs = N * O * (C // groups) * k * k * OH * OW
    passes = 3 if mode == "fwd+bwd" else 1
    name = f"{op}/{variant}/{N}x{C}x{H}x{W}->{O}/{mode}"

    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        fan_in = (C // groups) * k * k
        d = {
            "x": rng.standard_normal((N, C, H, W), dtype=np.float64).astype(dtype),  # (N, C, H, W)
            "w": (rng.standard_normal((O, C // groups, k, k)) / np.sqrt(fan_in)).astype(dtype),
        }
        if bias:
            d["b"] = rng.standard_normal(O).astype(dtype)
        return d

    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def msn(F: Any, x: Any, w: Any, b: Any = None) -> Any:
        return F.conv2d(x, w, b, **kw)

    def torch(tF: Any, x: Any, w: Any, b: Any = None) -> Any:
        return tF.conv2d(x, w, b, **kw)

    def small() -> Case:
        gs = min(groups, 2)
        cs, os_ = gs * min(C // groups, 3), gs * min(O // groups, 3)
        hs = max(9, dilation * (k - 1) + 1 - 2 * padding)
        return conv2d_case(op, variant, 1, cs, os_, hs, hs, k, stride=stride, padding=padding,
                           dilation=dilation, groups=gs, bias=bias, mode=mode, dtype=dtype,
                           with_small=False)

    return FunctionalCase(
        op, name, mode=mode, kind="flop", work=2.0 * macs * passes, inputs=inputs, msn=msn,
        torch=torch, grad=("x", "w", "b") if bias else ("x", "w"), needs=("conv2d",),
        ref_cost=float(macs * passes), small=small if with_small else None, dtype=dtype,
        tags=dict(tags or {}, N=N, C=C, O=O, H=H, W=W, k=k, stride=stride, padding=padding,
                  dilation=dilation, groups=groups),
    )


def target_name(N: int, C: int, HW: int, mode: str = "fwd+bwd") -> str:
    return f"{OP}/3x3/{N}x{C}x{HW}x{HW}->{C}/{mode}"


def dilated_name(rate: int) -> str:
    N, C, HW = DILATED_SHAPE
    return f"{OP}/3x3-d{rate}/{N}x{C}x{HW}x{HW}->{C}/fwd+bwd"


def cases(quick: bool) -> list[Case]:
    if quick:
        # the same variants at small sizes: exercises every code path in seconds
        out = [conv2d_case(OP, "3x3", n, c, c, 8, 8, 3, padding=1) for n in (1, 2) for c in (3, 4)]
        out.append(conv2d_case(OP, "3x3", 2, 4, 4, 8, 8, 3, padding=1, mode="fwd"))
        out.append(conv2d_case(OP, "1x1", 2, 4, 6, 8, 8, 1))
        out += [conv2d_case(OP, f"3x3-d{r}", 1, 4, 4, 8, 8, 3, padding=r, dilation=r) for r in ASPP_RATES]
        out.append(conv2d_case(OP, "3x3-s2", 2, 4, 6, 9, 9, 3, stride=2, padding=1))
        out.append(conv2d_case(OP, "7x7-s2", 1, 3, 4, 12, 12, 7, stride=2, padding=3))
        return out

    out: list[Case] = []
    # a size where the reference finishes: every implementation, the oracle itself timed too
    out.append(conv2d_case(OP, "3x3", 1, 4, 4, 12, 12, 3, padding=1))
    for N in TARGET_N:
        for C in TARGET_C:
            for HW in TARGET_HW:
                out.append(conv2d_case(OP, "3x3", N, C, C, HW, HW, 3, padding=1, tags={"target": "3x3"}))
    out.append(conv2d_case(OP, "3x3", 8, 64, 64, 128, 128, 3, padding=1, mode="fwd"))
    out.append(conv2d_case(OP, "3x3", 1, 64, 64, 64, 64, 3, padding=1, mode="fwd"))
    out.append(conv2d_case(OP, "1x1", 8, 128, 128, 64, 64, 1))
    N, C, HW = DILATED_SHAPE
    for r in ASPP_RATES:
        out.append(conv2d_case(OP, f"3x3-d{r}", N, C, C, HW, HW, 3, padding=r, dilation=r,
                               tags={"target": "dilated", "rate": r}))
    out.append(conv2d_case(OP, "3x3-s2", 8, 64, 128, 128, 128, 3, stride=2, padding=1))
    out.append(conv2d_case(OP, "7x7-s2", 8, 3, 64, 128, 128, 7, stride=2, padding=3))
    return out


def targets(res: Results) -> list[dict[str, Any]]:
    """The issue's conv2d goals, evaluated on the CPU pair (numba vs torch) and, with a GPU, cuda."""
    out = []
    pairs = [("numba", "torch", "CPU")]
    if any(r.impl == "cuda" and r.status == "ok" for r in res.rows):
        pairs.append(("cuda", "torch-cuda", "GPU"))
    for ours, peer, dev in pairs:
        for label, chans, goal in (("64+ channels", (64, 128), 1.25), ("16 channels", (16,), 2.0)):
            names = [target_name(n, c, hw) for n in TARGET_N for c in chans for hw in TARGET_HW]
            ratios = [_ratio(res, nm, ours, peer) for nm in names]
            got = [r for r in ratios if r is not None]
            g = geomean(got)
            out.append(dict(
                op=OP, device=dev,
                what=f"conv2d 3x3 fwd+bwd f32, {label}: geomean t_{ours} / t_{peer} over {len(names)} shapes",
                goal=f"<= {goal}", value=g, measured=f"{g:.2f}" if g else "not measured",
                met=None if g is None or len(got) < len(names) else g <= goal,
                detail=", ".join(f"{nm.split('/')[2]}: {r:.2f}" for nm, r in zip(names, ratios) if r),
            ))
        names = [target_name(n, c, hw) for n in TARGET_N for c in TARGET_C for hw in TARGET_HW]
        sp = [_ratio(res, nm, "numpy", ours) for nm in names]
        got = [r for r in sp if r is not None]
        g = geomean(got)
        out.append(dict(
            op=OP, device=dev,
            what=f"conv2d 3x3 fwd+bwd f32: geomean speed-up of {ours} over the textbook NumPy im2col",
            goal=">= 3", value=g, measured=f"{g:.2f}x" if g else "not measured",
            met=None if g is None or len(got) < len(names) else g >= 3.0,
            detail=f"min {min(got):.2f}x, max {max(got):.2f}x" if got else "",
        ))
        base = target_name(DILATED_SHAPE[0], DILATED_SHAPE[1], DILATED_SHAPE[2])
        rs = {r: _ratio(res, dilated_name(r), ours, ours, base) for r in ASPP_RATES}
        peer_rs = {r: _ratio(res, dilated_name(r), peer, peer, base) for r in ASPP_RATES}
        got = [v for v in rs.values() if v is not None]
        worst = max(got) if got else None
        peer_detail = ", ".join(f"d{r}: {v:.2f}" for r, v in peer_rs.items() if v is not None)
        out.append(dict(
            op=OP, device=dev,
            what=f"dilated 3x3 (rates {', '.join(map(str, ASPP_RATES))}) vs the undilated conv of the "
                 f"same shape ({base.split('/')[2]}), {ours}: worst t_dilated / t_undilated",
            goal="<= 1.25", value=worst, measured=f"{worst:.2f}" if worst else "not measured",
            met=None if worst is None or len(got) < len(rs) else worst <= 1.25,
            detail=", ".join(f"d{r}: {v:.2f}" for r, v in rs.items() if v is not None)
            + (f" ({peer} for comparison: {peer_detail})" if peer_detail else ""),
        ))
    return out


def _ratio(res: Results, name: str, a: str, b: str, name_b: str | None = None) -> float | None:
    ta, tb = res.time(name, a), res.time(name_b or name, b)
    return ta / tb if ta and tb else None


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--op", OP, *sys.argv[1:]]))
