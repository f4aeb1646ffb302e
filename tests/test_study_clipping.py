"""R5, the gradient clipping study (conf/experiment/clipping.yaml): its grid, and its direction
in small, as measured (experiments/clipping/README.md): a tanh RNN whose W_hh starts at spectral
radius 3 has exploding gradients; unclipped SGD takes one huge step into saturation (loss near
the trivial baseline, small gradients), while clipping at 1 keeps it in its chaotic start."""
from __future__ import annotations

import pytest

from rnnlab.compose import compose, jobs
from rnnlab.config import validate
from rnnlab.run import RunError, prepare, run


def test_the_study_is_clip_thresholds_x_seeds_at_pascanu_et_als_settings():
    grid = [validate(job) for job in jobs(["experiment=clipping"])]
    assert [(c.train.clip, c.seed) for c in grid] == [(clip, s) for clip in (0, 1, 10, 100, 1000) for s in range(5)]
    for cfg in grid:
        assert (cfg.cell.name, cfg.depth, cfg.hidden_size) == ("rnn", 1, 50)
        assert cfg.cell.options == {"nonlinearity": "tanh", "recurrent_init": "orthogonal", "recurrent_gain": 3.0}
        assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.lr, cfg.train.batch_size) == ("sgd", 0.0, 0.01, 20)
        assert (cfg.train.on_nonfinite, cfg.data.name, cfg.data.options["length"]) == ("fail", "adding", 100)
    paper = list(jobs(["experiment=clipping_paper"]))
    assert len(paper) == 50 and {j["train"]["steps"] for j in paper} == {5000}


def test_a_recurrent_gain_that_is_not_positive_is_refused_in_one_line():
    with pytest.raises(RunError, match=r"cell\.recurrent_gain=0\.0 is out of range \(allowed: a finite number > 0\)"):
        prepare(compose(["experiment=clipping", "seed=0", "train.clip=1", "tracking=none", "cell.recurrent_gain=0"]))


@pytest.mark.slow
def test_exploding_gradients_unclipped_sgd_jumps_to_saturation_clipped_stays_chaotic(tmp_path):
    small = ["experiment=clipping", "seed=0", "tracking=none", "train.steps=100", "train.steps_per_epoch=50",
             "data.n_val=200", "data.n_test=200"]
    unclipped = run(compose([*small, "train.clip=0"]), output_dir=tmp_path / "unclipped")
    clipped = run(compose([*small, "train.clip=1"]), output_dir=tmp_path / "clipped")
    baseline = unclipped.metrics["baseline_loss"]
    assert unclipped.status == clipped.status == "FINISHED"  # tanh bounds the state: no NaN either way
    # Both saw exploding gradients (~1e11 to 1e13 before clipping); the clipped run still does, every step.
    assert unclipped.history[0]["grad_norm"] > 1e6 and clipped.history[-1]["grad_norm"] > 1e6
    assert clipped.history[-1]["clip_rate"] == 1.0
    assert unclipped.history[-1]["grad_norm"] < 100  # after the jump: saturated, small gradients
    assert unclipped.metrics["test_loss"] < 1.5 * baseline < 3 * baseline < clipped.metrics["test_loss"]
