"""MLflow at the edge: the only module that imports mlflow. Params, batched metrics, artifacts,
figures.

The training process never talks to the store. ``Tracker`` puts what it is given on a queue;
a writer process imports MLflow, opens the store (a new SQLite store costs seconds), creates
the run, and sends metrics in batches (at most 1,000 per call, never one call per value). So
the store's start-up overlaps the job's own, and a slow store does not slow the steps.
``NullTracker`` has the same methods and does nothing: the job never branches on tracking.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any

MAX_METRICS_PER_CALL = 1000  # MLflow's limit for one log_batch
MAX_PARAMS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000  # MLflow rejects (or, on some stores, truncates) longer values


class TrackingError(RuntimeError):
    """The tracking store could not be reached or refused the run; one line for the user."""


def check_params(params: dict[str, Any]) -> None:
    """Refuse what MLflow would silently truncate, before anything is written."""
    for key, value in params.items():
        if len(str(value)) > MAX_PARAM_LENGTH:
            raise TrackingError(
                f"param {key!r} is {len(str(value))} characters long (MLflow allows {MAX_PARAM_LENGTH})"
            )


def local_store_dir(uri: str) -> Path | None:
    """The folder of a local SQLite store (``sqlite:///outputs/mlflow.db`` -> outputs), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def check_reachable(uri: str) -> None:
    """Cheap checks that fail fast, before training, on a store that cannot work: a local
    store's folder must be writable, a server must accept a connection. The expensive part
    (opening the store, creating the run) happens on the background thread."""
    import os
    import socket
    from urllib.parse import urlparse

    store = local_store_dir(uri)
    if store is not None:
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"tracking.uri={uri!r}: cannot create {str(store)!r} ({e.strerror})") from None
        if not os.access(store, os.W_OK):
            raise TrackingError(f"tracking.uri={uri!r}: {str(store)!r} is not writable")
    elif uri.startswith(("http://", "https://")):
        url = urlparse(uri)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=3).close()
        except OSError as e:
            raise TrackingError(f"tracking.uri={uri!r}: cannot connect to {url.hostname}:{port} ({e})") from None


class Tracker:
    """One MLflow run, fed by the training process, written by a separate writer process.

    A process, not a thread: importing MLflow and opening a store holds the GIL for seconds,
    which a thread would take from the job's own start-up and first steps. The writer also
    outlives a trainer killed with SIGKILL long enough to mark the run KILLED.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        check_reachable(uri)
        self.uri = uri
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self._work = context.Queue()
        self._replies = context.Queue()
        self._writer = context.Process(
            target=_write, args=(self._work, self._replies, uri, experiment, run_name, tags, os.getpid()),
            name="rnnlab-tracking", daemon=True,
        )
        self._writer.start()

    # Each call only queues: the training thread never waits on the store.
    def log_params(self, params: dict[str, Any]) -> None:
        check_params(params)
        self._work.put(("params", {k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._work.put(("metrics", [(k, float(v), now, step) for k, v in metrics.items()]))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._work.put(("tags", {k: str(v) for k, v in tags.items()}))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._work.put(("artifact", (str(path), artifact_path)))

    def finish(self, status: str = "FINISHED") -> None:
        """Send everything queued, retry what failed, end the run with ``status``, and wait."""
        self._work.put(("finish", status))
        while True:
            try:
                self.run_id, self.experiment_id, error = self._replies.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._writer.is_alive():
                    error = f"the tracking process died (exit code {self._writer.exitcode})"
                    break
        self._writer.join(timeout=10)
        for q in (self._work, self._replies):  # release their semaphores now, not at exit
            q.close()
            q.join_thread()
        if error is not None:
            raise TrackingError(f"tracking.uri={self.uri!r}: {error}")


def _write(work: Any, replies: Any, uri: str, experiment: str, run_name: str, tags: dict[str, str], parent: int) -> None:
    """The writer process: open the store, create the run, send batches until told to finish.
    If the trainer dies without saying so (SIGKILL), end the run as KILLED."""
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the trainer decides how
    # the run ends and says so; the writer must live to write it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sender: Sender | None = Sender(uri, experiment, run_name, tags)
        error = None
    except Exception as e:
        sender, error = None, _one_line(e)
    while True:
        try:
            items = [work.get(timeout=1.0)]
        except queue.Empty:
            if os.getppid() != parent:  # the trainer is gone
                if sender is not None:
                    sender.finish("KILLED")
                return
            continue
        while items[-1][0] != "finish":  # drain what is queued, so metrics go in few calls
            try:
                items.append(work.get_nowait())
            except queue.Empty:
                break
        if sender is not None:
            sender.send(items)
        if items[-1][0] == "finish":
            if sender is not None:
                sender.finish(items[-1][1])
            replies.put((sender and sender.run_id, sender and sender.experiment_id, error))
            return


class Sender:
    """Talks to the store: creates the run, sends queued work in batches (at most 1,000
    metrics a call, never one call per value), warns once on a failed call and retries its
    work once at the end."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.experiment_id = self._experiment_id(experiment)
        self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        self.failed: list[tuple[str, Any]] = []
        self.warned = False

    def send(self, work: list[tuple[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [m for kind, payload in work if kind == "metrics" for m in payload]
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            chunk = metrics[i : i + MAX_METRICS_PER_CALL]
            batch = [Metric(k, v, ts, step) for k, v, ts, step in chunk]
            self._call(lambda: self.client.log_batch(self.run_id, metrics=batch), ("metrics", chunk))
        for kind, payload in work:
            if kind == "params":
                items = list(payload.items())
                for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                    part = dict(items[i : i + MAX_PARAMS_PER_CALL])
                    batch = [Param(k, v) for k, v in part.items()]
                    self._call(lambda: self.client.log_batch(self.run_id, params=batch), ("params", part))
            elif kind == "tags":
                batch = [RunTag(k, v) for k, v in payload.items()]
                self._call(lambda: self.client.log_batch(self.run_id, tags=batch), (kind, payload))
            elif kind == "artifact":
                path, artifact_path = payload
                self._call(lambda: self.client.log_artifact(self.run_id, path, artifact_path), (kind, payload))

    def finish(self, status: str) -> None:
        retry, self.failed = self.failed, []
        self.send(retry)
        if self.failed:
            print(f"rnnlab: warning: {len(self.failed)} MLflow call(s) failed twice; "
                  "their data is not in the run", file=sys.stderr)
        self._call(lambda: self.client.set_terminated(self.run_id, status), None)

    def _call(self, send: Any, work: tuple[str, Any] | None) -> None:
        """A failed call never kills training: warn once, keep the work for one retry at the end."""
        try:
            send()
        except Exception as e:
            if work is not None:
                self.failed.append(work)
            if not self.warned:
                self.warned = True
                print(f"rnnlab: warning: MLflow call failed ({_one_line(e)}); will retry at the end", file=sys.stderr)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        store = local_store_dir(self.uri)
        # A local store keeps its artifacts beside it (outputs/mlartifacts), not in the cwd.
        location = (store / "mlartifacts").resolve().as_uri() if store is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


class NullTracker:
    """Tracking off: the same methods, doing nothing."""

    run_id = None
    experiment_id = None
    uri = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {uri}" if uri.startswith(("sqlite:", "postgresql", "mysql")) else uri


def plot_predictions(
    time_axis: Any, truth: Any, predictions: dict[str, Any], path: Path, title: str, unit: str = ""
) -> Path:
    """A PNG of truth and each prediction over a stretch of the test split."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4), layout="constrained")
    ax.plot(time_axis, truth, color="black", lw=1.6, label="truth")
    for (name, values), style in zip(predictions.items(), ["-", "--", ":"]):
        ax.plot(time_axis, values, style, lw=1.1, label=name)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.legend(loc="upper right", ncols=len(predictions) + 1)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------- sweeps: the parent run
# A sweep's parent run is written directly (no writer process): the sweeper is not a training
# loop, and it calls these a few times per sweep. Each trial's run becomes a child through the
# `mlflow.parentRunId` tag it is created with.


def start_sweep_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the sweep's parent run (RUNNING) and return its id."""
    check_reachable(uri)
    try:
        sender = Sender(uri, experiment, run_name, {"mlflow.source.name": "rnnlab", **tags})
    except Exception as e:
        raise TrackingError(f"tracking.uri={uri!r}: {_one_line(e)}") from None
    return sender.run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed sweep's parent run RUNNING again."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).update_run(run_id, status="RUNNING")
    except Exception as e:
        raise TrackingError(f"tracking.uri={uri!r}: cannot reopen run {run_id} ({_one_line(e)})") from None


def delete_run(uri: str, run_id: str) -> None:
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
        print(f"rnnlab: warning: MLflow parent run {run_id}: {_one_line(e)}", file=sys.stderr)
