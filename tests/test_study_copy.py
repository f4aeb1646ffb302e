"""R4, the copy memory study (conf/experiment/copy.yaml): its grid, and its direction in small.

In small: the quick study's LSTM and optimiser at a delay of T = 10 (the study's T = 100 needs
thousands of steps to leave the baseline) beats the memoryless cross-entropy and accuracy."""
from __future__ import annotations

import math

import pytest

from rnnlab.compose import compose, jobs
from rnnlab.config import validate
from rnnlab.run import run


def test_the_study_is_delays_x_seeds_at_arjovsky_et_als_settings():
    grid = [validate(job) for job in jobs(["experiment=copy"])]
    assert [(c.data.options["length"], c.seed) for c in grid] == [(t, s) for t in (100, 200) for s in (0, 1, 2)]
    for cfg in grid:
        assert (cfg.cell.name, cfg.depth, cfg.hidden_size) == ("lstm", 1, 40)
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.clip, cfg.train.batch_size) == ("rmsprop", 1e-3, 1.0, 20)
        assert cfg.data.name == "copy" and cfg.data.options["fresh"] is True and cfg.train.patience == 0
        assert cfg.tracking.experiment == "copy" and cfg.tracking.run_name == f"lstm-T{cfg.data.options['length']}-seed{cfg.seed}"
    paper = [validate(job) for job in jobs(["experiment=copy_paper"])]
    assert sorted({c.data.options["length"] for c in paper}) == [100, 200, 300, 500] and len(paper) == 20
    assert {c.train.steps for c in paper} == {20000}


@pytest.mark.slow
def test_an_lstm_beats_the_memoryless_baseline_at_a_short_delay(tmp_path):
    cfg = compose(["experiment=copy", "seed=0", "tracking=none", "data.length=10", "train.steps=3000",
                   "data.n_val=200", "data.n_test=500"])
    result = run(cfg, output_dir=tmp_path / "run")
    m = result.metrics
    assert m["baseline_loss"] == pytest.approx(10 * math.log(8) / 30)
    assert m["test_loss"] < 0.95 * m["baseline_loss"]  # it recalls symbols, not only blanks (~0.88x at 3,000 steps)
    assert m["test_accuracy"] > m["baseline_accuracy"] + 0.01  # ~ +0.06
