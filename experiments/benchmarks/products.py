"""The hand-written BPTT's matrix products: torch's own (MKL on the CPU) against oneDNN.

    python experiments/benchmarks/products.py [--rounds 7] [--threads 1]

rnnlab/bptt.py sends a float32 product to oneDNN (``bptt.mm``, ``bptt.grad_weight``) only
where this table, on one thread, says it pays: above a size, and on a host where oneDNN won
the race ``bptt.cpu_products`` runs at a process's first product (a Zen 5 EPYC: yes; a Zen 4
one: no). On more threads it keeps MKL, because in the loops oneDNN lost there though single
products timed faster (see the README). Two tables, each row timed in one process with its variants
interleaved round by round (medians):

1. one step's products, (B, K) x (K, N), with and without an added (B, N) term: MKL
   (torch.mm / torch.addmm) against oneDNN's linear (called directly, whatever the size);
2. the weight gradients, d^T x summed over R = T * B rows: MKL against oneDNN with either
   operand first (oneDNN copies its first operand transposed).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rnnlab import bptt

STEP_SHAPES = [  # (B, K, N): 4 x 64 LSTM-family layers at batch 64, and the other cells' products
    (64, 64, 64), (64, 64, 128), (64, 128, 64), (64, 64, 256), (64, 72, 256), (64, 128, 256),
    (64, 192, 192), (64, 256, 128), (64, 256, 72), (16, 64, 256), (256, 64, 256),
]
GRAD_SHAPES = [(12800, 256, 128), (12800, 256, 72), (12800, 192, 192), (12800, 128, 64), (3200, 256, 128)]


def per_call(f: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - start) / calls


def race(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    for f in variants.values():
        f()  # warm-up: oneDNN builds and caches its kernel on the first call
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            times[k].append(per_call(variants[k], calls))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    onednn = bptt._onednn_linear
    if onednn is None:
        raise SystemExit("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    torch.manual_seed(0)

    print("\n| B x K x N | M MACs | mm us | oneDNN us | mm/oneDNN | addmm us | oneDNN + term us | addmm/oneDNN |")
    print("|---|---|---|---|---|---|---|---|")
    for b, k, n in STEP_SHAPES:
        x, w, plus = torch.randn(b, k), torch.randn(n, k), torch.randn(b, n)
        w_t = w.t()
        t = race({
            "mm": lambda: torch.mm(x, w_t),
            "dnn": lambda: onednn(x, w, None, "none", [], ""),
            "addmm": lambda: torch.addmm(plus, x, w_t),
            "dnn+": lambda: onednn.binary(x, plus, w, None, "add"),
        }, args.rounds, 300)
        us = {key: v * 1e6 for key, v in t.items()}
        print(f"| {b} x {k} x {n} | {b * k * n / 1e6:.2f} | {us['mm']:.1f} | {us['dnn']:.1f} | {us['mm'] / us['dnn']:.2f} "
              f"| {us['addmm']:.1f} | {us['dnn+']:.1f} | {us['addmm'] / us['dnn+']:.2f} |")

    print("\n| R x N x K (d^T x) | mm ms | oneDNN, d first, ms | oneDNN, x first, ms | bptt.grad_weight ms |")
    print("|---|---|---|---|---|")
    for r, n, k in GRAD_SHAPES:
        d, x = torch.randn(r, n), torch.randn(r, k)
        t = race({
            "mm": lambda: d.t() @ x,
            "d": lambda: onednn(d.t(), x.t(), None, "none", [], ""),
            "x": lambda: onednn(x.t(), d.t(), None, "none", [], "").t(),
            "bptt": lambda: bptt.grad_weight(d, x),
        }, args.rounds, 3)
        ms = {key: v * 1e3 for key, v in t.items()}
        print(f"| {r} x {n} x {k} | {ms['mm']:.2f} | {ms['d']:.2f} | {ms['x']:.2f} | {ms['bptt']:.2f} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
