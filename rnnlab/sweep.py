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
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
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


class SweepError(ValueError):
    """Bad sweep input or an unusable storage; the message is one line, ready for the user."""


def check_job(raw: dict[str, Any]) -> None:
    """A composed job config (plain dict) must pass rnnlab's schema: the sweeper checks one
    per choice and per bound before the first trial, as preflight does for a grid."""
    from rnnlab.config import ConfigError, validate

    try:
        validate(raw)
    except ConfigError as e:
        raise SweepError(str(e)) from None


# ------------------------------------------------------------------------------------ storage


def open_storage(url: str | None, *, repair: bool = False) -> Any:
    """A journal file (a path, the default) or a database (a SQLAlchemy URL: sqlite://,
    postgresql://, mysql+pymysql://). Raises SweepError, one line, when it cannot be used.

    ``repair`` cuts a torn last line out of a journal first (see repair_journal); only the
    sweeper asks for it, at start-up, before it writes anything."""
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
        engine = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    last: Exception | None = None
    # Workers starting at once on a fresh database race to create Optuna's schema: the loser
    # sees "table ... already exists" (PostgreSQL, SQLite) or a duplicate alembic_version row
    # (MySQL/MariaDB). It waits for the winner and opens the finished schema.
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as e:
            last = e
            if not any(sign in str(e) for sign in ("already exists", "Duplicate entry", "duplicate key")):
                break
            time.sleep(0.5 * (attempt + 1))
    why = _one_line(last).split(" (Background on this error")[0]
    if isinstance(last, ImportError):
        why += " (pip install 'rnnlab[postgres]' or 'rnnlab[mysql]')"
    raise SweepError(f"storage={_hide_password(url)!r} cannot be used: {why}") from None


def repair_journal(path: Path) -> int:
    """Drop torn writes from a journal file; returns how many bytes were dropped.

    A worker killed mid-write leaves a line without its end. Optuna skips such a last line,
    but the next append is glued onto it, and from then on every load fails ("Invalid log
    format"). Each log line starts with '{"op_code"': a glued line keeps its last complete
    record, a torn last line is cut. Runs under the journal's own lock."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.exists():
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        kept, dropped = [], 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                continue  # the file ends with "\n": nothing torn
            good = line if not last and _is_record(line) else None
            if good is None:
                start = line.rfind(b'{"op_code"')
                good = line[start:] if start > 0 and not last and _is_record(line[start:]) else None
            dropped += len(line) + (0 if last else 1) - (len(good) + 1 if good is not None else 0)
            if good is not None:
                kept.append(good)
        if dropped:
            tmp = path.with_suffix(path.suffix + ".repair")
            tmp.write_bytes(b"".join(line + b"\n" for line in kept))
            os.replace(tmp, path)
            import sys

            print(f"rnnlab: warning: {path}: dropped {dropped} bytes of torn journal writes", file=sys.stderr)
        return dropped
    finally:
        lock.release()


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def load_or_create_study(
    storage: Any, name: str, directions: Sequence[str], space: dict[str, str], sampler: Any = None, pruner: Any = None
) -> optuna.Study:
    """The study ``name``: created, or loaded to resume. A study created with another search
    space or other directions is refused (SweepError) before anything is written to it."""
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
        study.set_user_attr(SPACE, space)
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


def fail_trial(study: optuna.Study, trial_id: int, reason: str, retry: bool = False) -> bool:
    """Record a trial FAIL with its reason; with ``retry``, enqueue its params once more
    (once: a retry is never retried). False if someone else finished it first."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        frozen = storage.get_trial(trial_id)
        retry = retry and RETRY_OF not in frozen.user_attrs
        storage.set_trial_user_attr(trial_id, FAIL_REASON, reason[:500])
        if retry:  # before the state: a finished trial's attributes are frozen
            storage.set_trial_system_attr(trial_id, RETRIED, True)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry:
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number}, skip_if_exists=False)
    return True


def reap(study: optuna.Study, grace: float) -> list[int]:
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
            if fail_trial(study, t._trial_id, f"no heartbeat from {worker} for {now - last:.0f} s (killed?)", retry=True):
                reaped.append(t.number)
    return reaped


class Heartbeat:
    """A thread that beats for this worker's running trials and reaps other workers' stale
    ones, every ``interval`` seconds, while jobs run (the launcher blocks the sweeper)."""

    def __init__(self, study: optuna.Study, interval: float, grace: float) -> None:
        self.study, self.interval, self.grace = study, interval, grace
        self.trial_ids: set[int] = set()
        self.reaped: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnnlab-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        import optuna

        for trial_id in list(self.trial_ids):
            try:
                self.study._storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self.reaped += reap(self.study, self.grace)
            except Exception as e:  # a storage hiccup must not kill the sweep; the next beat retries
                import sys

                print(f"rnnlab: warning: heartbeat: {_one_line(e)}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def claim(study: optuna.Study, distributions: dict[str, Any], heartbeat: Heartbeat) -> optuna.Trial:
    """Ask for a trial (an enqueued retry first) and mark it as this worker's."""
    trial = study.ask(distributions)
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, WORKER, f"{socket.gethostname()}:{os.getpid()}")
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time())
    heartbeat.trial_ids.add(trial._trial_id)
    return trial


def record(study: optuna.Study, trial: optuna.Trial, outcome: Any, objectives: Sequence[str]) -> str:
    """Tell the study how a job ended. ``outcome`` is the job's return dict or the exception
    it raised. A NaN or infinite objective is a FAIL: Optuna itself would store +inf as
    COMPLETE, and a diverged run must never count as a result. Returns the state's name."""
    import optuna
    from optuna.trial import TrialState

    if isinstance(outcome, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return "PRUNED"
    if isinstance(outcome, BaseException):
        fail_trial(study, trial._trial_id, f"{type(outcome).__name__}: {_one_line(outcome)}")
        return "FAIL"
    try:
        values = [float(outcome[k]) for k in objectives]
    except (KeyError, TypeError, ValueError):
        fail_trial(study, trial._trial_id, f"the job returned no number for each of {list(objectives)}: {outcome!r}"[:500])
        return "FAIL"
    bad = [f"{k}={v}" for k, v in zip(objectives, values) if not math.isfinite(v)]
    if bad:
        fail_trial(study, trial._trial_id, f"non-finite objective {', '.join(bad)} (diverged)")
        return "FAIL"
    study.tell(trial, values, skip_if_finished=True)
    return "COMPLETE"


# ---------------------------------------------------------------------------------- job side


class NullTrial:
    """Outside a sweep: the same attributes as JobTrial, doing nothing."""

    tags: dict[str, str] = {}
    pruned: tuple[type[BaseException], ...] = ()  # `except ()` catches nothing

    def on_epoch_end(self, epoch: int, val_loss: float) -> None: ...


class JobTrial:
    """A job's handle on its trial: reports val_loss every epoch and raises
    ``optuna.TrialPruned`` when the study's pruner says so, which unwinds train()."""

    def __init__(self, cfg: Any) -> None:
        import optuna

        self.pruned = (optuna.TrialPruned,)
        self.tags = {"rnnlab.study": cfg.study, "rnnlab.trial": str(cfg.number)}
        if cfg.parent_run:
            self.tags["mlflow.parentRunId"] = cfg.parent_run  # a child of the sweep's run
        study = optuna.load_study(study_name=cfg.study, storage=open_storage(cfg.storage), pruner=build(cfg.pruner))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, cfg.number)
        self.trial = optuna.Trial(study, trial_id)
        # Optuna prunes single-objective studies only.
        self.prune = len(study.directions) == 1

    def on_epoch_end(self, epoch: int, val_loss: float) -> None:
        if not self.prune or not math.isfinite(val_loss):
            return
        self.trial.report(val_loss, epoch)
        if self.trial.should_prune():
            raise self.pruned[0](f"pruned after epoch {epoch} (val_loss {val_loss:.4g})")


def job_trial(cfg: Any) -> JobTrial | NullTrial:
    """The job side of a trial (``cfg`` is config.trial), or a NullTrial outside a sweep.
    Sets this process's threads to its share of the cores first (see share_cores)."""
    if not cfg.study:
        return NullTrial()
    share_cores(cfg.threads)
    return JobTrial(cfg)


def share_cores(threads: int) -> None:
    """Parallel trials on one machine must not oversubscribe it: measured on 2 cores, two
    2-thread training processes run at 0.21-0.27x the throughput of one, two 1-thread ones at
    1.44-1.68x. ``threads`` is the job's share (0: leave torch's default). Numba's share comes
    through the environment (the sweeper sets NUMBA_NUM_THREADS per job): windows.py is the
    only module that imports Numba, and its kernels are serial today."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def build(spec: dict[str, Any] | None) -> Any:
    """An object from a {'_target_': 'module.Class', **kwargs} spec (Hydra's convention,
    without importing Hydra): the pruner a job rebuilds from its config."""
    if not spec:
        return None
    import importlib

    kwargs = dict(spec)
    module, _, name = kwargs.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


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
    if importance and len(complete) >= 2:
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


def _figures(study: optuna.Study, objectives: Sequence[str], out_dir: Path, rows: list[tuple[str, str, float]]) -> list[Path]:
    """Optimisation history (Optuna's plot) and importance bars per objective. The bars are
    drawn from the importances already computed: Optuna's own plot would refit fANOVA."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    paths = []
    for i, name in enumerate(objectives):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings
            if len(objectives) > 1:
                ax = vis.plot_optimization_history(study, target=lambda t, i=i: t.values[i], target_name=name)
            else:
                ax = vis.plot_optimization_history(study, target_name=name)
        paths.append(out_dir / f"history_{name}.png")
        ax.figure.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        mine = sorted((value, param) for objective, param, value in rows if objective == name)
        if not mine:
            continue
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(mine)), layout="constrained")
        ax.barh([p for _, p in mine], [v for v, _ in mine], color="tab:blue")
        ax.set_xlabel(f"fANOVA importance for {name}")
        ax.set_title(f"{study.study_name}: hyperparameter importance")
        paths.append(out_dir / f"importance_{name}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
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
