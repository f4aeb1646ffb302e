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

    python experiments/benchmarks/tracking.py --async-logging [--rounds 3]

compares rnnlab's writer process with MLflow 3's async logging in the trainer's process, on an
emulated default run (its variants and what they emulate: the comment above ``ASYNC_VARIANTS``).
One run of it, 2026-12-02, 2-CPU AMD EPYC VM shared with other jobs (``uptime`` load average
3.84 before, 4.75 after), torch 2.13.0+cpu with 2 threads, 3 interleaved rounds, medians:

| tracking | wall s | x none | + s | CPU s | x none | launch to first step s | of it opening s | training loop s | x none | finish s | metrics delivered |
|---|---|---|---|---|---|---|---|---|---|---|---|
| none | 27.15 | 1.000 | +0.00 | 13.77 | 1.000 | 7.72 | 0.03 | 18.39 | 1.000 | 0.00 | - |
| writer | 32.95 | 1.213 | +5.79 | 18.96 | 1.377 | 11.08 | 0.00 | 17.31 | 0.941 | 1.01 | all |
| async | 30.06 | 1.413 | +2.91 | 20.43 | 1.800 | 13.44 | 6.80 | 10.66 | 0.813 | 3.58 | all |
| async, 5 s | 20.23 | 0.745 | -6.92 | 15.24 | 1.114 | 6.73 | 3.21 | 7.61 | 0.414 | 3.07 | all |
| writer, slow store | 25.44 | 0.959 | -1.71 | 15.54 | 1.369 | 8.97 | 0.00 | 10.03 | 0.765 | 2.18 | all |
| async, 5 s, slow store | 18.80 | 0.552 | -8.35 | 12.23 | 0.744 | 6.91 | 3.33 | 4.70 | 0.304 | 2.17 | all |

The other jobs' load swung during it: the same training loop (identical work in every
variant) took 0.54 to 32 s, so wall, CPU and training-loop ratios are that swing, not
tracking. What reads through it is what each variant puts on the trainer's own path: opening
the run (MLflow's import and the run's creation: 0.00 s with the writer process, 2.4-7.1 s in
process) and waiting in finish (writer 0.96-1.06 s; async 0.95-5.0 s, 0.5-5.9 s buffered).
Nothing was lost in any variant. Against a store 100 ms away the finishes were alike (2.18 and
2.17 s). rnnlab keeps the writer process (rnnlab/tracking/writer.py says why).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_run(variant: str, folder: Path, epochs: int, threads: int, code: str | None, store: Path | None) -> dict[str, float]:
    """One default run in a fresh process; wall and CPU seconds, plus the tracking line of its log file.
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
    log = folder / "run" / "__main__.log"  # the run's log file keeps the tracking line (the terminal does not)
    found = re.search(r"tracking: ([\d.]+) s in calls, ([\d.]+) s in finish, writer ([\d.]+) s CPU"
                      r" \(([\d.]+) s before the run opened\)", log.read_text() if log.is_file() else "")
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
    parser.add_argument("--async-logging", action="store_true",
                        help="the writer process against MLflow's async logging, on an emulated trainer (see below)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one emulated run: the tracker to use
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both variants (order alternates: A B, B A, ...)")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs (10: the default run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the runs (trial.threads; 0: torch's default)")
    parser.add_argument("--store", choices=("existing", "fresh"), default="existing",
                        help="existing: every run logs to one store created up front, as the default run's "
                             "outputs/mlflow.db is after the first run; fresh: a new store per run (migrations included)")
    parser.add_argument("--before", metavar="DIR", nargs="*", default=[],
                        help="also run tracking=mlflow with the rnnlab of these checkouts")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(emulated_run(args.child, args.uri)))
        return
    if args.async_logging:
        return against_async(args.rounds)
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

    import torch

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


# ------------------------------------------ the writer process against MLflow 3's async logging
# ``--async-logging``: one emulated default run per variant and round, each a fresh process
# launched by this one. The trainer is emulated (a CPU-bound torch loop on torch's default
# threads, 0.2 ms a step on an idle VM instead of the real ~33 ms, so that 18 runs take ~3
# minutes there; 7.5 under a load average of 4); what
# it logs is the default run's, call for call: 49 params, 22 probe metrics every 10 steps, 7
# epoch metrics per epoch, 9 final ones, three artifacts. Its start-up is emulated as well:
# torch's import, then 2 s of single-threaded Python (Hydra, Numba, the data), so the real
# run's ~3 s from launch to first step. Since the training is ~20x shorter than the real
# one's, read the seconds each variant adds, not its ratio: those are what the real run pays.
#
#   writer          rnnlab's writer process, started at launch (as python -m rnnlab does)
#   async           MLflow's async logging in the trainer: MlflowClient.log_batch(...,
#                   synchronous=False) per log call (what mlflow.config.enable_async_logging()
#                   makes the fluent API do); MLflow imported and the run created when the run
#                   opens, after the start-up; artifacts synchronous; finish waits for every call
#   async, 5 s      the same with MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=5: MLflow merges what
#                   arrived in 5 s into calls of up to 1,000 values, as the writer batches
#   ..., slow store every call on the store first sleeps 100 ms (a remote server's round trip)
#
# Every run's metrics are counted in the store afterwards: a variant that loses some says so.
STEPS_PER_EPOCH, EPOCHS, PROBE_EVERY = 287, 10, 10  # the default run: 18,362 training windows / 64
PROBE_KEYS, EPOCH_KEYS, FINAL_KEYS, N_PARAMS = 22, 7, 9, 49
STARTUP_SECONDS = 2.0  # the job's own start-up after torch's import: Hydra, Numba, the data
STEP_MATMULS = 1  # (64, 256) @ (256, 256), then tanh: the step's torch work
SLOW_STORE = "RNNLAB_BENCH_STORE_LATENCY"  # seconds each store call waits first
EXPERIMENT = "bench"
ASYNC_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {  # name: (tracker, environment)
    "none": ("none", {}),
    "writer": ("writer", {}),
    "async": ("async", {}),
    "async, 5 s": ("async", {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "5"}),
    "writer, slow store": ("writer", {SLOW_STORE: "0.1"}),
    "async, 5 s, slow store": ("async", {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "5", SLOW_STORE: "0.1"}),
}


def _slow_store(seconds: float) -> None:
    """Every call on the SQLite store waits ``seconds`` first, with the GIL released, as a call
    to a remote tracking server waits on its socket."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for name in ("log_batch", "create_run", "update_run_info", "get_run", "get_experiment_by_name",
                 "search_experiments", "search_runs"):
        def slow(self: Any, *args: Any, _call: Any = getattr(SqlAlchemyStore, name), **kwargs: Any) -> Any:
            time.sleep(seconds)
            return _call(self, *args, **kwargs)

        setattr(SqlAlchemyStore, name, slow)


# The writer process is spawned: it runs this file again, as __mp_main__, before it starts
# (which is why this file imports only the standard library at the top). Its store is slowed here.
if __name__ == "__mp_main__" and os.environ.get(SLOW_STORE):
    _slow_store(float(os.environ[SLOW_STORE]))


class AsyncTracker:
    """Tracker's methods on MLflow 3's async logging, in the trainer's own process: each call is
    queued for MLflow's logging thread, which sends it from a pool of worker threads."""

    def __init__(self, uri: str) -> None:
        from rnnlab.tracking.store import quiet_mlflow

        quiet_mlflow()
        from mlflow.tracking import MlflowClient

        if os.environ.get(SLOW_STORE):
            _slow_store(float(os.environ[SLOW_STORE]))
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        self.run_id = self.client.create_run(experiment, run_name="async").info.run_id
        self.operations: list[Any] = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.operations.append(self.client.log_batch(
            self.run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=False))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.operations.append(self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()], synchronous=False))

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        for operation in self.operations:
            operation.wait()  # raises if a call failed
        self.client.set_terminated(self.run_id, status)


def emulated_run(tracker_kind: str, uri: str) -> dict[str, Any]:
    """One emulated default run in this process (see above); its own timings, in seconds."""
    launched = time.perf_counter()
    writer = None
    if tracker_kind == "writer":
        from rnnlab.tracking.writer import Writer

        writer = Writer(uri)  # at launch, before anything else, as python -m rnnlab does
    import torch

    busy = time.thread_time()
    while time.thread_time() - busy < STARTUP_SECONDS:  # the job's own single-threaded start-up
        sum(range(1000))
    opening = time.perf_counter()
    if tracker_kind == "writer":
        from rnnlab.tracking import Tracker

        tracker: Any = Tracker(uri, EXPERIMENT, "writer", tags={}, spool_dir=Path.cwd(), writer=writer)
    elif tracker_kind == "async":
        tracker = AsyncTracker(uri)
    else:
        from rnnlab.tracking import NullTracker

        tracker = NullTracker()
    opened = time.perf_counter()
    tracker.log_params({f"param_{i}": f"value {i}" for i in range(N_PARAMS)})
    x, w = torch.randn(64, 256), torch.randn(256, 256) / 16
    step = 0
    for epoch in range(1, EPOCHS + 1):
        for _ in range(STEPS_PER_EPOCH):
            h = x
            for _ in range(STEP_MATMULS):
                h = torch.tanh(h @ w)
            step += 1
            if step % PROBE_EVERY == 0:
                tracker.log_metrics({f"probe/k{i}": step + i / 100 for i in range(PROBE_KEYS)}, step)
        tracker.log_metrics({f"epoch/k{i}": epoch + i / 100 for i in range(EPOCH_KEYS)}, epoch)
    trained = time.perf_counter()
    tracker.log_metrics({f"final/k{i}": float(i) for i in range(FINAL_KEYS)}, step)
    for name, size in (("model.pt", 600_000), ("gradient_heatmaps.png", 80_000), ("gradient_decay.png", 50_000)):
        Path(name).write_bytes(os.urandom(size))
        tracker.log_artifact(Path.cwd() / name)
    ending = time.perf_counter()
    tracker.finish("FINISHED")
    done = time.perf_counter()
    return {"startup": opened - launched, "open": opened - opening, "train": trained - opened,
            "finish": done - ending, "run_id": tracker.run_id}


def against_async(rounds: int) -> None:
    import sqlite3

    root = Path(__file__).resolve().parents[2]
    expected = STEPS_PER_EPOCH * EPOCHS // PROBE_EVERY * PROBE_KEYS + EPOCHS * EPOCH_KEYS + FINAL_KEYS
    variants = list(ASYNC_VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"
        uri = f"sqlite:///{store}"
        subprocess.run([sys.executable, "-c", f"""
from mlflow.tracking import MlflowClient
MlflowClient({uri!r}).create_experiment({EXPERIMENT!r}, artifact_location={(Path(tmp) / 'mlartifacts').as_uri()!r})
"""], check=True)  # the store exists, as outputs/mlflow.db does after a first run
        for r in range(rounds):
            for i, variant in enumerate(variants if r % 2 == 0 else variants[::-1]):
                folder = Path(tmp) / f"{r}-{i}"
                folder.mkdir()
                tracker, env = ASYNC_VARIANTS[variant]
                env = {**os.environ, **env, "PYTHONPATH": str(root)}  # this checkout's rnnlab
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--child", tracker, "--uri", uri],
                                     cwd=folder, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the writer process too
                if out.returncode != 0:
                    raise SystemExit(f"{variant} failed ({out.returncode}):\n{out.stderr[-3000:]}")
                row = {**json.loads(out.stdout.splitlines()[-1]), "wall": wall,
                       "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
                runs[variant].append(row)
                print(f"round {r + 1} {variant:<24}" + "".join(f" {k} {v:.2f}" for k, v in row.items()
                                                              if isinstance(v, float)), flush=True)
        with sqlite3.connect(store) as db:  # what arrived, counted once every run has ended
            for row in (row for rows in runs.values() for row in rows if row["run_id"]):
                row["delivered"] = db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?",
                                              (row["run_id"],)).fetchone()[0]
    load_after = os.getloadavg()

    def median(variant: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[variant])

    def ratio(variant: str, key: str) -> float:  # per round (the same conditions), then the median
        return statistics.median(a[key] / b[key] for a, b in zip(runs[variant], runs["none"]))

    import torch

    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {rounds} interleaved rounds, medians; "
          f"{expected} metric values a run\n")
    print("| tracking | wall s | x none | + s | CPU s | x none | launch to first step s | of it opening s "
          "| training loop s | x none | finish s | metrics delivered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        delivered = [row.get("delivered") for row in runs[variant]]
        lost = "-" if variant == "none" else ("all" if all(d == expected for d in delivered) else f"{delivered}")
        print(f"| {variant} | {median(variant, 'wall'):.2f} | {ratio(variant, 'wall'):.3f} "
              f"| {median(variant, 'wall') - median('none', 'wall'):+.2f} | {median(variant, 'cpu'):.2f} "
              f"| {ratio(variant, 'cpu'):.3f} | {median(variant, 'startup'):.2f} | {median(variant, 'open'):.2f} "
              f"| {median(variant, 'train'):.2f} | {ratio(variant, 'train'):.3f} | {median(variant, 'finish'):.2f} | {lost} |")


if __name__ == "__main__":
    main()
