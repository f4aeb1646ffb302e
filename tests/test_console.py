"""rnnlab.console: the progress bar's ETA and fill, its log lines, and the two-column table."""
from __future__ import annotations

import io
import logging
import re

import pytest

from rnnlab import console
from rnnlab.console import ProgressBar, summary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in re.split(r"[\r\n]", stream.getvalue()) if line]


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "perf_counter", clock)
    return clock


def test_eta_ignores_a_slow_first_step_and_waits_until_it_settles(clock):
    """2 epochs x 100 steps: the first step takes 60 s (start-up), every later one 1 s. An ETA
    from the first step would read ~3 hours; the bar says nothing until 10 more steps have
    passed, then the true remaining time."""
    stream = Terminal()
    bar = ProgressBar(2, stream=stream)
    for n in range(1, 201):
        clock.now += 60.0 if n == 1 else 1.0
        epoch, batch = divmod(n - 1, 100)
        bar(epoch + 1, batch + 1, 100, 0.5, None)
    shown = lines(stream)
    assert all(line.endswith("ETA  -:--") for line in shown[:10])
    eta = {n + 1: line.rsplit("ETA ", 1)[1] for n, line in enumerate(shown)}
    assert eta[50] == "2:30" and eta[150] == "0:50" and eta[200] == "0:00"  # 150 and 50 steps of 1 s left


def test_bar_fill_matches_the_epochs_counter(clock):
    stream = Terminal()
    bar = ProgressBar(4, stream=stream, width=20)
    for batch in range(1, 11):
        clock.now += 1.0
        bar(2, batch, 10, 0.1, 0.2)
    for line in lines(stream):
        done, total = map(int, re.search(r"\] +(\d+)/(\d+)", line).groups())
        fill = re.search(r"\[([#-]+)\]", line).group(1)
        assert fill.count("#") == 20 * done // total  # the epoch's share, not the run's (epoch 2 of 4)


def test_a_log_file_gets_one_line_per_epoch_also_when_quiet(clock, caplog):
    stream = io.StringIO()  # not a terminal: one line per epoch
    bar = ProgressBar(2, quiet=True, stream=stream)
    with caplog.at_level(logging.INFO, logger="rnnlab"):
        for epoch in (1, 2):
            for batch in (1, 2, 3):
                clock.now += 1.0
                bar(epoch, batch, 3, 0.25 * epoch, 0.5 if epoch == 2 else None)
    assert stream.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/2: 3 steps, loss 0.2500, best val -",
        "epoch 2/2: 3 steps, loss 0.5000, best val 0.5000",
    ]


def test_not_a_terminal_prints_only_finished_epochs(clock):
    stream = io.StringIO()
    bar = ProgressBar(3, stream=stream)
    for epoch in (1, 2):
        for batch in range(1, 6):
            clock.now += 1.0
            bar(epoch, batch, 5, 0.1, 0.1)
    assert [line.split(" [")[0] for line in lines(stream)] == ["epoch   1/3", "epoch   2/3"]


def test_summary_aligns_the_values():
    table = summary([("a", "1"), ("longer label", "2")], "title")
    assert table.splitlines() == ["title", "-----", "a             1", "longer label  2"]
