"""What the gradient probe costs: the default model's training step with the probe off, on
every step, and on every 10th step (at full time resolution and at every k-th step), with the
state Jacobian at its default schedule (every 100th step) and on every probe, for fused cells
(lstm, gru: oneDNN/cuDNN kernels, tapped through their hand-written twins on probed steps) and
a loop cell (peephole, hand-written BPTT). Every probed step carries what a default probe
does: log10 norms with their batch percentiles, the W_hh lag shares, weight-gradient norms.
A last table times the Lyapunov exponents at the defaults (k=4, 1000 steps), computed once
at a run's end, beside the step time.

One process, rnnlab's allocator setting, the variants interleaved round by round; each
variant's cost is the mean step time over blocks of 10 steps (so "every 10" includes its one
probed step), median over rounds, as a ratio to probe-off measured in the same round.

    python experiments/benchmarks/probe.py [--rounds 5] [--blocks 3] [--k 8] [--cells lstm gru peephole] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from rnnlab import runtime
from rnnlab.config import TrainConfig
from rnnlab.model import StackedRNN
from rnnlab.probe import Probe
from rnnlab.train import forward_truncated, make_optimizer


def step_time(cell: str, every: int, resolution: int, spectra_every: int, jacobian_every: int, blocks: int, x, y) -> float:
    torch.manual_seed(0)
    model = StackedRNN(cell, x.size(2), 64, depth=4)  # the default run: 4 x 64, lookback 48
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    probe = Probe(every, resolution, spectra_every, jacobian_samples=1, jacobian_every=jacobian_every) if every else None

    def step(n: int) -> None:
        if probe is not None and probe.due(n):
            out = forward_truncated(model, x, 0, run=probe.scan)
        else:
            out = forward_truncated(model, x, 0)
        loss = F.mse_loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None and probe.due(n):
            probe.record(model, n, 1.0)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    for n in range(1, 4):
        step(n)
    started = time.perf_counter()
    for n in range(1, 10 * blocks + 1):  # steps 1..100 for blocks=10: one Jacobian at its default schedule
        step(n)
    return (time.perf_counter() - started) / (10 * blocks)


def lyapunov_seconds(cell: str, x) -> float:
    """The default run's end-of-run exponents: k=4 per layer over 1000 steps of the inputs."""
    from rnnlab.probe import lyapunov

    torch.manual_seed(0)
    model = StackedRNN(cell, x.size(2), 64, depth=4)
    started = time.perf_counter()
    lyapunov(model, x, 4, 1000, 100)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=10, help="blocks of 10 steps per variant and round")
    parser.add_argument("--k", type=int, default=8, help="the coarser time resolution")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "peephole"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice); "
                        "1 on a shared machine, where a second thread waits out other processes' time slices")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime.tune_allocator()
    x, y = torch.randn(64, 48, 10), torch.randn(64, 1)
    variants = [  # (name, probe.every, probe.resolution, probe.spectra_every, probe.jacobian_every)
        ("off", 0, 1, 100, 100), ("every 10 (the defaults)", 10, 1, 100, 100),
        ("every 10, no Jacobian, no spectra", 10, 1, 10**9, 10**9), (f"every 10, every {args.k}th t", 10, args.k, 100, 100),
        ("every 10, spectra and Jacobian every probe", 10, 1, 10, 10), ("every step", 1, 1, 100, 100),
    ]
    rows = []
    for cell in args.cells:
        ratios: dict[str, list[float]] = {name: [] for name, *_ in variants}
        millis: dict[str, list[float]] = {name: [] for name, *_ in variants}
        for _ in range(args.rounds):
            base = None
            for name, every, resolution, spectra_every, jacobian_every in variants:
                seconds = step_time(cell, every, resolution, spectra_every, jacobian_every, args.blocks, x, y)
                base = seconds if base is None else base
                ratios[name].append(seconds / base)
                millis[name].append(seconds * 1e3)
        for name, *_ in variants:
            rows.append((cell, name, statistics.median(millis[name]), statistics.median(ratios[name])))
    print(f"probe cost: 4x64 model, T=48, B=64, {args.rounds} rounds x {10 * args.blocks} steps, medians; "
          f"load average {os.getloadavg()[0]:.1f} at the end, {torch.get_num_threads()} threads")
    print(f"{'cell':<10}{'probe (spectra, Jacobian every 100th step unless said)':<56}{'ms/step':>9}{'x off':>8}")
    for cell, name, ms, ratio in rows:
        print(f"{cell:<10}{name:<56}{ms:>9.1f}{ratio:>8.2f}")
    x_long = torch.randn(64, 48, 10)
    print("\nLyapunov exponents at the defaults (k=4, 1000 steps, warm-up 100), once per run, median of 3")
    print(f"{'cell':<10}{'seconds':>9}{'training steps':>16}")
    for cell in args.cells:
        seconds = statistics.median(lyapunov_seconds(cell, x_long) for _ in range(3))
        step_ms = next(ms for c, name, ms, _ in rows if c == cell and name == "off")
        print(f"{cell:<10}{seconds:>9.2f}{seconds * 1e3 / step_ms:>16.0f}")


if __name__ == "__main__":
    main()
