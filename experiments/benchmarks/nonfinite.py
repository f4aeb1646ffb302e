"""What catching NaN/inf on every step costs: the default model's step with and without the
check train() does (``torch.isfinite`` of the global gradient norm, which a NaN/inf loss also
poisons). One process, the two variants alternating step by step, medians.

    python experiments/benchmarks/nonfinite.py [--steps 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rnnlab import runtime
from rnnlab.config import TrainConfig
from rnnlab.model import StackedRNN
from rnnlab.train import forward_truncated, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    runtime.tune_allocator()
    torch.manual_seed(0)
    model = StackedRNN("lstm", 10, 64, depth=4)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = torch.randn(64, 48, 10), torch.randn(64, 1)

    def step(check: bool) -> float:
        started = time.perf_counter()
        loss = F.mse_loss(forward_truncated(model, x, 0), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if check and not torch.isfinite(norm):
            raise FloatingPointError
        optimizer.step()
        return time.perf_counter() - started

    for _ in range(10):
        step(True)
    times = {False: [], True: []}
    for i in range(2 * args.steps):
        times[i % 2 == 1].append(step(i % 2 == 1))
    without, with_check = statistics.median(times[False]), statistics.median(times[True])
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    started = time.perf_counter()
    for _ in range(10000):
        bool(torch.isfinite(norm))
    alone = (time.perf_counter() - started) / 10000
    print(f"default model step, {args.steps} steps each, alternating, medians")
    print(f"{'variant':<22}{'ms/step':>9}{'ratio':>8}")
    print(f"{'no check':<22}{without * 1e3:>9.2f}{1.0:>8.3f}")
    print(f"{'isfinite(norm) check':<22}{with_check * 1e3:>9.2f}{with_check / without:>8.3f}")
    print(f"the check alone: {alone * 1e6:.1f} us = {alone / without:.2%} of a step")


if __name__ == "__main__":
    main()
