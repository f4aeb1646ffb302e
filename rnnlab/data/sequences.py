"""Containers for the sequence tasks: independent examples (``Sequences``) and one long
token sequence read as B parallel streams (``Stream``, truncated BPTT across batches)."""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rnnlab.data.series import DataError, Task
from rnnlab.data.windows import batchify, stream_chunk

SPLITS = ("train", "val", "test")


def buffer(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> tuple[torch.Tensor, np.ndarray]:
    """A batch buffer allocated once, as a tensor and a NumPy view of the same memory.

    Page-locked (``pin``) when batches go to a GPU: the host-to-device copy then runs at full
    speed without a staging copy."""
    t = torch.empty(shape, dtype=dtype, pin_memory=pin)
    return t, t.numpy()


# A generated task's examples: draw(rng, n) -> (x (n, T, F), y (n, ...)), all from ``rng``.
Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split of a generated task: its own stream, from data.seed and the
    split's name (crc32, the same on every machine and Python), so that no split depends on
    another's size: the test set of n_train = 10k is the test set of n_train = 50k."""
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


@dataclass
class Sequences:
    """Examples that are each a whole sequence: x (T, F) and its target, split by index: the
    first n_train, the next n_val and the last n_test examples.

    A generated task (``generate``) may also draw its training batches anew at every step
    (``draw``): an endless stream of training data, as Li et al. 2018 train on the adding
    problem, with the fixed val and test sets to measure on."""

    x: np.ndarray  # (N, T, F) float32
    y: np.ndarray  # (N, 1) float32 regression; (N,) int64 class; (N, T) int64 class per step
    task: Task
    parts: dict[str, slice]
    baselines: dict[str, float]  # split -> the trivial predictor's loss (the task's loss)
    draw: Draw | None = None  # fresh training batches: what a shuffled pass over train yields instead
    baseline_accuracy: float | None = None  # the trivial predictor's accuracy, where it is not chance (copy)

    @classmethod
    def split(
        cls, x: np.ndarray, y: np.ndarray, task: Task, sizes: tuple[int, int, int],
        trivial: Callable[[np.ndarray], float],
    ) -> Sequences:
        """``trivial(y_part)``: the task's trivial baseline loss on a part's targets."""
        ends = np.cumsum(sizes)
        parts = {s: slice(e - n, e) for s, n, e in zip(SPLITS, sizes, ends)}
        return cls(x, y, task, parts, {s: float(trivial(y[p])) for s, p in parts.items()})

    @classmethod
    def generate(
        cls, draw: Draw, task: Task, sizes: tuple[int, int, int], seed: int,
        trivial: Callable[[np.ndarray], float], fresh: bool = False,
    ) -> Sequences:
        """A generated task: each split drawn from its own generator (``split_rng``). With
        ``fresh``, a shuffled pass over the training split (``batches`` with an ``rng``, as
        training asks for it) yields new examples drawn from that ``rng`` instead: one
        training batch per step, never seen before, as many batches as a pass has, and as
        reproducible (and resumable) as the batch order, since they come from the generator
        the run seeds and checkpoints."""
        drawn = [draw(split_rng(seed, split), n) for split, n in zip(SPLITS, sizes)]
        x = np.concatenate([x for x, _ in drawn])
        y = np.concatenate([y for _, y in drawn])
        data = cls.split(x, y, task, sizes, trivial)
        data.draw = draw if fresh else None
        return data

    @property
    def n_features(self) -> int:
        return self.x.shape[2]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    def n_batches(self, split: str, batch_size: int) -> int:
        part = self.parts[split]
        return math.ceil((part.stop - part.start) / batch_size)

    def batches(
        self, split: str, batch_size: int, rng: np.random.Generator | None = None, pin: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (B, T, F), y) batches, views of buffers refilled per batch; shuffled by
        ``rng``, or, for training with ``draw`` (fresh data), drawn from it."""
        if split == "train" and rng is not None and self.draw is not None:
            yield from self._fresh(batch_size, rng, pin)
            return
        part = self.parts[split]
        index = np.arange(part.start, part.stop)
        if rng is not None:
            index = index[rng.permutation(len(index))]
        n = min(batch_size, len(index))
        x_t, x = buffer((n, *self.x.shape[1:]), torch.float32, pin)
        y_t, y = buffer((n, *self.y.shape[1:]), torch.from_numpy(self.y[:0]).dtype, pin)
        for i in range(0, len(index), batch_size):
            rows = index[i : i + batch_size]
            m = len(rows)
            np.take(self.x, rows, axis=0, out=x[:m])  # whole examples: one contiguous copy each
            np.take(self.y, rows, axis=0, out=y[:m])
            yield x_t[:m], y_t[:m]

    def _fresh(self, batch_size: int, rng: np.random.Generator, pin: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A pass of new training examples: the batch sizes of a pass over the training split."""
        part = self.parts["train"]
        n = part.stop - part.start
        x_t, x = buffer((min(batch_size, n), *self.x.shape[1:]), torch.float32, pin)
        y_t, y = buffer((min(batch_size, n), *self.y.shape[1:]), torch.from_numpy(self.y[:0]).dtype, pin)
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            x[:m], y[:m] = self.draw(rng, m)
            yield x_t[:m], y_t[:m]

    def baseline_loss(self, split: str) -> float:
        return self.baselines[split]


@dataclass
class Stream:
    """One token sequence per split, read as B parallel streams in chunks of ``length`` steps
    (the layout in ``windows.py``: word_language_model's batchify and get_batch). Inputs are
    one-hot vectors; the target at every step is the next token."""

    tokens: dict[str, np.ndarray]  # split -> (n,) int64 token ids
    vocab: list[str]
    length: int  # steps per chunk: gradients reach back at most this far
    eval_streams: int = 10  # as word_language_model: a few long streams, a warm state for most of the text

    @property
    def task(self) -> Task:
        return Task("classification", many_to_many=True, n_outputs=len(self.vocab), stateful_stream=True)

    @property
    def n_features(self) -> int:
        return len(self.vocab)

    def _streams(self, split: str, batch_size: int) -> int:
        wanted = batch_size if split == "train" else self.eval_streams
        return max(1, min(wanted, len(self.tokens[split]) // (self.length + 1)))

    def n_batches(self, split: str, batch_size: int) -> int:
        per_stream = len(self.tokens[split]) // self._streams(split, batch_size)
        return math.ceil((per_stream - 1) / self.length)

    def batches(
        self, split: str, batch_size: int, rng: np.random.Generator | None = None, pin: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield consecutive chunks (x (B, k, V), y (B, k)) of the same B streams, in order.

        ``rng`` is not used: shuffling chunks would break the state carried between them. The
        streams are cut afresh each pass, so a pass begins where the carried state is reset.
        """
        tokens = self.tokens[split]
        n_streams = self._streams(split, batch_size)
        begins = batchify(len(tokens), n_streams)
        steps = len(tokens) // n_streams - 1  # the last token of a stream is only a target
        x_t, x = buffer((n_streams, self.length, len(self.vocab)), torch.float32, pin)
        y_t, y = buffer((n_streams, self.length), torch.int64, pin)
        for offset in range(0, steps, self.length):
            k = min(self.length, steps - offset)
            if k < self.length:  # the last, shorter chunk: its own contiguous buffers
                x_t, x = buffer((n_streams, k, len(self.vocab)), torch.float32, pin)
                y_t, y = buffer((n_streams, k), torch.int64, pin)
            stream_chunk(tokens, begins, offset, x, y)
            yield x_t, y_t

    def baseline_loss(self, split: str) -> float:
        """Cross-entropy (nats per token) of the unigram model fitted on the training text:
        what a model that ignores the past achieves."""
        counts = np.bincount(self.tokens["train"], minlength=len(self.vocab)) + 1.0  # add-one
        return float(-np.mean(np.log(counts / counts.sum())[self.tokens[split]]))


def check_generated(length: int, minimum: int, why: str, sizes: dict[str, int]) -> int:
    """A generated task's settings: data.length >= ``minimum`` (``why``), every example count
    >= 1, each named in its error. Returns the total number of examples."""
    if length < minimum:
        raise DataError(f"data.length={length} is out of range (allowed: >= {minimum}{why})")
    for key, n in sizes.items():
        if n < 1:
            raise DataError(f"data.{key}={n} is out of range (allowed: >= 1)")
    return sum(sizes.values())
