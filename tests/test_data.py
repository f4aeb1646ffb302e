"""Datasets, the chronological split, scaling and baselines; the CSV loader's errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.data import DataError, Series, generate_weather, load_csv, make_windows


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
    for split, (begin, end) in w.bounds.items():
        s = w.starts[split]
        assert s.min() >= begin and (s + 20 - 1 + 3).max() < end  # inputs and targets inside
        covered.update(range(begin, end))
    assert covered == set(range(1000))
    assert w.bounds["train"][1] == w.bounds["val"][0] and w.bounds["val"][1] == w.bounds["test"][0]


def test_scaling_uses_the_training_part_only():
    raw = series(1000)
    w = make_windows(raw, lookback=10)
    end = w.bounds["train"][1]
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
