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


def plot_gradient_heatmaps(dh: Any, steps: Any, path: Path) -> Path:
    """log10 ||dL/dh^l_t|| as layer x time images at the first, middle and last probe of a
    run (dh: probes x layers x directions x T). Time runs left to right; the loss is at the
    right edge, so vanishing shows as a fade to the left."""
    picks = sorted({0, len(dh) // 2, len(dh) - 1})
    fig = _figure(figsize=(10, 1.2 + 0.9 * dh.shape[1] * dh.shape[2] * len(picks)))
    axes = fig.subplots(len(picks), 1, squeeze=False)
    with np.errstate(divide="ignore"):
        logs = np.log10(dh)
    finite = logs[np.isfinite(logs)]
    low, high = (finite.min(), finite.max()) if finite.size else (-1, 0)
    labels = [f"l{l}{'←' if d else ''}" for l in range(dh.shape[1]) for d in range(dh.shape[2])]
    for ax, p in zip(axes[:, 0], picks):
        rows = logs[p].reshape(-1, logs.shape[-1])  # (layers x directions, T)
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"log10 ||dL/dh|| at step {int(steps[p])}")
        fig.colorbar(image, ax=ax, fraction=0.03)
    axes[-1, 0].set_xlabel("time step t in the window (the loss is at the right)")
    fig.savefig(path, dpi=100)
    return path


def plot_decay(curves: dict[str, Any], path: Path, title: str) -> Path:
    """||dL/dh_t|| against the distance from the loss (log scale), one line per entry of
    ``curves`` (label -> (T,) norms at t = 0..T-1). Geometric vanishing is a straight line down."""
    fig = _figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for label, norms in curves.items():
        norms = np.asarray(norms, dtype=float)
        distance = np.arange(len(norms))[::-1]  # T-1 .. 0
        keep = np.isfinite(norms) & (norms > 0)
        ax.plot(distance[keep], norms[keep], marker=".", ms=3, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the loss (time steps)")
    ax.set_ylabel("||dL/dh_t|| (batch mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


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
