"""Bad input is refused in one line before anything is written: the entry point's preflight
(every job of a command, composed and checked) in this process. tests/test_cli.py runs a few of
these as a user does, in a subprocess, where the early tracking writer and Hydra are also live."""
from __future__ import annotations

import pytest

from rnnlab.__main__ import preflight

ALLOWED_KEYS = ("cell, data, train, tracking, depth, hidden_size, dropout, bidirectional, truncation, seed, device, "
                "allocator, quiet, resume, probe, trial")


def test_a_store_file_that_is_not_a_database_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mlflow.db").write_text("hi")  # trained to the end untracked, a run folder written
    with pytest.raises(SystemExit):
        preflight([])
    assert capsys.readouterr().err.strip() == ("rnnlab: error: tracking.uri='sqlite:///outputs/mlflow.db': "
                                               "'outputs/mlflow.db' is not an SQLite database (allowed: an MLflow store "
                                               "a run made, or a path that does not exist yet)")
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["mlflow.db"]


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


# ------------------------------------------------------------------------- generated inputs
#
# Hostile input as hypothesis draws it: every command either passes the preflight or is
# refused with one line (exit 2), never a traceback, and nothing is written either way. The
# counts per outcome are printed (pytest -s, or -rA) for the record.

import io  # noqa: E402
import string  # noqa: E402
from collections import Counter  # noqa: E402
from contextlib import redirect_stderr  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rnnlab import __main__ as entry  # noqa: E402

KEYS = ["depth", "hidden_size", "dropout", "seed", "truncation", "bidirectional", "device", "quiet", "resume",
        "train.lr", "train.epochs", "train.steps", "train.batch_size", "train.optimizer", "train.clip", "train.patience",
        "cell", "cell.forget_bias", "cell.u_max", "cell.nonlinearity", "cell.heads", "data", "data.lookback",
        "data.years", "data.length", "data.horizon", "data.path", "data.max_mb", "probe.every", "probe.at",
        "probe.lyapunov.k", "tracking", "tracking.uri", "tracking.experiment", "tracking.run_name", "trial.study",
        "trian.lr", "nosuch", "train", "cell.chrono", "allocator"]
WORDS = ["", "null", "[]", "[1,2]", "[0,-5]", "{a:1}", "'x y'", "1e400", "-0", "nan", "inf", "-inf", "lstm", "rnn",
         "gru", "indrnn", "esn", "transformer", "csv", "adding", "copy", "none", "mlflow", "auto", "cuda", "true",
         "interval(1,2)", "choice(1,2)", "range(0,3)", "${depth}", "${oc.env:HOME}", "sqlite:///x.db", "ftp://x",
         "a,b", "é", "\\", "'", "$", "=", "1,2", "2**70"]
VALUE = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(WORDS), st.text(string.printable, max_size=10),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(["", "", "+", "++"]), st.sampled_from(KEYS), VALUE).map(lambda t: f"{t[0]}{t[1]}={t[2]}"),
    st.sampled_from(KEYS).map(lambda k: f"~{k}"),
    st.text(string.printable, max_size=12),
)


def outcome(args: list[str]) -> tuple[str, str]:
    """("accepted" | "refused", stderr) of the preflight; anything else propagates."""
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            preflight(args)
    except SystemExit as e:
        assert e.code == 2, (args, e.code, err.getvalue())
        return "refused", err.getvalue()
    finally:
        entry._PREPARED.clear()  # the data of accepted jobs, kept for a run that will not come
    return "accepted", err.getvalue()


def tallied(args: list[str], counts: Counter[str]) -> tuple[str, str]:
    """The preflight's outcome, counted (a crash too, before it propagates); a refusal must be
    one line."""
    try:
        kind, err = outcome(args)
    except BaseException:
        counts["crashed"] += 1
        raise
    counts[kind] += 1
    if kind == "refused":
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rnnlab: error: "), (args, err)
        assert "Traceback" not in err and len(lines[0]) < 2000, (args, err)
    return kind, err


@pytest.mark.slow
def test_generated_overrides_are_run_or_refused_in_one_line_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts: Counter[str] = Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(OVERRIDE, min_size=1, max_size=3), st.booleans())
    def check(overrides: list[str], multirun: bool) -> None:
        tallied((["-m"] if multirun else []) + overrides, counts)
        assert list(tmp_path.iterdir()) == [], overrides  # no outputs/, no store, no study

    check()
    print(f"generated overrides: {sum(counts.values())} tried, {counts['refused']} refused in one line, "
          f"{counts['accepted']} accepted, {counts['crashed']} crashed")
    assert counts["refused"] > 50 and counts["accepted"] > 5  # the generator reaches both sides


CSV_HEADERS = ["time,load", "time,load,load", "time,load,temp", "load,time", "time", "", "time,,load", "Time,load",
               "time,load,\"a,b\"", "\ufefftime,load"]
CSV_TIMES = st.one_of(
    st.integers(0, 500).map(lambda h: f"2020-01-{1 + h // 24:02d}T{h % 24:02d}:00:00"),
    st.sampled_from(["2020-01-01T00:00:00+01:00", "2020-01-01T00:00:00Z", "not a date", "", "2020-13-01", "0",
                     "2020-01-01 00:00", "1e9"]),
)
CSV_CELL = st.one_of(st.floats(-1e6, 1e6).map(repr), st.sampled_from(["", "nan", "inf", "1e400", "x", "N/A", "1,5", "-0"]),
                     st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=5))


@st.composite
def csv_files(draw) -> bytes:
    """A well-formed series (time, load, temp) with at most a few faults, each at a drawn row: a
    header, a time stamp, a cell, a row's width, the line ending, the encoding; about a third
    of the files have none, so the checks after the first fault are reached too."""
    header = draw(st.sampled_from(["time,load,temp"] * len(CSV_HEADERS) + CSV_HEADERS))
    width = max(1, header.count(",") + 1)
    n = draw(st.integers(0, 80))
    rows = [[f"2020-01-{1 + i // 24:02d}T{i % 24:02d}:00:00", *(f"{(i * 7 + j) % 11}.5" for j in range(width - 1))]
            for i in range(n)]
    for _ in range(draw(st.integers(0, 3)) if n else 0):
        row = rows[draw(st.integers(0, n - 1))]
        fault = draw(st.sampled_from(["time", "cell", "width"]))
        if not row:  # a one-column row that lost its field already
            continue
        if fault == "time":
            row[0] = draw(CSV_TIMES)
        elif fault == "cell" and len(row) > 1:
            row[draw(st.integers(1, len(row) - 1))] = draw(CSV_CELL)
        elif fault == "width":
            row[len(row) - 1:] = [] if draw(st.booleans()) else [row[-1], "9.5"]  # a field short or one extra
    text = "\n".join([header, *(",".join(r) for r in rows)]) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))
    data = text.encode()
    if draw(st.integers(0, 15)) == 0:
        data = text.encode("latin-1", errors="replace") + b"\xff\xfe"  # not UTF-8
    return data


@pytest.mark.slow
def test_generated_csv_files_are_run_or_refused_in_one_line_naming_the_file_and_write_nothing(tmp_path, monkeypatch):
    work, files = tmp_path / "work", tmp_path / "files"
    work.mkdir(), files.mkdir()
    monkeypatch.chdir(work)
    counts: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(csv_files())
    def check(data: bytes) -> None:
        path = files / "series.csv"
        path.write_bytes(data)
        kind, err = tallied(["data=csv", f"data.path={path}", "data.target=load", "data.lookback=4", "data.season=2"],
                            counts)
        if kind == "refused" and "data." not in err:  # a problem of the file: its name (and line) is said
            assert "series.csv" in err, err
        assert list(work.iterdir()) == [], data[:200]

    check()
    print(f"generated CSV files: {sum(counts.values())} tried, {counts['refused']} refused in one line, "
          f"{counts['accepted']} accepted, {counts['crashed']} crashed")
    assert counts["refused"] > 50 and counts["accepted"] > 5
