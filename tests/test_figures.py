"""The figures (a run's, a sweep's): each writes a PNG, and drawing them leaves matplotlib's
global state alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab import figures
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
                         folder / "predictions.png", "a run: forecast", "temperature (°C)"),
        plot_gradient_heatmaps(log_dh, [0, 10, 20, 30, 40], folder / "heatmaps.png", "a run"),
        plot_decay({"layer 0": log_dh[-1, 0, 0], "layer 1": log_dh[-1, 1, 0]}, folder / "decay.png", "a run: decay",
                   bands={"layer 0": (log_dh[-1, 0, 0] - 1, log_dh[-1, 0, 0] + 1)}),
        plot_lyapunov({"layer 0": [0.1, -0.2, -0.5], "layer 1": [-0.3, -0.4, -0.9]}, folder / "lyapunov.png",
                      "a run: exponents"),
        *plot_sweep([3, 1, 2], [0.05, 2.0, np.nan], {"lr": 0.7, "depth": 0.3}, folder, "loss", "a study", maximize=True),
        *_draw_sweep(folder),
    ]


def _draw_sweep(folder: Path) -> list[Path]:
    """What a sweep's summary draws (rnnlab.sweep imported as the sweeper imports it)."""
    import optuna

    from rnnlab import sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="a study", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0.0, 1.0) + 0.1 * t.suggest_int("h", 1, 4), n_trials=6)
    files = sweep.summarize(study, ["val_loss"], folder / "sweep")["files"]
    pngs = sorted(p.name for p in files if p.suffix == ".png")
    assert pngs == ["history_val_loss.png", "importance_val_loss.png"], pngs
    return [p for p in files if p.suffix == ".png"]


def test_each_figure_is_a_png_file(tmp_path):
    for path in _draw_all(tmp_path):
        assert path.read_bytes()[:8] == PNG, path


def test_every_figure_is_titled_labelled_and_sized_for_the_mlflow_viewer(tmp_path, monkeypatch):
    # Each figure is caught as it is saved: its axes are read, not its pixels.
    drawn = {}
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and save(fig, path))
    _draw_all(tmp_path)
    assert len(drawn) == 8
    for name, fig in drawn.items():
        plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        titles = " ".join([fig.get_suptitle()] + [ax.get_title() for ax in plots])
        assert "a run" in titles or "a study" in titles, (name, titles)  # whose figure it is
        assert all(ax.get_ylabel() for ax in plots), name
        assert plots[-1].get_xlabel(), name  # stacked panels share the bottom one's
        for ax in plots:
            if len([l for l in ax.get_lines() if not l.get_label().startswith("_")]) > 1:
                assert ax.get_legend() is not None or fig.legends, name  # several series: which is which
        width = fig.get_figwidth() * figures.DPI
        assert 900 <= width <= 1100 or name == "importance_val_loss.png" and width <= 1100, (name, width)
    heatmap = drawn["heatmaps.png"]
    (bar,) = [ax for ax in heatmap.axes if ax.get_label() == "<colorbar>"]
    assert "log10 ||dL/dh_t||" in bar.get_ylabel()
    assert "layer 0 next to the input, at the bottom" in heatmap.get_suptitle()
    bottom = heatmap.axes[0]
    assert bottom.get_ylim()[0] < bottom.get_ylim()[1]  # row 0 (layer 0) drawn lowest
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["0 (input)", "1"]
    assert drawn["predictions.png"].axes[0].get_ylabel() == "temperature (°C)"
    assert drawn["history_loss.png"].axes[0].get_yscale() == "log"  # 0.05 .. 2.0: values span decades
    assert drawn["history_val_loss.png"].axes[0].get_yscale() == "linear"


def test_decay_keeps_a_labels_colour_and_names_its_line_in_svg(tmp_path):
    from matplotlib.colors import to_hex

    curves = {"b (2)": np.linspace(0, -3, 10), "a (1)": np.linspace(0, -2, 10)}
    path = plot_decay(curves, tmp_path / "decay.svg", "decay", colors={"a (1)": "#ff0000", "b (2)": "#0000ff"},
                      ids={"a (1)": "run-1", "b (2)": "run-2"})
    svg = path.read_text()
    for gid, color in (("run-1", "#ff0000"), ("run-2", "#0000ff")):
        start = svg.index(f'<g id="{gid}">')
        assert f"stroke: {color}" in svg[start:svg.index("</g>", start)], gid
    assert figures.colors_hex(3) == [to_hex(c) for c in ("tab:blue", "tab:orange", "tab:green")]
    assert len(set(figures.colors_hex(25))) == 25


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


@pytest.mark.slow
def test_a_runs_figures_name_the_run_and_the_forecasts_target_and_unit(tmp_path, monkeypatch):
    from conftest import TINY
    from rnnlab.compose import compose
    from rnnlab.run import run

    drawn = {}
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and save(fig, path))
    run(compose([*TINY, "tracking=none", "probe.every=2", "tracking.run_name=tiny"]), output_dir=tmp_path / "weather")
    assert set(drawn) == {"predictions.png", "gradient_heatmaps.png", "gradient_decay.png", "lyapunov.png"}
    (ax,) = drawn["predictions.png"].axes
    assert ax.get_ylabel() == "temperature (°C)" and ax.get_xlabel() == "time"
    assert ax.get_title().startswith("tiny: 1-step forecast of temperature")
    for name in ("gradient_decay.png", "lyapunov.png"):
        assert drawn[name].axes[0].get_title().startswith("tiny: "), name
    drawn.clear()
    run(compose(["data=adding", "data.length=20", "data.n_train=64", "data.n_val=32", "data.n_test=32", "depth=1",
                 "hidden_size=8", "train.epochs=1", "train.batch_size=32", "quiet=true", "tracking=none",
                 "probe.every=1"]), output_dir=tmp_path / "adding")
    assert "predictions.png" not in drawn and "gradient_decay.png" in drawn  # no time axis to forecast along
