"""python -m rnnlab.compare: the runs a filter picks, their vanishing factors, the figures and the page."""
from __future__ import annotations

import re

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


def _logged_runs(client, experiment, tmp_path, runs):
    """Runs with a probe's gradients.npz: (name, cell, lr) each; their last probe, by run id."""
    rng = np.random.default_rng(0)
    last_probe = {}
    for name, cell, lr in runs:
        run_id = client.create_run(experiment, run_name=name).info.run_id
        for key, value in {"cell": cell, "cell.name": cell, "depth": "2", "train.lr": lr, "seed": "0"}.items():
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
        last_probe[run_id] = (log_dh[-1, :, 0], lyapunov[-1, :, 0], name)
    return last_probe


def test_compare_picks_the_filtered_runs_and_reports_each_layers_vanishing_factor(tmp_path, mlflow_store, capsys):
    uri = mlflow_store
    client = MlflowClient(uri)
    experiment = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    # Two runs of one name (trials of a sweep are named alike), told apart by their id.
    last_probe = _logged_runs(client, experiment, tmp_path,
                              [("rnn", "rnn", "0.01"), ("lstm", "lstm", "0.01"), ("lstm", "lstm", "0.001"),
                               ("gru", "gru", "0.01")])

    out = tmp_path / "out"
    code = compare.main(["--uri", uri, "--experiment", "exp", "--filter", "params.cell IN ('rnn', 'lstm')",
                         "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "Downloading artifacts" not in captured.err  # MLflow's progress bars stay out of the table
    header, *lines = captured.out.splitlines()
    assert header.split()[:5] == ["run", "run", "id", "cell", "depth"]
    assert header.split()[5] == "train.lr"  # the one param that differs; seed, alike everywhere, is left out
    rows = {line.split()[1]: line.split() for line in lines if line.split()[0] in ("rnn", "lstm", "gru")}
    picked = {run_id: v for run_id, v in last_probe.items() if v[2] != "gru"}  # gru: filtered out by rnnlab's IN
    assert set(rows) == {run_id[:8] for run_id in picked}
    for run_id, (log, top, name) in picked.items():
        row = rows[run_id[:8]]
        assert row[:5] == [name, run_id[:8], name, "2", client.get_run(run_id).data.params["train.lr"]]
        expected = [log[0, 0] - log[0, -1], log[1, 1] - log[1, -1]]
        assert [float(f) for f in row[5:7]] == [round(e, 2) for e in expected]
        rates = [decay_fit(log[l]) for l in (0, 1)]
        assert row[7:11] == [f"{r:+.3f}" if i % 2 == 0 else f"({q:.2f})" for r, q in rates for i in (0, 1)]
        assert row[11:13] == [f"{e:+.3f}" for e in top]
        assert row[13:] == ["0.25", "0.50000"]
    for name in ("decay_l0.png", "decay_l1.png", "compare.html"):
        assert (out / name).stat().st_size > 0
    page = (out / "compare.html").read_text()
    assert page.count("<svg") == 2  # one figure per layer
    # Each run one line per panel, in the colour of its swatch in the table; three runs, three colours.
    swatches = dict(re.findall(r"<tr data-run='(\w+)'><td><span class='swatch' style='background:(#\w+)'", page))
    assert set(swatches) == set(picked) and len(set(swatches.values())) == 3
    for run_id, color in swatches.items():
        for layer in (0, 1):
            line = page[page.index(f'<g id="run-{run_id}-l{layer}">'):]
            assert f"stroke: {color}" in line[:line.index("</g>")], (run_id, layer)


def test_compare_says_so_when_nothing_matches(tmp_path, mlflow_store, capsys):
    uri = mlflow_store
    MlflowClient(uri).create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    assert compare.main(["--uri", uri, "--experiment", "exp", "--out", str(tmp_path / "out")]) == 2
    assert "no run with a gradients.npz artifact matches" in capsys.readouterr().err
    assert compare.main(["--uri", uri, "--experiment", "nope", "--out", str(tmp_path / "out")]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err
