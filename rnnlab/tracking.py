"""MLflow at the edge: the only module that imports mlflow. Params, batched metrics, artifacts,
figures.

The training process never talks to the store. ``Tracker`` puts what it is given on a queue;
a writer process imports MLflow, opens the store (a new SQLite store costs seconds), creates
the run, and sends what arrived every few seconds in batches (at most 1,000 metrics per call,
never one call per value). So the store's start-up overlaps the job's own, and a slow store
does not slow the steps. ``NullTracker`` has the same methods and does nothing: the job never
branches on tracking.

What it costs (experiments/benchmarks/tracking.py): on SQLite a log_batch call costs ~5 ms
of CPU plus ~0.07 ms per metric, so the writer collects for ``BATCH_SECONDS`` and sends once;
once the store is open it runs at a lower priority (``WRITER_NICENESS``) so that, on a
machine whose cores torch keeps busy, it takes idle moments rather than a torch thread's slice;
and it leaves with ``os._exit`` once the store has everything, skipping the ~0.8 s an
interpreter with MLflow loaded takes to shut down, which the trainer would wait out.
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


def check_reachable(uri: str, create: bool = False) -> None:
    """Cheap checks that fail fast, before training, on a store that cannot work: a local
    store's folder must be writable, a server must accept a connection. The expensive part
    (opening the store, creating the run) happens on the background thread."""
    import os
    import socket
    from urllib.parse import urlparse

    store = local_store_dir(uri)
    if store is not None:  # checked, not created: a run that is refused later must leave nothing behind
        existing = next(p for p in [store.absolute(), *store.absolute().parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise TrackingError(f"tracking.uri={uri!r}: cannot create {str(store)!r} ({str(existing)!r} is not a writable folder)")
        if create:  # the run or the sweep is opening it now
            try:
                store.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"tracking.uri={uri!r}: cannot create {str(store)!r} ({e.strerror})") from None
    elif uri.startswith(("http://", "https://")):
        url = urlparse(uri)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=3).close()
        except OSError as e:
            raise TrackingError(f"tracking.uri={uri!r}: cannot connect to {url.hostname}:{port} ({e})") from None


BATCH_SECONDS = 5.0  # the writer sends what arrived this often (and everything at the end)
WRITER_NICENESS = 10  # the writer's work is never urgent until the end, when the trainer is idle
HEARTBEAT_SECONDS = 30.0  # the writer stamps rnnlab.heartbeat this often while the trainer lives
RETRY_SECONDS = 5.0  # how often the writer retries a store that went away
SPOOL = "tracking-spool.jsonl"  # undelivered work, beside the run's other files, until delivered


class Writer:
    """The writer process, started before the job knows its run: it imports MLflow (~1.4 s of
    CPU) on the idle core while the job does its own single-threaded start-up (torch, data,
    model), and connects to ``uri`` if that is a SQLite file that already exists (~0.7 s more;
    it only reads), then waits to be told which store and run to open. ``Tracker(..., writer=...)``
    takes it over; ``close()`` lets it go unused (a rejected run: it opened nothing, so
    nothing is written)."""

    def __init__(self, uri: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self.work = context.Queue()
        self.replies = context.Queue()
        self.process = context.Process(
            target=_write, args=(self.work, self.replies, os.getpid()), name="rnnlab-tracking", daemon=True
        )
        self.process.start()
        self.opened = False
        if uri is not None:
            self.connect(uri)

    def connect(self, uri: str) -> None:
        """For a writer started before the store was known: connect now if it exists (as above)."""
        self.work.put(("connect", uri))

    def open(self, *run: Any) -> None:
        """Open the store and the run: (uri, experiment, run_name, tags, run_id, spool,
        batch_seconds, the trainer's time.time() when it asked)."""
        self.work.put(("open", run))
        self.opened = True

    def close(self) -> None:
        """Let an unopened writer go. It has opened nothing and has nothing to send, so it is
        killed at once rather than waited for (it may still be importing MLflow), and killed
        rather than terminated: it ignores SIGTERM, so multiprocessing's exit handler, which
        terminates and then joins daemonic children, would wait on it forever."""
        assert not self.opened, "an opened writer ends through Tracker.finish"
        self.process.kill()
        self.process.join()
        for q in (self.work, self.replies):
            q.close()
            q.join_thread()


class Tracker:
    """One MLflow run, fed by the training process, written by a separate writer process.

    A process, not a thread: importing MLflow and opening a store holds the GIL for seconds,
    which a thread would take from the job's own start-up and first steps. Every method only
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

    def _put(self, item: tuple[str, Any]) -> None:
        started = time.perf_counter()
        self._work.put(item)
        self.call_seconds += time.perf_counter() - started

    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        """Deliver what is queued, end the run with ``status``, and wait up to ``timeout``
        seconds (what is still undelivered then stays in the spool file for a replay)."""
        started = time.perf_counter()
        try:
            self._finish(status, timeout)
        finally:
            self.finish_seconds += time.perf_counter() - started

    def _finish(self, status: str, timeout: float) -> None:
        self._work.put(("finish", (status, timeout)))
        deadline = time.monotonic() + timeout + 0.5
        while True:
            try:
                kind = self._note(self._replies.get(timeout=1.0))
            except queue.Empty:
                if not self._writer.is_alive():
                    error = self._error or f"the tracking process died (exit code {self._writer.exitcode})"
                    break
                if time.monotonic() > deadline:
                    error = None  # the writer goes on alone; the spool keeps what it could not send
                    break
                continue
            if kind == "done":
                error = self._error
                break
        self._writer.join(timeout=1)  # it leaves right after its reply (os._exit)
        self._finished = True
        for q in (self._work, self._replies):  # release their semaphores now, not at exit
            q.close()
            q.join_thread()
        if error is not None:
            raise TrackingError(f"tracking.uri={self.uri!r}: {error}")


def _write(work: Any, replies: Any, parent: int) -> None:
    """The writer process: import MLflow, wait to be told the store and run (or be killed), open
    the store, create (or reopen) the run, send what arrived every ``batch_seconds`` until
    told to finish, stamp a heartbeat, and retry a store that went away. If the trainer dies
    without saying so (SIGKILL), end the run as KILLED."""
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the trainer decides how
    # the run ends and says so; the writer must live to write it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # MLflow's HTTP client retries for ~4 minutes by default; here a failed call is spooled
    # and retried by the writer, so each attempt should fail fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    _quiet_mlflow()  # the import, while the trainer starts up (see Writer)
    early_uri, client = None, None
    while True:
        try:
            kind, payload = work.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(0)
            continue
        if kind != "connect":
            break
        early_uri = payload
        client = _connect_if_it_exists(early_uri)
    if kind != "open":  # nothing else comes before the open
        os._exit(1)
    uri, experiment, run_name, tags, run_id, spool, batch_seconds, asked_at = payload
    # The CPU spent while the trainer was still starting up. If the trainer asked while this
    # process was still importing or connecting, that last stretch overlapped training: count
    # it (at most its wall time) as after the open.
    cpu_at_open = max(0.0, time.process_time() - max(0.0, time.time() - asked_at))
    try:
        sender: Sender | None = Sender(uri, experiment, run_name, tags, run_id, spool,
                                       client=client if uri == early_uri else None)
        replies.put(("started", sender.run_id, sender.experiment_id, None, cpu_at_open))
    except Exception as e:
        sender = None
        replies.put(("started", None, None, _one_line(e), cpu_at_open))
    # Lower priority only now that the store is open: niced from the start, the import and
    # the store's creation (~3 s of CPU) were spread over the first epochs in small slices,
    # each a torch thread's stall (measured: +23% wall against +7% this way, 3-epoch runs).
    os.nice(WRITER_NICENESS)
    waiting: list[tuple[str, Any]] = []  # arrived, in order, not yet sent
    last_send = time.monotonic()
    while True:
        try:
            waiting.append(work.get(timeout=1.0))
        except queue.Empty:
            if os.getppid() != parent:  # the trainer is gone: what it queued is still delivered
                waiting.append(("finish", ("KILLED", 30.0)))
        else:
            while waiting[-1][0] != "finish":  # drain what is queued
                try:
                    waiting.append(work.get_nowait())
                except queue.Empty:
                    break
        finishing = bool(waiting) and waiting[-1][0] == "finish"
        if sender is None:  # no run to write to (the error is in the "started" reply)
            if finishing:
                replies.put(("done", None, None, None, time.process_time()))
                _leave(replies)
            waiting.clear()
            continue
        # A log_batch call costs more than the metrics in it: send every few seconds, not on
        # every arrival (a probe every 10 steps would otherwise be ~300 calls in a default run).
        if waiting and (finishing or time.monotonic() - last_send >= batch_seconds):
            sender.send([item for item in waiting if item[0] != "finish"])
            last_send = time.monotonic()
            if finishing:
                status, timeout = waiting[-1][1]
                sender.finish(status, timeout)
                replies.put(("done", sender.run_id, sender.experiment_id, None, time.process_time()))
                _leave(replies)
            waiting.clear()
        sender.tick()


def _connect_if_it_exists(uri: str | None) -> Any:
    """An MlflowClient for a SQLite store that already exists, else None. Connecting checks the
    schema (~0.7 s of CPU) and writes nothing to a store that has its tables; a missing file it
    would create, and another database it might migrate, so those wait for the run's go-ahead."""
    store = local_store_dir(uri) if uri else None
    if store is None or not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        return client
    except Exception:  # the real attempt, after "open", reports what is wrong
        return None


def _leave(replies: Any) -> None:
    """End the writer at once, its last reply on its way: everything is in the store (or the
    spool), and a normal exit would spend ~0.8 s tearing MLflow's modules down while the
    trainer waits to join it."""
    replies.close()
    replies.join_thread()  # the reply is in the pipe
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Sender:
    """Talks to the store. Sends work in order and in batches (at most 1,000 metrics a call,
    never one call per value). When a call fails, that work and everything after it wait in
    ``pending`` (and in the spool file, should this process die too) and are retried every
    few seconds, in order, so nothing is lost or reordered across an outage."""

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: dict[str, str],
        run_id: str | None = None, spool: str | None = None, client: Any = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()
        self.uri = uri
        self.client = client or MlflowClient(uri)
        self.spool = Path(spool) if spool else None
        self.pending: list[tuple[str, Any]] = []
        self.warned = False
        self.last_try = self.last_beat = 0.0
        if run_id is None and "rnnlab.run_key" in tags:
            # A checkpoint saved before its run existed knows the run only by the trainer's key.
            run_id = _opening(lambda: find_run(self.client, tags["rnnlab.run_key"]))
        if run_id is None:
            self.experiment_id = _opening(lambda: self._experiment_id(experiment))
            self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        else:  # resume: the same run goes on
            self.run_id = run_id
            self.experiment_id = _opening(lambda: self.client.get_run(run_id).info.experiment_id)
            self.client.update_run(run_id, status="RUNNING")
            self._deliver([("tags", tags)])
        self.tick()

    def send(self, work: list[tuple[str, Any]]) -> None:
        if self.pending:  # an outage is on: keep the order, try again on the next tick
            self.pending += work
            self._write_spool()
            return
        self._deliver(work)

    def tick(self) -> None:
        """Called about once a second: retry pending work, stamp the heartbeat."""
        now = time.monotonic()
        if self.pending and now - self.last_try >= RETRY_SECONDS:
            retry, self.pending = self.pending, []
            self._deliver(retry)
        if not self.pending and now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            beat = {"rnnlab.heartbeat": str(int(time.time())), "rnnlab.heartbeat_interval": str(int(HEARTBEAT_SECONDS))}
            self._deliver([("tags", beat)])

    def finish(self, status: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
            self.last_try = 0.0
            self.tick()
        self.send([("status", status)])
        if self.pending:
            print(f"rnnlab: warning: the tracking store is unreachable; {len(self.pending)} item(s) "
                  f"are kept in {self.spool} (python -m rnnlab.reap --replay sends them)", file=sys.stderr)
        elif self.spool is not None:
            self.spool.unlink(missing_ok=True)

    def _deliver(self, work: list[tuple[str, Any]]) -> None:
        """Send work in order; on the first failure keep it and the rest pending."""
        self.last_try = time.monotonic()
        for i, (kind, payload) in enumerate(self._batched(work)):
            try:
                self._send_one(kind, payload)
            except Exception as e:
                self.pending = list(self._batched(work))[i:]
                self._write_spool()
                if not self.warned:
                    self.warned = True
                    print(f"rnnlab: warning: MLflow call failed ({_one_line(e)}); "
                          f"retrying every {RETRY_SECONDS:.0f} s, training goes on", file=sys.stderr)
                return
        if self.spool is not None and self.spool.exists():
            self.spool.unlink()

    @staticmethod
    def _batched(work: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Merge consecutive metrics into calls of at most 1,000; split params into 100s."""
        out: list[tuple[str, Any]] = []
        for kind, payload in work:
            if kind == "metrics" and out and out[-1][0] == "metrics" and len(out[-1][1]) + len(payload) <= MAX_METRICS_PER_CALL:
                out[-1] = ("metrics", out[-1][1] + list(payload))
            elif kind == "metrics":
                payload = list(payload)
                out += [("metrics", payload[i : i + MAX_METRICS_PER_CALL]) for i in range(0, len(payload), MAX_METRICS_PER_CALL)]
            elif kind == "params":
                items = list(payload.items())
                out += [("params", dict(items[i : i + MAX_PARAMS_PER_CALL])) for i in range(0, len(items), MAX_PARAMS_PER_CALL)]
            else:
                out.append((kind, payload))
        return out

    def _send_one(self, kind: str, payload: Any) -> None:
        _send(self.client, self.run_id, kind, payload)

    def _write_spool(self) -> None:
        if self.spool is None:
            return
        import json

        lines = [json.dumps({"uri": self.uri, "run_id": self.run_id})]
        lines += [json.dumps([kind, payload]) for kind, payload in self.pending]
        temp = self.spool.with_suffix(".tmp")
        temp.write_text("\n".join(lines) + "\n")
        os.replace(temp, self.spool)

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
    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None: ...


def _quiet_mlflow() -> None:
    """MLflow's INFO lines ("Creating initial MLflow database tables...") are noise here."""
    import logging

    import mlflow  # noqa: F401  (it configures its loggers on import; override after)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _send(client: Any, run_id: str, kind: str, payload: Any) -> None:
    """One unit of queued work, as one MLflow call."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in payload])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in payload.items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload.items()])
    elif kind == "artifact":
        path, artifact_path = payload
        client.log_artifact(run_id, path, artifact_path)
    elif kind == "status":
        client.set_terminated(run_id, payload)


def _opening(first_call: Any, attempts: int = 10) -> Any:
    """The first call on a store, retried: processes that open a brand-new SQLite store at once
    race to create its tables ("table ... already exists"); the loser waits for the winner."""
    for attempt in range(attempts):
        try:
            return first_call()
        except Exception as e:
            if "already exists" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt * 0.5)


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


def find_run(client: Any, run_key: str) -> str | None:
    """The run tagged with the trainer's own key (``rnnlab.run_key``), in any experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`rnnlab.run_key` = '{run_key}'", max_results=1) if ids else []
    return runs[0].info.run_id if runs else None


def run_key_of(uri: str, run_id: str) -> str | None:
    """The trainer's key of an MLflow run (to find its checkpoint), or None. Never creates a
    store: asking about a run in a store that does not exist yet answers None."""
    store = local_store_dir(uri)
    if store is not None and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_run(run_id).data.tags.get("rnnlab.run_key")
    except Exception:
        return None


def reap(uri: str, experiment: str | None = None, now: float | None = None) -> list[str]:
    """Mark KILLED every RUNNING rnnlab run whose heartbeat is older than twice its interval
    (its trainer and writer are both gone: a dead node, kill -9 of the whole job). Runs
    without a heartbeat tag are not rnnlab's and are left alone. Returns the reaped run ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    now = time.time() if now is None else now
    reaped = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=50000):
        beat, interval = run.data.tags.get("rnnlab.heartbeat"), run.data.tags.get("rnnlab.heartbeat_interval")
        if beat is None or interval is None:
            continue
        if now - float(beat) > 2 * float(interval):
            client.set_tag(run.info.run_id, "rnnlab.reaped", f"heartbeat {now - float(beat):.0f} s old")
            client.set_terminated(run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
    return reaped


def replay(spool: Path) -> int:
    """Send what a writer left in its spool file (the store was down when its run ended), in
    order, then remove the file. Returns the number of items sent."""
    import json

    lines = Path(spool).read_text().splitlines()
    header = json.loads(lines[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(header["uri"])
    items = [tuple(json.loads(line)) for line in lines[1:] if line.strip()]
    for kind, payload in Sender._batched(items):
        _send(client, header["run_id"], kind, payload)
    Path(spool).unlink()
    return len(items)


# ------------------------------------------------------------------------- gradient figures

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_gradient_heatmaps(dh: Any, steps: Any, path: Path) -> Path:
    """log10 ||dL/dh^l_t|| as layer x time images at the first, middle and last probe of a
    run (dh: probes x layers x directions x T). Time runs left to right; the loss is at the
    right edge, so vanishing shows as a fade to the left."""
    import numpy as np

    plt = _pyplot()
    picks = sorted({0, len(dh) // 2, len(dh) - 1})
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 1.2 + 0.9 * dh.shape[1] * dh.shape[2] * len(picks)),
                             layout="constrained", squeeze=False)
    with np.errstate(divide="ignore"):
        logs = np.log10(dh)
    finite = logs[np.isfinite(logs)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1, 0)
    for ax, p in zip(axes[:, 0], picks):
        rows = logs[p].reshape(-1, logs.shape[-1])  # (layers x directions, T)
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        labels = [f"l{l}{'←' if d else ''}" for l in range(dh.shape[1]) for d in range(dh.shape[2])]
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"log10 ||dL/dh|| at step {int(steps[p])}")
        fig.colorbar(image, ax=ax, fraction=0.03)
    axes[-1, 0].set_xlabel("time step t in the window (the loss is at the right)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_decay(curves: dict[str, Any], path: Path, title: str) -> Path:
    """||dL/dh_t|| against the distance from the loss (log scale), one line per entry of
    ``curves`` (label -> (T,) norms at t = 0..T-1). Geometric vanishing is a straight line down."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for label, norms in curves.items():
        norms = np.asarray(norms, dtype=float)
        distance = np.arange(len(norms))[::-1]  # T-1 .. 0
        keep = np.isfinite(norms) & (norms > 0)
        ax.plot(distance[keep], norms[keep], marker=".", ms=3, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the loss (time steps)")
    ax.set_ylabel("||dL/dh_t|| (batch mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gradient_runs(uri: str, experiment: str, filter_string: str, folder: Path) -> list[dict[str, Any]]:
    """Runs of ``experiment`` matching an MLflow filter string, each with its gradient artifact
    downloaded into ``folder`` (runs without one are skipped). Reads artifacts, not metric
    histories: one file per run instead of one query per metric."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    import re

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"experiment {experiment!r} not found in {uri}")
    # MLflow's stores reject IN on params; those clauses are applied here, the rest by MLflow.
    clauses = [c.strip() for c in re.split(r"\s+and\s+", filter_string, flags=re.IGNORECASE) if c.strip()]
    wanted: dict[str, set[str]] = {}
    for clause in list(clauses):
        match = re.fullmatch(r"params\.`?([^`\s]+)`?\s+IN\s*\((.*)\)", clause, flags=re.IGNORECASE)
        if match:
            wanted[match.group(1)] = set(re.findall(r"'([^']*)'", match.group(2)))
            clauses.remove(clause)
    try:
        runs = client.search_runs([found.experiment_id], filter_string=" and ".join(clauses), max_results=1000)
    except MlflowException as e:
        raise TrackingError(f"--filter {filter_string!r}: {_one_line(e)}") from None
    runs = [r for r in runs if all(r.data.params.get(k) in values for k, values in wanted.items())]
    out = []
    for run in runs:
        target = Path(folder) / run.info.run_id
        target.mkdir(parents=True, exist_ok=True)
        try:
            local = client.download_artifacts(run.info.run_id, "gradients.npz", str(target))
        except Exception:
            continue
        out.append({"run_id": run.info.run_id, "name": run.info.run_name, "params": run.data.params,
                    "metrics": run.data.metrics, "gradients": Path(local)})
    return out


# ----------------------------------------------------------------------- sweeps: the parent run
# A sweep's parent run is written directly (no writer process): the sweeper is not a training
# loop, and it calls these a few times per sweep. Each trial's run becomes a child through the
# `mlflow.parentRunId` tag it is created with.


def start_sweep_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the sweep's parent run (RUNNING) and return its id."""
    check_reachable(uri, create=True)
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
