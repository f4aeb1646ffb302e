"""A sweep's parent run, for the Optuna sweeper (hydra_plugins/rnnlab_sweeper).

Written directly, with no writer process: the sweeper is not a training loop, and it calls
these a few times per sweep. Each trial's run becomes a child through the
``mlflow.parentRunId`` tag it is created with.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rnnlab.tracking.store import TrackingError, check_reachable, one_line
from rnnlab.tracking.writer import Sender


def start_sweep_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the sweep's parent run (RUNNING) and return its id."""
    check_reachable(uri, create=True)
    try:
        sender = Sender(uri, experiment, run_name, {"mlflow.source.name": "rnnlab", **tags})
    except Exception as e:
        raise TrackingError(f"tracking.uri={uri!r}: {one_line(e)}") from None
    return sender.run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed sweep's parent run RUNNING again."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).update_run(run_id, status="RUNNING")
    except Exception as e:
        raise TrackingError(f"tracking.uri={uri!r}: cannot reopen run {run_id} ({one_line(e)})") from None


def delete_run(uri: str, run_id: str) -> None:
    """Delete a parent run another worker made redundant (two created one each at once)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).delete_run(run_id)


def log_sweep(uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path], status: str) -> None:
    """The sweep's result on its parent run: best value (a metric, stepped by the number of
    finished trials, so resumes add points), best params as tags (a resume may change them,
    and MLflow params are write-once), the summary files and figures; then end it."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    now, step = int(time.time() * 1000), int(sum(v for k, v in metrics.items() if k.startswith("trials_")))
    try:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, status)
    except Exception as e:  # the sweep's results are in its files; say so, do not crash at the end
        print(f"rnnlab: warning: MLflow parent run {run_id}: {one_line(e)}", file=sys.stderr)
