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


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure  # imported on first use: a run without figures never pays for it

    return Figure(figsize=figsize, layout="constrained")


def plot_predictions(
    time_axis: Any, truth: Any, predictions: dict[str, Any], path: Path, title: str, unit: str = ""
) -> Path:
    """A PNG of truth and each prediction over a stretch of the test split."""
    fig = _figure(figsize=(11, 4))
    ax = fig.subplots()
    ax.plot(time_axis, truth, color="black", lw=1.6, label="truth")
    for (name, values), style in zip(predictions.items(), ["-", "--", ":"]):
        ax.plot(time_axis, values, style, lw=1.1, label=name)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.legend(loc="upper right", ncols=len(predictions) + 1)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=110)
    return path


def plot_gradient_heatmaps(log_dh: Any, steps: Any, path: Path, title: str = "") -> Path:
    """log10 ||dL/dh^l_t|| as layer x time images at the first, middle and last probe of a
    run (log_dh: probes x layers x directions x T, as the probe records it). Time runs left to
    right; the loss is at the right edge, so vanishing shows as a fade to the left. Steps no
    gradient reaches (-inf: before a truncation window) are left blank."""
    picks = sorted({0, len(log_dh) // 2, len(log_dh) - 1})
    fig = _figure(figsize=(10, 1.4 + 0.9 * log_dh.shape[1] * log_dh.shape[2] * len(picks)))
    axes = fig.subplots(len(picks), 1, squeeze=False)
    finite = log_dh[np.isfinite(log_dh)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1, 0)
    labels = [f"layer {l}{' (backward)' if d else ''}" for l in range(log_dh.shape[1]) for d in range(log_dh.shape[2])]
    for ax, p in zip(axes[:, 0], picks):
        rows = np.where(np.isfinite(log_dh[p]), log_dh[p], np.nan).reshape(-1, log_dh.shape[-1])  # (layers x directions, T)
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest", origin="lower")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylabel("layer (0: bottom)")
        ax.set_title(f"{title + ': ' if title else ''}log10 ||dL/dh|| at step {int(steps[p])}")
        fig.colorbar(image, ax=ax, fraction=0.03, label="log10 ||dL/dh_t||")
    axes[-1, 0].set_xlabel("time step t in the window (the loss is at the right)")
    fig.savefig(path, dpi=100)
    return path


def plot_decay(
    curves: dict[str, Any], path: Path, title: str, bands: dict[str, tuple[Any, Any]] | None = None,
    band_label: str = "batch mean; band: 10th-90th percentile",
) -> Path:
    """log10 ||dL/dh_t|| against the distance from the loss, one line per entry of ``curves``
    (label -> (T,) log10 norms at t = 0..T-1), with the band between the batch's 10th and 90th
    percentiles where ``bands`` has the label, and the fitted decay line with its rate (decades
    per step) and R^2 in the legend. Geometric vanishing is a straight line down. The axis is
    log10 itself, not a log scale: the values can lie below float64's range."""
    from rnnlab.probe import decay_fit

    fig = _figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for (label, log), color in zip(curves.items(), _colors(len(curves))):
        log = np.asarray(log, dtype=float)
        distance = np.arange(len(log))[::-1]  # T-1 .. 0
        keep = np.isfinite(log)
        rate, r2 = decay_fit(log)
        fitted = f"; rate {rate:.3g}/step, R² {r2:.2f}" if np.isfinite(rate) else ""
        ax.plot(distance[keep], log[keep], marker=".", ms=3, lw=1.2, color=color, label=f"{label}{fitted}")
        if bands and label in bands:
            low, high = (np.asarray(b, dtype=float) for b in bands[label])
            both = keep & np.isfinite(low) & np.isfinite(high)
            ax.fill_between(distance[both], low[both], high[both], color=color, alpha=0.2, lw=0)
        if np.isfinite(rate):
            d = distance[keep]
            intercept = np.mean(log[keep] - rate * d)
            ax.plot(d, intercept + rate * d, ls="--", lw=0.9, color=color)
    ax.set_xlabel("distance from the loss (time steps)")
    ax.set_ylabel(f"log10 ||dL/dh_t|| ({band_label})" if bands else "log10 ||dL/dh_t|| (batch mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_lyapunov(spectra: dict[str, Any], path: Path, title: str) -> Path:
    """The top k Lyapunov exponents (ln per step) of each layer, one line per entry (label ->
    (k,)): above 0 the layer's dynamics expand a direction (gradients can explode), below 0
    every direction contracts (they vanish)."""
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for (label, exponents), color in zip(spectra.items(), _colors(len(spectra))):
        exponents = np.asarray(exponents, dtype=float)
        ax.plot(np.arange(1, len(exponents) + 1), exponents, marker="o", color=color, label=label)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("exponent index i (largest first)")
    ax.set_ylabel("Lyapunov exponent λ_i (ln per step)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def _colors(n: int) -> list[Any]:
    """One colour per line, the same for the same position in every panel."""
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(n)]

def plot_sweep(numbers: Any, values: Any, importances: dict[str, float], folder: Path, name: str, title: str,
               maximize: bool = False) -> list[Path]:
    """A sweep's figures for its objective ``name``: history_<name>.png, each finished trial's
    value (dots, by trial number) and the best so far (a step line); importance_<name>.png, one
    bar per hyperparameter, the largest at the top (only when ``importances`` has any)."""
    order = np.argsort(numbers)
    numbers, values = np.asarray(numbers)[order], np.asarray(values, dtype=float)[order]
    best = (np.fmax if maximize else np.fmin).accumulate(values)  # fmin/fmax: a NaN never becomes the best
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.scatter(numbers, values, s=16, color="tab:blue", label=name)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=name, title=f"{title}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    paths = [folder / f"history_{name}.png"]
    fig.savefig(paths[-1], dpi=100)
    if importances:
        ranked = sorted(importances.items(), key=lambda item: item[1])
        fig = _figure(figsize=(6, 0.5 + 0.4 * len(ranked)))
        ax = fig.subplots()
        ax.barh([label for label, _ in ranked], [value for _, value in ranked], color="tab:blue")
        ax.set(xlabel=f"fANOVA importance for {name}", title=f"{title}: hyperparameter importance")
        paths.append(folder / f"importance_{name}.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


def plot_learning_curves(
    curves: dict[str, tuple[Any, Any, Any]], path: Path, title: str, ylabel: str, baseline: float | None = None,
) -> Path:
    """One line per group (label -> (steps, mean, half-width) over its seeds), the band of
    mean ± half-width where it is defined (two runs or more), and the task's trivial baseline
    as a dashed line. The axis is fitted to the means and the baseline, on a log scale when
    they are all positive (losses span decades): a wide band (two seeds: t = 12.7) is cut at
    the edge rather than flattening every curve."""
    fig = _figure(figsize=(8, 4.5))
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
    fig = _figure(figsize=(12, 4.6))
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
    fig.savefig(path, dpi=100)
    return path


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
    fig = _figure(figsize=(7, 4.5))
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
    if xs.size and np.all(xs > 0) and xs.max() > 10 * xs.min():
        ax.set_xscale("log")
    if means.size and np.all(means > 0) and means.max() > 10 * means.min():
        ax.set_yscale("log")
    return _labelled_and_saved(fig, ax, path, xlabel, ylabel, title)


def _labelled_and_saved(fig: Figure, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The labels, grid and legend every over-seeds figure has, and the file."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path
