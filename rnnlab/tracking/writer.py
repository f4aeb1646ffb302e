"""The writer process: the only place a training run's tracking talks to the store.

    trainer process                          writer process (spawned at launch)
    ---------------                          ----------------------------------
    Writer()  --------- starts ----------->  import MLflow; connect to an existing SQLite store
    (Hydra, torch, data, model)              (both while the trainer starts up)
    Tracker(..., writer=w) -- "open" ----->  create (or reopen) the run     -> "started" reply
    log_metrics / log_params -- queue ---->  collect; every BATCH_SECONDS one Sender.send
                                             (about once a second: retry, heartbeat)
    finish(status) ------------ "finish" ->  send the rest, end the run      -> "done" reply, os._exit

``Writer`` is the trainer's handle on the process; ``_write`` is the process; ``Sender`` is what
it does to the store: batches (at most 1,000 metrics a call, never one call per value), keeps
work that failed and everything after it, in order, in memory and in the spool file, retries
it, and stamps the heartbeat that ``rnnlab.reap`` reads.

Why a process and not MLflow 3's own async logging (``log_batch(..., synchronous=False)``, what
``mlflow.config.enable_async_logging()`` turns on: a queue and worker threads in the trainer).
Measured with ``python experiments/benchmarks/tracking.py --async-logging --rounds 3`` (the
default run's 6,393 metric values and 49 params from an emulated trainer, interleaved; 2-CPU
AMD EPYC VM shared with other jobs, load average 3.8-4.8; medians, per-round values in brackets):

    seconds                             writer process      async            async, 5 s buffer
    in the trainer, opening the run     0.00                6.80 (3.0-7.1)   3.21 (2.4-6.7)
    in the trainer, waiting in finish   1.01 (0.96-1.06)    3.58 (1.0-5.0)   3.07 (0.5-5.9)
    finish, store 100 ms away           2.18 (1.8-2.6)      -                2.17 (0.6-4.8)
    opening, store 100 ms away          0.00                -                3.33 (2.8-4.3)
    metrics delivered                   all                 all              all

In-process, MLflow's import and the run's creation are on the trainer's path (one GIL: a thread
would only interleave them with the start-up); the process does them beside it. Async finish
waits for ~290 separate calls, or for its buffer's next tick. Against a store 100 ms away the
two finish alike: a slow store is no reason for the process. Whole-run wall times did not
resolve a difference on that machine (the same training loop took 0.5-32 s from run to run).
Beyond speed, what no thread in the trainer can do: a trainer killed with SIGKILL still has its
queued metrics delivered and its run ended KILLED, and a failed call is kept and retried in
order (MLflow's async queue logs the error and drops the batch).

Its costs are kept small: on SQLite a log_batch call costs ~5 ms of CPU plus ~0.07 ms per
metric, so the writer collects for ``BATCH_SECONDS`` and sends once; once the store is open it
runs at a lower priority (``WRITER_NICENESS``) so that, on a machine whose cores torch keeps
busy, it takes idle moments rather than a torch thread's slice; and it leaves with
``os._exit`` once the store has everything, skipping the ~0.8 s an interpreter with MLflow
loaded takes to shut down, which the trainer would wait out.
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

from rnnlab.tracking.queries import find_run
from rnnlab.tracking.recovery import write_spool
from rnnlab.tracking.store import Work, batched, local_store_dir, local_store_file, one_line, opening, quiet_mlflow, send, unreachable

BATCH_SECONDS = 5.0  # the writer sends what arrived this often (and everything at the end)
WRITER_NICENESS = 10  # the writer's work is never urgent until the end, when the trainer is idle
HEARTBEAT_SECONDS = 30.0  # the writer stamps rnnlab.heartbeat this often while the trainer lives
RETRY_SECONDS = 5.0  # how often the writer retries a store that went away

# MLflow 3 records what an experiment is for: "custom_model_development" is model training.
# MLflow 3.17's own UI opens the view its GenAI / Model training switch names, whatever the
# tag says, so the links rnnlab prints ask for the training view (store.ui_page). A kind
# someone set by hand is left alone.
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


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


# ------------------------------------------------------------------------ the writer process

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
    quiet_mlflow()  # the import, while the trainer starts up (see Writer)
    run, connected = _wait_for_open(work, parent)
    uri, experiment, run_name, tags, run_id, spool, batch_seconds, asked_at = run
    # The CPU spent while the trainer was still starting up. If the trainer asked while this
    # process was still importing or connecting, that last stretch overlapped training: count
    # it (at most its wall time) as after the open.
    cpu_at_open = max(0.0, time.process_time() - max(0.0, time.time() - asked_at))
    sender, waiting, error = _open_run(run, connected.get(uri), work, parent)
    replies.put(("started", sender.run_id if sender else None, sender.experiment_id if sender else None,
                 error, cpu_at_open))
    # Lower priority only now that the store is open: niced from the start, the import and
    # the store's creation (~3 s of CPU) were spread over the first epochs in small slices,
    # each a torch thread's stall (measured: +23% wall against +7% this way, 3-epoch runs).
    os.nice(WRITER_NICENESS)
    if sender is None:  # no run to write to (the error is in the "started" reply, or all is spooled)
        while not _finishes(waiting):
            waiting = _arrivals(work, parent)
    else:
        _deliver_until_finish(sender, work, parent, batch_seconds, waiting)
    replies.put(("done", sender.run_id if sender else None, sender.experiment_id if sender else None, None,
                 time.process_time()))
    _leave(replies)


def _open_run(run: tuple[Any, ...], client: Any, work: Any, parent: int) -> tuple[Sender | None, list[Work], str | None]:
    """Create (or reopen) the run: the Sender, the work that arrived meanwhile, and the error
    that made it impossible (None if it opened). A store that cannot be reached yet (a server
    restarting, a database failing over) is retried every ``RETRY_SECONDS`` while the trainer's
    work waits, in order, in memory and in the spool file, up to the trainer's finish and that
    finish's timeout; then what waited stays in the spool, whose replay creates the run. Any
    other refusal (no such run to resume) is final at once."""
    uri, experiment, run_name, tags, run_id, spool, _, _ = run
    waiting: list[Work] = []
    deadline = None  # set once the trainer has finished: its timeout, then the spool
    while True:
        try:
            return Sender(uri, experiment, run_name, tags, run_id, spool, client=client), waiting, None
        except Exception as e:
            if not unreachable(e):
                return None, waiting, one_line(e)
            if spool is not None:
                write_spool(Path(spool), uri, run_id, _without_finish(waiting), opening=(experiment, run_name, tags))
            if deadline is None and not waiting:
                print(f"rnnlab: warning: the tracking store is unreachable ({one_line(e)}); retrying every "
                      f"{RETRY_SECONDS:.0f} s, training goes on", file=sys.stderr)
        retry_at = time.monotonic() + RETRY_SECONDS
        while time.monotonic() < retry_at:
            if deadline is None:
                waiting += _arrivals(work, parent)
                if _finishes(waiting):
                    deadline = time.monotonic() + waiting[-1][1][1]
            elif time.monotonic() >= deadline:
                kept = _without_finish(waiting) + [("status", waiting[-1][1][0])]
                if spool is not None:
                    write_spool(Path(spool), uri, run_id, kept, opening=(experiment, run_name, tags))
                print(f"rnnlab: warning: the tracking store stayed unreachable; {len(kept)} item(s) are kept "
                      f"in {spool} (python -m rnnlab.reap --replay creates the run and sends them)", file=sys.stderr)
                return None, waiting, None
            else:
                time.sleep(min(1.0, retry_at - time.monotonic()))


def _without_finish(items: list[Work]) -> list[Work]:
    return [item for item in items if item[0] != "finish"]


def _wait_for_open(work: Any, parent: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Wait for "open" (the run to create), connecting to the store each "connect" names in the
    meantime. Returns the run and the connections made ({uri: client}). A trainer gone before it
    asked (a rejected run, or killed) leaves this process with nothing written."""
    clients: dict[str, Any] = {}
    while True:
        try:
            kind, payload = work.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(0)
            continue
        if kind == "open":
            return payload, clients
        if kind != "connect":  # nothing else comes before the open
            os._exit(1)
        client = _connect_if_it_exists(payload)
        if client is not None:
            clients[payload] = client


def _arrivals(work: Any, parent: int) -> list[Work]:
    """What the trainer queued since the last look: waits up to a second for the first item,
    then takes what is there, up to and including a "finish". A trainer gone without saying
    so (SIGKILL) counts as its finish, with status KILLED: what it queued is still delivered."""
    try:
        items = [work.get(timeout=1.0)]
    except queue.Empty:
        return [("finish", ("KILLED", 30.0))] if os.getppid() != parent else []
    while not _finishes(items):
        try:
            items.append(work.get_nowait())
        except queue.Empty:
            break
    return items


def _finishes(items: list[Work]) -> bool:
    return bool(items) and items[-1][0] == "finish"


def _deliver_until_finish(sender: Sender, work: Any, parent: int, batch_seconds: float, waiting: list[Work]) -> None:
    """Send what arrives every ``batch_seconds`` (and all of it at the finish), then end the run.
    A log_batch call costs more than the metrics in it: a probe every 10 steps would otherwise
    be ~300 calls in a default run. ``waiting``: what arrived before the run was open."""
    last_send = 0.0 if waiting else time.monotonic()  # what waited out an unreachable store goes at once
    while True:
        if not _finishes(waiting):  # (the finish may have come while the run was opening)
            waiting += _arrivals(work, parent)
        finishing = _finishes(waiting)
        if waiting and (finishing or time.monotonic() - last_send >= batch_seconds):
            sender.send(_without_finish(waiting))
            last_send = time.monotonic()
            if finishing:
                status, timeout = waiting[-1][1]
                sender.finish(status, timeout)
                return
            waiting.clear()
        sender.tick()


def _connect_if_it_exists(uri: str) -> Any:
    """An MlflowClient for a SQLite store that already exists, else None. Connecting checks the
    schema (~0.7 s of CPU) and writes nothing to a store that has its tables; a missing file it
    would create, and another database it might migrate, so those wait for the run's go-ahead."""
    file = local_store_file(uri)
    if file is None or not file.is_file():
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


# ------------------------------------------------------------------------------ the store side

class Sender:
    """Talks to the store. Sends work in order and in batches (at most 1,000 metrics a call,
    never one call per value). When a call fails, that work and everything after it wait in
    ``pending`` (and in the spool file, should this process die too) and are retried every
    ``RETRY_SECONDS``, in order, so nothing is lost or reordered across an outage."""

    def __init__(
        self, uri: str, experiment: str, run_name: str, tags: dict[str, str],
        run_id: str | None = None, spool: str | None = None, client: Any = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        self.uri = uri
        self.client = client or MlflowClient(uri)
        self.spool = Path(spool) if spool else None
        self.pending: list[Work] = []
        self.file_error: str | None = None  # why the artifact store's disk refused a file, if it did
        self.warned = False
        self.last_try = self.last_beat = 0.0
        if run_id is None and "rnnlab.run_key" in tags:
            # A checkpoint saved before its run existed knows the run only by the trainer's key.
            run_id = opening(lambda: find_run(self.client, tags["rnnlab.run_key"]))
        if run_id is None:
            self.experiment_id = opening(lambda: self._experiment_id(experiment))
            self.run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        else:  # resume: the same run goes on
            self.run_id = run_id
            self.experiment_id = opening(lambda: self.client.get_run(run_id).info.experiment_id)
            self.client.update_run(run_id, status="RUNNING")
            self._deliver([("tags", tags)])
        self.tick()

    def send(self, work: list[Work]) -> None:
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
        """End the run with ``status`` once pending work is delivered, or after ``timeout``
        seconds of trying, leaving what is still undelivered in the spool file."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline and not self._only_files_refused():
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
            self.last_try = 0.0
            self.tick()
        if self.pending and self._only_files_refused():
            # The artifact store's disk refused the files (full, read-only): the run's metrics
            # are all in, so it ends with its real status; the files stay in the run's folder
            # and in the spool, whose replay uploads them (MLflow takes files for ended runs).
            try:
                send(self.client, self.run_id, "status", status)
            except Exception:
                pass  # the status waits in the spool with the files
            else:
                print(f"rnnlab: warning: {len(self.pending)} file(s) not uploaded to the run's artifact store "
                      f"({self.file_error}); they are in {self.spool.parent if self.spool else 'the run folder'}, and "
                      f"python -m rnnlab.reap --replay uploads them", file=sys.stderr)
                return
        self.send([("status", status)])
        if self.pending:
            print(f"rnnlab: warning: the tracking store is unreachable; {len(self.pending)} item(s) "
                  f"are kept in {self.spool} (python -m rnnlab.reap --replay sends them)", file=sys.stderr)
        elif self.spool is not None:
            self.spool.unlink(missing_ok=True)

    def _only_files_refused(self) -> bool:
        """What waits is files only, and the last one failed for a local disk reason (OSError:
        no space, read-only), which waiting out a network outage would not mend."""
        return bool(self.pending) and self.file_error is not None and all(k == "artifact" for k, _ in self.pending)

    def _deliver(self, work: list[Work]) -> None:
        """Send work in order; on the first failure keep it and the rest pending."""
        self.last_try = time.monotonic()
        calls = batched(work)
        for i, (kind, payload) in enumerate(calls):
            try:
                send(self.client, self.run_id, kind, payload)
            except Exception as e:
                self.file_error = (e.strerror or one_line(e)) if kind == "artifact" and isinstance(e, OSError) else None
                self.pending = calls[i:]
                self._write_spool()
                if not self.warned:
                    self.warned = True
                    print(f"rnnlab: warning: MLflow call failed ({one_line(e)}); "
                          f"retrying every {RETRY_SECONDS:.0f} s, training goes on", file=sys.stderr)
                return
        if self.spool is not None and self.spool.exists():
            self.spool.unlink()

    def _write_spool(self) -> None:
        if self.spool is not None:
            write_spool(self.spool, self.uri, self.run_id, self.pending)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND not in found.tags:  # an older rnnlab's: open it on the training view too
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, TRAINING)
            return found.experiment_id
        store = local_store_dir(self.uri)
        # A local store keeps its artifacts beside it (outputs/mlartifacts), not in the cwd.
        location = (store / "mlartifacts").resolve().as_uri() if store is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING})
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
