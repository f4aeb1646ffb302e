"""Datasets and windows: load a series, split it chronologically, scale, cut windows.

    series:  |======== train ========|== val ==|== test ==|     (chronological, no overlap)
    windows:  each lies wholly inside one part, inputs and target alike
    panel:   every series of the panel is split this way on its own

Scaling statistics come from the training parts only. Batches are gathered by the Numba kernel
in ``windows`` into buffers allocated once per pass, as torch tensors that share that memory.

``DATASETS`` maps a name (``data=<name>``) to its loader; a loader's typed keyword arguments
are that dataset's options. A loader that returns a ``Series`` is a forecasting dataset, cut
into windows by ``make_windows`` (the window keys data.lookback, data.horizon, ... apply);
the sequence tasks return their ready ``Sequences`` or ``Stream``. Each declares its ``Task``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.data.adding import adding, adding_hs
from rnnlab.data.copy_memory import copy_memory
from rnnlab.data.csv import load_csv
from rnnlab.data.digits import digits
from rnnlab.data.dynamics import lorenz, mackey_glass, sine
from rnnlab.data.jena import load_jena
from rnnlab.data.sequences import Sequences, Stream, buffer
from rnnlab.data.series import FORECAST, DataError, Series, Task
from rnnlab.data.shipped import load_co2, load_sunspots
from rnnlab.data.text import char_lm
from rnnlab.data.weather import generate_weather
from rnnlab.data.windows import gather, window_starts

__all__ = [
    "DATASETS", "DataError", "Sequences", "Series", "Stream", "Task", "Windows", "generate_weather",
    "load_csv", "make_windows",
]

DATASETS = {
    "weather": generate_weather,
    "csv": load_csv,
    "jena": load_jena,
    "co2": load_co2,
    "sunspots": load_sunspots,
    "sine": sine,
    "mackey_glass": mackey_glass,
    "lorenz": lorenz,
    "adding": adding,
    "adding_hs": adding_hs,
    "copy": copy_memory,
    "digits": digits,
    "char_lm": char_lm,
}

SPLITS = ("train", "val", "test")


@dataclass
class Windows:
    """Scaled series plus the window starts of each split (absolute indices into ``values``)."""

    values: np.ndarray  # (N, F) float32, scaled with the training parts' statistics
    target: np.ndarray  # (N,) float32: the scaled target column
    columns: list[str]
    lookback: int
    horizon: int
    season: int
    starts: dict[str, np.ndarray]  # split -> (n_windows,) int64
    bounds: dict[str, np.ndarray]  # split -> (S, 2): [begin, end) of its part of each series
    offsets: np.ndarray  # (S + 1,) where each series begins in ``values`` (and where the last ends)
    mean: np.ndarray  # (F,) training-part statistics, to undo the scaling
    std: np.ndarray
    time: np.ndarray | None = None
    task: Task = FORECAST

    @property
    def n_features(self) -> int:
        return self.values.shape[1]

    def n_batches(self, split: str, batch_size: int) -> int:
        return math.ceil(len(self.starts[split]) / batch_size)

    def batches(
        self, split: str, batch_size: int, rng: np.random.Generator | None = None, pin: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (B, L, F), y (B, 1)) batches; shuffled when ``rng`` is given.

        The tensors are views of one buffer refilled for every batch (page-locked when ``pin``,
        for fast copies to a GPU): use each before asking for the next (the training loop does).
        """
        starts = self.starts[split]
        if rng is not None:
            starts = starts[rng.permutation(len(starts))]
        n = min(batch_size, len(starts))
        x_t, x = buffer((n, self.lookback, self.n_features), torch.float32, pin)
        y_t, y = buffer((n,), torch.float32, pin)
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            m = len(chunk)
            gather(self.values, self.target, chunk, self.lookback, self.horizon, x[:m], y[:m])
            yield x_t[:m], y_t[:m, None]

    def targets(self, split: str) -> np.ndarray:
        """The scaled targets of a split's windows, in window order."""
        return self.target[self.starts[split] + self.lookback - 1 + self.horizon]

    def baselines(self, split: str) -> dict[str, np.ndarray]:
        """Predictions of the two naive forecasts on a split's windows (scaled units).

        persistence: the last observed target; seasonal: the target one season (e.g. 24 h)
        before the forecast time, from as many seasons back as the horizon needs (never from
        before the window's own series began).
        """
        last = self.starts[split] + self.lookback - 1
        back = self.season * math.ceil(self.horizon / self.season)
        first = self.offsets[np.searchsorted(self.offsets, last, side="right") - 1]
        return {
            "persistence": self.target[last],
            "seasonal": self.target[np.maximum(last + self.horizon - back, first)],
        }

    def baseline_loss(self, split: str) -> float:
        """The trivial forecast's MSE: persistence."""
        return float(np.mean((self.baselines(split)["persistence"] - self.targets(split)) ** 2))

    def unscale(self, y: np.ndarray) -> np.ndarray:
        """Scaled target values -> the target's own units."""
        return y * self.std[0] + self.mean[0]


def make_windows(
    series: Series,
    lookback: int,
    horizon: int = 1,
    stride: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    season: int = 24,
) -> Windows:
    """Split each series chronologically, scale with training statistics, list each split's windows."""
    lengths = series.lengths if series.lengths is not None else np.array([len(series.values)], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_test = (lengths * test_fraction).astype(np.int64)
    n_val = (lengths * val_fraction).astype(np.int64)
    cuts = [offsets[:-1], offsets[1:] - n_val - n_test, offsets[1:] - n_test, offsets[1:]]
    bounds = {split: np.stack([cuts[i], cuts[i + 1]], axis=1) for i, split in enumerate(SPLITS)}
    starts = {}
    for split, parts in bounds.items():
        starts[split] = window_starts(parts[:, 0], parts[:, 1], lookback, horizon, stride)
        short = np.flatnonzero(parts[:, 1] - parts[:, 0] < lookback + horizon)
        if len(short):
            s = short[0]
            which = f"series {series.ids[s]!r} ({lengths[s]} steps): its" if series.ids else "the"
            raise DataError(
                f"data: {which} {split} part has {parts[s, 1] - parts[s, 0]} steps, shorter than one window "
                f"(data.lookback + data.horizon = {lookback + horizon}); use a longer series or a shorter window"
            )
    # Put the target first so that column 0 is always the target.
    order = [series.target] + [j for j in range(series.values.shape[1]) if j != series.target]
    values = series.values[:, order]
    columns = [series.columns[j] for j in order]
    train = np.concatenate([values[b:e] for b, e in bounds["train"]])
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0  # a constant feature stays constant (0) rather than dividing by zero
    scaled = ((values - mean) / std).astype(np.float32)
    return Windows(
        values=np.ascontiguousarray(scaled),
        target=np.ascontiguousarray(scaled[:, 0]),
        columns=columns,
        lookback=lookback,
        horizon=horizon,
        season=season,
        starts=starts,
        bounds=bounds,
        offsets=offsets,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        time=series.time,
    )
