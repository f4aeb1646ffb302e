"""Datasets, the chronological split, scaling and baselines; every loader's definition and errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.data import DataError, Series, Task, generate_weather, load_csv, make_windows
from rnnlab.data.adding import adding, adding_hs
from rnnlab.data.copy_memory import copy_memory
from rnnlab.data.digits import digits, permutation
from rnnlab.data.dynamics import lorenz, mackey_glass, sine
from rnnlab.data.jena import load_jena
from rnnlab.data.text import char_lm


def test_weather_is_deterministic_by_seed_and_at_least_two_years_hourly():
    a, b, c = generate_weather(2.0, seed=0), generate_weather(2.0, seed=0), generate_weather(2.0, seed=1)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    assert len(a.values) >= 2 * 365 * 24 and a.values.dtype == np.float32
    assert np.all(np.diff(a.time) == np.timedelta64(1, "h"))
    assert a.columns[a.target] == "temperature"
    assert {"humidity", "pressure", "wind_speed", "hour_sin", "weekday_sin"} <= set(a.columns)
    assert np.isfinite(a.values).all()


def test_weather_has_daily_and_yearly_cycles():
    s = generate_weather(3.0)
    temp, hour = s.values[:, 0], (s.time.astype("datetime64[h]").astype(int) % 24)
    assert temp[hour == 15].mean() > temp[hour == 4].mean() + 3  # afternoon warmer than night
    month = s.time.astype("datetime64[M]").astype(int) % 12
    assert temp[month == 6].mean() > temp[month == 0].mean() + 10  # July warmer than January


def series(n: int, features: int = 3) -> Series:
    values = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return Series(values=values, columns=[f"c{j}" for j in range(features)], target=1)


def test_windows_never_cross_a_split_boundary():
    w = make_windows(series(1000), lookback=20, horizon=3, stride=2)
    covered = set()
    for split, ((begin, end),) in w.bounds.items():
        s = w.starts[split]
        assert s.min() >= begin and (s + 20 - 1 + 3).max() < end  # inputs and targets inside
        covered.update(range(begin, end))
    assert covered == set(range(1000))
    assert w.bounds["train"][0, 1] == w.bounds["val"][0, 0] and w.bounds["val"][0, 1] == w.bounds["test"][0, 0]


def test_scaling_uses_the_training_part_only():
    raw = series(1000)
    w = make_windows(raw, lookback=10)
    end = w.bounds["train"][0, 1]
    train_target = raw.values[:end, raw.target]
    assert w.columns[0] == "c1"  # the target column comes first
    np.testing.assert_allclose(w.mean[0], train_target.mean(), rtol=1e-6)
    np.testing.assert_allclose(w.std[0], train_target.std(), rtol=1e-6)
    np.testing.assert_allclose(w.values[:end].mean(axis=0), 0, atol=1e-4)
    assert w.values[end:, 0].mean() > 1  # later parts are not re-centred on themselves


def test_batches_hold_the_right_windows_and_targets():
    w = make_windows(series(500), lookback=6, horizon=2)
    x, y = next(w.batches("val", batch_size=4))
    s = w.starts["val"][:4]
    for b in range(4):
        np.testing.assert_array_equal(x[b].numpy(), w.values[s[b] : s[b] + 6])
        assert y[b, 0] == w.target[s[b] + 6 - 1 + 2]
    assert x.dtype == torch.float32 and x.is_contiguous() and y.shape == (4, 1)
    shuffled = np.concatenate([xb[:, 0, 0].numpy().copy() for xb, _ in w.batches("train", 64, np.random.default_rng(0))])
    assert sorted(shuffled) == sorted(w.values[w.starts["train"], 0])  # a permutation of all windows


def test_baselines_are_persistence_and_seasonal_naive():
    w = make_windows(series(2000), lookback=30, horizon=1, season=24)
    s = w.starts["test"]
    b = w.baselines("test")
    np.testing.assert_array_equal(b["persistence"], w.target[s + 29])  # the last observed target
    np.testing.assert_array_equal(b["seasonal"], w.target[s + 30 - 24])  # 24 steps before the target
    far = make_windows(series(2000), lookback=30, horizon=30, season=24)
    s = far.starts["test"]
    np.testing.assert_array_equal(far.baselines("test")["seasonal"], far.target[s + 59 - 48])


def test_a_series_shorter_than_one_window_is_a_clear_error():
    with pytest.raises(DataError, match=r"the val part has 15 steps, shorter than one window \(.*= 21\)"):
        make_windows(series(100), lookback=20)


# ------------------------------------------------------------------------------------ CSV


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GOOD = "time,load,temp\n2024-01-01 00:00,1.5,3\n2024-01-01 01:00,2.5,4\n2024-01-01 02:00,3.5,5\n"


def test_csv_loads_target_first_and_parses_time(tmp_path):
    s = load_csv(write(tmp_path, GOOD), "time", "temp")
    assert s.columns == ["temp", "load"] and s.target == 0
    np.testing.assert_array_equal(s.values, [[3, 1.5], [4, 2.5], [5, 3.5]])
    assert s.time[1] - s.time[0] == np.timedelta64(1, "h")
    assert load_csv(write(tmp_path, GOOD), "time", "load", features=["load"]).columns == ["load"]


@pytest.mark.parametrize(
    "text,pattern",
    [
        (GOOD.replace("2.5", "N/A"), r"data.csv line 3, column 'load': 'N/A' is not a finite number"),
        (GOOD.replace("2.5", "inf"), r"line 3, column 'load': 'inf' is not a finite number"),
        (GOOD.replace("2.5", "1e400"), r"line 3, column 'load': '1e400' is not a finite number"),
        (GOOD.replace("2.5", "nan"), r"line 3, column 'load': 'nan' is not a finite number"),
        (GOOD.replace("2.5", ""), r"line 3, column 'load': '' is not a finite number"),
        (GOOD.replace(",4\n", ",=cmd\n"), r"line 3, column 'temp': '=cmd' is not a finite number"),
        (GOOD.replace("01:00", "03:00"), r"line 4, column 'time': time stamp '2024-01-01 02:00' is out of order"),
        (GOOD.replace("02:00", "01:00"), r"line 4, column 'time': time stamp '2024-01-01 01:00' is duplicate"),
        (GOOD.replace("2024-01-01 01:00", "yesterday"), r"line 3, column 'time': 'yesterday' is not a date/time"),
        ("time,load,temp\n", r"a header but no rows"),
        ("", r"the file is empty"),
    ],
)
def test_csv_errors_name_line_column_and_value(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        load_csv(write(tmp_path, text), "time", "temp")
    assert "\n" not in str(info.value)


def test_csv_headers_wide_lines_folders_and_time_zones(tmp_path):
    with pytest.raises(DataError, match=r"^dup.csv line 1: column 'load' appears more than once in the header "
                                        r"\(allowed: distinct column names\)$"):
        load_csv(write(tmp_path, "time,load,load\n2024-01-01 00:00,1,2\n", "dup.csv"), "time", "load")
    columns = 8001  # lines of ~72 KB: wider than one block read from the end
    header = "time," + ",".join(f"c{i}" for i in range(columns))
    rows = [f"2024-01-01 {h:02d}:00," + ",".join(f"{(h * i) % 97 / 97:.6f}" for i in range(columns)) for h in range(6)]
    wide = load_csv(write(tmp_path, "\n".join([header, *rows]) + "\n", "wide.csv"), "time", "c0")
    assert wide.values.shape == (6, columns)
    torn = write(tmp_path, "\n".join([header, *rows, rows[0][: len(rows[0]) // 2]]) + "\n", "torn_wide.csv")
    with pytest.raises(DataError, match=r"torn_wide.csv line 8: \d+ field\(s\), the header has 8002"):
        load_csv(torn, "time", "c0")
    with pytest.raises(DataError, match=r"^extra.csv line 2: more fields than the header's 2 "):  # hypothesis found it
        load_csv(write(tmp_path, "time,load\n2024-01-01 00:00,1,2\n2024-01-01 01:00,1\n", "extra.csv"), "time", "load")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"^data.path='.*folder' is a folder \(allowed: a .csv or .parquet file\)$"):
        load_csv(tmp_path / "folder", "time", "c0")
    zones = "time,y\n2024-01-01T00:00:00+00:00,1\n2024-01-01T01:00:00+00:00,2\n2024-01-01T02:00:00+02:00,3\n"
    with pytest.raises(DataError, match=r"^tz.csv line 4, column 'time': '2024-01-01T02:00:00\+02:00' has UTC offset "
                                        r"\+02:00 but tz.csv line 2 has \+00:00 \(allowed: one offset"):
        load_csv(write(tmp_path, zones, "tz.csv"), "time", "y")


def test_csv_missing_columns_file_and_encoding(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(DataError, match=r"data.target='price' is not a column of data.csv \(columns: time, load, temp\)"):
        load_csv(path, "time", "price")
    with pytest.raises(DataError, match=r"data.time_column='date' is not a column"):
        load_csv(path, "date", "temp")
    with pytest.raises(DataError, match=r"data.features: 'wind' is not a column"):
        load_csv(path, "time", "temp", features=["wind"])
    with pytest.raises(DataError, match=r"no such file"):
        load_csv(tmp_path / "missing.csv", "time", "temp")
    with pytest.raises(DataError, match=r"not UTF-8 text"):
        load_csv(write(tmp_path, GOOD.encode() + "é\n".encode("latin-1"), "latin.csv"), "time", "temp")


def test_csv_panel_parquet_and_fill_policy(tmp_path):
    rows = ["id,time,y"] + [f"b,2024-01-0{d} 00:00,{d}" for d in range(1, 4)] + [f"a,2024-01-0{d} 00:00,{10 + d}" for d in range(2, 7)]
    rows.insert(2, "a,2024-01-01 00:00,0")  # interleaved rows: grouped by series, file order kept
    path = write(tmp_path, "\n".join(rows) + "\n")
    s = load_csv(path, "time", "y", id_column="id")
    assert s.ids == ["b", "a"] and s.lengths.tolist() == [3, 6]
    np.testing.assert_array_equal(s.values[:, 0], [1, 2, 3, 0, 12, 13, 14, 15, 16])
    with pytest.raises(DataError, match=r"data.csv line 5, column 'time': time stamp '2024-01-02 00:00' is duplicate .*within each series"):
        load_csv(write(tmp_path, "\n".join(rows).replace("b,2024-01-03", "b,2024-01-02") + "\n"), "time", "y", id_column="id")
    with pytest.raises(DataError, match=r"data.id_column='series' is not a column"):
        load_csv(path, "time", "y", id_column="series")

    import pandas as pd

    table = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=4, freq="h"), "y": [1.0, 2.0, np.nan, 4.0]})
    table.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet row 3, column 'y': 'nan' is not a finite number"):
        load_csv(str(tmp_path / "p.parquet"), "time", "y")
    filled = load_csv(str(tmp_path / "p.parquet"), "time", "y", missing="ffill")
    np.testing.assert_array_equal(filled.values[:, 0], [1, 2, 2, 4])
    assert filled.time[1] - filled.time[0] == np.timedelta64(1, "h")
    with pytest.raises(DataError, match=r"line 2, column 'load': '' is missing and is the first value of its series"):
        load_csv(write(tmp_path, GOOD.replace("1.5", "")), "time", "temp", missing="ffill")
    with pytest.raises(DataError, match=r"line 3, column 'load': '=x' is not a finite number"):  # typos never filled
        load_csv(write(tmp_path, GOOD.replace("2.5", "=x")), "time", "temp", missing="ffill")
    with pytest.raises(DataError, match=r"not a readable Parquet file"):
        load_csv(str(write(tmp_path, GOOD, "bad.parquet")), "time", "temp")


def panel(lengths: list[int]) -> Series:
    n = sum(lengths)
    values = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    return Series(values, ["a", "b"], 0, lengths=np.array(lengths), ids=[f"s{i}" for i in range(len(lengths))])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(120, 300), min_size=1, max_size=5), lookback=st.integers(1, 12),
       horizon=st.integers(1, 5), stride=st.integers(1, 4))
def test_panel_windows_stay_in_one_series_and_one_split(lengths, lookback, horizon, stride):
    w = make_windows(panel(lengths), lookback, horizon, stride)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.zeros(offsets[-1], dtype=np.int64)  # (series, split) of every step
    for k, split in enumerate(("train", "val", "test")):
        for i, (b, e) in enumerate(w.bounds[split]):
            assert offsets[i] <= b <= e <= offsets[i + 1]
            owner[b:e] = 3 * i + k
        s = w.starts[split]
        last = s + lookback - 1 + horizon
        assert np.all(owner[s] == owner[last]) and np.all(owner[s] % 3 == k)  # inputs and target together
    seasonal_from = np.searchsorted(offsets, w.starts["test"] + lookback - 1, side="right") - 1
    assert np.all(np.isin(w.baselines("test")["seasonal"], w.target))  # never outside the values
    assert len(seasonal_from) == len(w.starts["test"])


def test_panel_scaling_uses_every_training_part_and_a_short_series_is_named():
    p = panel([100, 200])
    w = make_windows(p, lookback=5)
    train = np.concatenate([p.values[b:e, 0] for b, e in w.bounds["train"]])
    np.testing.assert_allclose(w.mean[0], train.mean(), rtol=1e-6)
    with pytest.raises(DataError, match=r"series 's1' \(30 steps\): its val part has 4 steps, shorter than one window"):
        make_windows(panel([100, 30]), lookback=5)


# ------------------------------------------------------------------------- sequence tasks


def test_adding_le_definition_and_always_one_baseline():
    data = adding(length=50, n_train=20000, n_val=10, n_test=10, seed=0)
    x, y = data.x, data.y[:, 0]
    assert x.shape == (20020, 50, 2) and data.task == Task("regression", False, 1)
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=1) == 2) and set(np.unique(markers)) == {0.0, 1.0}
    assert np.all(markers[:, :25].sum(axis=1) == 1) and np.all(markers[:, 25:].sum(axis=1) == 1)  # one per half
    np.testing.assert_allclose(y, (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    assert 0 <= x[:, :, 0].min() and x[:, :, 0].max() <= 1
    assert data.baseline_loss("train") == pytest.approx(1 / 6, abs=0.005)  # always 1: MSE 0.167
    np.testing.assert_array_equal(adding(length=50, n_train=5, seed=0).x[:5], adding(length=50, n_train=5, seed=0).x[:5])


def test_adding_hochreiter_schmidhuber_definition():
    data = adding_hs(length=40, n_train=5000, n_val=10, n_test=2560, seed=1)
    x, y = data.x, data.y[:, 0]
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=1) == 2) and np.all(markers[:, :20].sum(axis=1) == 2)  # both in the first half
    assert np.all(markers[:, :10].sum(axis=1) >= 1)  # the first among the first 10 steps
    assert -1 <= x[:, :, 0].min() < -0.99 and 0.99 < x[:, :, 0].max() <= 1
    np.testing.assert_allclose(y, 0.5 + (x[:, :, 0] * markers).sum(axis=1) / 4, rtol=1e-6)
    assert data.task.tolerance == 0.04 and data.parts["test"].stop - data.parts["test"].start == 2560
    with pytest.raises(DataError, match=r"data.length=10 is out of range \(allowed: >= 20"):
        adding_hs(length=10)


def test_copy_memory_layout_and_memoryless_baseline():
    T = 30
    data = copy_memory(length=T, n_train=200, n_val=10, n_test=10, seed=0)
    tokens, y = data.x.argmax(-1), data.y
    assert data.x.shape == (220, T + 20, 10) and data.task == Task("classification", True, 10)
    assert np.all((1 <= tokens[:, :10]) & (tokens[:, :10] <= 8))
    assert np.all(tokens[:, 10 : 10 + T - 1] == 0) and np.all(tokens[:, 10 + T - 1] == 9) and np.all(tokens[:, -10:] == 0)
    assert np.all(y[:, : T + 10] == 0) and np.array_equal(y[:, -10:], tokens[:, :10])
    # The memoryless strategy: blank with certainty until the delimiter, then uniform over 8.
    probs = np.zeros((220, T + 20, 10))
    probs[:, : T + 10, 0] = 1.0
    probs[:, T + 10 :, 1:9] = 1 / 8
    ce = -np.mean(np.log(np.take_along_axis(probs, y[..., None], -1)))
    assert ce == pytest.approx(10 * np.log(8) / (T + 20)) == pytest.approx(data.baseline_loss("test"))


GENERATED = [adding, adding_hs, copy_memory]


@pytest.mark.parametrize("task", GENERATED, ids=lambda f: f.__name__)
def test_a_generated_tasks_val_and_test_sets_do_not_depend_on_n_train(task):
    small, large = task(length=30, n_train=100, seed=3), task(length=30, n_train=700, seed=3)
    for split in ("val", "test"):
        np.testing.assert_array_equal(small.x[small.parts[split]], large.x[large.parts[split]])
        np.testing.assert_array_equal(small.y[small.parts[split]], large.y[large.parts[split]])
        assert small.baseline_loss(split) == large.baseline_loss(split)
    other = task(length=30, n_train=100, seed=4)
    assert not np.array_equal(other.x[other.parts["test"]], small.x[small.parts["test"]])  # data.seed still decides
    assert not np.array_equal(small.x[:8], small.x[small.parts["test"]][:8])  # each split its own stream


@pytest.mark.parametrize("task", GENERATED, ids=lambda f: f.__name__)
def test_fresh_training_batches_are_new_every_step_and_reproducible_from_the_runs_generator(task):
    data = task(length=30, n_train=64, n_val=8, n_test=8, seed=0, fresh=True)

    def a_pass(seed):
        return [(x.clone(), y.clone()) for x, y in data.batches("train", 24, np.random.default_rng(seed))]

    first = a_pass(0)
    assert [len(x) for x, _ in first] == [24, 24, 16]  # a pass over 64 examples, as without fresh
    xs = [x for x, _ in first]
    assert not any(torch.equal(a[:16], b[:16]) for i, a in enumerate(xs) for b in xs[i + 1:])  # no batch repeats
    fixed = torch.from_numpy(data.x[data.parts["train"]])
    assert not any(bool((x[:, None] == fixed[None]).flatten(2).all(-1).any()) for x in xs)  # none from the fixed split
    again = a_pass(0)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, again))
    assert not torch.equal(a_pass(1)[0][0], first[0][0])
    # What is drawn is the task itself: the same definition as the fixed splits.
    reference = task(length=30, n_train=24, n_val=1, n_test=1, seed=0)
    assert first[0][0].shape[1:] == reference.x.shape[1:] and first[0][1].dtype == torch.from_numpy(reference.y).dtype
    # Evaluation and anything else that reads train without a generator see the fixed sets.
    (val_x, _), = data.batches("val", 8)
    np.testing.assert_array_equal(val_x.numpy(), data.x[data.parts["val"]])
    unshuffled = torch.cat([x.clone() for x, _ in data.batches("train", 24)])
    assert torch.equal(unshuffled, fixed)


def test_fresh_adding_batches_follow_the_definition():
    data = adding(length=40, n_train=256, n_val=1, n_test=1, fresh=True)
    x, y = next(iter(data.batches("train", 256, np.random.default_rng(5))))
    markers = x[:, :, 1]
    assert torch.all(markers[:, :20].sum(1) == 1) and torch.all(markers[:, 20:].sum(1) == 1)
    torch.testing.assert_close(y[:, 0], (x[:, :, 0] * markers).sum(1), rtol=1e-6, atol=1e-6)


def test_copy_memoryless_accuracy_is_blanks_right_and_one_symbol_in_eight():
    assert copy_memory(length=100, n_train=1, n_val=1, n_test=1).baseline_accuracy == pytest.approx(
        (110 + 10 / 8) / 120, abs=1e-15) == pytest.approx(0.927083, abs=1e-6)  # by hand: 111.25 / 120
    T = 30
    data = copy_memory(length=T, n_train=1, n_val=1, n_test=20000, seed=2)
    y = data.y[data.parts["test"]]
    memoryless = np.zeros_like(y)  # blank everywhere, a constant symbol on the recall steps
    memoryless[:, -10:] = 3
    measured = np.mean(memoryless == y)
    # 20,000 x 10 recall steps: the standard error of the 1/8 is 0.0007, diluted by 10/50
    assert measured == pytest.approx(data.baseline_accuracy, abs=0.001)
    assert data.baseline_accuracy == pytest.approx((T + 10 + 1.25) / (T + 20))
    assert adding(length=20, n_train=1, n_val=1, n_test=1).baseline_accuracy is None  # no accuracy to speak of


def test_digits_read_orders_and_a_permutation_fixed_by_seed():
    pixel, row = digits(), digits(read="row")
    assert pixel.x.shape == (1797, 64, 1) and row.x.shape == (1797, 8, 8) and pixel.task.n_outputs == 10
    np.testing.assert_array_equal(pixel.x.reshape(1797, 64), row.x.reshape(1797, 64))  # same pixels, same order
    assert 0 <= pixel.x.min() and pixel.x.max() == 1 and pixel.baseline_loss("test") == pytest.approx(np.log(10))
    assert np.array_equal(permutation(0), permutation(0)) and not np.array_equal(permutation(0), permutation(1))
    permuted = digits(permute=True)
    np.testing.assert_array_equal(permuted.x[:, :, 0], pixel.x[:, permutation(0), 0])
    np.testing.assert_array_equal(permuted.y, pixel.y)  # the same split for both variants
    sizes = [p.stop - p.start for p in pixel.parts.values()]
    assert sum(sizes) == 1797 and sizes[2] == int(1797 * 0.15)


def test_sequence_batches_are_buffer_views_with_the_tasks_dtypes():
    data = copy_memory(length=5, n_train=50, n_val=5, n_test=5)
    batches = [(x.clone(), y.clone()) for x, y in data.batches("train", 16, np.random.default_rng(0))]
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2] and data.n_batches("train", 16) == 4
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64 and batches[0][1].shape == (16, 25)
    firsts = sorted(x[:, 0].argmax(-1).tolist() for x, _ in batches)
    assert len(sum(firsts, [])) == 50


def test_char_lm_streams_the_text_and_names_bad_files(tmp_path):
    text = "hello world, " * 40
    data = char_lm(str(write(tmp_path, text, "t.txt")), length=8, val_fraction=0.1, test_fraction=0.1)
    assert "".join(data.vocab[i] for i in np.concatenate(list(data.tokens.values()))) == text
    assert data.task.stateful_stream and data.task.n_outputs == len(set(text))
    chunks = list(data.batches("train", 4))
    assert len(chunks) == data.n_batches("train", 4) and chunks[0][0].shape == (4, 8, len(data.vocab))
    assert 0 < data.baseline_loss("test") < np.log(len(data.vocab))
    for content, pattern in [
        (b"", r"data.path='.*e.txt': the file is empty"),
        (b"ok\nok\n\xff\n", r"not UTF-8 text \(line 3, byte 6: b'\\xff'"),
        (b"tiny", r"its train part has \d+ characters, fewer than one chunk"),
    ]:
        with pytest.raises(DataError, match=pattern) as info:
            char_lm(str(write(tmp_path, content, "e.txt")), length=8)
        assert "\n" not in str(info.value)


def test_synthetic_dynamics_are_deterministic_and_on_their_attractors():
    for make in (sine, mackey_glass, lorenz):
        a, b, c = make(steps=3000, seed=0), make(steps=3000, seed=0), make(steps=3000, seed=1)
        np.testing.assert_array_equal(a.values, b.values)
        assert not np.array_equal(a.values, c.values) and np.isfinite(a.values).all() and len(a.values) == 3000
    mg = mackey_glass(steps=3000).values[:, 0]
    assert 0.2 < mg.min() and mg.max() < 1.5 and mg.std() > 0.1  # tau = 17: chaotic, not a fixed point
    xyz = lorenz(steps=3000).values
    assert np.abs(xyz[:, 0]).max() < 25 and 0 < xyz[:, 2].min() and xyz[:, 2].max() < 50
    assert np.sign(xyz[:, 0]).min() == -1 and np.sign(xyz[:, 0]).max() == 1  # visits both lobes


def test_jena_loader_drops_repeated_stamps_and_the_wind_sentinel(tmp_path):
    header = '"Date Time","p (mbar)","T (degC)","wv (m/s)","max. wv (m/s)"'
    rows = [f"01.01.2009 0{h}:00:00,996.5,{h}.5,1.0,2.0" for h in range(6)]
    rows.insert(3, rows[2])  # a repeated time stamp, as in the published file
    rows[1] = rows[1].replace(",1.0,", ",-9999.0,")
    s = load_jena(str(write(tmp_path, "\n".join([header, *rows]) + "\n", "jena.csv")), every=2)
    assert s.columns[0] == "T (degC)" and len(s.values) == 3
    np.testing.assert_array_equal(s.values[:, 0], [0.5, 2.5, 4.5])
    assert s.time[1] - s.time[0] == np.timedelta64(2, "h")
    full = load_jena(str(tmp_path / "jena.csv"), every=1)
    assert full.values[1, s.columns.index("wv (m/s)")] == 0.0
    with pytest.raises(DataError, match=r"jena.csv line 3, column 'p \(mbar\)': 'x' is not a finite number"):
        load_jena(str(write(tmp_path, "\n".join([header, rows[0], rows[1].replace("996.5", "x")]) + "\n", "jena.csv")))


def test_csv_size_limit_and_truncated_last_line_are_one_line_errors(tmp_path):
    big = write(tmp_path, GOOD * 50, "big.csv")
    with pytest.raises(DataError, match=r"data.path='.*big.csv': the file is \d+\.\d KB, larger than data.max_mb=0.000976562 \(1.0 KB\)$"):
        load_csv(big, "time", "temp", max_mb=2**-10)
    with pytest.raises(DataError, match=r"^data.max_mb=0 is out of range \(allowed: > 0\)$"):
        load_csv(big, "time", "temp", max_mb=0)
    torn = write(tmp_path, GOOD + "2024-01-01 03:00,4.5", "torn.csv")  # the writer died mid-line
    with pytest.raises(DataError, match=r"torn.csv line 5: 2 field\(s\), the header has 3 \(a truncated line\?\)"):
        load_csv(torn, "time", "temp")
    with pytest.raises(DataError, match=r"line 5: 2 field\(s\)"):  # even with a fill policy chosen
        load_csv(torn, "time", "temp", missing="ffill")


# ------------------------------------------------------------ real series shipped in statsmodels


def test_co2_is_the_weekly_mauna_loa_record_with_its_missing_weeks_forward_filled():
    from statsmodels.datasets import co2 as source

    from rnnlab.data.shipped import load_co2

    raw = source.load_pandas().data["co2"].to_numpy()
    s = load_co2()
    assert s.values.shape == (2284, 1) and s.columns == ["co2"] and s.values.dtype == np.float32
    assert np.isnan(raw).sum() == 59 and np.isfinite(s.values).all()
    assert (str(s.time[0]), str(s.time[-1])) == ("1958-03-29", "2001-12-29")
    assert np.all(np.diff(s.time) == np.timedelta64(7, "D"))
    gaps = np.flatnonzero(np.isnan(raw))
    np.testing.assert_array_equal(s.values[gaps, 0], s.values[gaps - 1, 0])  # the week before's value
    np.testing.assert_array_equal(s.values[~np.isnan(raw), 0], raw[~np.isnan(raw)].astype(np.float32))
    assert 310 < s.values.min() and s.values.max() < 380  # ppmv
    with pytest.raises(DataError, match=r"^data=co2: the week of 1958-05-10 has no measurement \(59 of 2284 weeks"):
        load_co2(missing="error")


def test_sunspots_are_309_years_from_1700():
    from rnnlab.data.shipped import load_sunspots

    s = load_sunspots()
    assert s.values.shape == (309, 1) and s.columns == ["sunspots"] and np.isfinite(s.values).all()
    assert (str(s.time[0]), str(s.time[-1])) == ("1700", "2008") and np.all(np.diff(s.time.astype(int)) == 1)
    assert s.values.min() >= 0 and s.values[0, 0] == 5.0  # 1700: 5 (NGDC's table)


@pytest.mark.parametrize("name", ["co2", "sunspots"])
def test_without_statsmodels_a_shipped_series_is_one_line_naming_the_extra(monkeypatch, name):
    import sys

    from rnnlab.data import DATASETS

    for module in [m for m in sys.modules if m == "statsmodels" or m.startswith("statsmodels.")] + ["statsmodels"]:
        monkeypatch.setitem(sys.modules, module, None)  # import statsmodels... raises ImportError
    with pytest.raises(DataError) as info:
        DATASETS[name]()
    assert str(info.value) == (f"data={name} needs the package statsmodels (the series ships inside it), which is "
                               "not installed: pip install 'rnnlab[datasets]'")
