"""What the terminal shows: a progress bar while training, a short table at the end."""
from __future__ import annotations

import logging
import re
import sys
import time
from typing import TextIO

log = logging.getLogger("rnnlab")


class ProgressBar:
    """One line, redrawn in place on a terminal; one line per epoch elsewhere (logs, CI).

    The bar and the counter show the epoch's progress; the ETA is the whole run's. Every
    epoch's line also goes to the ``rnnlab`` logger (the run folder's log file)."""

    # The ETA waits for this many steps after the first: the first step carries the start-up
    # (allocator, oneDNN's kernels, the probe's first scan) and a probed step costs more than
    # a plain one, so an estimate from the first few steps is off by 10x (51 min for a 6 min run).
    SETTLE_STEPS = 10

    def __init__(self, epochs: int, quiet: bool = False, stream: TextIO | None = None, width: int = 24) -> None:
        # sys.stderr as it is now, not as it was at import: a caller (a notebook, pytest) may have replaced it since
        stream = sys.stderr if stream is None else stream
        self.epochs, self.quiet, self.stream, self.width = epochs, quiet, stream, width
        self.tty = stream.isatty()
        self.origin: tuple[float, float] | None = None  # (time, fraction done) after the first step
        self.steps = 0

    def __call__(self, epoch: int, batch: int, n_batches: int, loss: float, val: float | None) -> None:
        done = (epoch - 1 + batch / n_batches) / self.epochs
        now = time.perf_counter()
        self.steps += 1
        if self.origin is None:
            self.origin = (now, done)
        filled = int(self.width * batch / n_batches)
        bar = "#" * filled + "-" * (self.width - filled)
        val_text = f"{val:.4f}" if val is not None else "  -   "
        line = (
            f"epoch {epoch:>3}/{self.epochs} [{bar}] {batch:>4}/{n_batches} "
            f"loss {loss:.4f} best val {val_text} ETA {self.eta(now, done)}"
        )
        if batch == n_batches:
            log.info("epoch %d/%d: %d steps, loss %.4f, best val %s", epoch, self.epochs, n_batches, loss, val_text.strip())
        if self.quiet or (not self.tty and batch < n_batches):
            return
        if self.tty:
            self.stream.write("\r" + line)
            if batch == n_batches:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def eta(self, now: float, done: float) -> str:
        """The run's remaining time at the rate since the first step; ``-:--`` until it settles."""
        start, start_done = self.origin  # set by the first call, before any ETA is asked for
        if done >= 1:
            return _duration(0.0)
        if self.steps <= self.SETTLE_STEPS or done <= start_done:
            return " -:--"
        return _duration((now - start) * (1 - done) / (done - start_done))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def summary(rows: list[tuple[str, str]], title: str) -> str:
    """A two-column table: rows of (label, value)."""
    width = max(len(label) for label, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def help_text() -> str:
    """Groups with each option's one-line description, and the default config, read straight
    from the YAML files (with their comments). Hydra's own --help composes every group dozens
    of times: ~1 s. This is ~0.05 s; ``python -m rnnlab key=value --help`` still shows Hydra's,
    with the overrides applied."""
    from importlib.resources import files

    import yaml

    conf = files("rnnlab.conf")
    main_text = (conf / "config.yaml").read_text()
    main_cfg = yaml.safe_load(main_text)
    defaults = {k: v for d in main_cfg["defaults"] if isinstance(d, dict) for k, v in d.items()}
    header = main_cfg["hydra"]["help"]["header"]
    footer = main_cfg["hydra"]["help"]["footer"]
    groups, sections = [], []
    for group in sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name[0] != "_" and p.name != "hydra"):
        options = sorted(f.name[:-5] for f in (conf / group).iterdir() if f.name.endswith(".yaml"))
        width = max(len(o) for o in options) + 2
        groups.append(f"{group}:")
        for option in options:
            mark = "*" if option == defaults.get(group) else " "
            groups.append(f"  {option + mark:<{width}}{_description((conf / group / f'{option}.yaml').read_text())}")
        if defaults.get(group):  # sweep: null has no default option to show
            body = (conf / group / f"{defaults[group]}.yaml").read_text().strip().splitlines()
            sections.append(f"{group}:   # {group}={defaults[group]}")
            sections += ["  " + line for line in body if not line.startswith("#")]
    top = main_text.split("_self_", 1)[1].split("hydra:", 1)[0]
    # Not the defaults list's tail, and not trial: the sweeper sets it per job (how a job finds its trial).
    top = "\n".join(line for line in top.split("\ntrial:", 1)[0].splitlines() if not line.lstrip().startswith("- ")).strip()
    return "\n".join([
        header, "",
        "== Config groups (group=option; * = default) ==", *groups, "",
        "== Config (override any key: key=value, e.g. train.lr=3e-3) ==", top, *sections, "",
        footer,
    ])


def _description(text: str, most: int = 100) -> str:
    """An option file's opening comment (past Hydra's ``# @package`` line): its first sentence,
    cut at a word to at most ``most`` characters."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    # the first full stop before a capital: not "et al. 2017", "Exp. 4" or "Sec. 4.1"
    sentence = re.split(r"(?<!\bal)\.\s+(?=[A-Z])", " ".join(lines), maxsplit=1)[0].rstrip(".")
    if len(sentence) > most:
        sentence = sentence[:most].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return sentence


def size_text(n: float) -> str:
    """A byte count in its unit, for messages: 633 bytes, 4.1 KB, 20.6 GB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
