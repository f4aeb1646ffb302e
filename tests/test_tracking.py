"""The MLflow edge: a run with params, batched metrics and artifacts; failures never kill training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rnnlab.tracking import NullTracker, Tracker, TrackingError, check_params
from rnnlab.tracking.recovery import SPOOL
from rnnlab.tracking.writer import Sender, Writer


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


def test_metrics_go_in_batches_not_one_call_per_value(mlflow_store, monkeypatch):
    calls = []
    from mlflow.tracking import client as client_module

    original = client_module.MlflowClient.log_batch

    def counting(self, run_id, metrics=(), **kw):
        if metrics:
            calls.append(len(metrics))
        return original(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(client_module.MlflowClient, "log_batch", counting)
    sender = Sender(mlflow_store, "exp", "r", tags={})  # the writer's logic, in-process
    sender.send([("metrics", [(f"m{i}", float(i), 0, 1) for i in range(2500)])])
    sender.finish("FINISHED", timeout=5)
    assert sum(calls) == 2500 and max(calls) <= 1000 and len(calls) == 3


def test_an_outage_keeps_order_warns_once_spools_and_replays(tmp_path, mlflow_store, monkeypatch, capsys):
    from mlflow.tracking import client as client_module

    from rnnlab.tracking import writer

    monkeypatch.setattr(writer, "RETRY_SECONDS", 0.0)
    original = client_module.MlflowClient.log_batch
    down = {"on": False}

    def flaky(self, run_id, metrics=(), **kw):
        if down["on"]:
            raise ConnectionError("store went away")
        return original(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(client_module.MlflowClient, "log_batch", flaky)
    uri = mlflow_store
    spool = tmp_path / SPOOL
    sender = Sender(uri, "exp", "r", tags={}, spool=str(spool))
    sender.send([("metrics", [("loss", 1.0, 0, 1)])])
    down["on"] = True
    sender.send([("metrics", [("loss", 2.0, 0, 2)])])
    sender.send([("metrics", [("loss", 3.0, 0, 3)])])
    assert len(sender.pending) == 2 and spool.exists()  # kept in order, on disk too
    assert spool.read_text().count("loss") == 2
    sender.tick()  # still down: nothing lost
    down["on"] = False
    sender.tick()  # back: replayed in order
    sender.finish("FINISHED", timeout=5)
    assert capsys.readouterr().err.count("warning: MLflow call failed (store went away)") == 1
    client = MlflowClient(uri)
    history = client.get_metric_history(sender.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert client.get_run(sender.run_id).info.status == "FINISHED" and not spool.exists()


def test_resume_continues_the_same_run(mlflow_store):
    uri = mlflow_store
    first = Tracker(uri, "exp", "r", tags={})
    first.log_metrics({"loss": 1.0}, 1)
    first.finish("KILLED")
    again = Tracker(uri, "exp", "r", tags={"rnnlab.resumed": "1"}, run_id=first.run_id)
    again.log_metrics({"loss": 0.5}, 2)
    again.finish("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert again.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.tags["rnnlab.resumed"] == "1" and "rnnlab.heartbeat" in run.data.tags
    assert [m.value for m in client.get_metric_history(first.run_id, "loss")] == [1.0, 0.5]
    assert len(client.search_runs([run.info.experiment_id])) == 1


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


def test_metrics_held_for_a_batch_all_arrive_with_their_steps_at_finish(mlflow_store):
    uri = mlflow_store
    tracker = Tracker(uri, "exp", "r", tags={}, batch_seconds=3600)  # nothing is sent before finish
    for step in range(1, 201):  # a probe's worth of keys, 200 times: 4,400 values
        tracker.log_metrics({f"probe/k{i}": step + i / 100 for i in range(22)}, step)
    deadline = time.monotonic() + 60
    while tracker.run_id is None and time.monotonic() < deadline:  # the run exists...
        time.sleep(0.2)
    client = MlflowClient(uri)
    assert client.get_metric_history(tracker.run_id, "probe/k0") == []  # ...but its metrics wait
    tracker.finish()
    for i in (0, 21):
        history = client.get_metric_history(tracker.run_id, f"probe/k{i}")
        assert sorted((m.step, m.value) for m in history) == [(s, s + i / 100) for s in range(1, 201)]


def test_the_writer_sends_every_batch_seconds_not_only_at_finish(mlflow_store):
    uri = mlflow_store
    tracker = Tracker(uri, "exp", "r", tags={}, batch_seconds=0.5)
    tracker.log_metrics({"loss": 1.0}, 1)
    deadline, history = time.monotonic() + 60, []
    while not history and time.monotonic() < deadline:
        time.sleep(0.5)
        if tracker.run_id is not None:
            history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]  # delivered while the run goes on
    tracker.finish()


def test_the_writer_runs_niced_leaves_at_finish_and_reports_its_cost(mlflow_store):
    from rnnlab.tracking import writer

    tracker = Tracker(mlflow_store, "exp", "r", tags={})
    deadline = time.monotonic() + 60  # the writer lowers its priority once the store is open
    while os.getpriority(os.PRIO_PROCESS, tracker._writer.pid) == os.getpriority(os.PRIO_PROCESS, 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    niceness = os.getpriority(os.PRIO_PROCESS, tracker._writer.pid)
    assert niceness == min(os.getpriority(os.PRIO_PROCESS, 0) + writer.WRITER_NICENESS, 19)
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.finish()
    assert not tracker._writer.is_alive() and tracker._writer.exitcode == 0  # gone, not tearing down
    assert tracker.writer_cpu_seconds > 0.5  # importing MLflow and opening the store, at least
    # Asked to open at once, so little or none of its start-up counts as before the open.
    assert 0 <= tracker.writer_cpu_before_open < tracker.writer_cpu_seconds
    assert 0 < tracker.call_seconds < 5 and 0 < tracker.finish_seconds < 60


def test_a_trainer_killed_with_sigkill_leaves_its_run_killed_not_running(mlflow_store):
    uri = mlflow_store
    code = f"""
import os, signal, time
from rnnlab.tracking import Tracker
t = Tracker({uri!r}, "exp", "doomed", tags={{}}, batch_seconds=3600)  # so the metric waits in the writer
t.log_metrics({{"loss": 1.0}}, 1)
deadline = time.monotonic() + 40
while t.run_id is None and time.monotonic() < deadline:  # the writer has opened the store and the run
    time.sleep(0.1)
time.sleep(0.5)  # and the metric, queued before, has reached it
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", code], timeout=60)
    deadline, runs = time.time() + 40, []
    while time.time() < deadline:
        try:  # the writer may still be creating the store on a loaded machine
            client = MlflowClient(uri)
            runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
        except Exception:
            runs = []
        if runs and runs[0].info.status != "RUNNING":
            break
        time.sleep(0.5)
    (run,) = runs
    assert run.info.status == "KILLED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0]


def test_a_run_that_cannot_be_created_is_an_error_at_finish(mlflow_store):
    tracker = Tracker(mlflow_store, "exp", "r", tags={}, run_id="no-such-run")
    tracker.log_metrics({"loss": 1.0}, 1)
    with pytest.raises(TrackingError, match=r"tracking.uri='sqlite:///.*mlflow.db': .*no-such-run"):
        tracker.finish()


def test_reap_marks_runs_with_a_stale_heartbeat_killed_and_leaves_the_rest(mlflow_store):
    from rnnlab.tracking.recovery import reap

    uri = mlflow_store
    client = MlflowClient(uri)
    experiment = client.create_experiment("exp")
    now = time.time()
    ids = {}
    for name, tags in [("zombie", {"rnnlab.heartbeat": str(int(now - 200)), "rnnlab.heartbeat_interval": "30"}),
                       ("alive", {"rnnlab.heartbeat": str(int(now - 20)), "rnnlab.heartbeat_interval": "30"}),
                       ("foreign", {})]:
        ids[name] = client.create_run(experiment, tags=tags, run_name=name).info.run_id
    result = subprocess.run([sys.executable, "-m", "rnnlab.reap", "--uri", uri], capture_output=True, text=True)
    assert result.returncode == 0 and "1 zombie run(s) reaped" in result.stdout
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"zombie": "KILLED", "alive": "RUNNING", "foreign": "RUNNING"}
    assert reap(uri) == []  # nothing left to reap


@pytest.mark.slow
def test_a_60_second_server_outage_loses_nothing_and_never_blocks_training(mlflow_server, tmp_path):
    tracker = Tracker(mlflow_server.uri, "outage", "r", tags={}, spool_dir=tmp_path)
    step_seconds, step, started = [], 0, time.monotonic()
    phase = "up"
    while True:
        elapsed = time.monotonic() - started
        if phase == "up" and elapsed > 10:
            mlflow_server.stop()  # the server goes away mid-run...
            phase, down_at = "down", time.monotonic()
        elif phase == "down" and time.monotonic() - down_at > 60:
            mlflow_server.start()  # ...and comes back 60 s later
            phase = "back"
        elif phase == "back" and elapsed > 85:
            break
        t = time.monotonic()
        step += 1
        tracker.log_metrics({"loss": 1.0 / step, "val": float(step)}, step)  # what a training step does
        time.sleep(0.05)  # the step's own work
        step_seconds.append(time.monotonic() - t)
    tracker.finish(timeout=120)
    assert max(step_seconds) < 0.05 + 1.0  # never blocked for a second
    client = MlflowClient(mlflow_server.uri)
    for key in ("loss", "val"):
        history = client.get_metric_history(tracker.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, step + 1))  # zero points lost
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert not (tmp_path / "tracking-spool.jsonl").exists()  # delivered, so nothing left spooled


@pytest.mark.slow
def test_a_store_down_when_the_run_opens_gets_the_run_once_it_is_back(mlflow_server, tmp_path):
    tracker = Tracker(mlflow_server.uri, "late", "r", tags={}, spool_dir=tmp_path)
    mlflow_server.stop()  # gone before the writer (still importing MLflow) opens the run
    for step in range(1, 21):
        tracker.log_metrics({"loss": 1.0 / step}, step)
        time.sleep(0.25)
    deadline = time.monotonic() + 60
    while not (tmp_path / SPOOL).exists() and time.monotonic() < deadline:  # the writer's first try failed
        time.sleep(0.2)
    assert json.loads((tmp_path / SPOOL).read_text().splitlines()[0])["run_id"] is None  # kept meanwhile
    mlflow_server.start()
    tracker.finish(timeout=60)
    client = MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == list(range(1, 21))
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert not (tmp_path / SPOOL).exists()


@pytest.mark.slow
def test_a_run_the_store_never_saw_is_spooled_and_its_replay_creates_it(mlflow_server, tmp_path, capfd):
    from rnnlab.tracking.recovery import replay

    tracker = Tracker(mlflow_server.uri, "never", "r", tags={"rnnlab.run_key": "k1"}, spool_dir=tmp_path)
    mlflow_server.stop()
    tracker.log_params({"depth": 2})
    tracker.log_metrics({"loss": 0.5}, 1)
    tracker.log_metrics({"loss": 0.25}, 2)
    tracker.finish(timeout=2)  # the store is still down when the trainer is done
    # The trainer goes on after 2 s; the writer says why and leaves once its own connection
    # attempt gives up, which on a loaded machine (load 8) can come after that.
    tracker._writer.join(timeout=60)
    assert tracker.run_id is None and "stayed unreachable" in capfd.readouterr().err
    mlflow_server.start()
    assert replay(tmp_path / SPOOL) == 4 and not (tmp_path / SPOOL).exists()  # params, 2 metrics, status
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("never").experiment_id])
    assert run.info.run_name == "r" and run.data.tags["rnnlab.run_key"] == "k1" and run.info.status == "FINISHED"
    assert run.data.params == {"depth": "2"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 0.5), (2, 0.25)]


def test_connection_failures_are_retried_and_refusals_are_not():
    from rnnlab.tracking.store import unreachable

    assert unreachable(ConnectionRefusedError(111, "Connection refused"))
    assert unreachable(RuntimeError("API request to http://h/api failed with exception HTTPConnectionPool(host='h'): "
                                    "Max retries exceeded with url"))
    assert unreachable(RuntimeError('(psycopg2.OperationalError) connection to server at "127.0.0.1", port 5432 failed'))
    assert not unreachable(RuntimeError("RESOURCE_DOES_NOT_EXIST: Run with id=no-such-run not found"))
    assert not unreachable(ValueError("Invalid metric name"))


def test_a_tracker_takes_over_a_writer_started_before_the_run_was_known(tmp_path):
    writer = Writer()  # what the job does first: MLflow's import overlaps its own start-up
    time.sleep(0.2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert not (tmp_path / "mlflow.db").exists()  # an early writer opens nothing by itself
    tracker = Tracker(uri, "exp", "r", tags={}, writer=writer)
    tracker.log_metrics({"loss": 0.5}, 7)
    tracker.finish()
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.5)]


def test_an_early_writer_let_go_unopened_ends_at_once_and_creates_no_store(tmp_path):
    writer = Writer(f"sqlite:///{tmp_path}/mlflow.db")  # a store that does not exist yet
    writer.close()
    assert writer.process.exitcode is not None  # close() joined it: it has ended
    assert not (tmp_path / "mlflow.db").exists()  # a rejected run writes nothing


def wait_until_idle(pid: int, timeout: float = 120.0) -> None:
    """Block until the process has used no CPU for 0.5 s (Linux: /proc/<pid>/stat)."""
    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = cpu_ticks()
        if now == last and now > 0:
            return
        last = now
        time.sleep(0.5)
    raise AssertionError(f"process {pid} still busy after {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's CPU time from /proc (Linux)")
def test_an_early_writer_connects_to_an_existing_store_and_the_run_goes_there(mlflow_store):
    uri = mlflow_store  # the store exists, as outputs/mlflow.db after a first run
    writer = Writer(uri)
    # The job's own start-up, which the writer's import and connection overlap: wait until the
    # writer sits idle, waiting to be told its run (a fixed sleep was too short on a loaded host).
    wait_until_idle(writer.process.pid)
    tracker = Tracker(uri, "exp", "r", tags={}, writer=writer)
    tracker.log_metrics({"loss": 0.25}, 3)
    tracker.finish()
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.25)]
    assert tracker.writer_cpu_before_open > 0.3  # the import and the connection came before
    assert tracker.writer_cpu_before_open < tracker.writer_cpu_seconds


def test_a_spool_left_behind_is_replayed_in_order_then_removed(tmp_path, mlflow_store):
    from rnnlab.tracking.recovery import replay, write_spool

    uri = mlflow_store
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("exp", artifact_location=tmp_path.as_uri())).info.run_id
    spool = tmp_path / SPOOL  # what a writer leaves when the store stayed down past its finish
    write_spool(spool, uri, run_id, [("metrics", [("loss", 2.0, 0, 2)]), ("params", {"depth": "4"}),
                                     ("metrics", [("loss", 3.0, 0, 3)]), ("status", "KILLED")])
    assert replay(spool) == 4 and not spool.exists()
    run = client.get_run(run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(2, 2.0), (3, 3.0)]
    assert run.data.params == {"depth": "4"} and run.info.status == "KILLED"


def test_importing_the_tracking_package_does_not_import_mlflow():
    # python -m rnnlab imports it at launch to start the writer: MLflow's ~1.4 s belong there.
    code = ("import sys, rnnlab.tracking, rnnlab.tracking.writer, rnnlab.tracking.recovery, "
            "rnnlab.tracking.queries, rnnlab.tracking.parent_run; print('mlflow' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_experiments_open_on_mlflows_training_view_and_a_kind_set_by_hand_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    Tracker(uri, "new", "a", {}).finish("FINISHED")
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("new").tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")  # made before rnnlab set the kind: no tag
    mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(uri, "older", "b", {}).finish("FINISHED")
    Tracker(uri, "mine", "c", {}).finish("FINISHED")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


def test_files_the_artifact_disk_refuses_leave_the_run_finished_and_are_uploaded_by_a_replay(tmp_path, small_disk, capfd):
    from rnnlab.tracking.recovery import replay

    disk, fill = small_disk
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("full", artifact_location=(disk / "artifacts").as_uri())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(b"w" * 100_000)
    fill(leave=0)
    tracker = Tracker(uri, "full", "r", tags={}, spool_dir=run_dir)
    tracker.log_metrics({"test_loss": 0.5}, 9)
    tracker.log_artifact(run_dir / "model.pt")
    started = time.monotonic()
    tracker.finish()
    assert time.monotonic() - started < 20  # a full disk is not an outage to wait out (60 s)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"test_loss": 0.5}  # its real end, every metric
    assert "1 file(s) not uploaded to the run's artifact store (No space left on device)" in capfd.readouterr().err  # the writer's
    (disk / "filler").unlink()
    assert replay(run_dir / SPOOL) == 1 and not (run_dir / SPOOL).exists()
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["model.pt"]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_the_ui_link_points_at_the_tracking_server_a_run_used_or_at_mlflow_ui_for_a_store():
    from rnnlab.tracking import ui_rows

    assert ui_rows("http://127.0.0.1:5313/", "3", "abc") == [("open the UI", "http://127.0.0.1:5313/#/experiments/3/runs/abc?workflowType=machine_learning")]
    assert ui_rows("https://ann:hunter2@mlflow.lab:8443", "3", "abc")[0][1] == "https://mlflow.lab:8443/#/experiments/3/runs/abc?workflowType=machine_learning"
    rows = ui_rows("postgresql://u@db/mlflow", "1", "r")
    assert rows == [("open the UI", "mlflow ui --backend-store-uri postgresql://u@db/mlflow"),
                    ("", "then http://127.0.0.1:5000/#/experiments/1/runs/r?workflowType=machine_learning")]
