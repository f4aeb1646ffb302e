"""Sequential digits: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes, a file
shipped inside scikit-learn: no download) read as a sequence, then classified.

    read=pixel  64 steps of 1 value   (row-major pixel order; ``permute``: one fixed random
    read=row     8 steps of 8 values   permutation of the 64 pixels, drawn from ``seed``)

Pixel intensities 0..16 are scaled to [0, 1]. Chance accuracy is 10%; the baseline loss is the
cross-entropy of the uniform guess, ln 10.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

from rnnlab.data.sequences import Sequences
from rnnlab.data.series import DataError, Task


def digits(
    read: Literal["pixel", "row"] = "pixel", permute: bool = False, seed: int = 0,
    val_fraction: float = 0.15, test_fraction: float = 0.15,
) -> Sequences:
    """The split is random (by ``seed``), the same for every model and for ``permute``."""
    from sklearn.datasets import load_digits  # here: a 1 s import only this dataset needs

    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: each must be > 0 and their sum < 1")
    images, labels = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    pixels = (images / 16.0).astype(np.float32)
    if permute:
        pixels = pixels[:, permutation(seed)]
    x = pixels.reshape(len(labels), 64, 1) if read == "pixel" else pixels.reshape(len(labels), 8, 8)
    n_test, n_val = int(len(labels) * test_fraction), int(len(labels) * val_fraction)
    sizes = (len(labels) - n_val - n_test, n_val, n_test)
    task = Task("classification", many_to_many=False, n_outputs=10)
    y = labels.astype(np.int64)
    return Sequences.split(x[order], y[order], task, sizes, lambda y: math.log(10))


def permutation(seed: int) -> np.ndarray:
    """The fixed pixel order of the permuted variant: the same for a given seed, always."""
    return np.random.default_rng([seed, 64]).permutation(64)
