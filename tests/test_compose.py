"""rnnlab.compose against Hydra's own compose: the same config for every kind of override."""
from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from rnnlab.compose import compose, config_groups, jobs
from rnnlab.config import ConfigError

OVERRIDES = [
    [],
    ["cell=gru", "depth=3"],
    ["data=copy", "data.length=10", "truncation=5"],
    ["+train.extra=1"],
    ["++train.lr=0.5", "++train.new=[1,2]"],
    ["~probe"],
    ["train={lr:0.5,epochs:3}"],
    ["tracking.run_name=abc", "probe.every=null"],
    ["cell=lstm_variant", "cell.variant=FGR", "hidden_size=16"],
    ["tracking=none", "seed=7", "train.optimizer=sgd"],
]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: " ".join(o) or "defaults")
def test_each_job_equals_what_hydra_composes(overrides):
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        expected = OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    (job,) = list(jobs(overrides))
    assert job == expected


def test_a_grid_is_every_combination_in_order_and_each_job_equals_hydras():
    grid = list(jobs(["-m", "cell=rnn,gru", "depth=1,2", "train.lr=1e-3,2e-3,3e-3"]))
    assert len(grid) == 12
    assert [(j["cell"]["name"], j["depth"], j["train"]["lr"]) for j in grid[:4]] == [
        ("rnn", 1, 1e-3), ("rnn", 1, 2e-3), ("rnn", 1, 3e-3), ("rnn", 2, 1e-3)]
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        last = OmegaConf.to_container(hydra_compose("config", overrides=["cell=gru", "depth=2", "train.lr=3e-3"]), resolve=True)
    assert grid[-1] == last


def test_without_multirun_a_comma_list_is_one_job_and_ranges_are_left_to_the_sweeper():
    assert len(list(jobs(["-m", "train.lr=interval(1e-4,1e-2)", "depth=1,2"]))) == 2
    assert len(list(jobs(["-m", "seed=range(0,300)"]))) == 300


def test_a_hydra_setting_is_left_to_hydra():
    (job,) = list(jobs(["hydra.job.chdir=true", "hydra/launcher=basic", "depth=2"]))
    assert job["depth"] == 2 and "hydra" not in job


@pytest.mark.parametrize("overrides,message", [
    (["trian.lr=1"], "unknown key 'trian.lr' (did you mean 'train.lr'? allowed: cell, data, train,"),
    (["train.lrr=1"], "unknown key 'train.lrr' (did you mean 'train.lr'? allowed in train: epochs,"),
    (["cell.forget_bais=1"], "cell.forget_bais is not an option of cell 'lstm' (did you mean 'cell.forget_bias'? its options:"),
    (["cell=nosuch"], "cell=nosuch is not an option of group 'cell' (allowed: cifg, esn, gru,"),
    (["+depth=3"], "+depth=3: 'depth' already exists (set it with depth=3)"),
    (["~nosuch"], "~nosuch: cannot delete 'nosuch', it does not exist"),
])
def test_bad_overrides_are_one_line_with_the_nearest_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        list(jobs(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_empty_sweep_is_refused():
    with pytest.raises(ConfigError, match="the sweep is empty"):
        list(jobs(["-m", "seed=range(0,0)"]))


def test_groups_are_read_from_the_config_folder():
    assert {"cell", "data", "train", "tracking", "sweep", "hydra/launcher"} <= config_groups()


def test_compose_gives_the_validated_config():
    cfg = compose(["cell=gru", "depth=3", "cell.recurrent_init=orthogonal"])
    assert cfg.cell.name == "gru" and cfg.depth == 3 and cfg.cell.options == {"recurrent_init": "orthogonal"}
