"""What the terminal shows: a progress bar while training, a short table at the end."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """One line, redrawn in place on a terminal; one line per epoch elsewhere (logs, CI)."""

    def __init__(self, epochs: int, quiet: bool = False, stream: TextIO | None = None, width: int = 24) -> None:
        # sys.stderr as it is now, not as it was at import: a caller (a notebook, pytest) may have replaced it since
        stream = sys.stderr if stream is None else stream
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


def help_text() -> str:
    """Groups, options and the default config, read straight from the YAML files (with their
    comments). Hydra's own --help composes every group dozens of times: ~1 s. This is ~0.05 s;
    ``python -m rnnlab key=value --help`` still shows Hydra's, with the overrides applied."""
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
        marked = [f"{o}*" if o == defaults.get(group) else o for o in options]
        groups.append(f"{group + ':':<10}{', '.join(marked)}")
        if defaults.get(group):  # sweep: null has no default option to show
            body = (conf / group / f"{defaults[group]}.yaml").read_text().strip().splitlines()
            sections.append(f"{group}:   # {group}={defaults[group]}")
            sections += ["  " + line for line in body if not line.startswith("#")]
    top = main_text.split("_self_", 1)[1].split("hydra:", 1)[0].strip()
    top = "\n".join(line for line in top.splitlines() if not line.startswith("- ")).strip()  # defaults after _self_
    return "\n".join([
        header, "",
        "== Config groups (group=option; * = default) ==", *groups, "",
        "== Config (override any key: key=value, e.g. train.lr=3e-3) ==", top, *sections, "",
        footer,
    ])


def size_text(n: float) -> str:
    """A byte count in its unit, for messages: 633 bytes, 4.1 KB, 20.6 GB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
