"""Compare the gradient picture of several runs.

    python -m rnnlab.compare                                   # every run of experiment rnnlab
    python -m rnnlab.compare --filter "params.cell IN ('rnn', 'lstm')" --experiment rnnlab
    python -m rnnlab.compare --uri sqlite:///outputs/mlflow.db --out outputs/compare

Reads each run's gradients.npz artifact (written by the probe), overlays the decay curves
of its last probe (||dL/dh_t|| against distance from the loss, one panel per layer) in one
PNG and a self-contained HTML page, and prints a table: run, cell, depth, the final
vanishing factor per layer (log10 of the norm at the window's first step over its last;
negative: the gradient fades going back in time), clip rate and best validation loss.
"""
from __future__ import annotations

import argparse
import base64
import html
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


HEADER = ["run", "cell", "depth", "vanishing per layer", "decay rate (R²) per layer", "top Lyapunov exponent per layer",
          "clip rate", "best val loss"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    parser.add_argument("--experiment", default="rnnlab")
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"params.cell IN ('rnn', 'lstm')\"")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    args = parser.parse_args(argv)

    from rnnlab.figures import plot_decay
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
        rows, panels = _rows_and_panels(runs)

    args.out.mkdir(parents=True, exist_ok=True)
    figures = [plot_decay(curves, args.out / f"decay_l{layer}.png", f"layer {layer}: ||dL/dh_t|| at the last probe")
               for layer, curves in sorted(panels.items())]
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print("\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [HEADER, *rows]))
    page = _write_page(args.out / "compare.html", rows, figures)
    print(f"figures: {', '.join(str(f) for f in figures)}; page: {page}")
    return 0


def _rows_and_panels(runs: list[dict[str, Any]]) -> tuple[list[list[Any]], dict[int, dict[str, Any]]]:
    """One table row per run, and per layer the decay curve of each run's last probe (the
    forward direction): {layer: {run label: (T,) log10 norms}}. Per layer the row gives the
    vanishing factor, the fitted decay rate (decades per step) with its R^2 and the top
    Lyapunov exponent (ln per step; its log10 is comparable with the rate)."""
    import numpy as np

    from rnnlab.probe import decay_fit, load_records

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
        label = f"{run['name'] or 'run'} ({run['run_id'][:8]})"  # runs of one name stay apart
        factors, rates, exponents = [], [], []
        for layer, log in enumerate(last):
            panels.setdefault(layer, {})[label] = log
            measured = log[np.isfinite(log)]
            factors.append(f"{measured[0] - measured[-1]:+.2f}" if len(measured) > 1 else "-")
            rate, r2 = decay_fit(log)
            rates.append(f"{rate:+.3f} ({r2:.2f})" if np.isfinite(rate) else "-")
            exponents.append(f"{top[layer]:+.3f}" if top is not None and np.isfinite(top[layer]) else "-")
        m, p = run["metrics"], run["params"]
        rows.append([label, p.get("cell.name", "?"), p.get("depth", "?"), " ".join(factors), " ".join(rates),
                     " ".join(exponents), f"{m.get('clip_rate', float('nan')):.2f}",
                     f"{m.get('best_val_loss', float('nan')):.5f}"])
    return rows, panels


def _write_page(page: Path, rows: list[list[Any]], figures: list[Path]) -> Path:
    """The table and the figures in one self-contained HTML file (images inlined)."""
    images = "".join(
        f'<img alt="{f.name}" src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}"><br>' for f in figures
    )
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>rnnlab: gradient comparison</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style>"
        f"<h1>Gradient decay: {len(rows)} run(s)</h1><table><tr>{''.join(f'<th>{h}</th>' for h in HEADER)}</tr>{cells}</table>"
        f"{images}"
    )
    return page


if __name__ == "__main__":
    sys.exit(main())
