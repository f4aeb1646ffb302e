"""The user's own series from a CSV or Parquet file: a time column, feature columns, a target
column, and for a panel an id column (many series, each its own rows, of any lengths).

Every cell is read as text and converted by rnnlab, not guessed by pandas: pandas would turn
"inf", "1e400" and "N/A" into numbers or NaN without a word (Parquet cells, already typed, are
written as text first and go the same way). Anything that is not a finite number, and any time
stamp out of order within its series, is rejected with its line, column and value, unless the
user chose ``missing=ffill``: then empty and NaN-like cells and infinities take the last value
before them in the same series.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from rnnlab.console import size_text
from rnnlab.data.series import DataError, Series

# Cells that mean "no value" (ffill fills them, with infinities); other text is always an error.
MISSING = {"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None", "NaT", "<NA>"}


def load_csv(
    path: str = "",
    time_column: str = "time",
    target: str = "",
    features: list[str] | None = None,
    id_column: str | None = None,
    missing: Literal["error", "ffill"] = "error",
    max_mb: float = 2048.0,
) -> Series:
    """Rows are time steps; ``features`` default to every column but the time and id columns.

    A ``.parquet`` file is read as Parquet, anything else as UTF-8 CSV. A file larger than
    ``max_mb`` is refused before it is read (it would be held in memory as text)."""
    table, where = read_table(path, max_mb)
    return table_to_series(table, where, time_column, target, features, id_column, missing)


def _last_line_fields(file: Path) -> int:
    """Fields on the file's last non-empty line (a writer killed mid-line leaves it short),
    read from the end in growing blocks until the line is whole (a line may be wider than any
    fixed block: 8,000 columns make 72 KB lines)."""
    import csv

    size, block = file.stat().st_size, 65536
    with open(file, "rb") as f:
        while True:
            start = max(size - block, 0)
            f.seek(start)
            lines = [line for line in f.read().splitlines() if line.strip()]
            if start == 0 or len(lines) >= 2:  # the last line began after this block's start
                break
            block *= 4
    return len(next(csv.reader([lines[-1].decode("utf-8", errors="replace")]))) if lines else 0


def _header_duplicates(file: Path) -> list[str]:
    """Column names the header line repeats (pandas would rename the second 'load' to 'load.1'
    and train on it as a feature of its own)."""
    import csv
    from collections import Counter

    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f), [])
    return [name for name, n in Counter(header).items() if n > 1]


def read_table(path: str, max_mb: float = 2048.0) -> tuple[object, Callable[[int | None], str]]:
    """The file as a table of text cells, and ``where``: how an error names the file
    (``where(None)``) or a row (``where(row)``, the row's index label)."""
    import pandas as pd  # here: a 0.3 s import that only file-backed runs need

    file = Path(path)
    name = f"data.path={str(file)!r}"
    if max_mb <= 0:
        raise DataError(f"data.max_mb={max_mb:g} is out of range (allowed: > 0)")
    if file.is_dir():
        raise DataError(f"{name} is a folder (allowed: a .csv or .parquet file)")
    if not file.is_file():
        raise DataError(f"{name}: no such file")
    size = file.stat().st_size
    if size == 0:
        raise DataError(f"{name}: the file is empty")
    if size > max_mb * 2**20:
        raise DataError(f"{name}: the file is {size_text(size)}, larger than data.max_mb={max_mb:g} ({size_text(max_mb * 2**20)})")
    if file.suffix.lower() in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(file)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{name}: not a readable Parquet file ({' '.join(str(e).split())})") from None
        table = table.reset_index(drop=True).astype(object).map(str)  # NaN -> "nan", None -> "None"
        unit, first = "row", 1
    else:
        try:
            table = pd.read_csv(file, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{name}: not a readable CSV ({' '.join(str(e).split())})") from None
        unit, first = "line", 2  # the header is line 1
        if not isinstance(table.index, pd.RangeIndex):  # pandas made the first row's extra field(s) an index
            raise DataError(f"{file.name} line 2: more fields than the header's {table.shape[1]} "
                            "(allowed: one field per header column)")
        repeated = _header_duplicates(file)
        if repeated:
            raise DataError(f"{file.name} line 1: column {repeated[0]!r} appears more than once in the header "
                            "(allowed: distinct column names)")
        fields = _last_line_fields(file)  # pandas pads a short line with "": look at the text
        if fields < table.shape[1]:
            raise DataError(f"{file.name} line {len(table) + 1}: {fields} field(s), the header has "
                            f"{table.shape[1]} (a truncated line?)")
    if len(table) == 0:
        raise DataError(f"{name}: a header but no rows")
    return table, lambda row: file.name if row is None else f"{file.name} {unit} {row + first}"


def table_to_series(
    table, where: Callable[[int | None], str], time_column: str, target: str, features: list[str] | None,
    id_column: str | None, missing: str, time_format: str = "ISO8601",
) -> Series:
    """Check and convert a table of text cells. ``where`` takes the row's index label."""
    import pandas as pd

    features = _inputs(list(table.columns), where(None), time_column, target, features, id_column)
    # A panel: rows grouped by series (in order of first appearance), file order kept within.
    codes, ids = pd.factorize(table[id_column]) if id_column else (np.zeros(len(table), np.int64), ["all"])
    table = table.iloc[np.argsort(codes, kind="stable")]
    lengths = np.bincount(codes, minlength=len(ids)).astype(np.int64)
    first = np.zeros(len(table), bool)
    first[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True  # each series' first row

    values = np.empty((len(table), len(features)), dtype=np.float32)
    for j, column in enumerate(features):
        values[:, j] = _numbers(table, column, where, missing, first)
    time = _times(table, where, time_column, time_format, first, per_series=id_column is not None)
    panel = id_column is not None
    return Series(values=values, columns=features, target=0, time=time,
                  lengths=lengths if panel else None, ids=[str(i) for i in ids] if panel else None)


def _inputs(columns: list[str], file: str, time_column: str, target: str, features: list[str] | None,
            id_column: str | None) -> list[str]:
    """The input columns, the target first; every named column must exist."""
    listed = ", ".join(map(str, columns))
    for key, column in [("data.time_column", time_column), ("data.target", target), ("data.id_column", id_column)]:
        if column is not None and column not in columns:
            raise DataError(f"{key}={column!r} is not a column of {file} (columns: {listed})")
    if features is None:
        features = [c for c in columns if c not in (time_column, id_column)]
    for column in features:
        if column not in columns:
            raise DataError(f"data.features: {column!r} is not a column of {file} (columns: {listed})")
    return [target] + [c for c in features if c != target]  # the target is always an input


def _times(table, where: Callable[[int | None], str], column: str, time_format: str, first: np.ndarray,
           per_series: bool) -> np.ndarray:
    """The time column as datetime64, strictly increasing (within each series of a panel)."""
    import pandas as pd

    text = table[column]
    try:
        time = pd.to_datetime(text, errors="coerce", format=time_format)
    except ValueError as e:  # pandas refuses a column of mixed UTC offsets outright
        raise DataError(_mixed_offsets(text, where, column) or f"{where(None)}, column {column!r}: "
                        f"{' '.join(str(e).split())}") from None
    if time.isna().any():
        row = int(np.argmax(time.isna().to_numpy()))
        raise DataError(f"{where(table.index[row])}, column {column!r}: {text.iloc[row]!r} is not a date/time ({time_format} expected)")
    time = time.to_numpy()
    step = np.diff(time)
    bad = (step <= np.timedelta64(0)) & ~first[1:]  # across a series boundary time may restart
    if bad.any():
        row = int(np.argmax(bad)) + 1
        what = "duplicate" if step[row - 1] == np.timedelta64(0) else "out of order"
        raise DataError(
            f"{where(table.index[row])}, column {column!r}: time stamp {text.iloc[row]!r} is {what} "
            "(rows must be strictly increasing in time" + (" within each series)" if per_series else ")")
        )
    return time


def _mixed_offsets(text, where: Callable[[int | None], str], column: str) -> str | None:
    """The first row whose UTC offset differs from the first row's, as an error line; None if
    the offsets agree (the error was something else)."""
    import re

    offsets = [m.group(0) if (m := re.search(r"(Z|[+-]\d\d(:?\d\d)?)$", str(t).strip())) else "" for t in text]
    for row, offset in enumerate(offsets):
        if offset != offsets[0]:
            return (f"{where(text.index[row])}, column {column!r}: {text.iloc[row]!r} has UTC offset "
                    f"{offset or 'none'} but {where(text.index[0])} has {offsets[0] or 'none'} (allowed: one offset "
                    "for every time stamp, or none)")
    return None


def _numbers(table, column: str, where: Callable[[int | None], str], missing: str, first: np.ndarray) -> np.ndarray:
    """One column as finite float32; with ``missing=ffill``, gaps take the last value before them."""
    import pandas as pd

    text = table[column]
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | ~np.isfinite(numbers.astype(np.float32))
    if missing == "ffill":
        gap = bad & (text.isin(MISSING).to_numpy() | np.isinf(numbers))
        if (gap & first).any():
            row = int(np.argmax(gap & first))
            raise DataError(
                f"{where(table.index[row])}, column {column!r}: {text.iloc[row]!r} is missing and is the "
                "first value of its series (data.missing=ffill has nothing earlier to fill it with)"
            )
        bad &= ~gap
        numbers = pd.Series(np.where(gap, np.nan, numbers)).ffill().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where(table.index[row])}, column {column!r}: {text.iloc[row]!r} is not a finite number")
    return numbers
