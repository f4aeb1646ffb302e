"""MLflow at the edge: what a training run needs to be tracked. The package is the only part
of rnnlab that imports MLflow, and only inside functions, so importing it costs nothing.

    rnnlab/tracking/
      __init__.py    Tracker and NullTracker (this file), and the checks a run makes first
      store.py       the store: rnnlab's error for it, its limits, one unit of work as one call
      writer.py      the writer process that does all of a run's talking to the store
      recovery.py    the spool file of undelivered work, its replay, and the reaper
      queries.py     reading runs back: compare's gradient runs, the run a resume continues
      parent_run.py  a sweep's parent run, written directly by the sweeper

The training process never talks to the store. ``Tracker`` puts what it is given on a queue;
a writer process imports MLflow, opens the store, creates the run, and sends what arrived every
few seconds in batches. So the store's start-up overlaps the job's own, and the steps never wait
on the store. ``NullTracker`` has the same methods and does nothing: the job never branches on
tracking. Why a process rather than MLflow's own async logging, with the numbers:
rnnlab/tracking/writer.py.
"""
from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

from rnnlab.tracking.recovery import SPOOL
from rnnlab.tracking.store import TrackingError, check_params, check_reachable, local_store_dir, ui_rows
from rnnlab.tracking.writer import BATCH_SECONDS, Writer

__all__ = [
    "NullTracker", "Tracker", "TrackingError", "check_params", "check_reachable", "local_store_dir", "ui_rows",
]


class Tracker:
    """One MLflow run, fed by the training process, written by a separate writer process.

    A process, not a thread (MLflow's async logging is one): importing MLflow and opening a
    store holds the GIL for seconds, which in-process took 2.4-7 s from the trainer's start-up
    (rnnlab/tracking/writer.py has the measurement). Every method only
    queues, so training never waits on the store, even while the store is down (the writer
    spools and replays). The writer also outlives a trainer killed with SIGKILL long enough
    to mark the run KILLED. ``run_id`` continues an existing run (resume).

    Its own accounting, for the run's summary: ``call_seconds`` the trainer spent inside these
    methods (and starting the writer), ``finish_seconds`` it waited in ``finish`` for the last
    delivery, ``writer_cpu_seconds`` the writer process's CPU time (known after ``finish``), of
    which ``writer_cpu_before_open`` was spent before the run was opened (an early ``Writer``'s
    MLflow import, while the job was still starting up).
    """

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: dict[str, str],
        run_id: str | None = None, spool_dir: Path | None = None, batch_seconds: float = BATCH_SECONDS,
        writer: Writer | None = None,
    ) -> None:
        started = time.perf_counter()
        self.call_seconds = self.finish_seconds = 0.0
        self.writer_cpu_seconds: float | None = None
        self.writer_cpu_before_open: float | None = None  # its MLflow import, during the job's start-up
        check_reachable(uri, create=True)
        self.uri = uri
        self._run_id = run_id
        self.experiment_id: str | None = None
        writer = writer or Writer()
        self._owner = writer
        self._work, self._replies, self._writer = writer.work, writer.replies, writer.process
        spool = str(Path(spool_dir) / SPOOL) if spool_dir is not None else None
        writer.open(uri, experiment, run_name, tags, run_id, spool, batch_seconds, time.time())
        self._error: str | None = None
        self._finished = False
        self.call_seconds += time.perf_counter() - started

    @property
    def run_id(self) -> str | None:
        """The run's id once the writer has created (or reopened) it; None until then."""
        started = time.perf_counter()
        while not self._finished and (self._run_id is None or self.experiment_id is None):
            try:
                self._note(self._replies.get_nowait())
            except queue.Empty:
                break
        self.call_seconds += time.perf_counter() - started
        return self._run_id

    def check(self) -> None:
        """Raise the store's refusal of the run (a TrackingError), once the writer has reported
        one: without this a run the store refused (a read-only database, a run id that is not
        there) trained to the end untracked. A store that is only unreachable is no refusal:
        the writer retries it. Never waits."""
        if self.run_id is None and self._error is not None:
            raise TrackingError(f"tracking.uri={self.uri!r}: {self._error}")

    # Each call only queues: the training thread never waits on the store.
    def log_params(self, params: dict[str, Any]) -> None:
        check_params(params)
        self._put(("params", {k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._put(("metrics", [(k, float(v), now, step) for k, v in metrics.items()]))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put(("tags", {k: str(v) for k, v in tags.items()}))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._put(("artifact", (str(path), artifact_path)))

    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        """Deliver what is queued, end the run with ``status``, and wait up to ``timeout``
        seconds (what is still undelivered then stays in the spool file for a replay)."""
        started = time.perf_counter()
        try:
            self._finish(status, timeout)
        finally:
            self.finish_seconds += time.perf_counter() - started

    def _put(self, item: tuple[str, Any]) -> None:
        assert self._work is not None, "this run's tracking has finished"
        started = time.perf_counter()
        self._work.put(item)
        self.call_seconds += time.perf_counter() - started

    def _note(self, reply: tuple[str, str | None, str | None, str | None, float | None]) -> str:
        """Take in one of the writer's replies ("started" or "done"); returns its kind."""
        kind, run_id, experiment_id, error, cpu = reply
        self._run_id, self.experiment_id = run_id or self._run_id, experiment_id or self.experiment_id
        self._error = self._error or error
        if kind == "started":
            self.writer_cpu_before_open = cpu
        else:
            self.writer_cpu_seconds = cpu
        return kind

    def _finish(self, status: str, timeout: float) -> None:
        self._work.put(("finish", (status, timeout)))
        error = self._wait_for_done(time.monotonic() + timeout + 0.5)
        self._writer.join(timeout=1)  # it leaves right after its reply (os._exit)
        self._finished = True
        for q in (self._work, self._replies):
            q.close()
            q.join_thread()
        # Let go of the queues, so their named semaphores are unlinked now: a run stopped by a
        # signal leaves with os._exit, which skips multiprocessing's finalizers, and its
        # resource tracker then warned of "6 leaked semaphore objects".
        self._work = self._replies = self._owner.work = self._owner.replies = None
        if error is not None:
            raise TrackingError(f"tracking.uri={self.uri!r}: {error}")

    def _wait_for_done(self, deadline: float) -> str | None:
        """Wait for the writer's "done"; returns the run's error, if any. A writer still at it
        after the deadline goes on alone (the spool keeps what it could not send)."""
        while True:
            try:
                if self._note(self._replies.get(timeout=1.0)) == "done":
                    return self._error
            except queue.Empty:
                if not self._writer.is_alive():
                    return self._error or f"the tracking process died (exit code {self._writer.exitcode})"
                if time.monotonic() > deadline:
                    return None


class NullTracker:
    """Tracking off: the same methods, doing nothing."""

    run_id = None
    experiment_id = None
    uri = None

    def check(self) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None: ...
