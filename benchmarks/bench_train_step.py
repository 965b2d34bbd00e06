"""Training speed as a user feels it: a whole U-Net step, and the two ops that dominate it.

Issue 16's figures, each timed against PyTorch (CPU) *in the same run* with interleaved repeats
(minisegnet, PyTorch, minisegnet, ... alternating which goes first), because the ratio moves with
the CPU and with the load of a shared machine; the table gives the median ratio and its spread
(min-max over the repeats of per-round ratios), the CPU model and the load average:

* ``unet``: same-padded U-Net (``models.UNet(1, 2, base_channels=16, depth=4, batch_norm=True)``),
  a 4x1x128x128 batch, cross-entropy, Adam: ``zero_grad, forward, loss, backward, step``. The
  PyTorch twin is written below with the same module names; our initial weights are copied in and
  the first step's loss is checked to agree before anything is timed.
* ``conv``: conv2d 3x3, padding 1, C -> C channels, bias, forward + backward (gx, gw, gb), on
  (N, C, HW) = (1,64,128), (8,64,64), (1,128,64), (4,128,64) [geomean "64-128"] and (1,16,128),
  (8,16,64) [geomean "16"].
* ``bn``: BatchNorm2d(64) training forward + backward (gx, gamma, beta) on 8x64x128x128.

Run: ``python benchmarks/bench_train_step.py [--what unet,conv,bn] [--repeats 7] [--cpu-time]``.
``--cpu-time`` runs both libraries on one thread (Numba, BLAS and PyTorch) and times CPU seconds
(``time.process_time``) instead of wall time: on a shared, overloaded machine wall times measure
the scheduler more than the code (PyTorch's OpenMP threads suffer most), while one-thread CPU time
stays close to the work done.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

CONV_64_128 = [(1, 64, 128), (8, 64, 64), (1, 128, 64), (4, 128, 64)]
CONV_16 = [(1, 16, 128), (8, 16, 64)]


# ---- U-Net ---------------------------------------------------------------------------------

def torch_unet(base: int, depth: int):
    """The same-padded batch-norm U-Net of minisegnet.models.unet in PyTorch, same names."""
    import torch
    from torch import nn

    class ConvBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(x)))

    class Expanding(ConvBlock):
        def __init__(self, cin):
            super().__init__(cin, cin // 2)
            self.upconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2, bias=False)

        def forward(self, x, skip):
            return super().forward(torch.cat([skip, self.upconv(x)], 1))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2**i for i in range(depth + 1)]
            self.contracting = nn.ModuleList(
                [ConvBlock(a, b) for a, b in zip([1] + widths[:-2], widths[:-1])])
            self.bottleneck = ConvBlock(widths[-2], widths[-1])
            self.expanding = nn.ModuleList([Expanding(c) for c in reversed(widths[1:])])
            self.final = nn.Conv2d(widths[0], 2, 1)

        def forward(self, x):
            skips = []
            for block in self.contracting:
                x = block(x)
                skips.append(x)
                x = torch.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for block, skip in zip(self.expanding, reversed(skips)):
                x = block(x, skip)
            return self.final(x)

    return UNet()


def unet_runners(N=4, HW=128, base=16, depth=4):
    import torch

    import minisegnet as msn
    import minisegnet.functional as F
    from minisegnet import optim
    from minisegnet.models.unet import UNet

    msn.manual_seed(0)
    model = UNet(1, 2, base_channels=base, depth=depth, padding="same", batch_norm=True)
    twin = torch_unet(base, depth)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1, HW, HW)).astype(np.float32)
    t = rng.integers(0, 2, (N, HW, HW))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def ours():
        opt.zero_grad()
        loss = F.cross_entropy(model(msn.Tensor(x)), msn.Tensor(t))
        loss.backward()
        opt.step()
        return float(loss.data)

    def theirs():
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(twin(xt), tt)
        loss.backward()
        topt.step()
        return float(loss.detach())

    a, b = ours(), theirs()  # the first step from the same weights: same loss
    assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"U-Net twins disagree: loss {a} vs {b}"
    return ours, theirs


# ---- conv2d and batch norm -----------------------------------------------------------------

def conv_runners(N, C, HW):
    import torch

    import minisegnet as msn
    import minisegnet.functional as F

    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, HW, HW)).astype(np.float32)
    w = (rng.standard_normal((C, C, 3, 3)) / math.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    gy = rng.standard_normal((N, C, HW, HW)).astype(np.float32)

    def ours():
        ts = [msn.Tensor(a, requires_grad=True) for a in (x, w, b)]
        y = F.conv2d(*ts, padding=1)
        y.backward(msn.Tensor(gy))
        return [y.data] + [np.asarray(getattr(t.grad, "data", t.grad)) for t in ts]

    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    tgy = torch.from_numpy(gy)

    def theirs():
        for t in (tx, tw, tb):
            t.grad = None
        y = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
        y.backward(tgy)
        return [y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()]

    _check(ours(), theirs(), f"conv {N}x{C}x{HW}")
    return ours, theirs


def bn_runners(N=8, C=64, HW=128):
    import torch

    import minisegnet as msn
    import minisegnet.nn as nn

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((N, C, HW, HW)) * 2 + 0.5).astype(np.float32)
    gy = rng.standard_normal((N, C, HW, HW)).astype(np.float32)
    bn = nn.BatchNorm2d(C)
    tbn = torch.nn.BatchNorm2d(C)

    def ours():
        xt = msn.Tensor(x, requires_grad=True)
        bn.weight.grad = bn.bias.grad = None
        y = bn(xt)
        y.backward(msn.Tensor(gy))
        return [y.data, np.asarray(getattr(xt.grad, "data", xt.grad))]

    tx = torch.from_numpy(x).requires_grad_()
    tgy = torch.from_numpy(gy)

    def theirs():
        tx.grad = None
        tbn.zero_grad()
        y = tbn(tx)
        y.backward(tgy)
        return [y.detach().numpy(), tx.grad.numpy()]

    _check(ours(), theirs(), "batch norm")
    return ours, theirs


def _check(a, b, what):
    for u, v in zip(a, b):
        err = np.abs(u - v).max() / max(1.0, np.abs(v).max())
        assert err < 1e-3, f"{what}: minisegnet and PyTorch differ by {err:.2e}"


# ---- timing --------------------------------------------------------------------------------

CLOCK = time.perf_counter


def interleaved(ours, theirs, repeats: int, inner: int = 1) -> tuple[float, float, list[float]]:
    """Median time of each (seconds) and the per-round ratios, rounds alternating the order."""
    t_ours, t_theirs, ratios = [], [], []
    for r in range(repeats):
        pair = {}
        for name, fn in ((("ours", ours), ("theirs", theirs)) if r % 2 == 0
                         else (("theirs", theirs), ("ours", ours))):
            t0 = CLOCK()
            for _ in range(inner):
                fn()
            pair[name] = (CLOCK() - t0) / inner
        t_ours.append(pair["ours"])
        t_theirs.append(pair["theirs"])
        ratios.append(pair["ours"] / pair["theirs"])
    return statistics.median(t_ours), statistics.median(t_theirs), ratios


def _line(name, a, b, ratios):
    return (f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {statistics.median(ratios):.2f} "
            f"| {min(ratios):.2f}-{max(ratios):.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="unet,conv,bn")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="one thread each, CPU seconds")
    args = ap.parse_args(argv)
    import torch

    import minisegnet  # noqa: F401 - sets the threading layer before any kernel runs
    from benchmarks.common import _cpu_model

    global CLOCK
    torch.set_num_threads(os.cpu_count() or 1)
    if args.cpu_time:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(1)
        torch.set_num_threads(1)
        threadpool_limits(1)
        CLOCK = time.process_time
    what = args.what.split(",")
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"{'one thread each, CPU time' if args.cpu_time else 'all cores, wall time'}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print("| figure | minisegnet ms | PyTorch ms | ratio (median) | ratio spread |")
    print("|---|---|---|---|---|")
    if "unet" in what:
        ours, theirs = unet_runners()
        for _ in range(2):
            ours(), theirs()  # JIT and allocator warm-up
        print(_line("U-Net step 4x1x128x128", *interleaved(ours, theirs, args.repeats)),
              flush=True)
    if "conv" in what:
        for label, shapes in (("64-128", CONV_64_128), ("16", CONV_16)):
            meds = []
            for N, C, HW in shapes:
                ours, theirs = conv_runners(N, C, HW)
                ours(), theirs()
                a, b, ratios = interleaved(ours, theirs, args.repeats, inner=3)
                meds.append(ratios)
                print(_line(f"conv3x3 fwd+bwd {N}x{C}x{HW}x{HW}", a, b, ratios), flush=True)
            geo = [math.exp(statistics.fmean(math.log(r[k]) for r in meds))
                   for k in range(args.repeats)]
            print(f"| conv3x3 geomean {label} ch | | | {statistics.median(geo):.2f} "
                  f"| {min(geo):.2f}-{max(geo):.2f} |", flush=True)
    if "bn" in what:
        ours, theirs = bn_runners()
        ours(), theirs()
        print(_line("batch norm fwd+bwd 8x64x128x128", *interleaved(ours, theirs, args.repeats,
                                                                  inner=2)), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
