"""Step time and page faults per step of the default model: glibc's default allocator vs the
setting rnnlab's entry point applies (``allocator=tuned``, rnnlab.runtime.tune_allocator), and
vs the same setting made from outside through GLIBC_TUNABLES (the reference it imitates).
``thresholds`` is the earlier setting, the mmap and trim thresholds only: blocks above the
threshold's 32 MB ceiling are still mapped afresh each step (``--lookback 200`` has one).

The allocator setting is process-wide, so each measurement runs in a fresh child process;
the parent interleaves the variants (system, tuned, system, tuned, ...) so drift in the
machine's speed hits both alike, and reports medians and the ratio.

    python experiments/benchmarks/allocator.py [--rounds 5] [--steps 60] [--lookback 48]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def child(variant: str, steps: int, lookback: int) -> None:
    import resource
    import time

    from rnnlab import runtime

    if variant == "tuned":
        assert runtime.tune_allocator()
    elif variant == "thresholds":  # rnnlab's setting before mmap was switched off: thresholds only
        import ctypes
        import ctypes.util

        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
        assert mallopt(runtime._M_MMAP_THRESHOLD, runtime._MMAP_THRESHOLD_MAX)
        assert mallopt(runtime._M_TRIM_THRESHOLD, 2**31 - 1)
    import torch
    import torch.nn.functional as F

    from rnnlab.config import TrainConfig
    from rnnlab.model import StackedRNN
    from rnnlab.train import forward_truncated, make_optimizer

    torch.manual_seed(0)
    model = StackedRNN("lstm", 10, 64, depth=4)  # the default run: 4 x 64 LSTM, 10 weather features
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x, y = torch.randn(64, lookback, 10), torch.randn(64, 1)  # batch 64, lookback 48 by default

    def step() -> None:
        loss = F.mse_loss(forward_truncated(model, x, 0), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(10):
        step()
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults / steps}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lookback", type=int, default=48, help="sequence length (the default run: 48)")
    parser.add_argument("--child", choices=["system", "thresholds", "tuned", "tunables"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.lookback)
    results: dict[str, list[dict]] = {"system": [], "thresholds": [], "tuned": [], "tunables": []}
    for _ in range(args.rounds):
        for variant in results:
            env = dict(os.environ)
            if variant == "tunables":
                env["GLIBC_TUNABLES"] = TUNABLES
            command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
            command += ["--lookback", str(args.lookback)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            results[variant].append(json.loads(out))
    ms = {v: statistics.median(r["ms"] for r in rs) for v, rs in results.items()}
    faults = {v: statistics.median(r["faults"] for r in rs) for v, rs in results.items()}
    print(f"default model step (4x64 LSTM, T={args.lookback}, B=64, fused Adam), {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'allocator':<12}{'step ms (median)':>18}{'page faults/step':>18}{'ratio':>8}")
    for v in results:
        print(f"{v:<12}{ms[v]:>18.1f}{faults[v]:>18.0f}{ms[v] / ms['system']:>8.2f}")


if __name__ == "__main__":
    main()
