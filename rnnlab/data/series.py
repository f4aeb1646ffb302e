"""A loaded time series, before splitting and scaling."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row, column and value."""


@dataclass
class Series:
    values: np.ndarray  # (N, F) float32, finite, one row per time step
    columns: list[str]  # F names
    target: int  # the column forecast (it is also an input: persistence needs it)
    time: np.ndarray | None = None  # (N,) datetime64, strictly increasing
