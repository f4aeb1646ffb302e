"""Datasets and windows: load a series, split it chronologically, scale, cut windows.

    series:  |======== train ========|== val ==|== test ==|     (chronological, no overlap)
    windows:  each lies wholly inside one part, inputs and target alike

Scaling statistics come from the training part only. Batches are gathered by the Numba kernel
in ``windows`` into buffers allocated once per pass, as torch tensors that share that memory.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.data.csv import load_csv
from rnnlab.data.series import DataError, Series
from rnnlab.data.weather import generate_weather
from rnnlab.data.windows import gather, window_starts

__all__ = ["DATASETS", "DataError", "Series", "Windows", "generate_weather", "load_csv", "make_windows"]

# Dataset name -> loader. A loader's typed keyword arguments are that dataset's options
# (conf/data/<name>.yaml), checked by rnnlab.config.validate.
DATASETS = {"weather": generate_weather, "csv": load_csv}

SPLITS = ("train", "val", "test")


@dataclass
class Windows:
    """Scaled series plus the window starts of each split (absolute indices into ``values``)."""

    values: np.ndarray  # (N, F) float32, scaled with the training part's statistics
    target: np.ndarray  # (N,) float32: the scaled target column
    columns: list[str]
    lookback: int
    horizon: int
    season: int
    starts: dict[str, np.ndarray]  # split -> (n_windows,) int64
    bounds: dict[str, tuple[int, int]]  # split -> [begin, end) of its part of the series
    mean: np.ndarray  # (F,) training-part statistics, to undo the scaling
    std: np.ndarray
    time: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return self.values.shape[1]

    def batches(
        self, split: str, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (B, L, F), y (B, 1)) batches; shuffled when ``rng`` is given.

        The tensors are views of one buffer refilled for every batch: use each before asking
        for the next (the training loop does).
        """
        starts = self.starts[split]
        if rng is not None:
            starts = starts[rng.permutation(len(starts))]
        n = min(batch_size, len(starts))
        x = np.empty((n, self.lookback, self.n_features), dtype=np.float32)
        y = np.empty(n, dtype=np.float32)
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
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
        before the forecast time, from as many seasons back as the horizon needs.
        """
        last = self.starts[split] + self.lookback - 1
        back = self.season * math.ceil(self.horizon / self.season)
        return {
            "persistence": self.target[last],
            "seasonal": self.target[np.maximum(last + self.horizon - back, 0)],
        }

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
    """Split chronologically, scale with training statistics, and list each split's windows."""
    n = len(series.values)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
    starts = {}
    for split, (begin, end) in bounds.items():
        starts[split] = window_starts(begin, end, lookback, horizon, stride)
        if len(starts[split]) == 0:
            raise DataError(
                f"data: the {split} part has {end - begin} steps, shorter than one window "
                f"(data.lookback + data.horizon = {lookback + horizon}); use a longer series or a shorter window"
            )
    # Put the target first so that column 0 is always the target.
    order = [series.target] + [j for j in range(series.values.shape[1]) if j != series.target]
    values = series.values[:, order]
    columns = [series.columns[j] for j in order]
    train = values[: bounds["train"][1]]
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
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        time=series.time,
    )
