"""The config tree composes, mirrors the schema key for key, and bad values fail in one line."""
from __future__ import annotations

import dataclasses
import inspect
from importlib.resources import files

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import rnnlab.compose  # noqa: F401  (registers the ${root:...} resolver the cell presets use)
from rnnlab.cells import CELLS
from rnnlab.config import Config, ConfigError, TrackingConfig, TrainConfig, flatten, validate, window_keys
from rnnlab.data import DATASETS

CONF = files("rnnlab.conf")
# hydra/ holds launcher configs and sweep/ search spaces (tested in test_sweep.py): not run options.
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name[0] != "_" and p.name not in ("hydra", "sweep"))


def composed(*overrides: str) -> dict:
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def options(group: str) -> list[str]:
    return sorted(f.name[:-5] for f in (CONF / group).iterdir() if f.name.endswith(".yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    needs = {"csv": ["data.path=x.csv", "data.target=y"], "jena": ["data.path=j.csv"], "char_lm": ["data.path=t.txt"]}
    extra = needs.get(option, []) if group == "data" else []
    if (group, option) == ("cell", "indrnn_li2018"):  # a preset whose bound follows the sequence length
        extra = ["data=adding"]
    cfg = validate(composed(f"{group}={option}", *extra))
    assert isinstance(cfg, Config)


def test_defaults_are_seed_000s_network():
    cfg = validate(composed())
    assert (cfg.cell.name, cfg.depth, cfg.hidden_size, cfg.data.name) == ("lstm", 4, 64, "weather")
    assert cfg.tracking.uri == "sqlite:///outputs/mlflow.db"


def test_yaml_mirrors_the_schema_key_for_key():
    def keys(path):
        return set(yaml.safe_load((CONF / path).read_text()))

    top = {f.name for f in dataclasses.fields(Config)} - set(GROUPS)
    assert keys("config.yaml") - {"defaults", "hydra"} == top
    assert keys("train/default.yaml") == {f.name for f in dataclasses.fields(TrainConfig)}
    for option in options("tracking"):
        assert keys(f"tracking/{option}.yaml") == {f.name for f in dataclasses.fields(TrackingConfig)}
    for option in options("data"):  # the window keys for forecasting datasets, then the loader's options
        loader = DATASETS[option]
        assert keys(f"data/{option}.yaml") == {"name"} | window_keys(loader) | set(inspect.signature(loader).parameters)
    for option in options("cell"):  # a preset (indrnn_li2018) names the cell it sets the options of
        name = yaml.safe_load((CONF / f"cell/{option}.yaml").read_text())["name"]
        assert keys(f"cell/{option}.yaml") == {"name"} | set(list(inspect.signature(CELLS[name].__init__).parameters)[3:])


def test_dataclass_defaults_equal_the_yaml_defaults():
    cfg = validate(composed())
    assert dataclasses.asdict(cfg.train) == dataclasses.asdict(TrainConfig())
    assert (cfg.depth, cfg.hidden_size, cfg.truncation, cfg.seed) == (Config.depth, Config.hidden_size, Config.truncation, Config.seed)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["depth=0"], "depth=0 is out of range (allowed: >= 1)"),
        (["hidden_size=0"], "hidden_size=0 is out of range (allowed: >= 1)"),
        (["truncation=-1"], "truncation=-1 is out of range (allowed: >= 0)"),
        (["truncation=49"], "truncation=49 is longer than the window (allowed: 0 for full BPTT, or 1..data.lookback=48)"),
        (["train.lr=0"], "train.lr=0.0 is out of range (allowed: > 0)"),
        (["train.lr=-1e-3"], "train.lr=-0.001 is out of range (allowed: > 0)"),
        (["train.optimizer=lbfgs"], "train.optimizer='lbfgs' is not allowed (allowed: adam, sgd, rmsprop)"),
        (["depth=two"], "depth='two' must be of type int"),
        (["depth=2.5"], "depth=2.5 must be of type int"),
        (["train.lr=fast"], "train.lr='fast' must be of type float"),
        (["+train.foo=1"], "unknown key 'train.foo' (allowed: epochs, batch_size"),
        (["+foo=1"], "unknown key 'foo' (allowed: cell, data, train, tracking, probe, depth"),
        (["+cell.nonlinearity=relu"], "cell.nonlinearity is not an option of cell 'lstm' (its options: forget_bias, chrono, recurrent_init)"),
        (["cell=rnn", "cell.nonlinearity=sigmoid"], "cell.nonlinearity='sigmoid' is not allowed (allowed: tanh, relu)"),
        (["cell=lstm_variant", "cell.variant=XYZ"], "cell.variant='XYZ' is not allowed (allowed: vanilla, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG, FGR)"),
        (["cell=lstm", "+cell.variant=NIG"], "cell.variant is not an option of cell 'lstm'"),
        (["cell=esn", "cell.leak=fast"], "cell.leak='fast' must be of type float"),
        (["bidirectional=maybe"], "bidirectional='maybe' must be of type bool"),
        (["data.years=oops"], "data.years='oops' must be of type float"),
        (["device=tpu"], "device='tpu' is not allowed (allowed: auto, cpu, cuda)"),
        (["dropout=1.0"], "dropout=1.0 is out of range (allowed: >= 0 and < 1)"),
        (["train.clip=-1"], "train.clip=-1.0 is out of range (allowed: >= 0)"),
        (["train.epochs=0"], "train.epochs=0 is out of range (allowed: >= 1)"),
        (["train.steps=-5"], "train.steps=-5 is out of range (allowed: >= 0)"),
        (["train.steps=1.5"], "train.steps=1.5 must be of type int"),
        (["train.batch_size=0"], "train.batch_size=0 is out of range (allowed: >= 1)"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "leaves no training data"),
        (["data=csv"], "data.path is empty: data=csv needs data.path=..."),
        (["data=char_lm"], "data.path is empty: data=char_lm needs data.path=..."),
        (["data=adding", "+data.lookback=10"], "data.lookback is not an option of dataset 'adding' (its options: length, n_train"),
        (["data=adding", "data.length=20", "truncation=21"], "truncation=21 is longer than the window (allowed: 0 for full BPTT, or 1..data.length=20)"),
        (["data=char_lm", "data.path=t.txt", "truncation=5"], "truncation=5 does not apply to data=char_lm (allowed: 0)"),
        (["data=copy", "data.length=10", "truncation=31"], "truncation=31 is longer than a copy sequence (allowed: 0 for full BPTT, or 1..data.length+20=30)"),
        (["data=digits", "data.read=column"], "data.read='column' is not allowed (allowed: pixel, row)"),
        (["train.lr=inf"], "train.lr=inf must be a finite number"),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(overrides, expected):
    with pytest.raises(ConfigError) as info:
        validate(composed(*overrides))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_copy_accepts_any_truncation_up_to_its_sequence_length():
    assert validate(composed("data=copy", "data.length=10", "truncation=30")).truncation == 30
    assert validate(composed("data=copy", "truncation=7")).truncation == 7


def test_flatten_gives_dotted_keys_with_cell_and_data_options_inline():
    flat = flatten(validate(composed("cell=rnn", "cell.nonlinearity=relu")))
    assert flat["cell.nonlinearity"] == "relu" and flat["train.lr"] == 2e-3
    assert flat["data.years"] == 3.0 and flat["depth"] == 4
    assert not any(k.endswith("options") for k in flat)


def test_tracking_uri_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert validate(composed()).tracking.uri == "http://tracking.example:5000"
    assert validate(composed("tracking.uri=sqlite:///x.db")).tracking.uri == "sqlite:///x.db"


def test_config_cannot_instantiate_arbitrary_classes():
    with pytest.raises(ConfigError, match=r"cell._target_ is not an option of cell 'lstm'"):
        validate(composed("+cell._target_=os.system"))
    with pytest.raises(ConfigError, match=r"unknown key '_target_'"):
        validate(composed("+_target_=subprocess.call"))
    with pytest.raises(ConfigError, match=r"trial.pruner._target_='subprocess.check_output' is not allowed"):
        validate(composed("++trial.pruner={_target_:subprocess.check_output,args:[echo,x]}"))


def test_secrets_are_redacted_but_nothing_else():
    from rnnlab.config import redact, secret_keys

    unresolved = {"tracking": {"uri": "${oc.env:MLFLOW_TRACKING_URI,sqlite:///x.db}", "experiment": "e"},
                  "data": {"path": "${oc.env:S3_SECRET_KEY}", "target": "y"}}
    assert secret_keys(unresolved) == {"data.path"}
    resolved = {"tracking": {"uri": "postgresql://ann:hunter2@db.example:5432/mlflow", "experiment": "e"},
                "data": {"path": "s3://bucket/abc?sig=123", "target": "y"}, "depth": 4}
    out = redact(resolved, {"data.path"})
    assert out == {"tracking": {"uri": "postgresql://ann:***@db.example:5432/mlflow", "experiment": "e"},
                   "data": {"path": "***", "target": "y"}, "depth": 4}


@pytest.mark.parametrize("override,message", [
    ("probe.at=[0,100,50]", "probe.at=[0, 100, 50] is not allowed (allowed: optimiser steps >= 0, increasing"),
    ("probe.at=[-1]", "probe.at=[-1] is not allowed"),
    ("probe.at=[0,0]", "probe.at=[0, 0] is not allowed"),
    ("probe.at=[1.5]", "probe.at[0]=1.5 must be of type int"),
    ("probe.lyapunov.warmup=1000", "probe.lyapunov.warmup=1000 leaves no steps to average (allowed: 0..999"),
    ("probe.lyapunov.k=65", "probe.lyapunov.k=65 is more exponents than a layer's state has (allowed: 0..hidden_size=64)"),
    ("probe.lyapunov.k=-1", "probe.lyapunov.k=-1 is out of range (allowed: >= 0)"),
    ("probe.lyapunov.when=sometimes", "probe.lyapunov.when='sometimes' is not allowed (allowed: end, probes)"),
    ("probe.jacobian_samples=-2", "probe.jacobian_samples=-2 is out of range (allowed: >= 0)"),
])
def test_probe_schedule_and_lyapunov_settings_are_refused_in_one_line(override, message):
    from rnnlab.compose import compose as compose_job

    with pytest.raises(ConfigError) as e:
        compose_job([override])  # composes and validates, as the CLI's preflight does
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
