"""Optuna at the edge: the only rnnlab module that imports Optuna (besides the Hydra sweeper
under hydra_plugins/rnnlab_sweeper, which turns Hydra's sweep syntax into calls to this one).

Two sides meet in one study:

    sweeper (one per worker)                      job (one per trial, any process, any node)
    ------------------------                      ------------------------------------------
    open_storage, load_or_create_study            JobTrial(config.trial): load the study,
    claim: ask -> trial -> launch job  ---------> report val_loss each epoch, raise
    Heartbeat: beats for its own trials,            optuna.TrialPruned when the pruner says so
      reaps everyone's stale ones                 (unwinds train())
    record(JobReturn) -> COMPLETE/PRUNED/FAIL <-- the job's return dict, or its exception

The job reaches its trial through plain config keys (``trial.storage``, ``trial.study``,
``trial.number``) that the sweeper sets per job, so it works with any launcher: in-process,
joblib processes, Slurm nodes. Optuna is imported lazily: a run outside a sweep never pays for it.

Only Optuna's public API is used: a study's storage is the object open_storage returned (the
functions below take it beside the study), and a trial's storage id comes from the storage's
own lookup by trial number (see trial_id). Samplers and pruners are named, never imported from
config text (see choice_spec).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "outputs/optuna.journal"
# Attribute names in the study (visible in optuna-dashboard).
FAIL_REASON = "fail_reason"  # user attr of a FAIL trial: why
RETRY_OF = "retry_of"  # user attr of a retry: the number of the trial it repeats
RETRIED = "retried"  # system attr of a FAIL trial that was given a retry (not counted)
HEARTBEAT = "heartbeat"  # system attr: unix time of the owning worker's last beat
WORKER = "worker"  # system attr: host:pid of the worker that claimed it
SPACE = "rnnlab.search_space"  # study user attr: the space it was created with
PARENT_RUN = "rnnlab.mlflow_parent_run"  # study user attr: the sweep's MLflow parent run
CREATOR = "rnnlab.created_by"  # study user attr: host:pid of the worker whose create won


class SweepError(ValueError):
    """Bad sweep input or an unusable storage; the message is one line, ready for the user."""


class JobLost(RuntimeError):
    """A launcher's job ended without a result (cancelled, its node failed): the trial is
    recorded FAIL with this reason and retried once."""


def check_job(raw: dict[str, Any], cache: dict[str, Any] | None = None) -> None:
    """A composed job config (plain dict) must pass what the entry point checks for every job
    of a command (rnnlab.compose.check_jobs: the schema, then the cell, data and paths). The
    sweeper checks one per choice and per bound before the study is opened; ``cache``, shared
    by those checks, loads equal data once."""
    from rnnlab.compose import check_jobs
    from rnnlab.config import ConfigError
    from rnnlab.run import RunError

    try:
        check_jobs([raw], cache=cache)
    except (ConfigError, RunError) as e:
        raise SweepError(str(e)) from None


# ------------------------------------------------------------------------------------ storage


def open_storage(url: str | None, *, repair: bool = False, patient: bool = False) -> Any:
    """A journal file (a path, the default) or a database (a SQLAlchemy URL: sqlite://,
    postgresql://, mysql+pymysql://). Raises SweepError, one line, when it cannot be used.

    ``repair`` cuts a torn last line out of a journal first (see repair_journal); only the
    sweeper asks for it, at start-up, before it writes anything. ``patient``: a database
    server that is unreachable is waited for (``DATABASE_PATIENCE``), as its calls are (see
    PatientStorage); for a job, whose sweeper has reached that server already."""
    import optuna

    url = url or DEFAULT_STORAGE
    if "://" not in url:
        path = Path(url).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SweepError(f"storage={url!r}: cannot create {str(path.parent)!r} ({e.strerror})") from None
        if not os.access(path.parent, os.W_OK):
            raise SweepError(f"storage={url!r}: {str(path.parent)!r} is not writable")
        from optuna.storages.journal import JournalFileBackend

        if repair:
            repair_journal(path)
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as e:
            raise SweepError(f"storage={url!r}: {_one_line(e)}") from None
    engine: dict[str, Any] = {}
    if url.startswith(("postgresql", "mysql")):  # fail in seconds, not after a TCP timeout
        # A small pool: a worker's main thread and its heartbeat need one connection each, and
        # SQLAlchemy's default (5 + 10 overflow per process) lets a few dozen workers and jobs
        # exhaust a server's max_connections (PostgreSQL's 100: "too many clients already").
        engine = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
    last: Exception | None = None
    # Workers starting at once on a fresh database race to create Optuna's schema: the loser
    # sees "table ... already exists" (PostgreSQL, SQLite) or a duplicate alembic_version row
    # (MySQL/MariaDB). It waits for the winner and opens the finished schema.
    deadline = time.monotonic() + DATABASE_PATIENCE
    attempt = 0
    while attempt < 6:
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            return PatientStorage(rdb) if url.startswith(("postgresql", "mysql")) else rdb
        except Exception as e:
            last = e
            if patient and _unreachable(e) and time.monotonic() < deadline:
                time.sleep(1.0)  # a restart: a job waits for the server its sweeper reached
                continue
            if not any(sign in str(e) for sign in ("already exists", "Duplicate entry", "duplicate key")):
                break
            attempt += 1
            time.sleep(0.5 * attempt)
    why = _one_line(last).split(" (Background on this error")[0]
    if isinstance(last, ImportError):
        why += " (pip install 'rnnlab[postgres]' or 'rnnlab[mysql]')"
    raise SweepError(f"storage={_hide_password(url)!r} cannot be used: {why}") from None


DATABASE_PATIENCE = 180.0  # seconds a storage call waits for a database server to come back


class PatientStorage:
    """A database server's study storage whose calls wait out a restart or a fail-over.

    A PostgreSQL restart under a sweep (``pg_ctlcluster ... restart``: ~2 s down) made the
    first storage call in that window raise, and the sweeper, or a job reporting an epoch,
    died with it. Here a call that fails because the server is unreachable is retried, every
    second or so, for up to ``DATABASE_PATIENCE`` seconds, with one warning; any other error
    is raised at once. A call that failed mid-transaction was rolled back by the server, so
    retrying it repeats nothing. Calls go to what Optuna itself would use for this storage
    (its caching front, where Optuna offers it)."""

    def __init__(self, storage: Any, patience: float = DATABASE_PATIENCE) -> None:
        import optuna

        get_storage = getattr(optuna.storages, "get_storage", None)  # public name, "internal use" docstring
        self._storage = get_storage(storage) if get_storage is not None else storage
        self._patience = patience
        self._warned = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._storage, name)
        if not callable(attr):
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + self._patience
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if not _unreachable(e) or time.monotonic() > deadline:
                        raise
                    if not self._warned:
                        self._warned = True
                        root = list(_chain(e))[-1]  # Optuna's wrapper says "invalid data in the commit"
                        why = _one_line(root).split(" (Background on this error")[0][:160]
                        print(f"rnnlab: warning: the study's database is unreachable ({why}); "
                              f"retrying for up to {self._patience:.0f} s", file=sys.stderr)
                    time.sleep(1.0)

        return patient


def _unreachable(error: BaseException) -> bool:
    """A database server that is down or restarting (not a bad query, not a conflict), also
    behind Optuna's StorageInternalError, which wraps SQLAlchemy's error as its cause."""
    try:
        from sqlalchemy import exc
    except ImportError:
        return False
    return any((isinstance(e, exc.DBAPIError) and e.connection_invalidated)
               or isinstance(e, (exc.OperationalError, exc.InterfaceError)) for e in _chain(error))


def _chain(error: BaseException, depth: int = 5) -> Iterator[BaseException]:
    """``error`` and what it was raised from (or during), innermost last."""
    seen: BaseException | None = error
    for _ in range(depth):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def repair_journal(path: Path) -> int:
    """Drop torn writes from a journal file; returns how many bytes were dropped.

    A worker killed mid-write leaves a line without its end. Optuna skips such a last line,
    but the next append is glued onto it, and from then on every load fails ("Invalid log
    format"). What this relies on is only the file's layout, which Optuna's JournalFileBackend
    reads the same way (tests/test_sweep.py pins it): one JSON object per line, each ended by
    a newline. A line that does not parse keeps its longest tail that is one object (the
    complete record glued onto a fragment); a torn last line is cut. No field of a record is
    read. A file whose first line is not a JSON object is not a layout rnnlab knows: it is left
    to Optuna as it is. Runs under the journal's own lock."""
    import sys

    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.exists():
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        if len(lines) > 1 and _record(lines[0]) is None:
            print(f"rnnlab: warning: {path}: not one JSON object per line; left to Optuna unrepaired", file=sys.stderr)
            return 0
        kept, dropped = [], 0
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                continue  # the file ends with "\n": nothing torn
            good = None if last else _record(line)
            dropped += len(line) + (0 if last else 1) - (len(good) + 1 if good is not None else 0)
            if good is not None:
                kept.append(good)
        if dropped:
            tmp = path.with_suffix(path.suffix + ".repair")
            tmp.write_bytes(b"".join(line + b"\n" for line in kept))
            os.replace(tmp, path)
            print(f"rnnlab: warning: {path}: dropped {dropped} bytes of torn journal writes", file=sys.stderr)
        return dropped
    finally:
        lock.release()


def _record(line: bytes) -> bytes | None:
    """The line if it is one JSON object, else its longest tail that is one (a fragment with a
    record glued on: the first "{" from which the rest parses), else None."""
    start = 0
    while start != -1:
        try:
            if isinstance(json.loads(line[start:]), dict):
                return line[start:]
        except ValueError:
            pass
        start = line.find(b"{", start + 1)
    return None


def load_or_create_study(
    storage: Any, name: str, directions: Sequence[str], space: dict[str, str], sampler: Any = None, pruner: Any = None,
    metrics: Sequence[str] = (),
) -> optuna.Study:
    """The study ``name``: created, or loaded to resume. A study created with another search
    space or other directions is refused (SweepError) before anything is written to it.
    ``metrics``: the objectives' names, stored with a new study so that optuna-dashboard
    labels its axes "val_loss", not "Objective 0"."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is not None:
        _check_same(study, name, directions, space)
        return study
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, directions=list(directions)
        )
        study.set_user_attr(CREATOR, worker_id())  # only one create wins: it alone makes the parent run
        study.set_user_attr(SPACE, space)
        if metrics:  # experimental in Optuna 3.2-5 (pinned < 6): its warning is not the user's business
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(metrics))
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        time.sleep(0.2)  # let its creator store the space
        _check_same(study, name, directions, space)
    return study


def _check_same(study: optuna.Study, name: str, directions: Sequence[str], space: dict[str, str]) -> None:
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions]:
        raise SweepError(f"study {name!r} exists with direction {have}, not {list(directions)}: use a new hydra.sweeper.study_name")
    old = study.user_attrs.get(SPACE)
    if old is not None and old != space:
        changed = sorted(k for k in set(old) | set(space) if old.get(k) != space.get(k))
        raise SweepError(
            f"study {name!r} exists with another search space (differs in {', '.join(changed)}): "
            "re-run its own command to resume it, or use a new hydra.sweeper.study_name"
        )


# ------------------------------------------------------------------- counting, claiming, reaping


@dataclass
class Counts:
    done: int  # finished: COMPLETE, PRUNED, and FAIL unless a retry stands in for it
    failed: int  # of those, FAIL
    running: int
    waiting: int  # enqueued retries not yet claimed


def count(study: optuna.Study) -> Counts:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    failed = sum(t.state == TrialState.FAIL and not t.system_attrs.get(RETRIED) for t in trials)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) + failed
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return Counts(done, failed, running, waiting)


def trial_id(storage: Any, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``, for the storage's own setters. Optuna
    keeps it private on its trial objects; the storage's public lookup costs a query or two,
    once per claim, per record and per reaped trial: nothing next to a training job."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def fail_trial(study: optuna.Study, storage: Any, number: int, reason: str, retry: bool = False) -> bool:
    """Record trial ``number`` FAIL with its reason; with ``retry``, enqueue its params once
    more (once: a retry is never retried). False if someone else finished it first."""
    import optuna
    from optuna.trial import TrialState

    try:
        tid = trial_id(storage, study, number)
        frozen = storage.get_trial(tid)
        retry = retry and RETRY_OF not in frozen.user_attrs
        storage.set_trial_user_attr(tid, FAIL_REASON, reason[:500])
        if retry:  # before the state: a finished trial's attributes are frozen
            storage.set_trial_system_attr(tid, RETRIED, True)
        if not storage.set_trial_state_values(tid, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry:
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number}, skip_if_exists=False)
    return True


def reap(study: optuna.Study, storage: Any, grace: float) -> list[int]:
    """Fail (and retry once) every RUNNING trial whose worker has not beaten for ``grace``
    seconds: a killed worker must not leave its trial RUNNING forever. Optuna checks for stale
    trials only when a live worker starts a new trial, and the journal storage has no
    heartbeat at all, so rnnlab beats and reaps itself, the same way on every storage."""
    from optuna.trial import TrialState

    now = time.time()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - last > grace:
            worker = t.system_attrs.get(WORKER, "a worker")
            if fail_trial(study, storage, t.number, f"no heartbeat from {worker} for {now - last:.0f} s (killed?)", retry=True):
                reaped.append(t.number)
    return reaped


class Heartbeat:
    """A thread that beats for this worker's running trials and reaps other workers' stale
    ones, every ``interval`` seconds, while jobs run (the launcher blocks the sweeper).
    ``trials``: this worker's running trials, number -> storage id (claim adds, record removes)."""

    def __init__(self, study: optuna.Study, storage: Any, interval: float, grace: float) -> None:
        self.study, self.storage, self.interval, self.grace = study, storage, interval, grace
        self.trials: dict[int, int] = {}
        self.reaped: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnnlab-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        import optuna

        for number, tid in list(self.trials.items()):
            try:
                self.storage.set_trial_system_attr(tid, HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                self.trials.pop(number, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self.reaped += reap(self.study, self.storage, self.grace)
            except Exception as e:  # a storage hiccup must not kill the sweep; the next beat retries
                import sys

                print(f"rnnlab: warning: heartbeat: {_one_line(e)}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def enqueue_balanced(study: optuna.Study, key: str, choices: Sequence[Any]) -> Any:
    """Enqueue a trial with ``key`` fixed to its choice that the study has run least (ties:
    the first in ``choices``), so the choices take turns and each gets an equal share of the
    trials; the sampler still draws every other parameter. Greff et al. 2017 ran one random
    search per LSTM variant: this is that design in one study. Trials a retry stands in for
    are not counted. Returns the choice."""
    from optuna.trial import TrialState

    counts = {c: 0 for c in choices}
    for t in study.get_trials(deepcopy=False):
        if key in t.params and t.params[key] in counts and not (t.state == TrialState.FAIL and t.system_attrs.get(RETRIED)):
            counts[t.params[key]] += 1
    choice = min(choices, key=lambda c: counts[c])  # min keeps the first of equals
    study.enqueue_trial({key: choice})
    return choice


def worker_id() -> str:
    """This worker's name in the study: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a sweep seeded ``seed``.

    Seeding per trial, not per worker: workers that start at once on one study (the README's
    recipe) found the same number of trials, so a seed of seed + trials found gave each the
    same stream, and 8 trials were 4 configurations twice. Trial numbers are unique in a study
    (the storage hands them out), so every trial gets its own stream, on every storage, while a
    worker alone draws the same sequence on every run of the same command."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def claim(heartbeat: Heartbeat, distributions: dict[str, Any], sampler_for: Any = None) -> optuna.Trial:
    """Ask the heartbeat's study for a trial (an enqueued retry first), draw its params and
    mark it as this worker's: its host:pid and a first beat. ``sampler_for(number)``: the
    sampler to draw trial ``number`` with (seeded by trial_seed); the study's own if None.

    The trial is created first and its params drawn after, through the trial's public
    suggest methods, so that the sampler can be seeded by the trial's number (Optuna samples
    relative params lazily, at the first suggest, with the study's sampler of that moment)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = heartbeat.study
    if sampler_for is not None:  # the number ask will give unless another worker asks first:
        # a sampler that decides in before_trial (grid: which point) draws from that trial's seed
        study.sampler = sampler_for(len(study.get_trials(deepcopy=False)))
    trial = study.ask()
    if sampler_for is not None:
        study.sampler = sampler_for(trial.number)
    for name, d in distributions.items():
        if isinstance(d, FloatDistribution):
            trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        else:
            raise SweepError(f"{name}: {d!r} is not a distribution the sweeper draws")
    storage = heartbeat.storage
    tid = trial_id(storage, study, trial.number)
    storage.set_trial_system_attr(tid, WORKER, worker_id())
    storage.set_trial_system_attr(tid, HEARTBEAT, time.time())
    heartbeat.trials[trial.number] = tid
    return trial


def record(heartbeat: Heartbeat, trial: optuna.Trial, outcome: Any, objectives: Sequence[str]) -> str:
    """Tell the study how a job ended and stop beating for it. ``outcome`` is the job's return
    dict or the exception it raised. A NaN or infinite objective is a FAIL: Optuna itself
    would store +inf as COMPLETE, and a diverged run must never count as a result. Returns
    the state's name."""
    import optuna
    from optuna.trial import TrialState

    study, storage = heartbeat.study, heartbeat.storage
    heartbeat.trials.pop(trial.number, None)
    if isinstance(outcome, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return "PRUNED"
    if isinstance(outcome, BaseException):
        # A job lost to its cluster, or stopped by a signal (scancel) after a checkpoint, did
        # not fail on its params: it gets its one retry, as a killed worker's trial does.
        retry = isinstance(outcome, JobLost) or type(outcome).__name__ == "Stopped"
        fail_trial(study, storage, trial.number, f"{type(outcome).__name__}: {_one_line(outcome)}", retry=retry)
        return "FAIL"
    try:
        values = [float(outcome[k]) for k in objectives]
    except (KeyError, TypeError, ValueError):
        fail_trial(study, storage, trial.number, f"the job returned no number for each of {list(objectives)}: {outcome!r}"[:500])
        return "FAIL"
    bad = [f"{k}={v}" for k, v in zip(objectives, values) if not math.isfinite(v)]
    if bad:
        fail_trial(study, storage, trial.number, f"non-finite objective {', '.join(bad)} (diverged)")
        return "FAIL"
    study.tell(trial, values, skip_if_finished=True)
    return "COMPLETE"


# ---------------------------------------------------------------------------------- job side


RUN_ID_ATTR = "mlflow_run_id"  # a trial's user attribute: its MLflow run


class NullTrial:
    """Outside a sweep: the same attributes as JobTrial, doing nothing."""

    tags: dict[str, str] = {}
    pruned: tuple[type[BaseException], ...] = ()  # `except ()` catches nothing

    def on_epoch_end(self, epoch: int, val_loss: float) -> None: ...

    def record_run(self, run_id: str | None) -> None: ...


class JobTrial:
    """A job's handle on its trial: reports val_loss every epoch and raises
    ``optuna.TrialPruned`` when the study's pruner says so, which unwinds train(). It talks to
    the storage and the pruner through their public methods, as optuna.Trial.report and
    should_prune do, without building an optuna.Trial (whose constructor is not for users)."""

    def __init__(self, cfg: Any) -> None:
        import optuna

        pruner = build("pruner", cfg.pruner, "trial.pruner")  # before anything is opened
        self.pruned = (optuna.TrialPruned,)
        self.tags = {"rnnlab.study": cfg.study, "rnnlab.trial": str(cfg.number)}
        if cfg.parent_run:
            self.tags["mlflow.parentRunId"] = cfg.parent_run  # a child of the sweep's run
        self.storage = open_storage(cfg.storage, patient=True)
        self.study = optuna.load_study(study_name=cfg.study, storage=self.storage, pruner=pruner)
        self.trial_id = trial_id(self.storage, self.study, cfg.number)
        # Optuna prunes single-objective studies only.
        self.prune = len(self.study.directions) == 1

    def on_epoch_end(self, epoch: int, val_loss: float) -> None:
        if not self.prune or not math.isfinite(val_loss):
            return
        self.storage.set_trial_intermediate_value(self.trial_id, epoch, val_loss)
        if self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            raise self.pruned[0](f"pruned after epoch {epoch} (val_loss {val_loss:.4g})")

    def record_run(self, run_id: str | None) -> None:
        """The trial's MLflow run id, in its user attributes (``mlflow_run_id``), so that
        optuna-dashboard leads from a trial to its run. While the job runs, the trial is still
        RUNNING and takes it; a storage that refuses costs the run nothing but a warning."""
        if not run_id:
            return
        try:
            self.storage.set_trial_user_attr(self.trial_id, RUN_ID_ATTR, run_id)
        except Exception as e:  # the run's results matter more than this link
            print(f"rnnlab: warning: trial {self.trial_id}: could not record its MLflow run: {e}", file=sys.stderr)


def job_trial(cfg: Any) -> JobTrial | NullTrial:
    """The job side of a trial (``cfg`` is config.trial), or a NullTrial outside a sweep.
    Sets this process's threads to its share of the cores first (see share_cores)."""
    if not cfg.study:
        return NullTrial()
    share_cores(cfg.threads)
    trial = JobTrial(cfg)
    try:  # what the job runs on, for the dashboard and for checking a cluster's settings
        trial.storage.set_trial_user_attr(trial.trial_id, THREADS_ATTR, threads_in_use())
    except Exception as e:
        print(f"rnnlab: warning: trial {cfg.number}: could not record its threads: {e}", file=sys.stderr)
    return trial


THREADS_ATTR = "threads"  # a trial's user attribute: torch's threads and the BLAS/Numba settings of its job


def threads_in_use() -> dict[str, Any]:
    """This process's torch intra-op threads and the environment that sets OpenMP's, MKL's
    and Numba's (read at their import), as a job of a sweep runs with them."""
    import torch

    return {"torch": torch.get_num_threads(),
            **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}


def share_cores(threads: int) -> None:
    """Parallel trials on one machine must not oversubscribe it: measured on 2 cores, two
    2-thread training processes run at 0.21-0.27x the throughput of one, two 1-thread ones at
    1.44-1.68x. ``threads`` is the job's share (0: leave torch's default). Numba's share comes
    through the environment (the sweeper sets NUMBA_NUM_THREADS per job): windows.py is the
    only module that imports Numba, and its kernels are serial today."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------- samplers and pruners by name
# What a config may name: one of these registry names and plain keyword values. The values are
# the names of Optuna's public classes (optuna.samplers.X, optuna.pruners.X) and the only
# strings rnnlab turns into a class: nothing a config says is imported or called (README: rnnlab
# never instantiates classes from config). Keyword values are checked plain (check_plain), so
# no callable or object can be passed either; a sampler that needs one is not offered.
SAMPLER_CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "cmaes": "CmaEsSampler",
                   "nsgaii": "NSGAIISampler", "qmc": "QMCSampler"}
PRUNER_CLASSES = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
                  "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner", "none": "NopPruner"}
_REGISTRIES = {"sampler": ("optuna.samplers", SAMPLER_CLASSES), "pruner": ("optuna.pruners", PRUNER_CLASSES)}


def check_plain(value: Any, key: str) -> None:
    """Config data only: numbers, strings, booleans, null, and lists or mappings of them, with
    no Hydra instantiation key (``_target_``, ``_args_``, ...) at any depth, so that nothing
    downstream can turn the value into a call. Raises SweepError naming the first bad key."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{key}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str) or (k.startswith("_") and k.endswith("_")):
                raise SweepError(f"{key}.{k}={item!r} is not allowed (allowed: plain values; rnnlab instantiates nothing from config)")
            check_plain(item, f"{key}.{k}")
        return
    raise SweepError(f"{key}={value!r} is not allowed (allowed: numbers, strings, booleans, null, and lists or mappings of them)")


def choice_spec(kind: str, spec: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """A sampler or pruner setting (``kind``) as {name: <registry name>, **keyword values}, or
    {} where none is given. Anything else raises SweepError, one line naming ``key``, the value
    and what is allowed. Imports nothing, so validation can call it before anything heavy.

    hydra-optuna-sweeper 1.3's form, {_target_: optuna.pruners.MedianPruner, ...}, is read as
    the registry's name for that class, and refused for any other target."""
    if not spec:
        return {}
    module, classes = _REGISTRIES[kind]
    names = ", ".join(classes)
    if not isinstance(spec, Mapping):
        raise SweepError(f"{key}={spec!r} is not allowed (allowed: a mapping {{name: {names.replace(', ', '|')}, option: value, ...}})")
    spec = dict(spec)
    if "_target_" in spec:
        target = spec.pop("_target_")
        by_target = {f"{module}.{cls}": name for name, cls in classes.items()}
        if target not in by_target:
            raise SweepError(f"{key}._target_={target!r} is not allowed (allowed: {', '.join(by_target)}; or {key}.name: {names})")
        if spec.setdefault("name", by_target[target]) != by_target[target]:
            raise SweepError(f"{key}: _target_={target!r} and name={spec['name']!r} disagree: give one (allowed names: {names})")
    name = spec.get("name")
    if not isinstance(name, str) or name not in classes:
        raise SweepError(f"{key}.name={name!r} is not allowed (allowed: {names})")
    for k, value in spec.items():
        check_plain(value, f"{key}.{k}")
    return spec


def build(kind: str, spec: Mapping[str, Any] | None, key: str) -> Any:
    """The Optuna sampler or pruner a setting names (see choice_spec), or None for an empty
    one. An option the class does not take, or a value it refuses, is a one-line SweepError."""
    import inspect

    spec = choice_spec(kind, spec, key)
    if not spec:
        return None
    import optuna

    module, classes = _REGISTRIES[kind]
    cls = getattr({"sampler": optuna.samplers, "pruner": optuna.pruners}[kind], classes[spec["name"]])
    options = {k: v for k, v in spec.items() if k != "name"}
    known = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SweepError(f"{key}.{unknown[0]} is not an option of the {spec['name']} {kind} (allowed: {', '.join(known)})")
    try:
        return cls(**options)
    except (TypeError, ValueError, ImportError) as e:
        raise SweepError(f"{key}: {_one_line(e)}") from None


# ---------------------------------------------------------------------------------- summary


def summarize(study: optuna.Study, objectives: Sequence[str], out_dir: Path, importance: bool = True) -> dict[str, Any]:
    """What the sweep found, as files in ``out_dir`` and a dict for the MLflow parent run:
    best params and values (the Pareto front when multi-objective), fANOVA importances per
    objective, the optimisation-history and importance figures."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    result: dict[str, Any] = {"name": study.study_name, "counts": counts, "files": []}
    if not complete:
        (out_dir / "optimization_results.yaml").write_text(_yaml(result))
        result["files"].append(out_dir / "optimization_results.yaml")
        return result
    if len(study.directions) == 1:
        best = study.best_trial
        result.update(best_params=best.params, best_value=best.value, best_trial=best.number)
    else:
        result["best_trials"] = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
    rows = []
    if importance and len(complete) >= 2 and _has_sklearn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, name in enumerate(objectives):
                try:
                    got = optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                        target=(lambda t, i=i: t.values[i]) if len(objectives) > 1 else None,
                    )
                except (ValueError, RuntimeError):  # too few trials, or no param varied
                    continue
                rows += [(name, param, value) for param, value in got.items()]
    if rows:
        table = out_dir / "importance.csv"
        table.write_text("objective,param,importance\n" + "".join(f"{o},{p},{v:.4f}\n" for o, p, v in rows))
        result["importance"] = {f"{o}/{p}": round(v, 4) for o, p, v in rows}
        result["files"].append(table)
    (out_dir / "optimization_results.yaml").write_text(_yaml({k: v for k, v in result.items() if k != "files"}))
    result["files"].insert(0, out_dir / "optimization_results.yaml")
    result["files"] += _figures(study, objectives, out_dir, rows)
    return result


def _has_sklearn() -> bool:
    """fANOVA fits a random forest from scikit-learn (a dependency of rnnlab). Where it is
    missing anyway, the summary still writes the best trial and the history, and says why the
    importances are absent, instead of failing the sweep after every trial has run (Optuna's
    evaluator raises ImportError)."""
    try:
        import sklearn.ensemble  # noqa: F401
        return True
    except ImportError:
        pass
    print("rnnlab: warning: no fANOVA importances: scikit-learn is not installed (pip install scikit-learn)", file=sys.stderr)
    return False


def _figures(study: optuna.Study, objectives: Sequence[str], out_dir: Path, rows: list[tuple[str, str, float]]) -> list[Path]:
    """Optimisation history and importance bars per objective, drawn by rnnlab.figures: Optuna's
    matplotlib plots draw on matplotlib's global state, and its importance plot would refit
    fANOVA where the importances are computed already."""
    from optuna.trial import TrialState

    from rnnlab.figures import plot_sweep

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    paths = []
    for i, name in enumerate(objectives):
        mine = {param: value for objective, param, value in rows if objective == name}
        paths += plot_sweep([t.number for t in complete], [t.values[i] for t in complete], mine, out_dir, name,
                            study.study_name, maximize=study.directions[i].name == "MAXIMIZE")
    return paths


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)


def _hide_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _one_line(error: BaseException | None) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]
