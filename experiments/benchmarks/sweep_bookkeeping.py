"""What the Optuna sweeper itself costs per trial, on each storage: claim (ask, mark the
worker), one heartbeat, one reap, one count, record (tell). No training: the trial's value is
its parameter. Measures the per-trial overhead the README's "Storage" section quotes.

    python experiments/benchmarks/sweep_bookkeeping.py [--trials 50] [--postgres URL]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from rnnlab import sweep


def per_trial_ms(url: str, trials: int) -> float:
    storage = sweep.open_storage(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    study = sweep.load_or_create_study(storage, name, ["minimize"], {})
    heartbeat = sweep.Heartbeat(study, interval=3600, grace=3600)  # beats only when told to
    started = time.perf_counter()
    for _ in range(trials):
        trial = sweep.claim(study, {"x": FloatDistribution(0, 1)}, heartbeat)
        heartbeat.beat()
        sweep.reap(study, grace=3600)
        sweep.count(study)
        sweep.record(study, trial, {"val_loss": trial.params["x"]}, ["val_loss"])
    elapsed = time.perf_counter() - started
    heartbeat.close()
    if "://" in url:
        optuna.delete_study(study_name=name, storage=storage)
    return elapsed / trials * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"journal file": str(Path(tmp) / "optuna.journal"), "SQLite": f"sqlite:///{tmp}/optuna.db",
                  "PostgreSQL": args.postgres}
        for label, url in stores.items():
            try:
                print(f"{label:<13} {per_trial_ms(url, args.trials):7.1f} ms per trial ({args.trials} trials)")
            except sweep.SweepError as e:
                print(f"{label:<13} skipped: {e}")


if __name__ == "__main__":
    main()
