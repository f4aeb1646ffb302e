"""What tracking costs on the default run: ``python -m rnnlab`` (4 x 64 LSTM, embedded weather
data, 10 epochs, probe every 10 steps) with ``tracking=mlflow`` into a SQLite store, against
the same run with ``tracking=none``.

Each run is a fresh process (``quiet=true``, its own temporary folder). ``--store existing``
(the default) logs every mlflow run to one store created up front, as the default run's
``outputs/mlflow.db`` is after the first run; ``--store fresh`` gives each run a new store (the
worst case, Alembic migrations included). The variants are interleaved round by round (A B B
A ...), medians. What is compared is the whole process:
launch to exit, so it includes MLflow's import in the writer process, creating the store,
the last flush and the artifact copies. Both variants make the same figures and files (the
run writes them to its own folder either way; with tracking they are also copied to the
store), and both run the probe, so the difference is tracking alone.

Besides wall time: the CPU seconds of the whole process tree (trainer + writer; on a 2-core
machine the writer's CPU is taken from torch's two threads), and the run's own accounting
from its summary: seconds the trainer spent inside Tracker calls, seconds it waited in
``finish`` for the last flush, and the writer process's CPU seconds, of which those before
the run was opened (MLflow's import, which the job starts first so that it runs beside the
job's own single-threaded start-up). "bound" is the most tracking can have cost, as a share of
the run's wall time: the trainer's seconds in calls and in finish plus every CPU second the
writer used once the run was open (at worst all taken from torch's threads). On this VM the
whole-process A/B varies by 10-30% from round to round, so the bound is the precise number.

    python experiments/benchmarks/tracking.py [--rounds 2] [--epochs 10] [--threads N] [--before DIR ...]

``--before DIR ...`` adds a variant per folder: tracking=mlflow with the rnnlab package of
another checkout (a ``git worktree`` of an older commit), to compare a change in the same rounds.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

def one_run(variant: str, folder: Path, epochs: int, threads: int, code: str | None, store: Path | None) -> dict[str, float]:
    """One default run in a fresh process; wall and CPU seconds, plus the summary's tracking row.
    ``store``: the SQLite file every run shares (as outputs/mlflow.db is), or None for a new one."""
    folder.mkdir()
    cmd = [sys.executable, "-m", "rnnlab", "quiet=true", f"hydra.run.dir={folder}/run", f"train.epochs={epochs}"]
    if threads:
        cmd.append(f"trial.threads={threads}")
    cmd += ["tracking=none"] if variant == "none" else [f"tracking.uri=sqlite:///{store or folder / 'store' / 'mlflow.db'}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": code} if code else None  # ahead of the installed rnnlab
    out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: the writer too
    if out.returncode != 0:
        raise SystemExit(f"{variant} run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    row = {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    found = re.search(r"tracking\s+([\d.]+) s in calls, ([\d.]+) s in finish, writer ([\d.]+) s CPU"
                      r" \(([\d.]+) s before the run opened\)", out.stdout)
    if found:
        calls, finish, writer, early = (float(g) for g in found.groups())
        # The most tracking can have cost: the trainer's own time in it, plus every CPU second
        # the writer used once the run was open (taken, at worst, from torch's threads). What it
        # used before (MLflow's import) ran beside the job's single-threaded start-up.
        row.update(calls=calls, finish=finish, writer=writer, early=early,
                   bound=100 * (calls + finish + writer - early) / wall)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both variants (order alternates: A B, B A, ...)")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs (10: the default run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the runs (trial.threads; 0: torch's default)")
    parser.add_argument("--store", choices=("existing", "fresh"), default="existing",
                        help="existing: every run logs to one store created up front, as the default run's "
                             "outputs/mlflow.db is after the first run; fresh: a new store per run (migrations included)")
    parser.add_argument("--before", metavar="DIR", nargs="*", default=[],
                        help="also run tracking=mlflow with the rnnlab of these checkouts")
    args = parser.parse_args()
    code = {"none": None, "mlflow": None}
    for folder in args.before:
        code[f"mlflow ({Path(folder).name})"] = str(Path(folder).resolve())
    variants = list(code)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        store = None
        if args.store == "existing":
            from mlflow.tracking import MlflowClient

            store = Path(tmp) / "shared" / "mlflow.db"
            store.parent.mkdir()
            MlflowClient(f"sqlite:///{store}").search_experiments()  # creates the tables
        for r in range(args.rounds):
            for i, variant in enumerate(variants if r % 2 == 0 else variants[::-1]):
                row = one_run(variant, Path(tmp) / f"{r}-{i}", args.epochs, args.threads, code[variant], store)
                runs[variant].append(row)
                print(f"round {r + 1} {variant:<7}" + "".join(f" {k} {v:.2f}" for k, v in row.items()), flush=True)
    load_after = os.getloadavg()

    def median(variant: str, key: str) -> float:
        values = [row[key] for row in runs[variant] if key in row]
        return statistics.median(values) if values else float("nan")

    # Ratios per round (same conditions), then the median: the machine drifts between rounds.
    def ratios(variant: str, key: str) -> list[float]:
        return [a[key] / b[key] for a, b in zip(runs[variant], runs["none"])]

    threads = args.threads or torch.get_num_threads()
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {threads} threads, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; train.epochs={args.epochs}, "
          f"{args.rounds} interleaved rounds, medians")
    print()
    print("| tracking | wall s | x none | CPU s (trainer + writer) | x none | in Tracker calls s | in finish s "
          "| writer CPU s | of it before the run opened s | bound: % of wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        wall_x, cpu_x = (statistics.median(ratios(variant, k)) for k in ("wall", "cpu"))
        keys = ("calls", "finish", "writer", "early", "bound")
        extra = "".join(f" {median(variant, k):.2f} |" if variant != "none" else " - |" for k in keys)
        print(f"| {variant} | {median(variant, 'wall'):.1f} | {wall_x:.3f} | {median(variant, 'cpu'):.1f} | {cpu_x:.3f} |{extra}")
    print()
    for variant in variants[1:]:
        per_round = ratios(variant, "wall")
        print(f"{variant}: tracking's share of wall time {(statistics.median(per_round) - 1) * 100:+.1f}% "
              f"(per round: {', '.join(f'{(x - 1) * 100:+.1f}%' for x in per_round)})")


if __name__ == "__main__":
    main()
