"""The adding problem in its two classic forms (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    step      1     2    ...   a   ...   b   ...   T
    value    0.31  0.92  ...  0.47 ...  0.18 ...  0.66      channel 0
    marker   0     0     ...   1   ...   1   ...   0        channel 1: exactly two ones
    target   a function of the two marked values, read after the last step (many-to-one)

Le et al. 2015: values U[0, 1], one marker in each half, target X_a + X_b; always predicting
1 gives MSE 1/6 = 0.167. Hochreiter & Schmidhuber 1997 (Exp. 4): values U[-1, 1], the first
marker among the first 10 steps, the second anywhere else in the first half, target
0.5 + (X_a + X_b)/4, and a prediction counts as correct when |error| < 0.04.
"""
from __future__ import annotations

import functools

import numpy as np

from rnnlab.data.sequences import Sequences, check_generated
from rnnlab.data.series import Task


def _marked(values: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, T, 2) with markers at ``first`` and ``second``, and X_a + X_b (N,)."""
    n = np.arange(len(values))
    markers = np.zeros_like(values)
    markers[n, first] = 1.0
    markers[n, second] = 1.0
    return np.stack([values, markers], axis=2), values[n, first] + values[n, second]


def le_examples(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of Le et al.'s problem: x (n, T, 2), y (n, 1) = X_a + X_b."""
    values = rng.uniform(0.0, 1.0, (n, length)).astype(np.float32)
    half = length // 2
    x, total = _marked(values, rng.integers(0, half, n), rng.integers(half, length, n))
    return x, total[:, None]


def hs_examples(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of Hochreiter & Schmidhuber's: x (n, T, 2), y (n, 1) = 0.5 + (X_a + X_b)/4."""
    values = rng.uniform(-1.0, 1.0, (n, length)).astype(np.float32)
    first = rng.integers(0, 10, n)
    second = rng.integers(0, length // 2 - 1, n)
    second += second >= first  # any other step of the first half
    x, total = _marked(values, first, second)
    return x, (0.5 + total / 4).astype(np.float32)[:, None]


def adding(
    length: int = 100, n_train: int = 10000, n_val: int = 1000, n_test: int = 2560, seed: int = 0, fresh: bool = False,
) -> Sequences:
    """Le et al. 2015's adding problem; ``length`` is T. ``fresh``: training batches drawn anew
    at every step (Sequences.generate)."""
    check_generated(length, 2, ", one marker in each half", {"n_train": n_train, "n_val": n_val, "n_test": n_test})
    task = Task("regression", many_to_many=False, n_outputs=1)
    return Sequences.generate(functools.partial(le_examples, length=length), task, (n_train, n_val, n_test), seed,
                              lambda y: np.mean((y - 1.0) ** 2), fresh)


def adding_hs(
    length: int = 100, n_train: int = 10000, n_val: int = 1000, n_test: int = 2560, seed: int = 0, fresh: bool = False,
) -> Sequences:
    """Hochreiter & Schmidhuber 1997's adding problem; ``length`` is T. The trivial baseline
    predicts the target's mean, 0.5 (MSE (2/3)/16 = 0.042)."""
    why = ", the first marker is among the first 10 steps of the first half"
    check_generated(length, 20, why, {"n_train": n_train, "n_val": n_val, "n_test": n_test})
    task = Task("regression", many_to_many=False, n_outputs=1, tolerance=0.04)
    return Sequences.generate(functools.partial(hs_examples, length=length), task, (n_train, n_val, n_test), seed,
                              lambda y: np.mean((y - 0.5) ** 2), fresh)
