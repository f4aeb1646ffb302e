"""The figures (a run's, a sweep's): each writes a PNG, and drawing them leaves matplotlib's
global state alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab.figures import plot_decay, plot_gradient_heatmaps, plot_lyapunov, plot_predictions, plot_sweep

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def _draw_all(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(48)
    log_dh = np.log10(rng.uniform(1e-6, 1.0, size=(5, 2, 1, 48))) - 0.3 * np.arange(48)[::-1]  # probes x layers x directions x T
    log_dh[0, 0, 0, :3] = np.nan  # not measured
    log_dh[:, :, :, :2] = -np.inf  # before a truncation window
    return [
        plot_predictions(t, np.sin(t / 5), {"model": np.sin(t / 5) + 0.1, "persistence": np.sin((t - 1) / 5)},
                         folder / "predictions.png", "a title", unit="°C"),
        plot_gradient_heatmaps(log_dh, [0, 10, 20, 30, 40], folder / "heatmaps.png", "a run"),
        plot_decay({"layer 0": log_dh[-1, 0, 0], "layer 1": log_dh[-1, 1, 0]}, folder / "decay.png", "decay",
                   bands={"layer 0": (log_dh[-1, 0, 0] - 1, log_dh[-1, 0, 0] + 1)}),
        plot_lyapunov({"layer 0": [0.1, -0.2, -0.5], "layer 1": [-0.3, -0.4, -0.9]}, folder / "lyapunov.png", "exponents"),
        *plot_sweep([3, 1, 2], [0.5, 2.0, np.nan], {"lr": 0.7, "depth": 0.3}, folder, "loss", "a study", maximize=True),
        *_draw_sweep(folder),
    ]


def _draw_sweep(folder: Path) -> list[Path]:
    """What a sweep's summary draws (rnnlab.sweep imported as the sweeper imports it)."""
    import optuna

    from rnnlab import sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0.0, 1.0) + 0.1 * t.suggest_int("h", 1, 4), n_trials=6)
    files = sweep.summarize(study, ["val_loss"], folder / "sweep")["files"]
    pngs = sorted(p.name for p in files if p.suffix == ".png")
    assert pngs == ["history_val_loss.png", "importance_val_loss.png"], pngs
    return [p for p in files if p.suffix == ".png"]


def test_each_figure_is_a_png_file(tmp_path):
    for path in _draw_all(tmp_path):
        assert path.read_bytes()[:8] == PNG, path


@pytest.mark.slow
def test_drawing_keeps_the_users_backend_and_never_imports_pyplot(tmp_path):
    # A fresh interpreter: this pytest process may have imported pyplot already. The backend is
    # one a notebook might have chosen ("svg" stands in for it), set without importing pyplot;
    # the old code's matplotlib.use("Agg") (in the run's figures, then in the sweep's) would have
    # switched it.
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
sys.path.insert(0, {str(Path(__file__).parent)!r})
import matplotlib
matplotlib.use("svg")
from pathlib import Path
from test_figures import _draw_all
paths = _draw_all(Path({str(tmp_path)!r}))
print(json.dumps({{"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                   "pngs": [p.read_bytes()[:8] == {PNG!r} for p in paths]}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"backend": "svg", "pyplot": False, "pngs": [True] * 8}
