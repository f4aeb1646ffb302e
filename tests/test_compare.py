"""python -m rnnlab.compare: the runs a filter picks, their vanishing factors, the figures and the page."""
from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from rnnlab import compare
from rnnlab.probe import decay_fit
from rnnlab.tracking.queries import _split_param_in


def test_param_in_clauses_are_taken_out_of_the_mlflow_filter():
    assert _split_param_in("params.cell IN ('rnn', 'lstm') and metrics.best_val_loss < 1") == (
        "metrics.best_val_loss < 1", {"cell": {"rnn", "lstm"}})
    assert _split_param_in("params.`cell.name` in ('gru')") == ("", {"cell.name": {"gru"}})
    assert _split_param_in("params.depth = '2'") == ("params.depth = '2'", {})
    assert _split_param_in("") == ("", {})


def test_compare_picks_the_filtered_runs_and_reports_each_layers_vanishing_factor(tmp_path, mlflow_store, capsys):
    uri = mlflow_store
    client = MlflowClient(uri)
    experiment = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    last_probe = {}
    for cell in ("rnn", "lstm", "gru"):
        run_id = client.create_run(experiment, run_name=cell).info.run_id
        for key, value in {"cell": cell, "cell.name": cell, "depth": "2"}.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "clip_rate", 0.25)
        client.log_metric(run_id, "best_val_loss", 0.5)
        log_dh = rng.uniform(-4, 0.0, size=(3, 2, 1, 12))  # probes x layers x directions x T
        log_dh[-1, 1, 0, 0] = np.nan  # not measured: the factor starts at the first measured step
        lyapunov = rng.uniform(-1, 0.1, size=(3, 2, 4))  # probes x layers x k
        np.savez_compressed(tmp_path / "gradients.npz", log_dh=log_dh, dh=10**log_dh, lyapunov=lyapunov,
                            steps=np.array([10, 20, 30]))
        client.log_artifact(run_id, str(tmp_path / "gradients.npz"))
        client.set_terminated(run_id)
        last_probe[cell] = (log_dh[-1, :, 0], lyapunov[-1, :, 0], run_id)

    out = tmp_path / "out"
    code = compare.main(["--uri", uri, "--experiment", "exp", "--filter", "params.cell IN ('rnn', 'lstm')",
                         "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "Downloading artifacts" not in captured.err  # MLflow's progress bars stay out of the table
    lines = captured.out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split()[0] in ("rnn", "lstm", "gru")}
    assert set(rows) == {"rnn", "lstm"}  # gru is filtered out by the IN clause, applied by rnnlab
    for cell, row in rows.items():
        log, top, run_id = last_probe[cell]
        assert row[1] == f"({run_id[:8]})"  # each run its own row and curve, even under one name
        expected = [log[0, 0] - log[0, -1], log[1, 1] - log[1, -1]]
        assert [float(f) for f in row[4:6]] == [round(e, 2) for e in expected]
        rates = [decay_fit(log[l]) for l in (0, 1)]
        assert row[6:10] == [f"{r:+.3f}" if i % 2 == 0 else f"({q:.2f})" for r, q in rates for i in (0, 1)]
        assert row[10:12] == [f"{e:+.3f}" for e in top]
        assert row[12:] == ["0.25", "0.50000"]
    for name in ("decay_l0.png", "decay_l1.png", "compare.html"):
        assert (out / name).stat().st_size > 0
    assert (out / "compare.html").read_text().count("<img") == 2


def test_compare_says_so_when_nothing_matches(tmp_path, mlflow_store, capsys):
    uri = mlflow_store
    MlflowClient(uri).create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    assert compare.main(["--uri", uri, "--experiment", "exp", "--out", str(tmp_path / "out")]) == 2
    assert "no run with a gradients.npz artifact matches" in capsys.readouterr().err
    assert compare.main(["--uri", uri, "--experiment", "nope", "--out", str(tmp_path / "out")]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err
