"""Every cell's training step against torch.nn.LSTM, in one process.

    python experiments/benchmarks/cells.py [--rounds 5] [--steps 5] [--lengths 50 200] [--threads N]
                                           [--only NAME ...] [--device cpu|cuda]

One step = forward + backward + Adam of a depth-4, hidden-64, batch-64 model on 8 features,
MSE on a many-to-one head. Variants are interleaved round by round (the machine's speed
drifts), each round times ``--steps`` steps after one warm-up step; the table shows the median
over rounds, the ratio to torch.nn.LSTM at the same length (the median of each round's ratio,
so that drift between rounds cancels; the range over rounds in the last column), and
step(T=200)/step(T=50) (4 would be linear in T; much more means a quadratic backward).

Each variant's step is timed right beside a torch.nn.LSTM step at the same length (the order
alternating by round), and each ratio is of that pair; a variant's T=200/T=50 is the median
of per-round ratios of its two lengths, timed back to back. One round of 20 variants takes
minutes, over which this machine's speed drifts by more than the differences measured.

Rows beyond one per cell: "(step path)" runs ``step_scan``, the eager autograd loop over the
cell's one-step ``forward`` (the readable reference); "(tapped)" gives each layer's scan a
tap, as the gradient probe does, so that rnn, lstm and gru run their step loops with the
hand-written backward (rnnlab/bptt.py) instead of the fused kernel.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from rnnlab import runtime
from rnnlab.cells import CELLS, Tap
from rnnlab.model import StackedRNN

DEPTH, HIDDEN, BATCH, FEATURES = 4, 64, 64, 8
BASE = "torch.nn.LSTM"  # what every variant is timed beside


class TorchLSTM(nn.Module):
    """The baseline: torch.nn.LSTM (MKL-DNN/oneDNN on CPU, cuDNN on a GPU) plus the same head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(FEATURES, HIDDEN, DEPTH, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(self.rnn(x)[0][:, -1]), None


def variants() -> dict[str, Callable[[], nn.Module]]:
    out: dict[str, Callable[[], nn.Module]] = {BASE: TorchLSTM}
    for name in CELLS:
        if name != "lstm_variant":
            out[name] = lambda name=name: StackedRNN(name, FEATURES, HIDDEN, DEPTH)
    for name in ("lstm", "peephole", "gru_classic", "indrnn"):  # the eager loop over forward, for comparison
        out[f"{name} (step path)"] = lambda name=name: _StepPath(StackedRNN(name, FEATURES, HIDDEN, DEPTH))
    for name in ("rnn", "lstm", "gru"):  # the fused cells' own loops, hand-written BPTT: what a probed run takes
        out[f"{name} (tapped)"] = lambda name=name: _Tapped(StackedRNN(name, FEATURES, HIDDEN, DEPTH))
    for v in ("vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR"):
        out[f"lstm_variant={v}"] = lambda v=v: StackedRNN("lstm_variant", FEATURES, HIDDEN, DEPTH, variant=v)
    return out


class _StepPath(nn.Module):
    def __init__(self, model: StackedRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.model(x, step_path=True)[0], None


class _Tapped(nn.Module):
    """Every layer's scan given a tap (the gradient probe's dL/dh_t buffer): a fused cell then
    runs its step loop with the hand-written backward (rnnlab/bptt.py) instead of the kernel."""

    def __init__(self, model: StackedRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        def run(cell, x, state, *_):
            return cell.scan(x, state, Tap(x.new_empty(x.size(1), x.size(0), cell.hidden_size)))

        features, _ = self.model.features(x, run=run)
        return self.model.head(features), None


def time_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds per training step over ``steps`` steps (after one warm-up step)."""
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x)[0], y)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()  # the step is queued, not done, until here
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--only", nargs="*", help="variant names to time (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime.tune_allocator()  # the allocator setting rnnlab runs with
    device = torch.device(args.device)
    torch.manual_seed(0)
    chosen = {k: v for k, v in variants().items() if not args.only or k in args.only or k == BASE}
    models = {name: make().to(device) for name, make in chosen.items()}
    data = {T: (torch.randn(BATCH, T, FEATURES, device=device), torch.randn(BATCH, 1, device=device)) for T in args.lengths}
    results, ratios, growth = measure(models, data, args.rounds, args.steps)
    print_table(list(models), args.lengths, results, ratios, growth)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")


def measure(models: dict[str, nn.Module], data: dict[int, tuple[torch.Tensor, torch.Tensor]], rounds: int,
            steps: int) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], list[float]], dict[str, list[float]]]:
    """Per round, each variant beside the baseline at each length: seconds per step (variant,
    length) -> one per round, the variant's ratio to the baseline per round, and its
    step(last length)/step(first length) per round."""
    opts = {name: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3) for name, m in models.items()}
    lengths = list(data)
    results: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    growth: dict[str, list[float]] = {}
    for r in range(rounds):
        for name in models:
            if name == BASE and len(models) > 1:
                continue
            times = {}
            for T in lengths:
                # The baseline is timed right beside each variant, in alternating order, and each
                # ratio is of that pair: the machine's speed drifts by more than the differences
                # between cells within the minutes that one round of every variant takes.
                pair = (BASE, name) if r % 2 == 0 else (name, BASE)
                got = {k: time_steps(models[k], opts[k], *data[T], steps) for k in pair}
                for k in set(pair):
                    results.setdefault((k, T), []).append(got[k])
                ratios.setdefault((name, T), []).append(got[name] / got[BASE])
                times[T] = got[name]
            growth.setdefault(name, []).append(times[lengths[-1]] / times[lengths[0]])
        print(f"round {r + 1}/{rounds} done", flush=True)
    return results, ratios, growth


def print_table(names: list[str], lengths: list[int], results: dict[tuple[str, int], list[float]],
                ratios: dict[tuple[str, int], list[float]], growth: dict[str, list[float]]) -> None:
    """The markdown table: medians over rounds, ratios to the baseline, growth with T."""
    med = {key: statistics.median(v) for key, v in results.items()}
    first, last = lengths[0], lengths[-1]
    ratios[BASE, first] = ratios[BASE, last] = [1.0]  # for the table's first row
    # The baseline's growth: from its medians, as it is timed many times per round.
    growth.setdefault(BASE, [med[BASE, last] / med[BASE, first]])
    cols = " | ".join(f"T={T} ms | ×nn.LSTM" for T in lengths)
    print(f"\n| cell | {cols} | T={last}/T={first} | T={last} ×nn.LSTM, range over rounds |")
    print("|---|" + "---|---|" * len(lengths) + "---|---|")
    for name in names:
        row = " | ".join(f"{1e3 * med[name, T]:.1f} | {statistics.median(ratios[name, T]):.2f}" for T in lengths)
        spread = f"{min(ratios[name, last]):.2f}-{max(ratios[name, last]):.2f}"
        print(f"| {name} | {row} | {statistics.median(growth[name]):.2f} | {spread} |")


if __name__ == "__main__":
    main()
