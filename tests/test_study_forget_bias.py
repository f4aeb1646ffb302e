"""R7, the forget-gate bias (experiment=forget_bias), its smallest version: at the initial
weights a forget bias of 1 makes the LSTM's gradient decay much more slowly back in time than a
bias of 0 (sigma(1) = 0.73 of the cell state kept a step against sigma(0) = 0.5), which is why
it leaves the adding problem's plateau sooner."""
from __future__ import annotations

import numpy as np
import pytest

from rnnlab.compose import compose, jobs
from rnnlab.probe import summary_metrics
from rnnlab.run import run

SMALL = ["data.length=40", "hidden_size=32", "train.steps=1", "probe.at=[0]", "data.n_val=64", "data.n_test=64",
         "tracking=none"]


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """run() without an output_dir writes under ./outputs/runs: keep it in the test's folder."""
    monkeypatch.chdir(tmp_path)


def test_the_study_is_two_biases_by_three_seeds_and_its_gru_reference_shares_the_settings():
    lstm, gru = list(jobs(["experiment=forget_bias"])), list(jobs(["experiment=forget_bias_gru"]))
    assert [(j["cell"]["forget_bias"], j["seed"]) for j in lstm] == [(b, s) for b in (0.0, 1.0) for s in (0, 1, 2)]
    assert {j["cell"]["name"] for j in lstm} == {"lstm"} and [j["cell"]["name"] for j in gru] == ["gru"] * 3
    differ = lambda job: {k: v for k, v in job.items() if k not in ("cell", "seed", "tracking")}  # noqa: E731
    assert differ(gru[0]) == differ(lstm[0])  # the same task, budget and probe: one report compares them
    assert gru[0]["tracking"]["experiment"] == lstm[0]["tracking"]["experiment"] == "forget_bias"


def test_a_forget_bias_of_one_keeps_the_gradient_flowing_back_in_time_at_init(capsys):
    rates = {bias: [] for bias in (0.0, 1.0)}
    for bias in rates:
        for seed in (0, 1, 2):
            result = run(compose(["experiment=forget_bias", f"cell.forget_bias={bias}", f"seed={seed}", *SMALL]))
            rates[bias].append(summary_metrics(result.probes[0])["decay_rate/l0"])
    ratio = np.array(rates[0.0]) / np.array(rates[1.0])
    assert (np.array(rates[0.0]) < 0).all() and (ratio > 1.5).all(), rates
