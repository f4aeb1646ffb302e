"""Sweeps on a real Slurm cluster: `python -m rnnlab -m hydra/sweeper=optuna hydra/launcher=slurm`
on a one-node cluster started here (tests/slurm_cluster.py), a PostgreSQL study and an MLflow
server reached by the jobs over loopback. Trials as Slurm jobs; a job cancelled, one warned of
its time limit and requeued; two workers drawing different trials; bad cluster settings."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY, MlflowServer, run_cli
from rnnlab import sweep

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'rnnlab[slurm]'")
import slurm_cluster  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@functools.lru_cache(maxsize=None)
def storage_of(url: str) -> object:
    """One storage per URL for the polling below: a new one per poll (optuna.load_study(storage=url))
    leaves its pool's connections open until collected, and the suite's sweep tests beside these
    ran PostgreSQL out of connections."""
    return sweep.open_storage(url)
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_task=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5"]
SWEEP = ["-m", "hydra/sweeper=optuna", *TINY, *ON_SLURM]
LR = "train.lr=tag(log,interval(1e-4,1e-2))"
pytestmark = pytest.mark.slow


def _postgres() -> str | None:
    import socket

    try:
        __import__("psycopg")
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except (ImportError, OSError) as e:
        return f"no PostgreSQL on 127.0.0.1:5432 with psycopg ({e})"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        slurm_cluster.install()
        up = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    except slurm_cluster.Unavailable as e:
        pytest.skip(f"no Slurm cluster here: {e}")
    yield up
    up.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    up = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    up.start()
    yield up
    up.stop()


@pytest.fixture
def study_url():
    reason = _postgres()
    if reason:
        pytest.skip(reason)
    names: list[str] = []
    yield POSTGRES, names
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=POSTGRES)
        except KeyError:
            pass


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_sweep_left():
    """A test that fails mid-sweep leaves no worker behind (nor its jobs: the cluster's stop
    cancels them)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(args: list[str], cwd: Path, cluster) -> subprocess.Popen:
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen, cluster, timeout: float = 240) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the sweep did not end: {err[-3000:]}\n{cluster.logs()}")
    assert proc.returncode == 0, f"{err[-3000:]}\n{cluster.logs()}"
    return err


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in STARTED):
            err = "".join(p.stderr.read() if p.poll() is not None else "" for p in STARTED)
            raise AssertionError(f"timed out waiting for {what}: {err[-2000:]}")
        time.sleep(0.3)


def runs_of(server, study: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`rnnlab.study` = '{study}'", max_results=200)


def tracked(server) -> list[str]:
    return [f"tracking.uri={server.uri}", "tracking.experiment=slurm"]


# ------------------------------------------------------------------- a sweep, two workers


def test_two_workers_on_slurm_share_one_study_and_one_parent_run_and_draw_different_trials(cluster, server, study_url, tmp_path):
    # The README's recipe without its first step: two workers started at once on a study that
    # does not exist yet. Each submits arrays of 2 jobs; the node runs 2 at a time.
    url, names = study_url
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    names.append(name)
    args = [*SWEEP, *tracked(server), f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}",
            "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=none", LR, "dropout=interval(0,0.3)"]
    workers = [start(args, tmp_path, cluster) for _ in range(2)]
    errors = [finish(w, cluster, timeout=300) for w in workers]
    study = optuna.load_study(study_name=name, storage=storage_of(url))
    trials = study.trials
    # The count is checked before each ask, running trials included: only asks racing between
    # one worker's count and the other's ask overshoot, by at most workers - 1.
    assert 8 <= len(trials) <= 9, errors
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials), [t.user_attrs for t in trials]
    drawn = {(t.params["train.lr"], t.params["dropout"]) for t in trials}
    assert len(drawn) == len(trials)  # different configurations, not one stream twice
    # Every trial ran as a Slurm job with 1 CPU: torch, OpenMP, MKL and Numba on one thread.
    for t in trials:
        assert t.user_attrs[sweep.THREADS_ATTR] == {"torch": 1, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                                    "NUMBA_NUM_THREADS": "1"}, t.user_attrs
    results = list(tmp_path.glob("outputs/multirun/*/*/.submitit/*/*_result.pkl"))
    assert len(results) == len(trials)  # submitit's result of each job (one per array task)
    # One parent run, every trial's run its child, named by the study.
    runs = runs_of(server, name)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == name
    parent = parents[0]
    assert study.user_attrs[sweep.PARENT_RUN] == parent.info.run_id
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == len(trials) == len(runs) - 1
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == set(children)
    assert {r.info.status for r in children.values()} == {"FINISHED"}
    # The best trial and the importances, on the parent run and in the sweep directory.
    best = min(t.value for t in trials)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best)
    assert "best.train.lr" in parent.data.tags
    assert list(tmp_path.glob("outputs/multirun/*/*/importance.csv"))


# --------------------------------------------------------------------------- scancel


def test_a_cancelled_trial_fails_with_its_reason_is_retried_and_its_run_is_not_left_running(cluster, server, study_url, tmp_path):
    url, names = study_url
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    names.append(name)
    args = [*SWEEP, *tracked(server), f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.importance=false",
            "hydra/sweeper/pruner=none", "train.epochs=15", "train.patience=0", "train.steps_per_epoch=0", LR]
    proc = start(args, tmp_path, cluster)

    def training() -> bool:  # trial 0's job has reported an epoch
        try:
            trials = optuna.load_study(study_name=name, storage=storage_of(url)).trials
        except KeyError:
            return False
        return bool(trials) and bool(trials[0].intermediate_values)

    wait_for(training, 120, "trial 0 to report an epoch")
    (job,) = [line.split()[0] for line in cluster.squeue() if "RUNNING" in line]
    subprocess.run(["scancel", job], check=True, env=cluster.env)
    finish(proc, cluster)
    study = optuna.load_study(study_name=name, storage=storage_of(url))
    assert sweep.count(study) == sweep.Counts(done=2, failed=0, running=0, waiting=0)
    cancelled = study.trials[0]
    assert cancelled.state == TrialState.FAIL and cancelled.system_attrs.get(sweep.RETRIED)
    assert "CANCELLED" in cancelled.user_attrs[sweep.FAIL_REASON] or "Stopped" in cancelled.user_attrs[sweep.FAIL_REASON]
    retry = [t for t in study.trials if t.user_attrs.get(sweep.RETRY_OF) == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == cancelled.params
    runs = [r for r in runs_of(server, name) if r.data.tags.get("rnnlab.trial") == "0"]
    assert runs and all(r.info.status != "RUNNING" for r in runs), [r.info.status for r in runs]


# ----------------------------------------------------------------------- preemption


def test_a_job_warned_of_its_time_limit_is_requeued_and_resumes_as_one_run_and_one_trial_bit_for_bit(cluster, server, study_url, tmp_path):
    url, names = study_url
    name = f"requeue-{uuid.uuid4().hex[:8]}"
    names.append(name)
    job = ["train.epochs=15", "train.patience=0", "train.steps_per_epoch=0", "train.lr=choice(0.003)",
           "hydra.sweeper.n_trials=1", "hydra.sweeper.importance=false"]
    args = [*SWEEP, *tracked(server), *job, f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}"]
    (tmp_path / "slurm").mkdir()
    proc = start(args, tmp_path / "slurm", cluster)

    def epochs() -> int:
        try:
            trials = optuna.load_study(study_name=name, storage=storage_of(url)).trials
        except KeyError:
            return 0
        return len(trials[0].intermediate_values) if trials else 0

    wait_for(lambda: epochs() >= 3, 120, "trial 0 to report 3 epochs")
    (job_id,) = [line.split()[0] for line in cluster.squeue() if "RUNNING" in line]
    # What Slurm sends signal_delay_s before the time limit (submitit's --signal=USR2@...).
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, env=cluster.env)
    err = finish(proc, cluster, timeout=300)
    assert f"Slurm job {job_id} stopped (FAILED, exit " in err and "submitted again with resume=auto" in err, err[-3000:]
    study = optuna.load_study(study_name=name, storage=storage_of(url))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    (run,) = [r for r in runs_of(server, name) if "mlflow.parentRunId" in r.data.tags]
    assert run.info.status == "FINISHED" and trial.user_attrs["mlflow_run_id"] == run.info.run_id
    # The same trial without the interruption, in this process's own sweep (one thread, as in
    # the job): the same best val_loss, bit for bit.
    local = tmp_path / "local"
    local.mkdir()
    plain = run_cli(["-m", "hydra/sweeper=optuna", *TINY, *job, "tracking=none", "hydra.sweeper.threads_per_trial=1"], local)
    assert plain.returncode == 0, plain.stderr[-3000:]
    storage = sweep.open_storage(str(local / sweep.DEFAULT_STORAGE))
    (again,) = optuna.load_study(study_name=optuna.get_all_study_summaries(storage)[0].study_name, storage=storage).trials
    assert trial.value == again.value and trial.intermediate_values == again.intermediate_values


# ------------------------------------------------------------------- bad cluster settings


BAD = [  # a setting, and the one line it must give
    (["hydra.launcher.partition=nosuch"], "hydra.launcher.partition='nosuch' is not a partition of this cluster (allowed: debug)"),
    (["hydra.launcher.gpus_per_task=1"], "hydra.launcher.gpus_per_task=1: partition 'debug' has no GPUs"),
    (["hydra.sweeper.storage=postgresql://postgres@127.0.0.1:1/none"], "storage='postgresql://postgres@127.0.0.1:1/none' cannot be used"),
]


def test_a_bad_cluster_setting_is_one_line_before_any_job_study_or_run_exists(cluster, server, tmp_path):
    before = cluster.squeue()
    procs = []
    for i, (setting, _) in enumerate(BAD):  # side by side: each is a CLI start-up
        (tmp_path / str(i)).mkdir()
        procs.append(start([*SWEEP, *tracked(server), "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=bad", LR,
                            *setting], tmp_path / str(i), cluster))
    for i, (proc, (setting, message)) in enumerate(zip(procs, BAD)):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, err[-2000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err
        assert not (tmp_path / str(i) / "outputs" / "optuna.journal").exists()
        assert not list((tmp_path / str(i)).glob("outputs/multirun/*/*/.submitit"))
    assert cluster.squeue() == before
    assert runs_of(server, "bad") == []
