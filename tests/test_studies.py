"""The studies' configs (conf/experiment/): each expands to its grid, as Hydra runs it, and
every job composes and validates before anything is written."""
from __future__ import annotations

import itertools
import os
from importlib.resources import files
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from conftest import run_cli
from rnnlab.compose import jobs
from rnnlab.config import validate
from rnnlab.run import prepare

EXPERIMENTS = sorted(f.name[:-5] for f in files("rnnlab.conf").joinpath("experiment").iterdir() if f.name.endswith(".yaml"))
ROOT = Path(__file__).resolve().parents[1]


def hydras(overrides: list[str]) -> dict:
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


@pytest.mark.parametrize("argv", [["-m", "experiment=adding_t100"], ["experiment=adding_t100"]], ids=["-m", "no -m"])
def test_adding_t100_is_cells_x_seeds_each_job_as_hydra_composes_it(argv):
    grid = list(jobs(argv))  # hydra.mode: MULTIRUN in the file, so -m is optional, as for Hydra
    assert [(j["cell"]["name"], j["seed"]) for j in grid] == list(itertools.product(["rnn", "lstm", "gru"], [0, 1, 2]))
    for job in grid:
        assert job == hydras([f"cell={job['cell']['name']}", f"seed={job['seed']}", "experiment=adding_t100"])
        cfg = validate(job)
        assert (cfg.hidden_size, cfg.depth, cfg.train.lr, cfg.train.batch_size) == (128, 1, 2e-3, 50)  # Li et al.
        assert cfg.data.name == "adding" and cfg.data.options["length"] == 100 and cfg.data.options["fresh"] is True
        assert (cfg.train.steps, cfg.train.patience, cfg.tracking.experiment) == (1500, 0, "adding_t100")
        assert cfg.tracking.run_name == f"{cfg.cell.name}-seed{cfg.seed}"


def test_the_paper_scale_is_the_same_study_with_five_seeds_and_longer_runs():
    quick, paper = list(jobs(["experiment=adding_t100"])), list(jobs(["experiment=adding_t100_paper"]))
    assert len(paper) == 15 and sorted({j["seed"] for j in paper}) == [0, 1, 2, 3, 4]
    assert {j["train"]["steps"] for j in paper} == {20000}
    strip = lambda job: {**job, "seed": 0, "train": {**job["train"], "steps": 0}}  # noqa: E731
    assert strip(paper[0]) == strip(quick[0])  # nothing else differs


def test_a_command_line_key_replaces_its_axis_of_the_grid_and_others_apply_to_every_job():
    grid = list(jobs(["experiment=adding_t100", "seed=7", "hidden_size=16"]))
    assert [(j["cell"]["name"], j["seed"], j["hidden_size"]) for j in grid] == [("rnn", 7, 16), ("lstm", 7, 16), ("gru", 7, 16)]
    assert [j["cell"]["name"] for j in jobs(["experiment=adding_t100", "cell=indrnn"])] == ["indrnn"] * 3
    # Sweeping the experiment itself: Hydra reads no grid from a swept group, one job each.
    assert [j["train"]["steps"] for j in jobs(["-m", "experiment=adding_t100,adding_t100_paper"])] == [1500, 20000]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_study_composes_validates_and_prepares(name):
    grid = list(jobs([f"experiment={name}"]))
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        sweeper = hydra_compose("config", overrides=[f"experiment={name}"], return_hydra_config=True).hydra.sweeper
    searched = "n_trials" in sweeper  # an Optuna study: one job and a search space, not a grid
    assert len(grid) >= 1 if searched else len(grid) > 1
    configs = [validate(job) for job in grid]
    prepare(configs[0])  # the data, the model on the meta device, the store's address: nothing written


@pytest.mark.slow
def test_preflight_refuses_a_bad_job_of_a_studys_grid_before_anything_is_written(workdir):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = run_cli(["experiment=adding_t100", "+hydra.sweeper.params.hidden_size='8,0'", "tracking=none"], workdir, env)
    assert result.returncode == 2
    assert result.stderr.strip() == "rnnlab: error: hidden_size=0 is out of range (allowed: >= 1)"
    assert not (workdir / "outputs").exists() and not (workdir / "multirun").exists()
