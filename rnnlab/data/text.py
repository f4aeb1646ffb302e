"""A character-level language model over the user's own UTF-8 text file (many-to-many: the
next character at every step; cross-entropy, reported in bits per character).

The text is split chronologically (train | val | test) and each part is read as a stream in
chunks of ``length`` characters with the state carried across chunks (``Stream``). The
vocabulary is every character of the file, so val and test hold no unknown character.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnlab.data.sequences import SPLITS, Stream
from rnnlab.data.series import DataError


def char_lm(path: str = "", length: int = 100, val_fraction: float = 0.05, test_fraction: float = 0.05) -> Stream:
    """``length``: characters per chunk, the truncated-BPTT length."""
    file = Path(path)
    name = f"data.path={str(file)!r}"
    if length < 1:
        raise DataError(f"data.length={length} is out of range (allowed: >= 1)")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: each must be > 0 and their sum < 1")
    if not file.is_file():
        raise DataError(f"{name}: no such file")
    raw = file.read_bytes()
    if not raw:
        raise DataError(f"{name}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}: not UTF-8 text (line {line}, byte {e.start}: {raw[e.start:e.start + 1]!r}, {e.reason})") from None
    vocab = sorted(set(text))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    tokens = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    n_test, n_val = int(len(tokens) * test_fraction), int(len(tokens) * val_fraction)
    cuts = [0, len(tokens) - n_val - n_test, len(tokens) - n_test, len(tokens)]
    parts = {split: tokens[cuts[i] : cuts[i + 1]] for i, split in enumerate(SPLITS)}
    for split, part in parts.items():
        if len(part) < length + 1:
            raise DataError(
                f"{name}: its {split} part has {len(part)} characters, fewer than one chunk "
                f"(data.length + 1 = {length + 1}); use a longer text or a shorter data.length"
            )
    return Stream(parts, vocab, length)
