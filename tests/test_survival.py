"""Runs that survive (end to end, as a user or a cluster scheduler drives them): preemption
and resume, divergence, failing multirun jobs, simultaneous starts, secrets in configs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow

# Long enough to be stopped mid-run: 5 epochs x 60 steps of a small net with dropout.
LONGER = [*TINY, "train.epochs=5", "train.steps_per_epoch=60", "dropout=0.2", "train.patience=0"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(cwd: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Block until some checkpoint sidecar under cwd says ``epoch`` is next (or later)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for sidecar in cwd.glob("outputs/runs/*/*/checkpoint.json"):
            try:
                if json.loads(sidecar.read_text())["epoch"] >= epoch and time.time() - sidecar.stat().st_mtime < 60:
                    return
            except (ValueError, KeyError, OSError):
                pass
        time.sleep(0.02)
    raise AssertionError(f"epoch {epoch} never came; {proc.poll()=}")


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, float, str]:
    """Signal the trainer; return its exit code, how long it took to exit, its stderr. (Its
    tracking writer may outlive it by a moment, holding the pipes: time the trainer alone.)"""
    sent = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    seconds = time.monotonic() - sent
    _, err = proc.communicate(timeout=60)
    return code, seconds, err


def the_run(cwd: Path):
    client = MlflowClient(f"sqlite:///{cwd}/outputs/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    return client, run


def final_weights(cwd: Path) -> dict:
    newest = max(cwd.glob("outputs/runs/*/*/model.pt"), key=lambda p: p.stat().st_mtime)
    return torch.load(newest, weights_only=True)


def test_preempted_twice_and_resumed_equals_an_uninterrupted_run(tmp_path, add_store):
    reference, preempted = add_store(tmp_path / "reference"), add_store(tmp_path / "preempted")
    assert run_cli(LONGER, reference).returncode == 0

    proc = start(LONGER, preempted)  # SIGTERM mid-epoch 2
    wait_for_epoch(preempted, 2, proc)
    code, seconds, err = stop(proc, signal.SIGTERM)
    assert code == 143 and seconds < 5, (code, seconds, err)
    assert err.count("resume=") == 1 and "leaked semaphore" not in err, err  # one way to continue, no warning
    client, run = the_run(preempted)
    assert run.info.status == "KILLED"

    proc = start([*LONGER, "resume=auto"], preempted)  # SIGUSR1, as Slurm sends before a kill
    wait_for_epoch(preempted, 4, proc)
    code, seconds, err = stop(proc, signal.SIGUSR1)
    assert code == 143 and seconds < 5, (code, seconds, err)

    result = run_cli([*LONGER, f"resume={run.info.run_id}"], preempted)
    assert result.returncode == 0, result.stderr
    client, resumed = the_run(preempted)  # one run, continued, not three
    ref_client, straight = the_run(reference)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.metrics["test_mse"].hex() == straight.data.metrics["test_mse"].hex()
    ours, theirs = final_weights(preempted), final_weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for key in ("train_loss", "val_loss", "grad_norm"):  # each (key, step) exactly once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        ref = {m.step: m.value for m in ref_client.get_metric_history(straight.info.run_id, key)}
        assert sorted(steps) == sorted(ref) and len(ref) == 5, (key, steps)  # 5 epochs, at their optimiser steps
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert ref == got
    probed = [k for k in straight.data.metrics if k.startswith("decay_rate/")]
    assert probed and set(resumed.data.metrics) == set(straight.data.metrics)
    for key in resumed.data.metrics:  # the probe's and every other key: the same steps, once each
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        ref = [m.step for m in ref_client.get_metric_history(straight.info.run_id, key)]
        assert sorted(steps) == sorted(ref), (key, steps, ref)

    # Once finished, resume=auto starts a new run, saying so; the finished one stays as it ended
    # (its first folder's checkpoint still reads unfinished: a resume saves into a new folder).
    again = run_cli([*LONGER, "resume=auto"], preempted)
    assert again.returncode == 0, again.stderr
    assert "resume=auto: the run with this config finished" in again.stderr and "starting a new run" in again.stderr
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert client.get_run(run.info.run_id).data.metrics == resumed.data.metrics


def test_resume_of_a_bad_reference_is_one_line(workdir):
    result = run_cli([*TINY, "resume=no-such-run"], workdir)
    assert result.returncode == 2
    assert result.stderr.strip() == ("rnnlab: error: resume='no-such-run': no such checkpoint file, "
                                     "and no checkpoint of that run id under outputs/")


DIVERGES = ["cell=rnn", "cell.nonlinearity=relu", "train.optimizer=sgd", "train.clip=0"]


def test_a_diverging_run_ends_failed_with_a_tag_and_its_traceback(tracked_workdir):
    result = run_cli([*TINY, *DIVERGES, "train.lr=1e12"], tracked_workdir)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rnnlab: error: non-finite loss at step ")
    client, run = the_run(tracked_workdir)
    assert run.info.status == "FAILED"
    assert run.data.tags["rnnlab.failure"].startswith("nonfinite_loss@step=")
    assert "traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_multirun_with_failing_jobs_finishes_the_others_and_reports(tracked_workdir):
    lrs = "train.lr=2e-3,1e12,3e-3,1e12,1e-3"
    result = run_cli(["-m", *TINY, *DIVERGES, lrs, "train.epochs=1"], tracked_workdir)
    assert result.returncode != 0
    assert "rnnlab: 2 job(s) failed:" in result.stderr
    assert result.stderr.count("non-finite loss") >= 2
    client = MlflowClient(f"sqlite:///{tracked_workdir}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    by_lr = sorted((float(r.data.params["train.lr"]), r.info.status) for r in runs)
    assert by_lr == [(1e-3, "FINISHED"), (2e-3, "FINISHED"), (3e-3, "FINISHED"), (1e12, "FAILED"), (1e12, "FAILED")]
    for r in runs:
        if r.info.status == "FAILED":
            assert "traceback.txt" in {a.path for a in client.list_artifacts(r.info.run_id)}
            log = Path(r.data.tags["rnnlab.output_dir"]) / "__main__.log"
            assert "non-finite loss" in log.read_text()


def test_twenty_runs_started_at_once_get_twenty_folders(workdir):
    # Each job diverges on its first step, just after Hydra made its folder: cheap, and the
    # folder is what is tested (bad input is refused before any folder exists).
    args = [sys.executable, "-m", "rnnlab", *TINY, *DIVERGES, "train.lr=1e12", "probe.every=0", "tracking=none"]
    procs = [subprocess.Popen(args, cwd=workdir, stderr=subprocess.DEVNULL) for _ in range(20)]
    assert all(p.wait(timeout=300) == 2 for p in procs)
    folders = list(workdir.glob("outputs/runs/*/*"))
    assert len(folders) == 20 and len({f.name for f in folders}) == 20
    assert all(len(list(f.glob("*.log"))) == 1 for f in folders)  # none shares another's files


def test_secrets_from_the_environment_never_reach_mlflow(tracked_workdir):
    data = tracked_workdir / "data"
    data.mkdir()
    start = np.datetime64("2024-01-01T00")
    lines = ["time,y"] + [f"{start + i},{np.sin(i / 7) + 0.1 * np.cos(i / 3):.4f}" for i in range(400)]
    (data / "secret-name-abc123.csv").write_text("\n".join(lines) + "\n")
    env = {"SIGNED_DATA_TOKEN": str(data / "secret-name-abc123.csv")}
    args = ["data=csv", "data.path=${oc.env:SIGNED_DATA_TOKEN}", "data.target=y", "data.lookback=12",
            "depth=1", "hidden_size=4", "train.epochs=1", "train.steps_per_epoch=2", "quiet=true"]
    result = run_cli(args, tracked_workdir, env=env)
    assert result.returncode == 0, result.stderr
    client, run = the_run(tracked_workdir)
    assert run.data.params["data.path"] == "***"
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tracked_workdir))
    assert "abc123" not in Path(local).read_text() and "abc123" not in json.dumps(run.data.params)
