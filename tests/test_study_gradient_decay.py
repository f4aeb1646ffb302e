"""R1, gradient decay (experiment=gradient_decay), its smallest version: at T = 60 and the
initial weights, the tanh RNN's ||dL/dh_t|| decays at least twice as fast per step as the
LSTM's and several times faster than the IndRNN's, and the decay rate agrees with the top
Lyapunov exponent, measured independently on the same weights."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnlab.compose import compose, jobs
from rnnlab.probe import summary_metrics
from rnnlab.run import run

SMALL = ["data.length=60", "hidden_size=32", "train.steps=1", "probe.at=[0]", "data.n_val=64", "data.n_test=64",
         "probe.lyapunov.steps=300", "probe.lyapunov.warmup=50", "tracking=none"]


def decay(cell: str, seed: int, lyapunov: int = 0) -> tuple[float, float]:
    """The initial weights' decay rate (log10 per step) and top Lyapunov exponent (ln per step)."""
    result = run(compose(["experiment=gradient_decay", f"cell={cell}", f"seed={seed}", *SMALL,
                          f"probe.lyapunov.k={lyapunov}"]))
    (probe,) = result.probes
    assert probe.step == 0  # the initial weights
    return summary_metrics(probe)["decay_rate/l0"], result.metrics.get("lyapunov/l0/1", math.nan)


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """run() without an output_dir writes under ./outputs/runs: keep it in the test's folder."""
    monkeypatch.chdir(tmp_path)


def test_the_study_is_four_cells_by_three_seeds_probed_at_init_and_after_training():
    grid = list(jobs(["experiment=gradient_decay"]))
    assert [(j["cell"]["name"], j["seed"]) for j in grid] == [(c, s) for c in ("rnn", "lstm", "gru", "indrnn") for s in (0, 1, 2)]
    last = grid[0]["train"]["steps"] - 1
    assert all(j["probe"]["at"] == [0, 100, last] and j["probe"]["every"] == 0 for j in grid)
    assert {j["tracking"]["experiment"] for j in grid} == {"gradient_decay"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_tanh_rnns_gradient_decays_twice_as_fast_as_the_lstms_and_as_its_lyapunov_exponent_says(capsys):
    tanh = [decay("rnn", seed, lyapunov=1) for seed in (0, 1, 2)]
    lstm = [decay("lstm", seed)[0] for seed in (0, 1, 2)]
    indrnn, _ = decay("indrnn", 0)
    ratios = [rate / other for (rate, _), other in zip(tanh, lstm)]
    assert all(rate < 0 for rate, _ in tanh) and all(r > 1.5 for r in ratios) and np.mean(ratios) > 2, ratios
    assert tanh[0][0] / indrnn > 4, (tanh[0][0], indrnn)
    for rate, exponent in tanh:  # a long product of Jacobians grows at the top exponent's rate
        assert rate == pytest.approx(exponent / math.log(10), rel=0.3), (rate, exponent)
