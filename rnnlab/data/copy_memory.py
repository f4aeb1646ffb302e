"""The copy memory task (Arjovsky et al. 2016): remember 10 symbols across a delay of T steps.

    input   s1 s2 ... s10 | _ _ ... _ | :  | _ _ ... _        T + 20 steps
    target  _  _  ...  _  | _ _ ... _ | _  | s1 s2 ... s10
            10 symbols      T-1 blanks  delimiter  10 blanks

Symbols are drawn from 8 categories (ids 1..8); 0 is the blank, 9 the delimiter. Inputs are
one-hot (10 channels); the target at every step is a class (many-to-many). A memoryless model
outputs blanks until the delimiter and then guesses uniformly over the 8 symbols: its
cross-entropy averaged over the T + 20 steps is 10 ln 8 / (T + 20), the baseline. Its
accuracy is high: the T + 10 blanks are right, and any guess of a symbol on the 10 recall
steps is right 1/8 of the time, (T + 10 + 10/8) / (T + 20) in all (0.927 at T = 100), so an
accuracy of 92.6% at T = 100 is no memory at all.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from rnnlab.data.sequences import Sequences, check_generated
from rnnlab.data.series import Task

BLANK, DELIMITER, SYMBOLS, RECALL = 0, 9, 8, 10


def copy_examples(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copy sequences with delay ``length``: x (n, T + 20, 10) one-hot, y (n, T + 20) classes."""
    steps = length + 2 * RECALL
    symbols = rng.integers(1, SYMBOLS + 1, (n, RECALL))
    tokens = np.full((n, steps), BLANK, dtype=np.int64)
    tokens[:, :RECALL] = symbols
    tokens[:, RECALL + length - 1] = DELIMITER
    y = np.full((n, steps), BLANK, dtype=np.int64)
    y[:, -RECALL:] = symbols
    return np.eye(DELIMITER + 1, dtype=np.float32)[tokens], y


def copy_memory(
    length: int = 100, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000, seed: int = 0, fresh: bool = False,
) -> Sequences:
    """``length`` is the delay T: the steps between the last symbol and the first recall.
    ``fresh``: training batches drawn anew at every step (Sequences.generate)."""
    check_generated(length, 1, "", {"n_train": n_train, "n_val": n_val, "n_test": n_test})
    task = Task("classification", many_to_many=True, n_outputs=DELIMITER + 1)
    steps = length + 2 * RECALL
    baseline = RECALL * math.log(SYMBOLS) / steps
    data = Sequences.generate(functools.partial(copy_examples, length=length), task, (n_train, n_val, n_test), seed,
                              lambda y: baseline, fresh)
    data.baseline_accuracy = (steps - RECALL + RECALL / SYMBOLS) / steps  # blanks right, 1 in 8 symbols
    return data
