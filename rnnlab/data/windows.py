"""Window kernels: the only module that imports Numba.

A window starting at s reads inputs values[s : s + lookback] and the target
target[s + lookback - 1 + horizon]:

    values  ... | s | s+1 | ... | s+L-1 | ... | s+L-1+h | ...
                |<---- lookback L ---->|        ^ target (h steps after the last input)

Kernels fill caller-owned, preallocated buffers, so a batch costs O(batch x lookback) memory
and nothing is allocated per step. Each kernel has a NumPy reference it is tested against.
``cache=True``: the compiled kernel is kept on disk, so later processes skip the compile
(Numba falls back to a per-user cache directory where the package directory is read-only).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def gather(
    values: np.ndarray,  # (N, F) float32
    target: np.ndarray,  # (N,) float32
    starts: np.ndarray,  # (B,) int64 window starts
    lookback: int,
    horizon: int,
    out_x: np.ndarray,  # (B, lookback, F) float32, filled in place
    out_y: np.ndarray,  # (B,) float32, filled in place
) -> None:
    for b in range(starts.shape[0]):
        s = starts[b]
        out_x[b] = values[s : s + lookback]
        out_y[b] = target[s + lookback - 1 + horizon]


def gather_reference(
    values: np.ndarray, target: np.ndarray, starts: np.ndarray, lookback: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy fancy indexing: the obvious, allocating version of ``gather``."""
    rows = starts[:, None] + np.arange(lookback)[None, :]  # (B, L)
    return values[rows], target[starts + lookback - 1 + horizon]


def window_starts(begin: int, end: int, lookback: int, horizon: int, stride: int) -> np.ndarray:
    """Starts of every window whose inputs and target lie in [begin, end)."""
    last = end - lookback - horizon  # the last start whose target index is end - 1
    return np.arange(begin, last + 1, stride, dtype=np.int64)
