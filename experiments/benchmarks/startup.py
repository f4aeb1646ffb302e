"""How fast rnnlab answers: ``--help``, and launch to the first finished training step.

Baseline in the same run: importing the five heavy packages (torch, mlflow, hydra, numba,
optuna) in one fresh process, which is what a naive entry point pays before doing anything.
Each variant runs in fresh processes, interleaved, and the table shows medians.

    python experiments/benchmarks/startup.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = ["train.epochs=1", "train.steps_per_epoch=3", "quiet=true"]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out


def first_step(out: str) -> float:
    return float(re.search(r"the first step at ([\d.]+) s", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in ("python -c pass", "import the 5 packages", "rnnlab --help",
                                                    "first step, new store", "first step, existing store")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(args.rounds):
            rows["python -c pass"].append(timed([sys.executable, "-c", "pass"], tmp)[0])
            rows["import the 5 packages"].append(
                timed([sys.executable, "-c", "import torch, mlflow, hydra, numba, optuna"], tmp)[0])
            rows["rnnlab --help"].append(timed([sys.executable, "-m", "rnnlab", "--help"], tmp)[0])
            fresh = tmp / f"fresh{i}"
            fresh.mkdir()
            rows["first step, new store"].append(first_step(timed([sys.executable, "-m", "rnnlab", *RUN], fresh)[1]))
            rows["first step, existing store"].append(first_step(timed([sys.executable, "-m", "rnnlab", *RUN], fresh)[1]))
    base = statistics.median(rows["import the 5 packages"])
    print(f"{args.rounds} interleaved rounds, medians; ratio = against importing the 5 packages")
    print(f"{'what':<30}{'seconds':>9}{'ratio':>8}")
    for name, values in rows.items():
        print(f"{name:<30}{statistics.median(values):>9.2f}{statistics.median(values) / base:>8.2f}")


if __name__ == "__main__":
    main()
