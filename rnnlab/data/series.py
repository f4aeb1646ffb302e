"""What every dataset shares: the bad-input error, a loaded series, and the task it poses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row, column and value."""


@dataclass
class Series:
    """A time series (or a panel of them) to forecast, before splitting and scaling.

    A panel stores its series one after another: ``lengths`` gives each one's number of steps
    and ``ids`` its name; windows never cross from one series into the next."""

    values: np.ndarray  # (N, F) float32, finite, one row per time step
    columns: list[str]  # F names
    target: int  # the column forecast (it is also an input: persistence needs it)
    time: np.ndarray | None = None  # (N,) datetime64, strictly increasing within each series
    lengths: np.ndarray | None = None  # (S,) int64 steps per series; None: one series
    ids: list[str] | None = None  # (S,) series names, for error messages


@dataclass(frozen=True)
class Task:
    """What a dataset asks of a model; the head, the loss, the metrics and the baseline follow.

        regression      MSE; a linear head of n_outputs values
        classification  cross-entropy over n_outputs classes; accuracy
        many_to_many    an output at every step (else at the last step only)
        stateful_stream consecutive batches continue the same B streams: the state is carried
                        from batch to batch (truncated BPTT) and reset when the streams end
        tolerance       a regression prediction is wrong when |error| >= tolerance (counted)
    """

    kind: Literal["regression", "classification"]
    many_to_many: bool
    n_outputs: int
    stateful_stream: bool = False
    tolerance: float | None = None


FORECAST = Task("regression", many_to_many=False, n_outputs=1)
