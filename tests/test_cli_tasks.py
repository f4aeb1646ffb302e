"""End to end, one run per task shape: the head, loss, metrics and baseline follow from data=."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow

SMALL = ["depth=1", "hidden_size=8", "train.epochs=2", "train.steps_per_epoch=3", "train.batch_size=16", "quiet=true"]
SIZES = ["data.n_train=64", "data.n_val=32", "data.n_test=40"]


@pytest.mark.parametrize(
    "args,metrics,baseline,row",
    [
        # many-to-one regression, with the H&S wrong-prediction count
        (["data=adding_hs", "data.length=20", *SIZES], {"test_loss", "test_wrong"}, None, "wrong predictions"),
        # many-to-one classification
        (["data=digits", "data.read=row"], {"test_loss", "test_accuracy"}, math.log(10), "test accuracy"),
        # many-to-many classification
        (["data=copy", "data.length=5", *SIZES], {"test_loss", "test_accuracy"}, 10 * math.log(8) / 25, "test cross-entropy"),
        # a stream: truncated BPTT across chunks, bits per character
        (["data=char_lm", "data.path=text.txt", "data.length=16"], {"test_loss", "test_accuracy", "test_bpc"}, None, "bits per character"),
    ],
    ids=["adding_hs", "digits", "copy", "char_lm"],
)
def test_each_task_shape_trains_and_logs_its_metrics_and_baseline(tracked_workdir, args, metrics, baseline, row):
    (tracked_workdir / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    result = run_cli([*args, *SMALL], tracked_workdir)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{tracked_workdir}/outputs/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    logged = run.data.metrics
    assert metrics | {"baseline_loss", "train_loss", "val_loss"} <= set(logged)
    assert "test_mse_persistence" not in logged  # forecasting baselines only for forecasts
    if baseline is not None:
        assert logged["baseline_loss"] == pytest.approx(baseline)
    if "test_bpc" in logged:
        assert logged["test_bpc"] == pytest.approx(logged["test_loss"] / math.log(2))
    if "test_wrong" in logged:
        assert 0 <= logged["test_wrong"] <= 40
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "model.pt", "gradients.npz", "gradient_heatmaps.png", "gradient_decay.png",
                         "lyapunov.png"}  # no forecast plot; the probe at step 0, the exponents at the end
    assert row in result.stdout and "trivial baseline" in result.stdout


def test_copy_trains_with_truncated_bptt_one_step_per_chunk_and_probes_the_short_last_chunk(workdir):
    # T + 20 = 25 steps cut into chunks of 10, 10 and 5: 3 optimiser steps per batch, each probed
    args = ["data=copy", "data.length=5", *SIZES, *SMALL, "truncation=10", "probe.every=1", "probe.resolution=1"]
    result = run_cli([*args, "tracking=none"], workdir)  # no store: the run folder has everything checked
    assert result.returncode == 0, result.stderr
    assert "rnnlab run lstm-d1-h8-k10" in result.stdout
    assert "2 (best" in result.stdout and "18 steps" in result.stdout  # 2 epochs x 3 batches x 3 chunks
    (npz,) = (workdir / "outputs" / "runs").rglob("gradients.npz")
    dh = np.load(npz)["dh"]  # (probes, layers, directions, T): a short chunk's missing steps are NaN
    assert dh.shape == (18, 1, 1, 10) and np.isnan(dh[2::3, ..., 5:]).all() and np.isfinite(dh[0]).all()


def test_the_series_shipped_in_statsmodels_train_end_to_end(workdir):
    result = run_cli(["-m", "data=co2,sunspots", "data.lookback=12", *SMALL, "tracking=none"], workdir)
    assert result.returncode == 0, result.stderr
    for name in ("co2", "sunspots"):  # each job's summary: a finite test MSE in the series' own units
        line = next(line for line in result.stdout.splitlines() if f"in {name} units" in line)
        assert line.startswith("test MSE") and math.isfinite(float(line.split()[2]))
    assert result.stdout.count("2 (best") == 2 and result.stdout.count(", 6 steps") == 2


def test_without_statsmodels_a_shipped_series_fails_before_training_in_one_line(workdir):
    blocker = workdir / "blocker" / "statsmodels"  # an installed-nowhere statsmodels, as pip leaves it
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'statsmodels'\")\n")
    result = run_cli(["data=co2", *SMALL], workdir, env={"PYTHONPATH": str(workdir / "blocker")})
    assert result.returncode == 2
    assert result.stderr.strip() == ("rnnlab: error: data=co2 needs the package statsmodels (the series ships "
                                     "inside it), which is not installed: pip install 'rnnlab[datasets]'")
    assert not list(workdir.rglob("checkpoint.pt")) and not (workdir / "outputs" / "mlflow.db").exists()


def test_bad_task_input_is_one_line(workdir):
    (workdir / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = run_cli(["data=char_lm", "data.path=latin.txt", *SMALL], workdir)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rnnlab: error: data.path='latin.txt': not UTF-8 text (line 1, byte 3")
    assert len(result.stderr.strip().splitlines()) == 1
