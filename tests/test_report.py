"""python -m rnnlab.report: groups by the params that differ, mean and 95% t interval over seeds,
success rate and steps to a threshold, the table and the figures; on runs in a scratch store."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rnnlab import report

# cell, seed, status, final test_loss, val_loss at epochs 1, 2, 3 (100 optimiser steps each)
RUNS = [
    ("lstm", 0, "FINISHED", 0.1, [0.5, 0.25, 0.2]),
    ("lstm", 1, "FINISHED", 0.2, [0.5, 0.4, 0.35]),
    ("lstm", 2, "FINISHED", 0.4, [0.28, 0.2, 0.1]),
    ("rnn", 0, "FINISHED", 0.17, [0.2, 0.18, 0.17]),
    ("rnn", 1, "FAILED", None, [0.9]),  # diverged in its second epoch: no test metrics
]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    for cell, seed, status, test_loss, val in RUNS:
        run_id = client.create_run(experiment, run_name=f"{cell}-{seed}").info.run_id
        params = {"cell": cell, "cell.name": cell, "seed": seed, "hidden_size": 128, "n_params": 5 if cell == "rnn" else 9,
                  "tracking.run_name": f"{cell}-{seed}", "trial.number": seed}
        if cell == "lstm":  # an option only one cell has: it splits nothing cell.name does not
            params["cell.forget_bias"] = 1.0
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        for epoch, v in enumerate(val, start=1):
            client.log_metric(run_id, "val_loss", v, step=epoch)
            client.log_metric(run_id, "optimizer_steps", 100.0 * epoch, step=epoch)
        if test_loss is not None:  # the end of a run: logged at its last optimiser step
            for key, value in {"test_loss": test_loss, "best_val_loss": min(val), "baseline_loss": 0.167}.items():
                client.log_metric(run_id, key, value, step=300)
        client.set_terminated(run_id, status=status)
    return uri


def test_t_quantiles_are_the_tables_and_the_expansion_beyond_it():
    assert report.t_975(1) == 12.706205 and report.t_975(30) == 2.042272
    for df, exact in [(31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930), (1000, 1.962339)]:
        assert report.t_975(df) == pytest.approx(exact, abs=1e-5)


def test_a_study_is_grouped_by_the_differing_param_with_t_intervals_success_and_steps(store, tmp_path, capsys):
    out = tmp_path / "out"
    code = report.main(["--uri", store, "--experiment", "study", "--threshold", "val_loss<0.3",
                        "--threshold", "test_loss<0.3", "--out", str(out)])
    assert code == 0
    from rnnlab.tracking.queries import study_runs

    keys, groups = report.group_runs(study_runs(store, "study", "", ["val_loss", "optimizer_steps", "test_loss"]))
    assert keys == ["cell.name"]  # not the seed, the duplicate cell, n_params, tracking.*, trial.*, cell.forget_bias
    assert [(g.label, len(g.runs)) for g in groups] == [("cell.name=lstm", 3), ("cell.name=rnn", 2)]
    lstm, rnn = report.summarise(groups, ["test_loss"], [report.Threshold.parse("val_loss<0.3"),
                                                         report.Threshold.parse("test_loss<0.3")])
    # By hand: 0.1, 0.2, 0.4 -> mean 0.23333; deviations -0.13333, -0.03333, +0.16667, s^2 = 0.046667 / 2,
    # half-width t(0.975, 2) s / sqrt(3) = 4.302653 * 0.152753 / 1.732051 = 0.37946.
    s = math.sqrt(((0.1 - 0.7 / 3) ** 2 + (0.2 - 0.7 / 3) ** 2 + (0.4 - 0.7 / 3) ** 2) / 2)
    assert lstm.metrics["test_loss"].mean == pytest.approx(0.7 / 3, abs=1e-12)
    assert lstm.metrics["test_loss"].half_width == pytest.approx(4.302653 * s / math.sqrt(3), abs=1e-12)
    assert lstm.metrics["test_loss"].half_width == pytest.approx(0.37946, abs=1e-5)
    val, test = lstm.reached
    # val_loss < 0.3: seed 0 at epoch 2 (200 steps), seed 2 at epoch 1 (100), seed 1 never.
    assert lstm.reached[val] == (2, 3) and lstm.steps[val].mean == 150 and lstm.steps[val].n == 2
    assert lstm.steps[val].half_width == pytest.approx(12.706205 * math.sqrt(2 * 50**2) / math.sqrt(2), abs=1e-9)
    assert lstm.reached[test] == (2, 3) and lstm.steps[test].mean == 300  # logged once, at the run's last step
    assert rnn.reached[val] == (1, 2) and rnn.steps[val].mean == 100 and rnn.failed == 1
    assert rnn.metrics["test_loss"].n == 1 and math.isnan(rnn.metrics["test_loss"].half_width)

    table = capsys.readouterr().out
    (lstm_line,) = [line for line in table.splitlines() if line.startswith("| cell.name=lstm")]
    assert "0.2333 ± 0.38 (n=3)" in lstm_line and "| 2/3 | 150 ± 640 (n=2) |" in lstm_line
    (rnn_line,) = [line for line in table.splitlines() if line.startswith("| cell.name=rnn")]
    assert "| 2 (1 failed) |" in rnn_line and "0.17 (n=1)" in rnn_line
    written = (out / "report.md").read_text()
    assert lstm_line in written and "![curves_val_loss](curves_val_loss.png)" in written
    assert (out / "curves_val_loss.png").stat().st_size > 0


def test_a_groups_learning_curve_is_the_mean_over_its_seeds_at_each_step(store):
    from rnnlab.tracking.queries import study_runs

    _, groups = report.group_runs(study_runs(store, "study", "", ["val_loss", "optimizer_steps"]))
    steps, mean, half = report.curves(groups[0], "val_loss")
    np.testing.assert_array_equal(steps, [100, 200, 300])
    np.testing.assert_allclose(mean, [(0.5 + 0.5 + 0.28) / 3, (0.25 + 0.4 + 0.2) / 3, (0.2 + 0.35 + 0.1) / 3], rtol=1e-12)
    assert report.Interval.of([0.5, 0.5, 0.28]).half_width == pytest.approx(half[0], rel=1e-12)
    steps, mean, half = report.curves(groups[1], "val_loss")  # rnn: two runs at step 100, one after
    assert np.isfinite(half[0]) and np.isnan(half[1:]).all()


def test_a_metric_at_a_step_is_the_value_logged_at_that_optimiser_step(store, tmp_path, capsys):
    from rnnlab.tracking.queries import study_runs

    _, groups = report.group_runs(study_runs(store, "study", "", ["val_loss", "optimizer_steps"]))
    lstm, rnn = report.summarise(groups, ["val_loss@200", "val_loss@first", "val_loss@last", "val_loss@100"], [])
    assert lstm.metrics["val_loss@200"].mean == pytest.approx((0.25 + 0.4 + 0.2) / 3)  # epoch 2 = 200 steps
    same = lambda got, values: (got.n, got.mean, got.half_width) == pytest.approx(  # noqa: E731
        (len(values), np.mean(values), report.t_975(len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))))
    assert same(lstm.metrics["val_loss@first"], [0.5, 0.5, 0.28])
    assert same(lstm.metrics["val_loss@last"], [0.2, 0.35, 0.1])
    assert rnn.metrics["val_loss@200"].n == 1  # the failed run never got there: not a zero, not counted
    assert same(rnn.metrics["val_loss@100"], [0.2, 0.9])
    assert report.main(["--uri", store, "--experiment", "study", "--metric", "val_loss@7", "--out", str(tmp_path)]) == 0
    header, _, lstm_row, rnn_row = capsys.readouterr().out.splitlines()[:4]
    assert header == "| group | runs | val_loss@7 |" and lstm_row.endswith("| - |")  # no run logged at step 7
    assert report.main(["--uri", store, "--experiment", "study", "--metric", "val_loss@end", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "rnnlab.report: error: --metric 'val_loss@end' is not allowed (allowed: name, name@first, name@last or name@N, "
        "N an optimiser step, e.g. decay_rate/l0@0)")


def test_a_groups_decay_curve_is_the_mean_over_its_runs_probes_with_a_t_band(tmp_path):
    from rnnlab.probe import ProbeRecord, save_records

    def probed(path, rows):  # one run's gradients.npz: probes at steps 0 and 50, one layer
        records = []
        for step, row in zip((0, 50), rows):
            log = np.array(row, dtype=float).reshape(1, 1, -1)
            records.append(ProbeRecord(step=step, log_dh=log, log_dh_p10=log, log_dh_p90=log,
                                       w_share=np.full_like(log, np.nan), grad_norm=1.0, grad_norm_clipped=1.0,
                                       clipped=False, weight_norms={}, spectral_radius=np.array([np.nan]),
                                       max_singular=np.array([np.nan])))
        save_records(records, path)
        return path

    for run in "ab":
        (tmp_path / run).mkdir()
    a = probed(tmp_path / "a" / "gradients.npz", [[-3.0, -2.0, -1.0], [-1.0, -1.0, -1.0]])
    b = probed(tmp_path / "b" / "gradients.npz", [[-5.0, -np.inf, -1.0], [-1.0, -1.0, -1.0]])
    runs = [{"run_id": run, "tags": {"rnnlab.output_dir": str(tmp_path / run)}} for run in "ab"]  # found in its folder
    (figure,) = report._decay_figures("sqlite:///unused.db", "study", [report.Group("cell=rnn", runs)], [0, 7], tmp_path)
    assert figure == tmp_path / "decay_step0.png" and figure.stat().st_size > 0  # step 7: nobody probed it
    assert report.probe_log(a, 7) is None  # a step it did not probe
    logs = [report.probe_log(a, 0), report.probe_log(b, 0)]
    mean, low, high = report.decay_curve(logs)
    assert mean[0] == -4.0 and high[0] - mean[0] == pytest.approx(12.706205)  # t(0.975, 1) * sqrt(2) / sqrt(2)
    assert mean[1] == -2.0 and math.isnan(low[1])  # -inf (no gradient) is left out: one run, no interval
    assert mean[2] == -1.0 and low[2] == high[2] == -1.0


def test_a_cell_without_the_swept_option_keeps_its_name_in_the_label():
    runs = [{"params": {"cell.name": "lstm", "cell.forget_bias": bias, "seed": seed}} for bias in ("0.0", "1.0") for seed in "01"]
    runs += [{"params": {"cell.name": "gru", "seed": seed}} for seed in "01"]
    keys, groups = report.group_runs(runs)
    assert keys == ["cell.forget_bias", "cell.name"]
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("cell.forget_bias=-, cell.name=gru", 2), ("cell.forget_bias=0.0, cell.name=lstm", 2),
        ("cell.forget_bias=1.0, cell.name=lstm", 2)]


def test_a_filter_selects_and_a_bad_threshold_or_experiment_is_one_line(store, tmp_path, capsys):
    code = report.main(["--uri", store, "--experiment", "study", "--filter", "params.`cell.name` IN ('rnn')",
                        "--out", str(tmp_path / "o")])
    assert code == 0 and "all runs" in capsys.readouterr().out  # one group left: nothing differs
    assert report.main(["--uri", store, "--experiment", "study", "--threshold", "val_loss=0.3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rnnlab.report: error: --threshold 'val_loss=0.3' is not allowed (allowed: metric<value or metric>value, e.g. test_loss<0.01)"
    assert report.main(["--uri", store, "--experiment", "nope", "--out", str(tmp_path)]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_against_draws_each_groups_final_metric_over_a_numeric_param_with_t_intervals(tmp_path, capsys):
    # cell, lr, seed, final test_loss (None: the run diverged and ended FAILED without one)
    fake = [("irnn", 1e-4, 0, 0.10), ("irnn", 1e-4, 1, 0.14), ("irnn", 1e-2, 0, 0.01), ("irnn", 1e-2, 1, None),
            ("irnn", 1e-2, 2, 0.03), ("rnn", 1e-4, 0, 0.17), ("rnn", 1e-4, 1, 0.16), ("rnn", 1e-2, 0, 0.2)]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("lrs", artifact_location=(tmp_path / "artifacts").as_uri())
    for cell, lr, seed, test_loss in fake:
        run_id = client.create_run(experiment, run_name=f"{cell}-{lr}-{seed}").info.run_id
        for key, value in {"cell.name": cell, "train.lr": lr, "seed": seed}.items():
            client.log_param(run_id, key, str(value))
        if test_loss is not None:
            client.log_metric(run_id, "test_loss", test_loss, step=10)
            client.log_metric(run_id, "baseline_loss", 0.167, step=10)
        client.set_terminated(run_id, status="FINISHED" if test_loss is not None else "FAILED")
    from rnnlab.tracking.queries import study_runs

    _, groups = report.group_runs(study_runs(uri, "lrs", "", []), {"train.lr"})
    assert [g.label for g in groups] == ["cell.name=irnn", "cell.name=rnn"]  # the lr is the x axis, not a group
    x, mean, half, counted = report.sensitivity(groups[0], "train.lr", "test_loss")
    np.testing.assert_array_equal(x, [1e-4, 1e-2])
    # By hand: lr 1e-4: 0.10, 0.14 -> mean 0.12, s = 0.02 sqrt(2), half-width t(0.975, 1) s / sqrt(2) = 12.706205 * 0.02;
    # lr 1e-2: the failed run has no test_loss, 0.01 and 0.03 -> mean 0.02, the same s: 12.706205 * 0.01.
    np.testing.assert_allclose(mean, [0.12, 0.02], rtol=1e-12)
    np.testing.assert_allclose(half, [12.706205 * 0.02, 12.706205 * 0.01], rtol=1e-9)
    assert counted == [(2, 2), (2, 3)]
    x, mean, half, counted = report.sensitivity(groups[1], "train.lr", "test_loss")
    np.testing.assert_allclose(mean, [0.165, 0.2], rtol=1e-12)
    assert np.isfinite(half[0]) and np.isnan(half[1]) and counted == [(2, 2), (1, 1)]

    out = tmp_path / "out"
    assert report.main(["--uri", uri, "--experiment", "lrs", "--against", "train.lr", "--metric", "test_loss",
                        "--out", str(out)]) == 0
    assert (out / "against_train.lr_test_loss.png").stat().st_size > 0
    assert "![against_train.lr_test_loss](against_train.lr_test_loss.png)" in (out / "report.md").read_text()
    capsys.readouterr()
    assert report.main(["--uri", uri, "--experiment", "lrs", "--against", "cell.name", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("rnnlab.report: error: --against cell.name: run ")
