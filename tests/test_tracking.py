"""The MLflow edge: a run with params, batched metrics and artifacts; failures never kill training."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

import os
import subprocess
import sys
import time

from rnnlab.tracking import NullTracker, Sender, Tracker, TrackingError, check_params


def test_a_run_gets_params_metrics_artifacts_and_status(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    tracker = Tracker(uri, "exp", "lstm-d1-h8-k0", tags={"rnnlab.command": "python -m rnnlab"})
    tracker.log_params({"depth": 1, "train.lr": 0.001})
    for epoch in range(1, 4):
        tracker.log_metrics({"train_loss": 1 / epoch, "val_loss": 2 / epoch}, epoch)
    (tmp_path / "note.txt").write_text("hi")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.finish("FINISHED")

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lstm-d1-h8-k0"
    assert run.data.params == {"depth": "1", "train.lr": "0.001"}
    assert run.data.tags["rnnlab.command"] == "python -m rnnlab"
    history = client.get_metric_history(tracker.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2 / 3)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["note.txt"]
    assert (tmp_path / "store" / "mlartifacts").is_dir()  # artifacts beside the local store


def test_metrics_go_in_batches_not_one_call_per_value(tmp_path, monkeypatch):
    calls = []
    from mlflow.tracking import client as client_module

    original = client_module.MlflowClient.log_batch

    def counting(self, run_id, metrics=(), **kw):
        if metrics:
            calls.append(len(metrics))
        return original(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(client_module.MlflowClient, "log_batch", counting)
    sender = Sender(f"sqlite:///{tmp_path}/mlflow.db", "exp", "r", tags={})  # the writer's logic, in-process
    sender.send([("metrics", [(f"m{i}", float(i), 0, 1) for i in range(2500)])])
    sender.finish("FINISHED")
    assert sum(calls) == 2500 and max(calls) <= 1000 and len(calls) == 3


def test_a_failing_store_call_warns_once_and_is_retried_at_the_end(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import client as client_module

    original = client_module.MlflowClient.log_batch
    failures = {"left": 1}

    def flaky(self, run_id, metrics=(), **kw):
        if metrics and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("store went away")
        return original(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(client_module.MlflowClient, "log_batch", flaky)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sender = Sender(uri, "exp", "r", tags={})
    sender.send([("metrics", [("loss", 1.0, 0, 1)])])
    sender.send([("metrics", [("loss", 2.0, 0, 2)])])
    sender.finish("FINISHED")
    assert capsys.readouterr().err.count("warning: MLflow call failed (store went away)") == 1
    history = MlflowClient(uri).get_metric_history(sender.run_id, "loss")
    assert failures["left"] == 0 and [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0)]


def test_unusable_stores_fail_fast_with_one_line():
    with pytest.raises(TrackingError, match=r"tracking.uri='http://127.0.0.1:9': cannot connect to 127.0.0.1:9"):
        Tracker("http://127.0.0.1:9", "exp", "r", tags={})
    with pytest.raises(TrackingError, match=r"cannot create '/proc/rnnlab'"):
        Tracker("sqlite:////proc/rnnlab/mlflow.db", "exp", "r", tags={})


def test_params_mlflow_would_truncate_are_refused():
    with pytest.raises(TrackingError, match=r"param 'data.path' is 7000 characters long \(MLflow allows 6000\)"):
        check_params({"data.path": "x" * 7000})


def test_null_tracker_accepts_everything_and_writes_nothing(tmp_path):
    t = NullTracker()
    t.log_params({"a": 1})
    t.log_metrics({"m": 1.0}, 1)
    t.log_artifact(tmp_path / "x")
    t.finish("FINISHED")
    assert t.run_id is None and list(tmp_path.iterdir()) == []


def test_a_trainer_killed_with_sigkill_leaves_its_run_killed_not_running(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = f"""
import os, signal, time
from rnnlab.tracking import Tracker
t = Tracker({uri!r}, "exp", "doomed", tags={{}})
t.log_metrics({{"loss": 1.0}}, 1)
time.sleep(8)  # the writer opens the store meanwhile
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", code], timeout=60)
    client = MlflowClient(uri)
    deadline = time.time() + 30
    while time.time() < deadline:
        runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
        if runs and runs[0].info.status != "RUNNING":
            break
        time.sleep(0.5)
    (run,) = runs
    assert run.info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0]
