"""rnnlab.run from Python, without a subprocess: what it returns, what it writes, what it refuses."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY
from rnnlab.compose import compose
from rnnlab.config import validate
from rnnlab.run import Hooks, RunError, Stopped, prepare, run

UNTRACKED = [*TINY, "tracking=none", "probe.every=2"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs/ (checkpoints, resume=auto) lands here
    return tmp_path


def test_a_run_returns_its_metrics_model_and_history_and_calls_the_hooks(tmp_path):
    epochs, logged, probes = [], [], []
    hooks = Hooks(on_epoch_end=lambda e, v: epochs.append((e, v)), log=lambda m, s: logged.append((m, s)),
                  on_probe=probes.append)
    result = run(compose(UNTRACKED), hooks, output_dir=tmp_path / "run")
    assert result.status == "FINISHED" and result.run_id is None
    assert [e for e, _ in epochs] == [1, 2] and len(result.history) == 2
    assert result.metrics["val_loss"] == min(v for _, v in epochs)
    assert {"test_mse", "test_mse_persistence", "n_params", "wall_seconds"} <= set(result.metrics)
    assert [r.step for r in probes] == [0, 2, 4, 6] and result.probes == probes  # 8 steps, from the initial weights
    assert any("vanishing/l0" in m for m, _ in logged) and any("val_loss" in m for m, _ in logged)
    assert sum(p.numel() for p in result.model.parameters() if p.requires_grad) == result.metrics["n_params"]
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "model.pt", "checkpoint.pt", "gradients.npz"} <= written
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert validate(config) == compose(UNTRACKED)  # the folder's config reproduces the run
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["finished"] is True


def test_a_copy_run_reports_the_memoryless_accuracy_beside_its_own(tmp_path, capsys):
    overrides = ["tracking=none", "quiet=true", "data=copy", "data.length=5", "data.n_train=32", "data.n_val=8",
                 "data.n_test=8", "depth=1", "hidden_size=8", "train.steps=3", "probe.every=0"]
    result = run(compose(overrides), output_dir=tmp_path / "run")
    assert result.metrics["baseline_accuracy"] == pytest.approx((15 + 10 / 8) / 25)  # T = 5: 25 steps
    assert 0 <= result.metrics["test_accuracy"] <= 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("memoryless")]
    assert f"{(15 + 10 / 8) / 25:.4f}" in line and "test accuracy" in out and "3 steps" in out


@pytest.mark.parametrize("overrides,message", [
    ([*UNTRACKED, "cell=indrnn", "cell.u_max=-1"], "cell.u_max=-1.0 must be > 0"),
    ([*UNTRACKED, "cell=transformer", "hidden_size=10"], "cell.heads=4: must divide hidden_size=10"),
    (["tracking=none", "data=csv", "data.path=missing.csv", "data.target=x"], "data.path='missing.csv': no such file"),
    ([*UNTRACKED, "resume=nowhere"], "resume='nowhere': no such checkpoint file"),
])
def test_prepare_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, overrides, message):
    with pytest.raises(RunError) as e:
        prepare(compose(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_jobs_with_equal_data_share_one_load_through_the_cache():
    cache: dict = {}
    a = prepare(compose([*UNTRACKED, "seed=1"]), cache=cache)
    b = prepare(compose([*UNTRACKED, "seed=2", "depth=3"]), cache=cache)
    c = prepare(compose([*UNTRACKED, "data.lookback=12"]), cache=cache)
    assert a.data is b.data and c.data is not a.data
    assert sum(k.startswith("data:") for k in cache) == 2
    assert b.n_params > a.n_params  # each model checked on its own


def test_the_model_is_checked_on_the_meta_device_so_a_huge_one_costs_no_memory(monkeypatch):
    from rnnlab import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda device: 2**50)  # a machine with 1 PB
    prepared = prepare(compose([*UNTRACKED, "hidden_size=200000", "depth=1"]))
    assert prepared.n_params > 4 * 200000 ** 2  # 640 GB of float32 were never allocated
    monkeypatch.setattr(runtime, "available_memory", lambda device: 2**34)  # 16 GB
    with pytest.raises(RunError, match=r"^hidden_size=200000, depth=1, train.batch_size=\d+: a training step needs "
                                       r"at least 1.2 TB .* but 16.0 GB is available on cpu"):
        prepare(compose([*UNTRACKED, "hidden_size=200000", "depth=1"]))
    monkeypatch.setattr(runtime, "available_memory", lambda device: None)  # unknown: not refused
    prepare(compose([*UNTRACKED, "hidden_size=200000", "depth=1"]))


@pytest.mark.slow
def test_a_run_the_store_refuses_stops_after_its_first_epoch_not_at_the_end(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))  # MLflow refuses a run in a deleted experiment
    # 50 epochs of 40 steps: several seconds, longer than the writer takes to hear the refusal
    # (TINY's 4-step epochs ran all 50 before it, on one thread).
    config = compose([*TINY, "probe.every=0", f"tracking.uri={uri}", "tracking.experiment=gone", "train.epochs=50",
                      "train.steps_per_epoch=40", "train.patience=0"])
    with pytest.raises(RunError, match=r"^tracking.uri='sqlite:///.*': .*deleted.*; the run stopped after epoch \d+, "
                                       r"its checkpoint is in .*run \(resume=.*run once the store works, or tracking=none\)$"):
        run(config, output_dir=tmp_path / "run")
    epoch = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["epoch"]
    assert 1 <= epoch < 50  # stopped early, its checkpoint kept


@pytest.mark.slow
def test_a_cell_with_a_solved_readout_is_fitted_in_closed_form(tmp_path):
    result = run(compose([*UNTRACKED, "cell=esn", "hidden_size=32"]), output_dir=tmp_path / "run")
    assert result.status == "FINISHED" and len(result.history) == 1
    assert "train_loss" not in result.history[0] and result.probes == []  # no gradient step was taken


@pytest.mark.slow
def test_a_stop_saves_a_checkpoint_says_how_to_continue_and_resumes(tmp_path):
    cmd = "python -m rnnlab " + " ".join(UNTRACKED) + " resume=auto"
    with pytest.raises(Stopped) as e:
        run(compose(UNTRACKED), Hooks(stop_requested=lambda: True), output_dir=tmp_path / "run", command=cmd)
    assert e.value.exit_code == 130 and str(e.value).count("resume=") == 1
    assert str(e.value).endswith(f"resume={tmp_path / 'run'}")
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["finished"] is False
    resumed = run(compose([*UNTRACKED, f"resume={tmp_path / 'run'}"]), output_dir=tmp_path / "again")
    whole = run(compose(UNTRACKED), output_dir=tmp_path / "whole")
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]  # bit for bit on CPU


def test_a_run_ends_with_its_lyapunov_exponents_in_mlflow_keys_the_npz_and_a_figure(tmp_path):
    import numpy as np

    from rnnlab.probe import load_records

    extra = ["probe.lyapunov.k=3", "probe.lyapunov.steps=120", "probe.lyapunov.warmup=20"]
    result = run(compose([*UNTRACKED, *extra]), output_dir=tmp_path / "run")
    keys = {f"lyapunov/l{l}/{i}" for l in (0, 1) for i in (1, 2, 3)}
    assert keys <= set(result.metrics) and result.metrics["lyapunov_seconds"] > 0
    for l in (0, 1):  # largest first
        assert result.metrics[f"lyapunov/l{l}/1"] >= result.metrics[f"lyapunov/l{l}/2"] >= result.metrics[f"lyapunov/l{l}/3"]
    saved = load_records(tmp_path / "run" / "gradients.npz")["lyapunov_end"]
    assert saved.shape == (2, 3) and saved[1, 0] == result.metrics["lyapunov/l1/1"]
    assert (tmp_path / "run" / "lyapunov.png").stat().st_size > 0
    off = run(compose([*UNTRACKED, "probe.lyapunov.k=0"]), output_dir=tmp_path / "off")
    assert not any(k.startswith("lyapunov") for k in off.metrics) and not (tmp_path / "off" / "lyapunov.png").exists()
    assert np.isfinite(saved).all()


def test_the_params_logged_are_those_that_apply_to_the_run():
    from rnnlab.config import flatten
    from rnnlab.run import run_params

    sequence = compose(["data=adding", "data.length=20", "tracking=none"])
    params = run_params(flatten(sequence), sequence)
    assert "data.lookback" not in params and "data.length" in params  # no window keys on a sequence task
    assert not any(k.startswith("trial.") for k in params)  # not a sweep trial
    assert all(v is not None for v in params.values())
    trial = compose(["tracking=none", "trial.study=s", "trial.storage=x.log", "trial.number=3"])
    assert run_params(flatten(trial), trial)["trial.number"] == 3


def test_a_full_disk_keeps_the_last_checkpoint_says_so_and_the_run_resumes_once_there_is_space(small_disk, capsys):
    disk, fill = small_disk
    folder = disk / "run"
    # The disk fills after epoch 1's checkpoint: epoch 2's is refused (a warning; training goes
    # on), then the weights cannot be written (one line, naming the checkpoint that is kept).
    with pytest.raises(RunError) as e:
        run(compose(UNTRACKED), Hooks(on_epoch_end=lambda epoch, v: fill(leave=0) if epoch == 1 else None),
            output_dir=folder)
    saved = json.loads((folder / "checkpoint.json").read_text())
    assert saved["epoch"] == 2 and saved["finished"] is False  # epoch 1's: "epoch 2 is next"
    assert str(e.value) == (f"cannot write the run's files in {folder} (No space left on device); "
                            f"the checkpoint of step {saved['step']} is kept")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"rnnlab: warning: checkpoint of step {2 * saved['step']} not saved in {folder} (No space "
                        f"left on device); the one of step {saved['step']} is kept, training goes on"]
    (disk / "filler").unlink()
    resumed = run(compose([*UNTRACKED, f"resume={folder}"]), output_dir=disk / "again")
    whole = run(compose(UNTRACKED), output_dir=disk / "whole")
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]  # nothing lost: bit for bit on CPU


@pytest.mark.skipif(__import__("rnnlab.bptt").bptt._onednn_linear is None, reason="no oneDNN: one kind of product only")
def test_a_resumed_run_takes_the_products_its_checkpoint_was_trained_with(tmp_path, monkeypatch, one_thread, capsys):
    from rnnlab import bptt, checkpoint

    monkeypatch.delenv(bptt.PRODUCTS_ENV, raising=False)
    monkeypatch.setattr(bptt, "_products", "onednn")  # the first process's race chose oneDNN...
    with pytest.raises(Stopped):
        run(compose(UNTRACKED), Hooks(stop_requested=lambda: True), output_dir=tmp_path / "run")
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["cpu_products"] == "onednn"
    whole = run(compose(UNTRACKED), output_dir=tmp_path / "whole")
    monkeypatch.setattr(bptt, "_products", "mkl")  # ...the resuming one's chose MKL
    resumed = run(compose([*UNTRACKED, f"resume={tmp_path / 'run'}"]), output_dir=tmp_path / "again")
    # (this tiny model's products are too small for oneDNN: the adoption is what is tested, the equality
    # only that the resume still ends as a whole run)
    assert bptt._products == "onednn" and resumed.metrics["val_loss"] == whole.metrics["val_loss"]
    assert "warning" not in capsys.readouterr().err
    # Pinned to the other by the environment: the pin wins, and the run says it will not repeat the bits.
    monkeypatch.setenv(bptt.PRODUCTS_ENV, "mkl")
    monkeypatch.setattr(bptt, "_products", "mkl")
    run(compose([*UNTRACKED, f"resume={tmp_path / 'run'}"]), output_dir=tmp_path / "pinned")
    err = capsys.readouterr().err
    assert bptt._products == "mkl"
    assert ("rnnlab: warning: resuming with other matrix products (RNNLAB_CPU_PRODUCTS=mkl here, onednn in the "
            "checkpoint): the resumed run will not repeat an uninterrupted one bit for bit") in err


@pytest.mark.parametrize("saved,env,why", [
    ("mkl", None, None),
    ("cuda", None, "the checkpoint's products 'cuda' are unknown here (allowed: mkl, onednn)"),
    ("onednn", "mkl", "RNNLAB_CPU_PRODUCTS=mkl here, onednn in the checkpoint"),
])
def test_continue_products_takes_a_checkpoints_choice_or_says_why_not(saved, env, why, monkeypatch):
    from rnnlab import bptt

    monkeypatch.setattr(bptt, "_products", "onednn" if saved == "mkl" else "mkl")
    before = bptt._products
    if env is None:
        monkeypatch.delenv(bptt.PRODUCTS_ENV, raising=False)
    else:
        monkeypatch.setenv(bptt.PRODUCTS_ENV, env)
    assert bptt.continue_products(saved) == why
    assert bptt._products == (saved if why is None else before)


def test_continue_products_refuses_onednn_where_this_torch_has_none(monkeypatch):
    from rnnlab import bptt

    monkeypatch.delenv(bptt.PRODUCTS_ENV, raising=False)
    monkeypatch.setattr(bptt, "_onednn_linear", None)
    monkeypatch.setattr(bptt, "_products", "mkl")
    assert bptt.continue_products("onednn") == "the checkpoint's products were oneDNN's, which this torch build lacks"
    assert bptt._products == "mkl"
