"""Windowing speed: rnnlab's Numba kernels against the NumPy/torch ways and memcpy.

    python experiments/benchmarks/windowing.py [--rounds 7] [--reps 200] [--materialise 100000]

1. Batch gather: a series of N = 1,000,000 steps x 8 float32 features, lookback 50, batch 256,
   random starts (a fresh set per call). Variants, interleaved round by round:
     numba gather     rnnlab.data.windows.gather into a preallocated buffer (the loader's path),
                      which prefetches the next windows' lines into L2 while it copies one
     ... no prefetch  the same copy loop without the prefetch (gather before it had one)
     numpy fancy      values[starts[:, None] + arange(L)]
     np.take          np.take(values, starts[:, None] + arange(L), axis=0)
     swv + index      sliding_window_view over the flat series (a (N-L+1, L*F) view, no copy),
                      indexed by starts (np.take on that view would first copy all of it: 1.6 GB)
     torch unfold     flat tensor .unfold(0, L*F, F) (a view), then .index_select(0, starts);
                      14-28 ms per batch with torch 2.13, hence few repetitions
     memcpy           np.copyto of the same number of bytes between two cache-resident
                      buffers: the physical limit of moving a batch
     memcpy from the series  np.copyto of the same bytes from one random place in the series:
                      one sequential run from memory, the limit for a source not in cache
2. Full materialisation of ``--materialise`` windows: windows_into vs np.copyto of the same bytes.
3. The data loader's share of a training step on the default run (4 x 64 LSTM, weather data,
   lookback 48, batch 64, fused Adam): time to draw a batch from Windows.batches vs a whole
   training step (the same batch forward, backward, clip, step).

Medians over rounds; GB/s counts the bytes written to the batch (inputs only).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from rnnlab.data.windows import _copy_run, gather, windows_into

N, F, L, B = 1_000_000, 8, 50, 256


def gather_without_prefetch(values, target, starts, lookback, horizon, out_x, out_y) -> None:
    """rnnlab's gather as it was before software prefetch: one memcpy per window, nothing else."""
    row = values.shape[1]
    width = lookback * row
    src = values.reshape(-1)
    dst = out_x.reshape(-1)
    for b in range(starts.shape[0]):
        s = starts[b]
        _copy_run(dst, b * width, src, s * row, width)
        out_y[b] = target[s + lookback - 1 + horizon]


def clock(fn, reps: int, rng: np.random.Generator, n_starts: int) -> float:
    """Median seconds per call; each call gets fresh random starts (drawn outside the timing)."""
    times = []
    for _ in range(reps):
        starts = rng.integers(0, n_starts, B).astype(np.int64)
        t0 = time.perf_counter()
        fn(starts)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved(variants: dict, rounds: int, measure) -> dict[str, float]:
    """Median over rounds of ``measure(name, fn)``; every round runs every variant in turn."""
    results = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            results[name].append(measure(name, fn))
    return {name: float(np.median(t)) for name, t in results.items()}


def report(title: str, med: dict[str, float], nbytes: int, refs: dict[str, str], unit: str, scale: float) -> None:
    """A markdown table: time, GB/s, and speed relative to each reference variant."""
    print(f"\n{title}")
    print(f"| variant | {unit} | GB/s | {' | '.join(refs)} |")
    print("|---" * (3 + len(refs)) + "|")
    for name, t in med.items():
        ratios = " | ".join(f"{med[ref] / t:.2f}" for ref in refs.values())
        print(f"| {name} | {t * scale:.1f} | {nbytes / t / 1e9:.1f} | {ratios} |")


def batch_gather(rounds: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((N, F)).astype(np.float32)
    target = np.ascontiguousarray(values[:, 0])
    n_starts = N - L
    out_x, out_y = np.empty((B, L, F), np.float32), np.empty(B, np.float32)
    src = np.ones_like(out_x)
    flat, out_flat = values.reshape(-1), out_x.reshape(-1)
    last = flat.size - out_flat.size  # where the last whole run of a batch's bytes begins
    windows = sliding_window_view(values.reshape(-1), L * F)[::F]  # (N-L+1, L*F) view, no copy
    unfolded = torch.from_numpy(values.reshape(-1)).unfold(0, L * F, F)  # the same view in torch
    steps = np.arange(L)
    import numba

    plain = numba.njit(nogil=True)(gather_without_prefetch)
    variants = {
        "numba gather (rnnlab)": lambda s: gather(values, target, s, L, 1, out_x, out_y),
        "numba gather, no prefetch": lambda s: plain(values, target, s, L, 1, out_x, out_y),
        "numpy fancy indexing": lambda s: values[s[:, None] + steps],
        "np.take": lambda s: np.take(values, s[:, None] + steps, axis=0),
        "sliding_window_view + index": lambda s: windows[s],
        "torch unfold + index_select": lambda s: unfolded.index_select(0, torch.from_numpy(s)),
        "memcpy (np.copyto, same bytes)": lambda s: np.copyto(out_x, src),
        "memcpy from the series (one run)": lambda s: np.copyto(out_flat, flat[(o := s[0] * F % last) : o + out_flat.size]),
    }
    slow = {"torch unfold + index_select"}
    for fn in variants.values():  # compile, fault pages in
        fn(np.zeros(B, np.int64))
    med = interleaved(variants, rounds, lambda name, fn: clock(fn, max(3, reps // 50) if name in slow else reps, rng, n_starts))
    title = f"1. batch gather: N={N:,} x F={F}, lookback {L}, batch {B} ({out_x.nbytes / 1e3:.1f} KB), random starts"
    refs = {"fraction of memcpy": "memcpy (np.copyto, same bytes)", "vs numpy fancy": "numpy fancy indexing"}
    report(title, med, out_x.nbytes, refs, "us per batch", 1e6)
    print(f"(load average after part 1: {os.getloadavg()[0]:.1f})")


def materialise(rounds: int, n_windows: int) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((N, F)).astype(np.float32)
    starts = np.sort(rng.integers(0, N - L, n_windows)).astype(np.int64)
    out = np.empty((n_windows, L, F), np.float32)
    src = np.ones_like(out)
    windows_into(values, starts[:10], L, out[:10])
    out.fill(0)  # fault every page in before timing
    variants = {
        "numba windows_into (rnnlab)": lambda: windows_into(values, starts, L, out),
        "np.copyto, same bytes": lambda: np.copyto(out, src),
    }

    def once(name: str, fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    med = interleaved(variants, rounds, once)
    title = f"2. materialise {n_windows:,} windows ({out.nbytes / 1e6:.0f} MB) into a preallocated buffer"
    report(title, med, out.nbytes, {"vs np.copyto": "np.copyto, same bytes"}, "ms", 1e3)


def loader_share(rounds: int, steps: int) -> None:
    from rnnlab import runtime
    from rnnlab.config import TrainConfig
    from rnnlab.data import generate_weather, make_windows
    from rnnlab.model import StackedRNN
    from rnnlab.train import forward, make_optimizer, task_loss

    runtime.tune_allocator()  # as the default run does
    data = make_windows(generate_weather(3.0), lookback=48)
    torch.manual_seed(0)
    model = StackedRNN("lstm", data.n_features, 64, 4)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    params = list(model.parameters())
    load_times, step_times = [], []
    for _ in range(rounds):
        batches = data.batches("train", 64, rng)
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = next(batches)
            t1 = time.perf_counter()
            out, _ = forward(model, x, None, False, 0)
            loss = task_loss(out, y, data.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            t2 = time.perf_counter()
            load_times.append(t1 - t0)
            step_times.append(t2 - t0)
    load, step = float(np.median(load_times[5:])), float(np.median(step_times[5:]))
    print(f"\n3. default run (4 x 64 LSTM, weather, lookback 48, batch 64): {rounds * steps} steps")
    print("| what | ms (median) | share of a step |")
    print("|---|---|---|")
    print(f"| draw a batch (Windows.batches: permuted starts, numba gather) | {load * 1e3:.3f} | {load / step:.2%} |")
    print(f"| whole training step (batch + forward + backward + clip + Adam) | {step * 1e3:.2f} | 100% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--materialise", type=int, default=100_000, help="windows materialised in part 2")
    parser.add_argument("--steps", type=int, default=40, help="training steps per round in part 3")
    args = parser.parse_args()
    import numba

    load = os.getloadavg()[0]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}, {numba.get_num_threads()} numba "
          f"threads, numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}")
    batch_gather(args.rounds, args.reps)
    materialise(args.rounds, args.materialise)
    loader_share(max(1, args.rounds // 2), args.steps)


if __name__ == "__main__":
    main()
