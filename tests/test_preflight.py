"""Bad input is refused in one line before anything is written: the entry point's preflight
(every job of a command, composed and checked) in this process. tests/test_cli.py runs a few of
these as a user does, in a subprocess, where the early tracking writer and Hydra are also live."""
from __future__ import annotations

import pytest

from rnnlab.__main__ import preflight

ALLOWED_KEYS = ("cell, data, train, tracking, depth, hidden_size, dropout, bidirectional, truncation, seed, device, "
                "allocator, quiet, resume, probe, trial")


@pytest.mark.parametrize(
    "args,message",
    [
        (["depth=0"], "depth=0 is out of range (allowed: >= 1)"),
        (["train.optimizer=adagrad"], "train.optimizer='adagrad' is not allowed (allowed: adam, sgd, rmsprop)"),
        (["foo=1"], f"unknown key 'foo' (allowed: {ALLOWED_KEYS})"),
        (["cell=transformerz"], "cell=transformerz is not an option of group 'cell' (allowed: cifg, esn, gru, gru_classic, indrnn, indrnn_li2018, lstm, lstm_variant, peephole, rnn, transformer)"),
        (["cell.nonlinearity=relu"], "cell.nonlinearity is not an option of cell 'lstm' (its options: forget_bias, chrono, recurrent_init)"),
        (["cell=esn", "cell.spectral_radius=0"], "cell.spectral_radius=0.0 is out of range (allowed: > 0 (< 1 for the echo-state property))"),
        (["-m", "depth=1,0"], "depth=0 is out of range (allowed: >= 1)"),
        (["data=csv", "data.path=missing.csv", "data.target=x"], "data.path='missing.csv': no such file"),
        (["cell=indrnn", "cell.u_max=-1", "tracking=none"], "cell.u_max=-1.0 must be > 0 (or null: unbounded)"),
        (["cell=transformer", "hidden_size=10"], "cell.heads=4: must divide hidden_size=10"),
        (["trian.lr=1e-3"], f"unknown key 'trian.lr' (did you mean 'train.lr'? allowed: {ALLOWED_KEYS})"),
        (["data=csv", "data.path=/nonexistent.csv"],  # both problems of the input at once
         "data.path='/nonexistent.csv': no such file; data.target is empty: data=csv needs data.target=..."),
        (["seed=-1"], "seed=-1 is out of range (allowed: >= 0 and < 4294967296)"),
        (["seed=4294967296"], "seed=4294967296 is out of range (allowed: >= 0 and < 4294967296)"),
        (["tracking.uri=ftp://nowhere/x"], "tracking.uri='ftp://nowhere/x' is not a tracking store (allowed: "
         "sqlite:///path/to/mlflow.db, http(s)://host:port, postgresql://..., mysql://..., mssql://...; or tracking=none)"),
        (["tracking.uri=http:///x"], "tracking.uri='http:///x' names no host (allowed: sqlite:///path/to/mlflow.db, "
         "http(s)://host:port, postgresql://..., mysql://..., mssql://...)"),
        (["tracking.experiment=' '"], "tracking.experiment=' ' is empty (allowed: a name; or tracking=none)"),
        (["hidden_size=1000000", "depth=1"], None),  # the memory floor: its numbers are this machine's
        # the bad job comes after 300 good ones: every job of a grid is checked, not the first 256
        (["-m", "depth=1,0", "seed=range(0,300)"], "depth=0 is out of range (allowed: >= 1)"),
        (["-m", "cell=indrnn", "cell.u_max=1,-1", "seed=range(0,300)"], "cell.u_max=-1.0 must be > 0 (or null: unbounded)"),
        # an Optuna sweep's fixed values (its search space is the sweeper's: tests/test_sweep.py)
        (["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "train.lr=interval(1e-4,1e-2)", "cell=transformer",
          "hidden_size=10"], "cell.heads=4: must divide hidden_size=10"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        preflight(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    if message is None:  # a model that cannot fit: one line with the keys and both sizes
        assert err.startswith("rnnlab: error: hidden_size=1000000, depth=1, train.batch_size=64: a training step needs "
                              "at least 29.1 TB (4,000,045,000,001 parameters with their gradients") and " is available on cpu" in err
        assert "\n" not in err
    else:
        assert err == f"rnnlab: error: {message}"
    assert list(tmp_path.iterdir()) == []  # no outputs/: no run folder, no MLflow store, no study
