"""python -m rnnlab.compare: the runs a filter picks, their vanishing factors, the figures and the page."""
from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from rnnlab import compare
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
        dh = rng.uniform(1e-4, 1.0, size=(3, 2, 1, 12))  # probes x layers x directions x T
        dh[-1, 1, 0, 0] = np.nan  # not measured: the factor starts at the first measured step
        np.savez_compressed(tmp_path / "gradients.npz", dh=dh, steps=np.array([10, 20, 30]))
        client.log_artifact(run_id, str(tmp_path / "gradients.npz"))
        client.set_terminated(run_id)
        last_probe[cell] = dh[-1, :, 0]

    out = tmp_path / "out"
    code = compare.main(["--uri", uri, "--experiment", "exp", "--filter", "params.cell IN ('rnn', 'lstm')",
                         "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.split()[0] in ("rnn", "lstm", "gru")}
    assert set(rows) == {"rnn", "lstm"}  # gru is filtered out by the IN clause, applied by rnnlab
    for cell, row in rows.items():
        norms = last_probe[cell]
        expected = [np.log10(norms[0, 0] / norms[0, -1]), np.log10(norms[1, 1] / norms[1, -1])]
        assert [float(f) for f in row[3:5]] == [round(e, 2) for e in expected]
        assert row[5:] == ["0.25", "0.50000"]
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
