"""Compare the gradient picture of several runs.

    python -m rnnlab.compare                                   # every run of experiment rnnlab
    python -m rnnlab.compare --filter "params.`cell.name` IN ('rnn', 'lstm')" --experiment rnnlab
    python -m rnnlab.compare --uri sqlite:///outputs/mlflow.db --out outputs/compare

Reads each run's gradients.npz artifact (written by the probe), overlays the decay curves
of its last probe (||dL/dh_t|| against distance from the loss, one PNG per layer, each run
one colour in every panel) and writes them with the table in a self-contained HTML page. It
prints the table: run name and short id (runs of one name stay apart), cell, depth, the
params that differ across the runs, the final vanishing factor per layer (log10 of the norm
at the window's first step over its last; negative: the gradient fades going back in time),
clip rate and best validation loss.
"""
from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


SHOWN = ("cell", "cell.name", "depth")  # params with a column of their own
MEASURED = ["vanishing per layer", "decay rate (R²) per layer", "top Lyapunov exponent per layer", "clip rate",
            "best val loss"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    parser.add_argument("--experiment", default="rnnlab")
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"params.`cell.name` IN ('rnn', 'lstm')\"")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    args = parser.parse_args(argv)

    from rnnlab.figures import colors_hex, plot_decay
    from rnnlab.tracking import TrackingError
    from rnnlab.tracking.queries import gradient_runs

    with tempfile.TemporaryDirectory() as tmp:
        try:
            runs = gradient_runs(args.uri, args.experiment, args.filter, Path(tmp))
        except TrackingError as e:
            print(f"rnnlab.compare: error: {e}", file=sys.stderr)
            return 2
        if not runs:
            print("rnnlab.compare: error: no run with a gradients.npz artifact matches "
                  f"(experiment {args.experiment!r}, filter {args.filter!r}); runs need probe.every > 0", file=sys.stderr)
            return 2
        header, rows, panels = _rows_and_panels(runs)

        # One colour per run, in every panel and in the page's table, whatever layers it has.
        colors = dict(zip((row[0] for row in rows), colors_hex(len(rows))))
        labels = {row[0]: f"{row[1]} ({row[2]})" for row in rows}  # run name (short id)
        args.out.mkdir(parents=True, exist_ok=True)
        figures, drawings = [], []
        for layer, curves in sorted(panels.items()):
            named = {labels[run_id]: log for run_id, log in curves.items()}
            palette = {labels[run_id]: colors[run_id] for run_id in curves}
            title = f"{args.experiment}, layer {layer}: ||dL/dh_t|| at each run's last probe"
            figures.append(plot_decay(named, args.out / f"decay_l{layer}.png", title, colors=palette))
            ids = {labels[run_id]: f"run-{run_id}-l{layer}" for run_id in curves}
            drawings.append(plot_decay(named, Path(tmp) / f"decay_l{layer}.svg", title, colors=palette, ids=ids).read_text())
        page = _write_page(args.out / "compare.html", header, rows, colors, drawings)
    shown = [row[1:] for row in rows]  # the terminal shows the short id, not the full one
    widths = [max(len(str(r[i])) for r in [header[1:], *shown]) for i in range(len(header) - 1)]
    print("\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header[1:], *shown]))
    print(f"figures: {', '.join(str(f) for f in figures)}; page: {page}")
    return 0


def _rows_and_panels(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]], dict[int, dict[str, Any]]]:
    """The table's header, one row per run (its full run id first, then its name, short id,
    cell, depth, the params that differ between runs of one cell, and what was measured), and per layer
    the decay curve of each run's last probe (the forward direction): {layer: {run id: (T,)
    log10 norms}}. Per layer the row gives the vanishing factor, the fitted decay rate (decades
    per step) with its R^2 and the top Lyapunov exponent (ln per step; its log10 is comparable
    with the rate)."""
    import numpy as np

    from rnnlab.probe import decay_fit, load_records

    # The params that differ between runs of one cell: the rest (cell.chrono, n_params across
    # cells) only repeat what the cell column says.
    keys = sorted({k for run in runs for k in run["params"]} - set(SHOWN))
    cells: dict[str, list[dict[str, str]]] = {}
    for run in runs:
        cells.setdefault(_cell(run["params"]), []).append(run["params"])
    differ = [k for k in keys if any(len({p.get(k) for p in group}) > 1 for group in cells.values())]
    rows, panels = [], {}
    for run in runs:
        arrays = load_records(run["gradients"])
        if "log_dh" in arrays:
            last = arrays["log_dh"][-1, :, 0]  # (layers, T) at the last probe
        else:  # a run from before log-norms
            with np.errstate(divide="ignore"):
                last = np.log10(arrays["dh"][-1, :, 0])
        end, per_probe = arrays.get("lyapunov_end"), arrays.get("lyapunov")
        if end is not None and end.size:  # the trained model's (probe.lyapunov.when=end)
            top = end[:, 0]
        elif per_probe is not None and per_probe.ndim == 3 and len(per_probe):  # the last probe's
            top = per_probe[-1, :, 0]
        else:
            top = None
        run_id = run["run_id"]
        factors, rates, exponents = [], [], []
        for layer, log in enumerate(last):
            panels.setdefault(layer, {})[run_id] = log  # keyed by id: runs of one name stay apart
            measured = log[np.isfinite(log)]
            factors.append(f"{measured[0] - measured[-1]:+.2f}" if len(measured) > 1 else "-")
            rate, r2 = decay_fit(log)
            rates.append(f"{rate:+.3f} ({r2:.2f})" if np.isfinite(rate) else "-")
            exponents.append(f"{top[layer]:+.3f}" if top is not None and np.isfinite(top[layer]) else "-")
        m, p = run["metrics"], run["params"]
        rows.append([run_id, run["name"] or "run", run_id[:8], _cell(p), p.get("depth", "?"),
                     *(p.get(k, "-") for k in differ), " ".join(factors), " ".join(rates), " ".join(exponents),
                     f"{m.get('clip_rate', float('nan')):.2f}", f"{m.get('best_val_loss', float('nan')):.5f}"])
    return ["run id (full)", "run", "run id", "cell", "depth", *differ, *MEASURED], rows, panels


def _cell(params: dict[str, str]) -> str:
    return params.get("cell.name", params.get("cell", "?"))


def _write_page(page: Path, header: list[str], rows: list[list[Any]], colors: dict[str, str], drawings: list[str]) -> Path:
    """The table and the figures in one self-contained HTML file: the figures inline SVG, each
    run's line an element ``run-<run id>-l<layer>``, each table row a swatch of the run's
    colour and its full run id (``data-run``)."""
    svgs = "".join(f"<figure>{d[d.index('<svg'):]}</figure>" for d in drawings)  # without the XML prologue
    cells = "".join(
        f"<tr data-run='{html.escape(r[0])}'><td><span class='swatch' style='background:{colors[r[0]]}'></span></td>"
        f"<td title='{html.escape(r[0])}'>" + "</td><td>".join(html.escape(str(c)) for c in r[1:]) + "</td></tr>"
        for r in rows)
    page.write_text(
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>rnnlab: gradient comparison</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}"
        "td{white-space:nowrap}figure{margin:1em 0}svg{width:100%;max-width:960px;height:auto}"
        ".swatch{display:inline-block;width:1.6em;height:0.9em;border-radius:2px}</style>"
        f"<h1>Gradient decay: {len(rows)} run(s)</h1>"
        f"<table><tr><th></th>{''.join(f'<th>{html.escape(h)}</th>' for h in header[1:])}</tr>{cells}</table>"
        f"{svgs}</html>"
    )
    return page


if __name__ == "__main__":
    sys.exit(main())
