"""End to end: `python -m rnnlab` in a subprocess, as a user runs it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def store(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir}/outputs/mlflow.db")


def test_a_run_lands_in_mlflow_with_params_metrics_and_artifacts(workdir):
    result = run_cli([*TINY, "cell=gru", "truncation=10"], workdir, env={"RNNLAB_CPU_PRODUCTS": "mkl"})
    assert result.returncode == 0, result.stderr
    client = store(workdir)
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "gru-d2-h8-k10"
    params = run.data.params
    assert params["cell.name"] == "gru" and params["depth"] == "2" and params["truncation"] == "10"
    assert params["train.lr"] == "0.002" and params["data.years"] == "0.12"
    assert int(params["n_params"]) == 3 * (10 * 8 + 8 * 8 + 16) + 3 * (8 * 8 + 8 * 8 + 16) + 9
    metrics = run.data.metrics
    for key in ("train_loss", "val_loss", "grad_norm", "lr", "epoch_seconds", "clip_rate",
                "test_mse", "test_mse_persistence", "test_mse_seasonal"):
        assert key in metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [4, 8]  # optimiser steps
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "config.yaml", "model.pt", "predictions.png", "gradients.npz", "gradient_heatmaps.png", "gradient_decay.png",
        "lyapunov.png"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "vanishing/l0")] == [0]  # the initial weights
    assert run.data.tags["rnnlab.command"].startswith("python -m rnnlab data.years=0.12")
    assert run.data.tags["rnnlab.cpu_products"] == "mkl"  # as pinned: the loops' products round differently on each
    assert "test MSE" in result.stdout and "persistence" in result.stdout and run.info.run_id in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db" in result.stdout
    assert "cell" not in params and all(v != "None" for v in params.values())  # once each, only what applies
    assert not any(k.startswith("trial.") for k in params)
    steps = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in metrics}
    # One step axis, the optimiser step (8 in all): epochs end at 4 and 8, the probe at 0, final metrics at the end.
    assert all(set(s) <= set(range(9)) for s in steps.values())
    assert steps["train_loss"] == [4, 8] and steps["test_mse"] == steps["wall_seconds"] == [8] and steps["log10_grad_h_first/l0"] == [0]
    # The terminal has the table; the run folder's log has the epochs, the table and what tracking cost.
    assert "in calls" not in result.stdout and "INFO" not in result.stdout + result.stderr
    (log,) = Path(run.data.tags["rnnlab.output_dir"]).glob("*.log")
    text = log.read_text()
    assert "epoch 1/2: 4 steps" in text and "epoch 2/2: 4 steps" in text and run.info.run_id in text
    assert re.search(r"tracking: [\d.]+ s in calls", text)
    wall, first = map(float, re.search(r"wall time +([\d.]+) s \(the first step at ([\d.]+) s\)", result.stdout).groups())
    assert 0 < first <= wall  # printed to 0.1 s: a tiny run on one thread can show them equal


def test_multirun_gives_one_run_per_job_in_one_experiment_under_outputs(tracked_workdir):
    result = run_cli(["-m", *TINY, "cell=rnn,lstm", "train.epochs=1"], tracked_workdir)
    assert result.returncode == 0, result.stderr
    client = store(tracked_workdir)
    runs = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["lstm-d2-h8-k0", "rnn-d2-h8-k0"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert not (tracked_workdir / "multirun").exists() and (tracked_workdir / "outputs" / "multirun").is_dir()
    # Each job's start-up counts from its own start, not from the launch of the process the jobs share.
    starts = [r.data.metrics["startup_seconds"] for r in runs]
    walls = [r.data.metrics["wall_seconds"] for r in runs]
    assert all(0 < s < w for s, w in zip(starts, walls)), (starts, walls)


def test_a_grid_on_parallel_processes_lands_in_one_sweep_folder(workdir):
    """Each job resolves the sweep's folder again in its own worker process: with the pid in
    the name, every job used to get a folder of its own beside the sweep's."""
    result = run_cli(["-m", "hydra/launcher=parallel", *TINY, "seed=0,1", "train.epochs=1", "tracking=none"], workdir)
    assert result.returncode == 0, result.stderr
    (sweep,) = (workdir / "outputs" / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert all((sweep / job / "config.yaml").is_file() for job in ("0", "1"))


# As a user runs them: the cases that pass each stage of a command before Hydra's (the cheap
# checks, the model's, the sweeper's). The whole table runs in-process: tests/test_preflight.py.
@pytest.mark.parametrize(
    "args,message",
    [
        (["depth=0"], "rnnlab: error: depth=0 is out of range (allowed: >= 1)"),
        (["cell=indrnn", "cell.u_max=-1", "tracking=none"], "rnnlab: error: cell.u_max=-1.0 must be > 0 (or null: unbounded)"),
        (["cell=transformer", "hidden_size=10"], "rnnlab: error: cell.heads=4: must divide hidden_size=10"),
        # an Optuna sweep's fixed values are checked before its study exists
        (["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "train.lr=interval(1e-4,1e-2)", "cell=transformer",
          "hidden_size=10"], "rnnlab: error: cell.heads=4: must divide hidden_size=10"),
        # and each choice and bound of its search space, by the same checks (a bound only the model refuses)
        (["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "cell=transformer", "hidden_size=int(interval(8,10))"],
         "rnnlab: error: cell.heads=4: must divide hidden_size=10 (in the search space at hidden_size=10)"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(workdir, args, message):
    result = run_cli(args, workdir)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (workdir / "outputs").exists()  # no run folder, no MLflow store, no study


def test_a_bad_cpu_products_pin_is_one_line_and_writes_nothing(workdir):
    result = run_cli(TINY, workdir, env={"RNNLAB_CPU_PRODUCTS": "fast"})
    assert result.returncode == 2
    assert result.stderr.strip() == "rnnlab: error: RNNLAB_CPU_PRODUCTS='fast' is not allowed (allowed: auto, mkl, onednn)"
    assert not (workdir / "outputs").exists()


def test_help_lists_groups_and_options_without_importing_torch(workdir):
    code = (
        "import runpy, sys; sys.argv = ['rnnlab', '--help']; runpy.run_module('rnnlab', run_name='__main__');"
        "print('heavy:', sorted(m for m in ('torch', 'mlflow', 'hydra', 'numba', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^  (\w+)(\*?) +(.+)$", out.split("== Config (")[0], flags=re.MULTILINE)
    for group in ("cell", "data", "experiment", "sweep", "tracking", "train"):  # every option, with what it is
        files = sorted(f.stem for f in (ROOT / "conf" / group).glob("*.yaml"))
        assert set(files) <= {name for name, _, _ in listed}, group
    described = {name: (mark, text) for name, mark, text in listed}
    assert described["lstm"][0] == "*" and described["gru"][0] == "" and described["weather"][0] == "*"
    assert described["indrnn"][1].startswith("IndRNN (Li et al. 2018)") and all(text.strip() for _, text in described.values())
    config = out.split("== Config (")[1]
    assert "depth: 4" in config and "heavy: []" in out
    assert "trial:" not in config and "- sweep" not in config  # the sweeper's block and the defaults list are not the user's keys


def test_cfg_job_prints_the_composed_config(workdir):
    result = run_cli(["--cfg", "job", "cell=gru", "depth=4"], workdir)
    assert result.returncode == 0
    assert "name: gru" in result.stdout and "depth: 4" in result.stdout


def test_mlflow_tracking_uri_from_the_environment_selects_the_store(workdir):
    result = run_cli([*TINY, "train.epochs=1"], workdir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/elsewhere.db"})
    assert result.returncode == 0, result.stderr
    assert (workdir / "elsewhere.db").exists() and not (workdir / "outputs" / "mlflow.db").exists()


def test_own_csv_data_trains(tracked_workdir):
    import numpy as np

    t = np.arange(600)
    rows = ["stamp,load,other"] + [
        f"2024-01-01T00:00:00,{np.sin(i / 5):.5f},{np.cos(i / 7):.5f}".replace("2024-01-01T00:00:00", str(np.datetime64("2024-01-01T00") + i))
        for i in t
    ]
    (tracked_workdir / "mine.csv").write_text("\n".join(rows) + "\n")
    args = ["data=csv", "data.path=mine.csv", "data.time_column=stamp", "data.target=load", "data.lookback=20",
            "depth=1", "hidden_size=8", "train.epochs=1", "train.steps_per_epoch=3", "quiet=true"]
    result = run_cli(args, tracked_workdir)
    assert result.returncode == 0, result.stderr
    assert "RMSE" in result.stdout and "in load units" in result.stdout


def test_a_plain_install_finds_its_configs_from_another_directory(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(repo)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-m", "rnnlab", "--cfg", "job", "cell=rnn"], cwd=elsewhere,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "name: rnn" in out.stdout and "nonlinearity: tanh" in out.stdout
    assert (target / "rnnlab" / "conf" / "cell" / "gru.yaml").is_file()
