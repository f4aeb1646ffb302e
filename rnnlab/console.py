"""What the terminal shows: a progress bar while training, a short table at the end."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """One line, redrawn in place on a terminal; one line per epoch elsewhere (logs, CI)."""

    def __init__(self, epochs: int, quiet: bool = False, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.epochs, self.quiet, self.stream, self.width = epochs, quiet, stream, width
        self.tty = stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, epoch: int, batch: int, n_batches: int, loss: float, val: float | None) -> None:
        if self.quiet or (not self.tty and batch < n_batches):
            return
        done = (epoch - 1 + batch / n_batches) / self.epochs
        elapsed = time.perf_counter() - self.started
        eta = elapsed * (1 - done) / done if done > 0 else 0.0
        filled = int(self.width * done)
        bar = "#" * filled + "-" * (self.width - filled)
        val_text = f"{val:.4f}" if val is not None else "  -   "
        line = (
            f"epoch {epoch:>3}/{self.epochs} [{bar}] {batch:>4}/{n_batches} "
            f"loss {loss:.4f} best val {val_text} ETA {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line)
            if batch == n_batches:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def summary(rows: list[tuple[str, str]], title: str) -> str:
    """A two-column table: rows of (label, value)."""
    width = max(len(label) for label, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)
