"""R6, Greff et al. 2017 (conf/experiment/greff.yaml): the search space and settings the study
declares, the sweeper's balanced draw of the variants, and the smallest version of the study end
to end: a handful of real trials on the row-by-row digits, analysed by rnnlab.importance."""
from __future__ import annotations

import math

import optuna
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from rnnlab import importance as I
from rnnlab.compose import compose, jobs
from rnnlab.config import validate
from rnnlab.run import run

VARIANTS = ["vanilla", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR"]
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def sweeper(overrides: list[str]) -> dict:
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)


def test_the_quick_study_is_a_balanced_random_search_over_the_variants_and_three_hyperparameters():
    s = sweeper(["experiment=greff"])
    assert s["params"] == {"cell.variant": f"choice({','.join(VARIANTS)})", "train.lr": "tag(log,interval(1e-3,3.0))",
                           "hidden_size": "tag(log,int(interval(8,128)))", "train.momentum": "interval(0.0,0.98)"}
    assert (s["n_trials"], s["balance"], s["study_name"]) == (270, "cell.variant", "greff")  # 30 trials per variant
    assert s["sampler"]["name"] == "random" and s["pruner"]["name"] == "none"
    (job,) = jobs(["experiment=greff"])  # one job config: the search space is the sweeper's
    cfg = validate(job)
    assert (cfg.cell.name, cfg.depth, cfg.data.name, cfg.data.options["read"]) == ("lstm_variant", 1, "digits", "row")
    assert (cfg.train.optimizer, cfg.train.steps, cfg.train.batch_size, cfg.train.on_nonfinite) == ("sgd", 100, 64, "skip")
    assert not cfg.tracking.enabled and cfg.tracking.experiment == "greff"


def test_the_paper_scale_is_the_same_search_with_200_trials_per_variant_and_a_longer_task():
    s, quick = sweeper(["experiment=greff_paper"]), sweeper(["experiment=greff"])
    assert s["n_trials"] == 200 * len(VARIANTS) and s["study_name"] == "greff_paper"
    assert s["params"] == quick["params"] and s["balance"] == "cell.variant"
    (job,) = jobs(["experiment=greff_paper"])
    cfg = validate(job)
    assert cfg.data.options["read"] == "pixel" and cfg.train.steps == 2000 and cfg.tracking.enabled


def test_balance_gives_each_choice_its_turn_and_a_retry_keeps_its_own():
    from rnnlab.sweep import enqueue_balanced

    space = {"v": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
             "lr": optuna.distributions.FloatDistribution(1e-3, 1, log=True)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(7):
        enqueue_balanced(study, "v", ["a", "b", "c"])
        trial = study.ask(space)
        study.tell(trial, 1.0)
    assert [t.params["v"] for t in study.trials] == ["a", "b", "c", "a", "b", "c", "a"]
    assert len({t.params["lr"] for t in study.trials}) == 7  # the rest is still drawn


@pytest.mark.slow
def test_a_bad_balance_key_is_one_line_before_any_trial(workdir):
    from conftest import run_cli

    result = run_cli(["experiment=greff", "hydra.sweeper.balance=train.lr", "hydra.sweeper.n_trials=1"], workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rnnlab: error: hydra.sweeper.balance='train.lr' is not a choice(...) of the search space (allowed: cell.variant)")
    assert not (workdir / "outputs" / "optuna.journal").exists()


# The smallest study: vanilla and NFG at three learning rates, 40 SGD steps each (~1 s a run).
TRIALS = [(v, lr) for v in ("vanilla", "NFG") for lr in (1e-3, 3e-2, 1.0)]


@pytest.mark.slow
def test_the_smallest_study_end_to_end_the_learning_rate_matters_most(tmp_path, capsys):
    space = {"cell.variant": optuna.distributions.CategoricalDistribution(VARIANTS),
             "train.lr": optuna.distributions.FloatDistribution(1e-3, 3.0, log=True),
             "hidden_size": optuna.distributions.IntDistribution(8, 128, log=True),
             "train.momentum": optuna.distributions.FloatDistribution(0.0, 0.98)}
    storage = str(tmp_path / "study.journal")
    from rnnlab.sweep import open_storage

    study = optuna.create_study(study_name="tiny", storage=open_storage(storage))
    for variant, lr in TRIALS:
        params = {"cell.variant": variant, "train.lr": lr, "hidden_size": 16, "train.momentum": 0.9}
        config = compose(["experiment=greff", *(f"{k}={v}" for k, v in params.items()), "train.steps=40", "train.steps_per_epoch=20"])
        result = run(config, output_dir=tmp_path / f"{variant}-{lr}")
        value = result.metrics["val_loss"]
        assert math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    values = {(t.params["cell.variant"], t.params["train.lr"]): t.value for t in study.trials}
    for variant in ("vanilla", "NFG"):
        # What the study claims in small: lr = 1e-3 learns nothing in 40 steps (ln 10 = 2.30 is chance),
        # lr = 1 with momentum learns; a margin of 0.5 nats.
        assert values[(variant, 1e-3)] > 2.0 and values[(variant, 1.0)] < values[(variant, 1e-3)] - 0.5
    out = tmp_path / "report"
    assert I.main(["--storage", storage, "--study", "tiny", "--out", str(out), "--trees", "16", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    mains = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in text.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip() in space}
    assert mains["train.lr"] > 0.6 and mains["train.lr"] > 3 * mains["cell.variant"]  # only lr and variant varied
    assert mains["hidden_size"] == 0 and mains["train.momentum"] == 0  # held fixed: the forest never splits on them
    assert "| NFG | 3 |" in text and (out / "importance.png").exists()
