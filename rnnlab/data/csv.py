"""The user's own series from a CSV file: a time column, feature columns, a target column.

Every cell is read as text and converted by rnnlab, not guessed by pandas: pandas would turn
"inf", "1e400" and "N/A" into numbers or NaN without a word. Anything that is not a finite
number, and any time stamp out of order, is rejected with its line, column and value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnlab.data.series import DataError, Series


def load_csv(path: str = "", time_column: str = "time", target: str = "", features: list[str] | None = None) -> Series:
    """Rows are time steps; ``features`` default to every column but the time column."""
    import pandas as pd  # here: a 0.3 s import that only CSV runs need

    path = Path(path)
    name = f"data.path={str(path)!r}"
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: the file is empty")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{name}: not a readable CSV ({' '.join(str(e).split())})") from None
    if len(table) == 0:
        raise DataError(f"{name}: a header but no rows")

    columns = list(table.columns)
    listed = ", ".join(columns)
    for key, column in [("data.time_column", time_column), ("data.target", target)]:
        if column not in columns:
            raise DataError(f"{key}={column!r} is not a column of {path.name} (columns: {listed})")
    if features is None:
        features = [c for c in columns if c != time_column]
    for column in features:
        if column not in columns:
            raise DataError(f"data.features: {column!r} is not a column of {path.name} (columns: {listed})")
    features = [target] + [c for c in features if c != target]  # the target is always an input

    values = np.empty((len(table), len(features)), dtype=np.float32)
    for j, column in enumerate(features):
        text = table[column]
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers) | ~np.isfinite(numbers.astype(np.float32))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{path.name} line {row + 2}, column {column!r}: {text.iloc[row]!r} is not a finite number"
            )
        values[:, j] = numbers

    time = pd.to_datetime(table[time_column], errors="coerce", format="ISO8601")
    if time.isna().any():
        row = int(np.argmax(time.isna().to_numpy()))
        raise DataError(
            f"{path.name} line {row + 2}, column {time_column!r}: "
            f"{table[time_column].iloc[row]!r} is not a date/time (ISO 8601 expected)"
        )
    time = time.to_numpy()
    step = np.diff(time)
    if (step <= np.timedelta64(0)).any():
        row = int(np.argmax(step <= np.timedelta64(0))) + 1
        what = "duplicate" if step[row - 1] == np.timedelta64(0) else "out of order"
        raise DataError(
            f"{path.name} line {row + 2}, column {time_column!r}: time stamp "
            f"{table[time_column].iloc[row]!r} is {what} (rows must be strictly increasing in time)"
        )
    return Series(values=values, columns=features, target=0, time=time)
