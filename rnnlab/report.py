"""A study's runs aggregated over seeds: the table and the learning curves a paper shows.

    python -m rnnlab.report --experiment adding_t100
    python -m rnnlab.report --experiment adding_t100 --threshold "test_loss<0.01" --threshold "val_loss<0.01"
    python -m rnnlab.report --experiment adding_t100 --filter "params.`cell.name` IN ('lstm', 'gru')" --metric test_loss

Runs are grouped by the params that differ among them, except the seed (``--ignore`` names
more repeat keys) and what says how a run ran rather than what it computed (tracking.*,
trial.*, resume, device, ...): the runs of a group are its seeds. For each ``--metric``
(default test_loss and best_val_loss, the run's final values; ``name@N`` is the value logged
at optimiser step N, ``name@first`` and ``name@last`` the history's ends) the table gives the mean over
the group's runs and its 95% Student t interval,

    mean ± t(0.975, n-1) · s / √n        s: the sample standard deviation (n - 1 in the denominator)

with t from a table for n - 1 <= 30 and the Cornish-Fisher expansion beyond (within 1e-5
of the exact quantile; scipy is not a dependency). A ``--threshold metric<value`` (or
``>``) adds the success rate, the runs whose history of that metric reaches the threshold,
and the optimiser steps to the first value that does: mean and interval over the runs that
got there. Per-epoch metrics are logged at the optimiser step (older runs: at step = epoch); the run's ``optimizer_steps``
metric (logged beside them) turns an epoch into optimiser steps, and metrics logged once at
the end (test_loss) are at the run's last step.

It prints the markdown table and writes it to ``--out``/report.md, with one figure per
``--curve`` metric (default val_loss): each group's mean over seeds against optimiser
steps, the interval as a band, the runs' baseline_loss (the task's trivial predictor) as a
dashed line. The MLflow UI shows runs one by one; this is the view over seeds.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Params that say how a run ran, or that follow from others, never a setting to group by.
NOT_SETTINGS = frozenset({"seed", "cell", "n_params", "n_features", "resume", "quiet", "device", "allocator"})
NOT_SETTING_PREFIXES = ("tracking.", "trial.")

# t(0.975, df): the two-sided 95% quantile of Student's t, df = 1..30.
T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z_975 = 1.959963984540054


class ReportError(ValueError):
    """Bad input to the report (a threshold it cannot read): one line for the user."""


def t_975(df: int) -> float:
    """Student's t quantile at 0.975 with ``df`` degrees of freedom: the table up to 30, then
    the Cornish-Fisher expansion in 1/df (its terms to 1/df^4), within 1e-5 from df = 30 on."""
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs at least two values")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass
class Interval:
    """The mean of n values and the half-width of its 95% t interval (NaN for n < 2)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Interval:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            return cls(math.nan, math.nan, 0)
        if len(v) == 1:
            return cls(float(v[0]), math.nan, 1)
        return cls(float(v.mean()), t_975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v)), len(v))

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{_number(self.mean, 4)} (n=1)"
        return f"{_number(self.mean, 4)} ± {_number(self.half_width, 2)} (n={self.n})"


def _number(x: float, digits: int) -> str:
    """``digits`` significant digits, without an exponent between 1e-3 and 1e5 (640, not 6.4e+02)."""
    if x != 0 and 1e-3 <= abs(x) < 1e5:
        return np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")
    return f"{x:.{digits}g}"


@dataclass(frozen=True)
class Threshold:
    metric: str
    below: bool  # metric < value (a loss); False: metric > value (an accuracy)
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        match = re.fullmatch(r"\s*([\w./-]+)\s*([<>])\s*([-+0-9.eE]+)\s*", text)
        try:
            value = float(match.group(3)) if match else math.nan
        except ValueError:
            value = math.nan
        if not match or not math.isfinite(value):
            raise ReportError(f"--threshold {text!r} is not allowed (allowed: metric<value or metric>value, e.g. test_loss<0.01)")
        return cls(match.group(1), match.group(2) == "<", value)

    def met(self, value: float) -> bool:
        return value < self.value if self.below else value > self.value

    def __str__(self) -> str:
        return f"{self.metric}{'<' if self.below else '>'}{self.value:g}"


@dataclass
class Group:
    """The runs of one setting (the params that differ, at these values): its seeds."""

    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def group_runs(runs: list[dict[str, Any]], ignore: set[str] = frozenset()) -> tuple[list[str], list[Group]]:
    """The params that differ among ``runs`` (not ``NOT_SETTINGS``, ``ignore``), and the runs
    grouped by their values of those, in label order."""
    keys = label_keys(runs, NOT_SETTINGS | set(ignore))
    groups: dict[str, Group] = {}
    for run in runs:
        label = ", ".join(f"{k}={run['params'].get(k, '-')}" for k in keys) or "all runs"
        groups.setdefault(label, Group(label)).runs.append(run)
    return keys, [groups[label] for label in sorted(groups)]


def label_keys(runs: list[dict[str, Any]], skip: set[str]) -> list[str]:
    """The params whose values split ``runs``, fewest first. A param that splits nothing the
    others do not (cell.chrono, which only the LSTM runs have, beside cell.name) stays out of
    the labels; params some runs lack go first, and one every run has is kept beside one some
    lack (a GRU among LSTMs of two forget biases reads cell.name=gru, not cell.forget_bias=-)."""
    keys = sorted({k for r in runs for k in r["params"]} - skip)
    keys = [k for k in keys if not k.startswith(NOT_SETTING_PREFIXES)
            and len({r["params"].get(k) for r in runs}) > 1]

    def parts(kept: list[str]) -> int:
        return len({tuple(r["params"].get(k) for k in kept) for r in runs})

    everywhere = {k for k in keys if all(k in r["params"] for r in runs)}
    for key in sorted(keys, key=lambda k: (k in everywhere, k)):
        rest = [k for k in keys if k != key]
        if key in everywhere and not set(rest) <= everywhere:
            continue  # cell.name stays beside cell.forget_bias, which the GRU lacks: no "forget_bias=-" label alone
        if rest and parts(rest) == parts(keys):  # the same groups without it
            keys = rest
    return keys


def optimiser_steps(run: dict[str, Any]) -> dict[int, float]:
    """MLflow step -> optimiser steps, where the run logged ``optimizer_steps`` (at each epoch)."""
    return {step: value for step, value in run["history"].get("optimizer_steps", [])}


def steps_to(run: dict[str, Any], threshold: Threshold) -> float | None:
    """The optimiser steps at the first value of the metric's history that meets the
    threshold, or None if none does (or the run never logged it)."""
    to_steps = optimiser_steps(run)
    for step, value in run["history"].get(threshold.metric, []):
        if threshold.met(value):
            return to_steps.get(step, float(step))  # a metric logged at an optimiser step: that step
    return None


@dataclass
class Row:
    group: Group
    metrics: dict[str, Interval]
    reached: dict[Threshold, tuple[int, int]]  # runs that reached it, runs in the group
    steps: dict[Threshold, Interval]  # steps to it, over the runs that reached it

    @property
    def failed(self) -> int:
        return sum(r["status"] == "FAILED" for r in self.group.runs)


def parse_metric(text: str) -> tuple[str, int | str | None]:
    """``name`` (the run's final value), ``name@first``, ``name@last`` or ``name@N`` (the
    value logged at optimiser step N: a probe's at step 0 is the initial weights')."""
    name, _, at = text.partition("@")
    if not at:
        return name, None
    if at in ("first", "last"):
        return name, at
    if not at.isdigit() or not name:
        raise ReportError(f"--metric {text!r} is not allowed (allowed: name, name@first, name@last or name@N, "
                          f"N an optimiser step, e.g. decay_rate/l0@0)")
    return name, int(at)


def value_of(run: dict[str, Any], metric: str) -> float:
    """A run's value of a ``--metric`` (see parse_metric); NaN where it has none."""
    name, at = parse_metric(metric)
    if at is None:
        return run["metrics"].get(name, math.nan)
    history = run["history"].get(name, [])
    if not history:
        return math.nan
    if at == "first":
        return history[0][1]
    if at == "last":
        return history[-1][1]
    to_steps = optimiser_steps(run)
    found = [value for step, value in history if to_steps.get(step, float(step)) == at]
    return found[-1] if found else math.nan


def summarise(groups: list[Group], metrics: list[str], thresholds: list[Threshold]) -> list[Row]:
    rows = []
    for g in groups:
        values = {m: Interval.of([value_of(r, m) for r in g.runs]) for m in metrics}
        reached, steps = {}, {}
        for th in thresholds:
            got = [s for s in (steps_to(r, th) for r in g.runs) if s is not None]
            reached[th] = (len(got), len(g.runs))
            steps[th] = Interval.of(got)
        rows.append(Row(g, values, reached, steps))
    return rows


def markdown(rows: list[Row], metrics: list[str], thresholds: list[Threshold]) -> str:
    """The table: a row per group, mean ± 95% t half-width (n) per metric, success per threshold."""
    header = ["group", "runs", *metrics]
    for th in thresholds:
        header += [f"reached {th}", f"steps to {th}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = f"{len(row.group.runs)}" + (f" ({row.failed} failed)" if row.failed else "")
        cells = [row.group.label, runs, *(str(row.metrics[m]) for m in metrics)]
        for th in thresholds:
            k, n = row.reached[th]
            cells += [f"{k}/{n}", str(row.steps[th])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(group: Group, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A group's learning curve: optimiser steps, the mean over its runs at each, and the 95%
    t half-width (NaN where fewer than two runs reached that step)."""
    by_step: dict[float, list[float]] = {}
    for run in group.runs:
        to_steps = optimiser_steps(run)
        for step, value in run["history"].get(metric, []):
            by_step.setdefault(to_steps.get(step, float(step)), []).append(value)
    steps = np.array(sorted(by_step), dtype=np.float64)
    stats = [Interval.of(by_step[s]) for s in steps]
    return steps, np.array([i.mean for i in stats]), np.array([i.half_width for i in stats])


def decay_curve(logs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A group's gradient decay: log10 ||dL/dh_t|| at t = 0..T-1 of its runs' probes (one (T,)
    row each), its mean over the runs at each t and the 95% t interval (low, high). A t some
    run did not measure (-inf: no gradient, NaN: not measured) is left out of that t's mean."""
    rows = np.array(logs, dtype=np.float64)
    stats = [Interval.of(column) for column in rows.T]
    mean = np.array([i.mean for i in stats])
    half = np.array([i.half_width for i in stats])
    return mean, mean - half, mean + half


def probe_log(path: Path, step: int, layer: int = 0) -> np.ndarray | None:
    """Layer ``layer``'s (forward) log10 ||dL/dh_t|| row at probe step ``step`` of a run's
    gradients.npz, or None if the run did not probe that step."""
    with np.load(path) as saved:
        hit = np.flatnonzero(saved["steps"] == step)
        if not len(hit) or saved["log_dh"].shape[1] <= layer:
            return None
        return saved["log_dh"][hit[0], layer, 0]


def sensitivity(group: Group, param: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A group's final ``metric`` against the numeric ``param``: its values in increasing order,
    the mean over the group's runs at each, the 95% t half-width, and (runs with a finite value,
    runs) at each, since a run that diverged has no final metric and is not in the mean."""
    by_value: dict[float, list[float]] = {}
    for run in group.runs:
        text = run["params"].get(param)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ReportError(f"--against {param}: run {run['name']!r} has {param}={text!r} "
                              "(allowed: a numeric param every run has)") from None
        by_value.setdefault(value, []).append(run["metrics"].get(metric, math.nan))
    x = np.array(sorted(by_value), dtype=np.float64)
    stats = [Interval.of(by_value[v]) for v in x]
    counted = [(i.n, len(by_value[v])) for i, v in zip(stats, x)]
    return x, np.array([i.mean for i in stats]), np.array([i.half_width for i in stats]), counted


def baseline(runs: list[dict[str, Any]]) -> float | None:
    """The trivial predictor's loss the runs logged (baseline_loss), averaged; None if none."""
    values = [r["metrics"]["baseline_loss"] for r in runs if "baseline_loss" in r["metrics"]]
    return float(np.mean(values)) if values else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    parser.add_argument("--experiment", default="rnnlab", help="the MLflow experiment (a study's: its name)")
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"params.`cell.name` IN ('rnn', 'lstm')\"")
    parser.add_argument("--metric", action="append", help="a metric to aggregate: its final value, or name@N (at optimiser "
                        "step N), name@first, name@last (repeatable; default: test_loss, best_val_loss)")
    parser.add_argument("--threshold", action="append", default=[], help="metric<value or metric>value: success rate and steps to it")
    parser.add_argument("--curve", action="append", help="a per-epoch metric to draw against steps (repeatable; default: val_loss)")
    parser.add_argument("--decay", action="append", type=int, default=[], help="a probed optimiser step: draw each "
                        "group's log10 ||dL/dh_t|| of layer 0 at it against the distance from the loss (repeatable)")
    parser.add_argument("--ignore", action="append", default=[], help="a param that is a repeat, like the seed (repeatable)")
    parser.add_argument("--against", default=None, help="a numeric param (e.g. train.lr): each --metric against it, one line per other group")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the figures (default: outputs/report/<experiment>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    metrics = args.metric or ["test_loss", "best_val_loss"]
    curve_metrics = args.curve or ["val_loss"]
    out = args.out or Path("outputs") / "report" / args.experiment

    from rnnlab.tracking import TrackingError
    from rnnlab.tracking.queries import study_runs

    try:
        thresholds = [Threshold.parse(t) for t in args.threshold]
        at_steps = [name for name, at in map(parse_metric, metrics) if at is not None]
        wanted = sorted({*curve_metrics, *(t.metric for t in thresholds), *at_steps, "optimizer_steps"})
        runs = study_runs(args.uri, args.experiment, args.filter, wanted)
        if not runs:
            raise ReportError(f"no run matches (experiment {args.experiment!r}, filter {args.filter!r})")
        keys, groups = group_runs(runs, set(args.ignore))
        rows = summarise(groups, metrics, thresholds)
        table = markdown(rows, metrics, thresholds)
        out.mkdir(parents=True, exist_ok=True)
        figures = _figures(args, runs, groups, metrics, curve_metrics, out)
    except (ReportError, TrackingError) as e:
        print(f"rnnlab.report: error: {e}", file=sys.stderr)
        return 2
    where = f"filter `{args.filter}`, " if args.filter else ""
    text = "\n".join([
        f"# {args.experiment}: {len(runs)} runs in {len(groups)} groups",
        "",
        f"{where}grouped by {', '.join(keys) or 'nothing (one group)'}; made {time.strftime('%Y-%m-%d %H:%M')} "
        f"from {args.uri}.",
        "Each cell: mean over the group's runs ± the half-width of its 95% Student t interval (n runs). "
        "reached: runs whose history meets the threshold; steps: optimiser steps to the first value that does.",
        "",
        table,
        "",
        *(f"![{f.stem}]({f.name})" for f in figures),
        "",
    ])
    (out / "report.md").write_text(text)
    print(table)
    print(f"report: {out / 'report.md'}; figures: {', '.join(str(f) for f in figures)}")
    return 0


def _figures(args: argparse.Namespace, runs: list[dict[str, Any]], groups: list[Group], metrics: list[str],
             curve_metrics: list[str], out: Path) -> list[Path]:
    """The learning curves, the decay curves and (with --against) each metric against a setting."""
    from rnnlab.figures import plot_learning_curves, plot_sensitivity

    figures = []
    for metric in curve_metrics:
        lines = {g.label: curves(g, metric) for g in groups}
        figures.append(plot_learning_curves(
            {label: c for label, c in lines.items() if len(c[0])}, out / f"curves_{metric.replace('/', '_')}.png",
            f"{args.experiment}: {metric}, mean over seeds (band: 95% t interval)", metric, baseline(runs)))
    figures += _decay_figures(args.uri, args.experiment, groups, args.decay, out)
    if not args.against:
        return figures
    _, others = group_runs(runs, set(args.ignore) | {args.against})  # one line per group of the other params
    for metric in metrics:
        lines = {g.label: sensitivity(g, args.against, metric) for g in others}
        figures.append(plot_sensitivity(
            lines, out / f"against_{args.against}_{metric}.png",
            f"{args.experiment}: {metric} against {args.against}, mean over seeds (bars: 95% t interval)",
            args.against, metric, baseline(runs) if metric.endswith("loss") else None))
    return figures


def _decay_figures(uri: str, experiment: str, groups: list[Group], steps: list[int], out: Path) -> list[Path]:
    """decay_step<N>.png per ``--decay`` step: each group's mean log-norm curve over its runs'
    gradients.npz, with its 95% t band and the fitted rate of the mean."""
    import tempfile

    from rnnlab.figures import plot_decay
    from rnnlab.tracking.queries import run_file

    figures: list[Path] = []
    if not steps:
        return figures
    with tempfile.TemporaryDirectory() as scratch:
        files = {r["run_id"]: run_file(uri, r, "gradients.npz", Path(scratch) / r["run_id"]) for g in groups for r in g.runs}
        for step in steps:
            curves, bands = {}, {}
            for g in groups:
                logs = [log for r in g.runs if files[r["run_id"]] is not None
                        for log in [probe_log(files[r["run_id"]], step)] if log is not None]
                if logs and len({len(log) for log in logs}) == 1:
                    mean, low, high = decay_curve(logs)
                    curves[f"{g.label} (n={len(logs)})"], bands[f"{g.label} (n={len(logs)})"] = mean, (low, high)
            if curves:
                figures.append(plot_decay(curves, out / f"decay_step{step}.png",
                                          f"{experiment}: layer 0 at step {step}, mean over seeds", bands,
                                          band_label="mean over seeds; band: 95% t interval"))
    return figures


if __name__ == "__main__":
    sys.exit(main())
