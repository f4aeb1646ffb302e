"""R9, IRNN against tanh (conf/experiment/irnn.yaml): its grid, and the IRNN's instability at a
high learning rate in small (the learning half needs ~1,000 steps: experiments/irnn/README.md)."""
from __future__ import annotations

from rnnlab.compose import compose, jobs
from rnnlab.config import validate
import pytest

from rnnlab.run import RunError, run


def test_the_study_is_irnn_and_tanh_x_five_learning_rates_x_seeds():
    grid = [validate(job) for job in jobs(["experiment=irnn"])]
    cells = [(c.cell.options["nonlinearity"], c.cell.options["recurrent_init"]) for c in grid]
    assert cells == [("relu", "identity")] * 15 + [("tanh", "default")] * 15
    assert sorted({c.train.lr for c in grid}) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2] and len({c.seed for c in grid}) == 3
    assert all(c.data.options["length"] == 100 and c.hidden_size == 100 and c.train.clip == 1.0 for c in grid)
    assert len(list(jobs(["experiment=irnn_paper"]))) == 50


@pytest.mark.slow
def test_at_lr_1e_2_the_irnn_diverges_where_the_tanh_rnn_does_not(tmp_path):
    small = ["experiment=irnn", "seed=1", "train.lr=0.01", "tracking=none", "train.steps=20",
             "train.steps_per_epoch=20", "data.n_val=100", "data.n_test=100"]
    with pytest.raises(RunError, match="non-finite gradient norm at step"):
        run(compose([*small, "+experiment/irnn_cell=irnn"]), output_dir=tmp_path / "irnn")
    assert run(compose([*small, "+experiment/irnn_cell=tanh"]), output_dir=tmp_path / "tanh").status == "FINISHED"
