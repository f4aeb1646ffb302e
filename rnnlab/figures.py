"""The figures a run, a sweep and ``python -m rnnlab.compare`` write, as PNG files.

Drawn on ``matplotlib.figure.Figure`` objects, never through matplotlib's state-machine
interface: that keeps global state (a current figure, a backend it picks and a window
manager), and choosing a backend from here would change a notebook user's backend behind
their back. A ``Figure`` saved with ``savefig`` renders to the file with Agg and touches
nothing global.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# MLflow's artifact viewer and a docs page show a figure ~700 px wide. Drawn 7 inches wide at
# 150 dpi (1050 px), matplotlib's 10 pt text is ~14 px there; a wider figure would shrink it.
WIDTH, DPI = 7.0, 150


def _figure(height: float, width: float = WIDTH) -> Figure:
    from matplotlib.figure import Figure  # imported on first use: a run without figures never pays for it

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    """The file, as PNG or SVG by its suffix, at the one resolution every figure has."""
    fig.savefig(path, dpi=DPI)
    return path


def plot_predictions(
    time_axis: Any, truth: Any, predictions: dict[str, Any], path: Path, title: str, ylabel: str,
    xlabel: str = "time",
) -> Path:
    """Truth and each prediction over a stretch of the test split (``ylabel``: the target and
    its unit), the legend below the axes where it hides no data."""
    fig = _figure(3.6)
    ax = fig.subplots()
    ax.plot(time_axis, truth, color="black", lw=1.6, label="truth")
    for (name, values), style in zip(predictions.items(), ["-", "--", ":"]):
        ax.plot(time_axis, values, style, lw=1.1, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.legend(loc="outside lower center", ncols=len(predictions) + 1, fontsize=9, frameon=False)
    ax.grid(alpha=0.3)
    if np.issubdtype(np.asarray(time_axis).dtype, np.datetime64):
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # no slanted dates: readable small
    return _save(fig, path)


def plot_gradient_heatmaps(log_dh: Any, steps: Any, path: Path, title: str = "") -> Path:
    """log10 ||dL/dh^l_t|| as layer x time images at the first, middle and last probe of a
    run (log_dh: probes x layers x directions x T, as the probe records it). Time runs left to
    right; the loss is at the right edge, so vanishing shows as a fade to the left. Steps no
    gradient reaches (-inf: before a truncation window) are left blank."""
    picks = sorted({0, len(log_dh) // 2, len(log_dh) - 1})
    layers, directions = log_dh.shape[1], log_dh.shape[2]
    fig = _figure(0.9 + (0.9 + 0.3 * layers * directions) * len(picks))
    axes = fig.subplots(len(picks), 1, squeeze=False, sharex=True)
    finite = log_dh[np.isfinite(log_dh)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1, 0)
    # Drawn as the stack is: layer 0, the one the input enters, in the bottom row.
    labels = [f"{l} backward" if d else f"{l}{' (input)' if l == 0 and layers > 1 else ''}"
              for l in range(layers) for d in range(directions)]
    for ax, p in zip(axes[:, 0], picks):
        rows = np.where(np.isfinite(log_dh[p]), log_dh[p], np.nan).reshape(-1, log_dh.shape[-1])  # (layers x directions, T)
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest", origin="lower")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("layer")
        ax.set_title(f"{title + ': ' if title else ''}step {int(steps[p])}", fontsize=10)
    fig.colorbar(image, ax=axes[:, 0], fraction=0.04, pad=0.02, label="log10 ||dL/dh_t||  (blank: not reached)")
    fig.suptitle("gradient norm per layer and time step (layer 0 next to the input, at the bottom)", fontsize=10)
    axes[-1, 0].set_xlabel("time step t in the window (the loss is at the right edge)")
    return _save(fig, path)


def plot_decay(
    curves: dict[str, Any], path: Path, title: str, bands: dict[str, tuple[Any, Any]] | None = None,
    band_label: str = "batch mean; band: 10th-90th percentile", colors: dict[str, Any] | None = None,
    ids: dict[str, str] | None = None,
) -> Path:
    """log10 ||dL/dh_t|| against the distance from the loss, one line per entry of ``curves``
    (label -> (T,) log10 norms at t = 0..T-1), with the band between the batch's 10th and 90th
    percentiles where ``bands`` has the label, and the fitted decay line with its rate (decades
    per step) and R^2 in the legend. Geometric vanishing is a straight line down. The axis is
    log10 itself, not a log scale: the values can lie below float64's range. ``colors`` fixes
    a label's colour (one run, one colour in every panel); ``ids`` names its line in an SVG
    file (the element id a page or a test finds it by)."""
    from rnnlab.probe import decay_fit

    fig = _figure(4.2)
    ax = fig.subplots()
    palette = colors or dict(zip(curves, _colors(len(curves))))
    for label, log in curves.items():
        color = palette[label]
        log = np.asarray(log, dtype=float)
        distance = np.arange(len(log))[::-1]  # T-1 .. 0
        keep = np.isfinite(log)
        rate, r2 = decay_fit(log)
        fitted = f"; rate {rate:.3g}/step, R² {r2:.2f}" if np.isfinite(rate) else ""
        (line,) = ax.plot(distance[keep], log[keep], marker=".", ms=3, lw=1.2, color=color, label=f"{label}{fitted}")
        if ids and label in ids:
            line.set_gid(ids[label])
        if bands and label in bands:
            low, high = (np.asarray(b, dtype=float) for b in bands[label])
            both = keep & np.isfinite(low) & np.isfinite(high)
            ax.fill_between(distance[both], low[both], high[both], color=color, alpha=0.2, lw=0)
        if np.isfinite(rate):
            d = distance[keep]
            intercept = np.mean(log[keep] - rate * d)
            ax.plot(d, intercept + rate * d, ls="--", lw=0.9, color=color)
    ax.set_xlabel("distance from the loss (time steps)")
    ax.set_ylabel("log10 ||dL/dh_t||")
    ax.set_title(f"{title}\n({band_label if bands else 'batch mean'}; dashed: fitted decay)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_lyapunov(spectra: dict[str, Any], path: Path, title: str) -> Path:
    """The top k Lyapunov exponents (ln per step) of each layer, one line per entry (label ->
    (k,)): above 0 the layer's dynamics expand a direction (gradients can explode), below 0
    every direction contracts (they vanish)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.0)
    ax = fig.subplots()
    for (label, exponents), color in zip(spectra.items(), _colors(len(spectra))):
        exponents = np.asarray(exponents, dtype=float)
        ax.plot(np.arange(1, len(exponents) + 1), exponents, marker="o", color=color, label=label)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("exponent index i (largest first)")
    ax.set_ylabel("Lyapunov exponent λ_i (ln per step)")
    ax.set_title(f"{title}\n(above 0: a direction expands, gradients can explode)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def _colors(n: int) -> list[Any]:
    """``n`` distinct colours: tab10's up to 10, tab20's up to 20, then spread over turbo."""
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab10" if n <= 10 else "tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def colors_hex(n: int) -> list[str]:
    """The colours of ``_colors`` as #rrggbb (an HTML page's colour for each run)."""
    from matplotlib.colors import to_hex

    return [to_hex(c) for c in _colors(n)]

def plot_sweep(numbers: Any, values: Any, importances: dict[str, float], folder: Path, name: str, title: str,
               maximize: bool = False) -> list[Path]:
    """A sweep's figures for its objective ``name``: history_<name>.png, each finished trial's
    value (dots, by trial number) and the best so far (a step line); importance_<name>.png, one
    bar per hyperparameter, the largest at the top (only when ``importances`` has any)."""
    order = np.argsort(numbers)
    numbers, values = np.asarray(numbers)[order], np.asarray(values, dtype=float)[order]
    best = (np.fmax if maximize else np.fmin).accumulate(values)  # fmin/fmax: a NaN never becomes the best
    fig = _figure(4.0)
    ax = fig.subplots()
    ax.scatter(numbers, values, s=16, color="tab:blue", label=f"{name} of a finished trial")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial number", ylabel=name, title=f"{title}: optimisation history")
    if _spans_decades(values):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    paths = [_save(fig, folder / f"history_{name}.png")]
    if importances:
        ranked = sorted(importances.items(), key=lambda item: item[1])
        fig = _figure(1.2 + 0.35 * len(ranked))
        ax = fig.subplots()
        ax.barh([label for label, _ in ranked], [value for _, value in ranked], color="tab:blue")
        ax.set(xlabel=f"fANOVA importance for {name} (fraction of variance)", ylabel="hyperparameter",
               title=f"{title}: hyperparameter importance")
        ax.grid(alpha=0.3, axis="x")
        paths.append(_save(fig, folder / f"importance_{name}.png"))
    return paths


def _spans_decades(values: Any) -> bool:
    """Positive finite values whose largest is more than 10x the smallest: a log axis reads them."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return values.size > 1 and bool(np.all(values > 0)) and values.max() > 10 * values.min()


def plot_learning_curves(
    curves: dict[str, tuple[Any, Any, Any]], path: Path, title: str, ylabel: str, baseline: float | None = None,
) -> Path:
    """One line per group (label -> (steps, mean, half-width) over its seeds), the band of
    mean ± half-width where it is defined (two runs or more), and the task's trivial baseline
    as a dashed line. The axis is fitted to the means and the baseline, on a log scale when
    they are all positive (losses span decades): a wide band (two seeds: t = 12.7) is cut at
    the edge rather than flattening every curve."""
    fig = _figure(4.2)
    ax = fig.subplots()
    means = [np.asarray(mean, dtype=float) for _, mean, _ in curves.values()]
    shown = np.concatenate([m[np.isfinite(m)] for m in means] + [np.array([baseline] if baseline is not None else [])])
    log = shown.size > 0 and bool(np.all(shown > 0))
    if shown.size:
        low, high = shown.min(), shown.max()
        limits = (low / 2, high * 2) if log else (low - 0.1 * (high - low or 1), high + 0.1 * (high - low or 1))
    for (label, (steps, mean, half)), color in zip(curves.items(), _colors(len(curves))):
        steps, mean, half = (np.asarray(a, dtype=float) for a in (steps, mean, half))
        ax.plot(steps, mean, lw=1.4, color=color, label=label)
        band = np.isfinite(half)
        if band.any():
            bottom = np.maximum(mean - half, limits[0]) if shown.size else mean - half
            ax.fill_between(steps, bottom, mean + half, where=band, color=color, alpha=0.2, lw=0)
    if baseline is not None:
        ax.axhline(baseline, color="black", ls="--", lw=1.0, label=f"trivial baseline {baseline:.4g}")
    if log:
        ax.set_yscale("log")
    if shown.size:
        ax.set_ylim(*limits)
    return _labelled_and_saved(fig, ax, path, "optimiser steps", ylabel, title)


def plot_variants_and_importances(groups: dict[str, Any], baseline: str, significant: dict[str, bool],
                                  importances: list[tuple[str, float, float, float]], path: Path, title: str) -> Path:
    """Greff et al.'s two views of a random search, side by side. Left: each group's trial
    values (a box over the quartiles, whiskers to the extremes, every trial a dot, the mean a
    diamond); the baseline grey, a group that differs significantly from it red. Right: fANOVA
    fractions of variance (main effects, then pairs), each bar the mean, its error bar the sd
    over trees (thin) and over forests (thick). ``importances``: (name, mean, sd trees, sd forests)."""
    names = list(groups)
    fig = _figure(4.6, width=2 * WIDTH)  # two panels side by side: read at full width
    left, right = fig.subplots(1, 2, width_ratios=[1.4, 1])
    data = [np.asarray(groups[n], dtype=float) for n in names]
    boxes = left.boxplot(data, whis=(0, 100), widths=0.55, patch_artist=True, showfliers=False)
    for patch, name in zip(boxes["boxes"], names):
        patch.set_facecolor("0.8" if name == baseline else ("tab:red" if significant.get(name) else "tab:blue"))
        patch.set_alpha(0.45)
    rng = np.random.default_rng(0)  # the dots' jitter only
    for i, values in enumerate(data, start=1):
        left.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, color="black", zorder=3)
        left.scatter([i], [values.mean()], marker="D", s=30, color="tab:orange", zorder=4)
    left.set_xticks(range(1, len(names) + 1), names, rotation=30)
    left.set(ylabel="best validation loss (trial's objective)", title=f"{title}: trials per group (red: differs from {baseline})")
    left.grid(alpha=0.3, axis="y")
    rows = importances[::-1]  # the largest main effect at the top
    y = np.arange(len(rows))
    means = [r[1] for r in rows]
    right.barh(y, means, color=["tab:purple" if " x " in r[0] else "tab:blue" for r in rows])
    right.errorbar(means, y, xerr=[r[2] for r in rows], fmt="none", ecolor="0.4", lw=1, capsize=2)
    right.errorbar(means, y, xerr=[0 if np.isnan(r[3]) else r[3] for r in rows], fmt="none", ecolor="black", lw=3)
    right.set_yticks(y, [r[0] for r in rows], fontsize=8)
    right.set(xlabel="fraction of variance (fANOVA)", title="importance: main effects (blue), pairs (purple)")
    right.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_sensitivity(
    lines: dict[str, tuple[Any, Any, Any, Any]], path: Path, title: str, xlabel: str, ylabel: str,
    baseline: float | None = None,
) -> Path:
    """A final metric against a numeric setting: one line per group (label -> (x, mean,
    half-width, runs counted / runs) at each x), the 95% t interval as error bars where it is
    defined, the runs that counted written beside a point where some did not (a diverged run
    has no final metric), and the trivial baseline dashed. The x axis is logarithmic when the
    values are positive and span more than 10x (learning rates), the y axis when the means are
    positive and span more than 10x."""
    fig = _figure(4.2)
    ax = fig.subplots()
    xs = np.concatenate([np.asarray(x, dtype=float) for x, *_ in lines.values()] or [np.array([])])
    means = np.concatenate([np.asarray(m, dtype=float) for _, m, *_ in lines.values()] or [np.array([])])
    means = means[np.isfinite(means)]
    for (label, (x, mean, half, counted)), color in zip(lines.items(), _colors(len(lines))):
        x, mean, half = (np.asarray(a, dtype=float) for a in (x, mean, half))
        ax.errorbar(x, mean, yerr=np.where(np.isfinite(half), half, 0.0), color=color, marker="o", ms=4,
                    lw=1.4, capsize=3, label=label)
        for xi, mi, (k, n) in zip(x, mean, counted):
            if k < n and np.isfinite(mi):
                ax.annotate(f"{k}/{n}", (xi, mi), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    if baseline is not None:
        ax.axhline(baseline, color="black", ls="--", lw=1.0, label=f"trivial baseline {baseline:.4g}")
    if _spans_decades(xs):
        ax.set_xscale("log")
    if _spans_decades(means):
        ax.set_yscale("log")
    return _labelled_and_saved(fig, ax, path, xlabel, ylabel, title)


def _labelled_and_saved(fig: Figure, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The labels, grid and legend every over-seeds figure has, and the file."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
