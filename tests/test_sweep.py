"""The Optuna sweeper: grammar, storage repair, reaping, recording, and whole sweeps run as a
user runs them (`python -m rnnlab -m hydra/sweeper=optuna ...` in subprocesses)."""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import TINY, run_cli
from hydra_plugins.rnnlab_sweeper.optuna_sweeper import distribution
from rnnlab import sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)
SWEEP = ["-m", "hydra/sweeper=optuna", *TINY, "tracking=none", "hydra.sweeper.importance=false"]
FAST_REAPER = ["hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=3"]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@functools.lru_cache(maxsize=None)
def _database(url: str) -> object:
    """One storage per database URL: the tests poll, and each new storage keeps its pool's
    connections open until collected (PostgreSQL ran out of them)."""
    return sweep.open_storage(url)


def load(workdir: Path, name: str | None = None, url: str | None = None) -> optuna.Study:
    storage = _database(url) if url else sweep.open_storage(str(workdir / sweep.DEFAULT_STORAGE))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return optuna.load_study(study_name=name or names[0], storage=storage)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def assert_no_duplicates(study: optuna.Study) -> None:
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))


# ---------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    "override,expected",
    [
        ("cell=choice(rnn,lstm,gru)", CategoricalDistribution(["rnn", "lstm", "gru"])),
        ("cell=rnn,gru", CategoricalDistribution(["rnn", "gru"])),
        ("hidden_size=choice(32,64)", CategoricalDistribution([32, 64])),
        ("depth=range(1,5)", IntDistribution(1, 4)),  # Hydra's range excludes its stop, like Python's
        ("depth=range(1,8,3)", IntDistribution(1, 7, step=3)),
        ("dropout=interval(0,0.5)", FloatDistribution(0.0, 0.5)),
        ("depth=int(interval(1,6))", IntDistribution(1, 6)),
        ("train.lr=tag(log,interval(1e-4,1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
        ("hidden_size=tag(log,int(interval(8,256)))", IntDistribution(8, 256, log=True)),
        ("depth=3", "3"),
    ],
)
def test_hydra_optuna_sweeper_grammar_maps_to_optuna_distributions(override, expected):
    (parsed,) = OverridesParser.create().parse_overrides([override])
    assert distribution(parsed) == expected


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=interval(1e-2,1e-4)", "train.lr=interval(0.01,0.0001): low > high"),
        ("train.lr=tag(log,interval(0,1))", "train.lr: log scale needs bounds > 0"),
        ("depth=range(5,1)", "depth=range(5,1,1): the range is empty"),
        ("cell=glob(*)", "not a distribution this sweeper knows"),
    ],
)
def test_distributions_that_cannot_be_sampled_are_refused(override, message):
    (parsed,) = OverridesParser.create().parse_overrides([override])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distribution(parsed)


@pytest.mark.parametrize("name", ["cell_zoo", "greff"])
def test_the_ready_search_spaces_compose_and_every_choice_and_bound_validates(name):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from rnnlab.cells import CELLS
    from rnnlab.config import validate

    if name == "greff" and "lstm_variant" not in CELLS:
        pytest.skip("sweep=greff needs cell=lstm_variant (the LSTM variants of Greff et al. 2017)")
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        for key, text in params.items():
            (parsed,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
            d = distribution(parsed)
            for value in (d.choices if hasattr(d, "choices") else (d.low, d.high)):
                job = compose("config", overrides=[f"sweep={name}", f"{key}={value}"])
                validate(OmegaConf.to_container(job, resolve=True))


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "cmaes", "nsgaii"])
def test_every_ready_sampler_builds_seeded_and_grid_gets_its_space_from_the_overrides(name):
    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import SAMPLERS, OptunaSweeper

    if name == "cmaes":
        pytest.importorskip("cmaes", reason="pip install 'rnnlab[cmaes]'")
    sweeper = OptunaSweeper(SAMPLERS[name], {}, "minimize", None, None, 1, 1, None, 0.25, None, ["val_loss"],
                            5, 30, 0, 0, True)
    space = {"depth": IntDistribution(1, 3), "cell": CategoricalDistribution(["rnn", "gru"])}
    sampler = sweeper._sampler(space, 2)
    assert type(sampler).__name__ == sweep.SAMPLER_CLASSES[name]
    if name == "grid":
        assert sampler._search_space == {"cell": ["rnn", "gru"], "depth": [1, 2, 3]}


# ------------------------------------------- no code from config: every path that reaches an import


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """What a hostile config would name: a module outside the project (importable, on sys.path)
    that leaves a marker file when it is imported and when its function is called. The current
    directory is an empty project. Yields (the function's dotted name, the marker)."""
    elsewhere, project = tmp_path / "elsewhere", tmp_path / "project"
    elsewhere.mkdir()
    project.mkdir()
    marker = tmp_path / "MARKER"
    (elsewhere / "rnnlab_hostile.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        f"def run(*args, **kwargs):\n    Path({str(marker)!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(str(elsewhere))
    monkeypatch.chdir(project)
    yield "rnnlab_hostile.run", marker
    sys.modules.pop("rnnlab_hostile", None)


def assert_nothing_ran(marker: Path) -> None:
    assert not marker.exists() and "rnnlab_hostile" not in sys.modules


def a_sweeper(**given):
    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import PRUNERS, SAMPLERS, OptunaSweeper

    kwargs = dict(sampler=SAMPLERS["tpe"], pruner=PRUNERS["median"], direction="minimize", storage=None,
                  study_name=None, n_trials=1, n_jobs=1, params=None, max_failure_rate=0.25,
                  custom_search_space=None, objectives=["val_loss"], heartbeat_interval=5, grace_period=30,
                  threads_per_trial=0, gpus=0, importance=True)
    return OptunaSweeper(**{**kwargs, **given})


def one_line_exit(capsys, call) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


@pytest.mark.parametrize("args,message", [
    # the grammar and the keys
    (["train.lr=interval(1e-2,1e-4)"], "train.lr=interval(0.01,0.0001): low > high"),
    (["train.lr=tag(log,interval(0,1e-2))"], "train.lr: log scale needs bounds > 0 (got interval(0.0,0.01))"),
    (["nokey=interval(0,1)"], "nokey is not a key of the config (see python -m rnnlab --cfg job)"),
    (["cell=choice(lstm,rnn)", "cell.forget_bias=interval(0,2)"],
     "cell.forget_bias is not a key of the config when cell=rnn (see python -m rnnlab --cfg job)"),
    (["hidden_size=choice()"], "Error parsing override 'hidden_size=choice()' ValueError while evaluating 'choice()': empty choice is not legal"),
    # a bound the schema refuses
    (["dropout=interval(0,1)"], "dropout=1.0 is out of range (allowed: >= 0 and < 1) (in the search space at dropout=1.0)"),
    # a fixed value: the model refuses it (rnnlab.run.prepare), not the schema
    (["cell=transformer", "hidden_size=10", "train.lr=interval(1e-4,1e-2)"], "cell.heads=4: must divide hidden_size=10 (in the search space)"),
    # a sampled bound that only the model refuses
    (["cell=transformer", "hidden_size=int(interval(8,10))"], "cell.heads=4: must divide hidden_size=10 (in the search space at hidden_size=10)"),
    (["cell=indrnn", "cell.u_max=interval(-1,1)"], "cell.u_max=-1.0 must be > 0 (or null: unbounded) (in the search space)"),
])
def test_the_sweepers_plan_refuses_bad_space_input_in_one_line_before_anything_exists(args, message, tmp_path, monkeypatch, capsys):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext

    # Each job is checked as the entry point checks one (rnnlab.compose.check_jobs).
    monkeypatch.chdir(tmp_path)
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        sweeper = a_sweeper()
        sweeper.config = compose("config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
        sweeper.hydra_context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        assert one_line_exit(capsys, lambda: sweeper.plan(args)) == f"rnnlab: error: {message}"
        fixed, space, _ = sweeper.plan(["cell=transformer", "hidden_size=choice(8,16)"])  # the same plan, good values
    assert fixed == ["cell=transformer"] and space == {"hidden_size": CategoricalDistribution([8, 16])}
    assert list(tmp_path.iterdir()) == []  # no outputs/: no study, no run, no folder


def test_the_issues_pruner_is_refused_by_name_with_the_allowed_ones():
    spec = {"_target_": "subprocess.check_output", "args": ["echo", "x"]}
    with pytest.raises(sweep.SweepError) as info:
        sweep.choice_spec("pruner", spec, "trial.pruner")
    assert str(info.value) == (
        "trial.pruner._target_='subprocess.check_output' is not allowed (allowed: optuna.pruners.MedianPruner, "
        "optuna.pruners.PercentilePruner, optuna.pruners.HyperbandPruner, optuna.pruners.SuccessiveHalvingPruner, "
        "optuna.pruners.ThresholdPruner, optuna.pruners.NopPruner; or trial.pruner.name: median, percentile, "
        "hyperband, successive_halving, threshold, none)"
    )


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"name": "nope"}, "trial.pruner.name='nope' is not allowed (allowed: median, percentile, hyperband, "),
        ({"n_startup_trials": 2}, "trial.pruner.name=None is not allowed (allowed: median, "),
        ("median", "trial.pruner='median' is not allowed (allowed: a mapping {name: median|percentile|"),
        ({"name": "median", "n_startup_trials": {"_target_": "os.system", "_args_": ["true"]}},
         "trial.pruner.n_startup_trials._target_='os.system' is not allowed (allowed: plain values"),
        ({"name": "median", "n_warmup_steps": [1, {"_partial_": True}]}, "trial.pruner.n_warmup_steps[1]._partial_=True is not allowed"),
        ({"name": "median", "n_startup_trials": print}, "trial.pruner.n_startup_trials=<built-in function print> is not allowed"),
        ({"_target_": "optuna.pruners.MedianPruner", "name": "hyperband"},
         "trial.pruner: _target_='optuna.pruners.MedianPruner' and name='hyperband' disagree"),
    ],
)
def test_a_pruner_is_a_registry_name_with_plain_values_and_nothing_else(spec, message):
    with pytest.raises(sweep.SweepError) as info:
        sweep.choice_spec("pruner", spec, "trial.pruner")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_the_1_3_target_form_is_read_as_its_registry_name_and_builds_the_same_object():
    old = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 3}
    assert sweep.choice_spec("pruner", old, "k") == {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3}
    assert sweep.choice_spec("sampler", {"_target_": "optuna.samplers.RandomSampler", "seed": 4}, "k") == {"name": "random", "seed": 4}
    pruner = sweep.build("pruner", old, "k")
    assert type(pruner) is optuna.pruners.MedianPruner
    assert vars(pruner) == vars(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3))
    assert vars(pruner) != vars(optuna.pruners.MedianPruner())  # the options reached it
    assert sweep.choice_spec("pruner", {}, "k") == {} and sweep.build("pruner", None, "k") is None
    for name, cls in {**sweep.SAMPLER_CLASSES, **sweep.PRUNER_CLASSES}.items():  # every registry name is a public class
        kind = "sampler" if name in sweep.SAMPLER_CLASSES else "pruner"
        assert isinstance(getattr(getattr(optuna, kind + "s"), cls), type), name


def test_an_option_the_class_does_not_take_is_one_line_naming_the_options_it_does():
    with pytest.raises(sweep.SweepError) as info:
        sweep.build("pruner", {"name": "median", "n_startup": 1}, "hydra.sweeper.pruner")
    assert str(info.value) == ("hydra.sweeper.pruner.n_startup is not an option of the median pruner "
                               "(allowed: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials)")
    with pytest.raises(sweep.SweepError, match=r"^hydra.sweeper.pruner: .*negative, but got n_startup_trials=-1"):
        sweep.build("pruner", {"name": "median", "n_startup_trials": -1}, "hydra.sweeper.pruner")


def test_a_hostile_pruner_reaching_the_job_is_refused_before_the_study_is_opened(hostile, tmp_path):
    from types import SimpleNamespace

    target, marker = hostile
    journal = tmp_path / "j"
    for pruner in ({"_target_": target, "_args_": [str(marker)]}, {"name": "median", "n_startup_trials": {"_target_": target}}):
        cfg = SimpleNamespace(storage=str(journal), study="s", number=0, parent_run=None, threads=0, pruner=pruner)
        with pytest.raises(sweep.SweepError, match=r"^trial\.pruner\..*is not allowed"):
            sweep.job_trial(cfg)
        with pytest.raises(sweep.SweepError):
            sweep.build("pruner", pruner, "trial.pruner")
    assert_nothing_ran(marker)
    assert not journal.exists()


@pytest.mark.parametrize("kind", ["sampler", "pruner"])
def test_a_hostile_sampler_or_pruner_of_the_sweeper_fails_its_plan_before_anything(hostile, kind, capsys):
    target, marker = hostile
    for spec in ({"_target_": target}, {"name": "tpe" if kind == "sampler" else "median", "seed": {"_target_": target}}):
        err = one_line_exit(capsys, lambda: a_sweeper(**{kind: spec}).plan([]))
        assert err.startswith(f"rnnlab: error: hydra.sweeper.{kind}.") and "is not allowed" in err
    assert_nothing_ran(marker)
    assert not Path("outputs").exists()


def test_a_target_inside_the_launchers_settings_is_refused_before_hydra_instantiates_it(hostile, capsys):
    from hydra import compose, initialize_config_module

    target, marker = hostile
    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna", f"++hydra.launcher.extra={{_target_:{target},_args_:[x]}}"],
                      return_hydra_config=True)
    err = one_line_exit(capsys, lambda: a_sweeper().setup(hydra_context=None, task_function=None, config=cfg))
    assert err == f"rnnlab: error: hydra.launcher.extra._target_='{target}' is not allowed (allowed: plain values; rnnlab instantiates nothing from config)"
    assert_nothing_ran(marker)


@pytest.mark.parametrize("path,why", [
    ("rnnlab_hostile.run", "is not a module of this project"),  # on sys.path, outside the current directory
    ("subprocess.check_output", "is not a module of this project"),  # the standard library
    ("optuna.create_study", "is not a module of this project"),  # an installed package
    ("sys.exit", "is not a module of this project (built in"),
    ("os.system()", "is not allowed (allowed: module.function"),
    ("nowhere_at_all.fn", "no module 'nowhere_at_all'"),
])
def test_a_custom_search_space_outside_the_project_is_refused_before_it_is_imported(hostile, path, why, capsys):
    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import _user_function

    _, marker = hostile
    err = one_line_exit(capsys, lambda: _user_function(path))
    assert err.startswith(f"rnnlab: error: hydra.sweeper.custom_search_space={path!r}") and why in err, err
    assert_nothing_ran(marker)


def test_a_custom_search_space_in_the_project_is_imported(hostile):
    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import _user_function

    Path("my_space_fn.py").write_text("def extra(cfg, trial):\n    return 'mine'\n")
    sys.path.insert(0, str(Path.cwd()))
    try:
        assert _user_function("my_space_fn.extra")(None, None) == "mine"
    finally:
        sys.path.remove(str(Path.cwd()))
        sys.modules.pop("my_space_fn", None)


def test_what_a_launcher_does_with_a_batch_is_read_from_its_settings():
    from hydra import compose, initialize_config_module

    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import _launcher_runs

    with initialize_config_module("rnnlab.conf", version_base="1.3"):
        basic = compose("config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True).hydra.launcher
    assert _launcher_runs(dict(basic)) == (True, False)  # Hydra's basic launcher: in this process, one by one
    assert _launcher_runs({"_target_": "x.JoblibLauncher", "n_jobs": 2, "prefer": "processes"}) == (False, False)
    assert _launcher_runs({"_target_": "x.SlurmLauncher", "partition": "gpu", "cpus_per_task": 8}) == (False, True)


# ------------------------------------------------------------------------ the study side


def test_optunas_journal_file_is_one_json_object_per_line_and_a_torn_last_line_is_skipped(tmp_path):
    # What repair_journal relies on, pinned: an Optuna that writes its journal otherwise fails here.
    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=sweep.open_storage(str(path)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    data = path.read_bytes()
    assert data.endswith(b"\n") and all(isinstance(json.loads(line), dict) for line in data.splitlines())
    path.write_bytes(data + b'{"anything": [1, 2')  # torn: no newline
    assert len(load(tmp_path, "s", str(path)).trials) == 2


def test_a_journal_in_a_layout_rnnlab_does_not_know_is_left_alone(tmp_path, capsys):
    path = tmp_path / "study.journal"
    path.write_bytes(b"PK\x03\x04 not lines of JSON\n{\"a\": 1}\ntorn")
    assert sweep.repair_journal(path) == 0 and path.read_bytes() == b"PK\x03\x04 not lines of JSON\n{\"a\": 1}\ntorn"
    assert "left to Optuna unrepaired" in capsys.readouterr().err


def test_the_public_trial_id_lookup_finds_each_trial_of_each_study_in_one_storage(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "j"))
    studies = [sweep.load_or_create_study(storage, name, ["minimize"], {}) for name in ("a", "b")]
    for study in studies * 2:  # interleaved: ids are not trial numbers
        study.ask()
    for study in studies:
        for number in (0, 1):
            frozen = storage.get_trial(sweep.trial_id(storage, study, number))
            assert frozen.number == number and frozen in study.get_trials(deepcopy=False)


def test_a_torn_journal_line_is_repaired_and_the_study_loads_again(tmp_path):
    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=sweep.open_storage(str(path)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    good = path.read_bytes()
    path.write_bytes(good + b'{"op_code": 5, "worker_id": "x", "tri')  # a worker killed mid-write
    assert sweep.repair_journal(path) > 0 and path.read_bytes() == good
    # Unrepaired, the next appends are glued onto the fragment, and every later load fails.
    *head, second_last, last, _ = good.split(b"\n")
    path.write_bytes(b"\n".join([*head, b'{"op_code": 5, "params": {"x": [1, {"y"' + second_last, last, b""]))
    with pytest.raises(ValueError):
        optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))))
    sweep.repair_journal(path)  # keeps the glued-on record, drops the fragment
    assert path.read_bytes() == good and len(load(tmp_path, "s", str(path)).trials) == 3


def test_a_stale_trial_is_failed_with_its_reason_and_retried_once_with_the_same_params(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "j"))
    study = sweep.load_or_create_study(storage, "s", ["minimize"], {})
    beat = sweep.Heartbeat(study, storage, interval=60, grace=60)  # beats only when told to
    trial = sweep.claim(beat, {"x": FloatDistribution(0, 1)})
    storage.set_trial_system_attr(beat.trials[trial.number], sweep.HEARTBEAT, time.time() - 10)
    assert sweep.reap(study, storage, grace=5) == [trial.number]
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL and "no heartbeat" in failed.user_attrs[sweep.FAIL_REASON]
    assert sweep.count(study) == sweep.Counts(done=0, failed=0, running=0, waiting=1)  # the retry stands in
    retry = sweep.claim(beat, {"x": FloatDistribution(0, 1)})
    assert retry.params == failed.params and retry.user_attrs[sweep.RETRY_OF] == trial.number
    storage.set_trial_system_attr(beat.trials[retry.number], sweep.HEARTBEAT, time.time() - 10)
    sweep.reap(study, storage, grace=5)
    assert sweep.count(study) == sweep.Counts(done=1, failed=1, running=0, waiting=0)  # never twice
    beat.close()


def test_non_finite_objectives_and_exceptions_are_fail_with_a_reason_pruned_is_pruned(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "j"))
    study = sweep.load_or_create_study(storage, "s", ["minimize"], {})
    beat = sweep.Heartbeat(study, storage, interval=60, grace=60)
    outcomes = [{"val_loss": math.inf}, {"val_loss": math.nan}, FloatingPointError("non-finite loss"),
                optuna.TrialPruned(), {"test_mse": 0.1}, {"val_loss": 0.5}]
    states = [sweep.record(beat, sweep.claim(beat, {}), o, ["val_loss"]) for o in outcomes]
    beat.close()
    assert states == ["FAIL", "FAIL", "FAIL", "PRUNED", "FAIL", "COMPLETE"]
    reasons = [t.user_attrs.get(sweep.FAIL_REASON, "") for t in study.trials]
    assert "val_loss=inf" in reasons[0] and "val_loss=nan" in reasons[1]
    assert reasons[2] == "FloatingPointError: non-finite loss" and "no number" in reasons[4]
    assert study.best_value == 0.5  # +inf was never stored as a result


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_the_job_reports_every_epoch_and_is_pruned_by_the_configured_pruner(tmp_path, pruner):
    from types import SimpleNamespace

    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import PRUNERS

    spec = {**PRUNERS[pruner], **({"n_startup_trials": 1} if pruner == "median" else {"max_resource": 4})}
    storage = sweep.open_storage(str(tmp_path / "j"))
    study = sweep.load_or_create_study(storage, "s", ["minimize"], {})
    beat = sweep.Heartbeat(study, storage, interval=60, grace=60)
    pruned_at = []
    for curve in ([1.0, 0.5, 0.25, 0.1],) + ([9.0, 9.0, 9.0, 9.0],) * 6:  # one good run, then bad ones
        trial = sweep.claim(beat, {})
        job = sweep.job_trial(SimpleNamespace(storage=str(tmp_path / "j"), study="s", number=trial.number,
                                              parent_run=None, threads=0, pruner=spec))
        assert job.tags == {"rnnlab.study": "s", "rnnlab.trial": str(trial.number)}
        try:
            for epoch, loss in enumerate(curve, 1):
                job.on_epoch_end(epoch, loss)
            outcome = {"val_loss": min(curve)}
        except job.pruned as e:
            outcome = e
            pruned_at.append(epoch)
        sweep.record(beat, trial, outcome, ["val_loss"])
    beat.close()
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 0.25, 4: 0.1}
    assert pruned_at and all(e < 4 for e in pruned_at)  # bad runs stopped before their last epoch
    assert {t.state for t in study.trials[1:]} >= {TrialState.PRUNED}


def test_a_multi_objective_summary_has_the_pareto_front_importances_and_figures(tmp_path):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-1, log=True), t.suggest_int("h", 8, 64)), n_trials=12)
    result = sweep.summarize(study, ["val_loss", "n_params"], tmp_path)
    assert result["best_trials"] and {"val_loss/lr", "n_params/h"} <= set(result["importance"])
    assert result["importance"]["n_params/h"] > 0.9  # n_params is h here: fANOVA must see it
    names = {p.name for p in result["files"]}
    assert {"optimization_results.yaml", "importance.csv", "history_val_loss.png", "history_n_params.png",
            "importance_val_loss.png", "importance_n_params.png"} <= names


def test_resuming_with_another_search_space_is_refused_before_writing(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "j"))
    sweep.load_or_create_study(storage, "s", ["minimize"], {"x": "a"})
    before = (tmp_path / "j").read_bytes()
    with pytest.raises(sweep.SweepError, match="another search space .differs in x"):
        sweep.load_or_create_study(storage, "s", ["minimize"], {"x": "b"})
    with pytest.raises(sweep.SweepError, match="direction"):
        sweep.load_or_create_study(storage, "s", ["maximize"], {"x": "a"})
    assert (tmp_path / "j").read_bytes() == before


# ------------------------------------------------------------------------- whole sweeps


@pytest.mark.slow
def test_a_sweep_with_pruning_fills_the_study_and_mlflow_parent_and_children(tracked_workdir):
    from mlflow.tracking import MlflowClient

    args = ["-m", "hydra/sweeper=optuna", *TINY, "train.epochs=4", "train.patience=0",
            "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner.n_startup_trials=2",
            "hydra/sweeper/sampler=random", "train.lr=tag(log,interval(1e-4,3e-2))", "cell=choice(rnn,gru)"]
    result = run_cli(args, tracked_workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tracked_workdir)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.PRUNED in states  # seeded sampler, CPU-deterministic training
    assert all(t.intermediate_values for t in study.trials)  # val_loss reported every epoch
    client = MlflowClient(f"sqlite:///{tracked_workdir}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    (parent,) = [r for r in runs if "rnnlab.trial" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["rnnlab.trial"]) for r in children) == list(range(6))
    assert all(r.data.tags["rnnlab.study"] == study.study_name for r in children)
    pruned = {t.number for t in study.trials if t.state == TrialState.PRUNED}
    assert {int(r.data.tags["rnnlab.trial"]) for r in children if r.info.status == "KILLED"} == pruned
    # optuna-dashboard: each trial leads to its MLflow run (pruned ones too), the axis says val_loss
    by_trial = {int(r.data.tags["rnnlab.trial"]): r.info.run_id for r in children}
    assert {t.number: t.user_attrs.get("mlflow_run_id") for t in study.trials} == by_trial
    assert study.metric_names == ["val_loss"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.cell"] == study.best_params["cell"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_results.yaml", "importance.csv", "history_val_loss.png", "importance_val_loss.png"} <= artifacts


@pytest.mark.slow
def test_a_nan_trial_does_not_stop_the_sweep_and_a_model_that_cannot_fit_is_refused_before_any(workdir):
    # lr=1e30 diverges (NaN loss): that trial fails, the sweep goes on.
    args = [*SWEEP, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=0.5",
            "train.lr=choice(1e30,0.002)"]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    by_lr = {t.params["train.lr"]: t for t in load(workdir).trials}
    assert by_lr[0.002].state == TrialState.COMPLETE
    assert by_lr[1e30].state == TrialState.FAIL and "non-finite loss" in by_lr[1e30].user_attrs[sweep.FAIL_REASON]
    # hidden_size=10^6 needs terabytes: a choice of the space that cannot run is refused before the first trial
    # (it used to fail trial by trial with torch's allocation error).
    refused = run_cli([*SWEEP, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=big",
                       "hidden_size=choice(8,1000000)"], workdir)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("rnnlab: error: hidden_size=1000000, depth=")
    assert len(load(workdir).trials) == 2  # the first study's, untouched


@pytest.mark.slow
def test_too_many_failures_stop_the_sweep_with_one_line(workdir):
    args = [*SWEEP, "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0", "train.lr=choice(1e30)"]
    result = run_cli(args, workdir)
    assert result.returncode == 1
    line = next(x for x in result.stderr.splitlines() if x.startswith("rnnlab: error:"))
    assert line.startswith("rnnlab: error: 1 trials failed, more than max_failure_rate=0.0 of n_trials=4; the last: ")
    assert "non-finite loss" in line
    assert len(load(workdir).trials) == 1


def _two_workers(workdir: Path, extra: list[str], url: str | None) -> optuna.Study:
    name = f"two-{uuid.uuid4().hex[:8]}"
    args = [*SWEEP, "hydra.sweeper.n_trials=4", f"hydra.sweeper.study_name={name}",
            "train.lr=tag(log,interval(1e-4,1e-2))", *extra]
    workers = [start(args, workdir) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0 and "Traceback" not in err and "warning" not in err, err[-3000:]
    study = load(workdir, name, url)
    assert_no_duplicates(study)
    # The count is checked before each ask, RUNNING trials included: only two asks racing
    # between one worker's count and the other's ask can overshoot, by at most workers - 1.
    assert 4 <= len(study.trials) <= 5
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    return study


@pytest.mark.slow
def test_two_workers_share_one_study_in_the_default_journal_file(workdir):
    _two_workers(workdir, [], None)


@pytest.mark.slow
def test_parallel_trials_report_to_the_study_and_get_their_share_of_the_cores(workdir):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'rnnlab[parallel]'")
    args = [*SWEEP, "hydra/launcher=parallel", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.threads_per_trial=0", "train.lr=tag(log,interval(1e-4,1e-2))"]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # reported from the worker processes
    cores = len(os.sched_getaffinity(0))
    for config in (workdir / "outputs" / "multirun").rglob("config.yaml"):
        assert f"threads: {max(1, cores // 2)}" in config.read_text()


def _reachable(driver: str, port: int, extra: str, server: str) -> str | None:
    """None if the database server answers on loopback and its driver imports, else why not."""
    try:
        __import__(driver)
    except ImportError:
        return f"the {driver} driver is not installed (pip install 'rnnlab[{extra}]')"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return f"no {server} on 127.0.0.1:{port}"
    return None


def _postgres_reachable() -> str | None:
    return _reachable("psycopg", 5432, "postgres", "PostgreSQL")


@pytest.mark.slow
@pytest.mark.skipif(_postgres_reachable() is not None, reason=str(_postgres_reachable()))
def test_two_workers_share_one_study_in_postgresql(workdir):
    study = _two_workers(workdir, [f"hydra.sweeper.storage={POSTGRES}"], POSTGRES)
    optuna.delete_study(study_name=study.study_name, storage=POSTGRES)


def _pg_restart_unavailable() -> str | None:
    if _postgres_reachable() is not None:
        return _postgres_reachable()
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return "no pg_ctlcluster (Debian's postgresql-common) to restart the server with"
    if os.geteuid() != 0:
        return "restarting PostgreSQL with pg_ctlcluster needs root"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_pg_restart_unavailable() is not None, reason=str(_pg_restart_unavailable()))
def test_a_sweep_goes_on_through_a_postgresql_restart(workdir):
    name = f"restart-{os.getpid()}-{time.time_ns()}"
    args = [*SWEEP, *FAST_REAPER, "hydra.sweeper.n_trials=5", f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.storage={POSTGRES}", "train.epochs=3", "train.steps_per_epoch=20",
            "train.lr=tag(log,interval(1e-4,1e-2))"]
    proc = start(args, workdir)

    def mid_sweep() -> bool:  # a trial done, two or more still to start
        try:
            counts = sweep.count(optuna.load_study(study_name=name, storage=POSTGRES))
        except Exception:  # not created yet
            return False
        return counts.done >= 1 and counts.done + counts.running <= 3

    wait_for(mid_sweep, 180, "a finished trial")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    restarted = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                               capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    assert_no_duplicates(study)
    assert sweep.count(study) == sweep.Counts(done=5, failed=0, running=0, waiting=0), err[-3000:]
    optuna.delete_study(study_name=name, storage=POSTGRES)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_its_trial_failed_and_the_other_finishes(workdir):
    name = "killed"
    args = [*SWEEP, *FAST_REAPER, "hydra.sweeper.n_trials=3", f"hydra.sweeper.study_name={name}",
            "train.epochs=3", "train.steps_per_epoch=40", "train.lr=tag(log,interval(1e-4,1e-2))"]
    a, b = start(args, workdir), start(args, workdir)
    journal = workdir / sweep.DEFAULT_STORAGE

    def a_is_mid_trial() -> bool:
        if not journal.exists():
            return False
        running = load(workdir, name).get_trials(states=(TrialState.RUNNING,))
        return any(t.system_attrs.get(sweep.WORKER, "").endswith(f":{a.pid}") for t in running)

    wait_for(a_is_mid_trial, 120, "worker A to start a trial")
    a.send_signal(signal.SIGKILL)
    a.wait()
    _, err = b.communicate(timeout=240)
    assert b.returncode == 0, err[-3000:]
    study = load(workdir, name)
    assert_no_duplicates(study)
    (killed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert "no heartbeat" in killed.user_attrs[sweep.FAIL_REASON] and str(a.pid) in killed.user_attrs[sweep.FAIL_REASON]
    (retry,) = [t for t in study.trials if t.user_attrs.get(sweep.RETRY_OF) == killed.number]
    assert retry.params == killed.params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sweep.count(study) == sweep.Counts(done=3, failed=0, running=0, waiting=0)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_n_trials_when_run_again(workdir):
    args = [*SWEEP, *FAST_REAPER, "hydra.sweeper.n_trials=5", "train.epochs=3", "train.steps_per_epoch=20",
            "train.lr=tag(log,interval(1e-4,1e-2))"]
    first = start(args, workdir)

    def mid_sweep() -> bool:  # a trial done and at least two not yet started: Ctrl-C cannot come too late
        if not (workdir / sweep.DEFAULT_STORAGE).exists():
            return False
        counts = sweep.count(load(workdir))
        return counts.done >= 1 and counts.done + counts.running <= 3

    wait_for(mid_sweep, 120, "a finished trial")
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.communicate(timeout=180)  # a loaded machine once needed more than 60 s
    assert first.returncode != 0
    interrupted = sweep.count(load(workdir)).done
    assert interrupted < 5
    result = run_cli(args, workdir)  # the same command: the same study
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{interrupted} of 5 trials done" in result.stderr
    study = load(workdir)
    assert sweep.count(study) == sweep.Counts(done=5, failed=0, running=0, waiting=0)
    assert_no_duplicates(study)


@pytest.mark.slow
def test_bad_sweep_input_is_one_line_before_any_trial_and_leaves_the_study_alone(workdir):
    journal = workdir / "outputs" / "optuna.journal"
    storage = sweep.open_storage(str(journal))
    study = sweep.load_or_create_study(storage, "kept", ["minimize"], {})
    study.enqueue_trial({"x": 1})
    before = journal.read_bytes()
    common = [*SWEEP, "hydra.sweeper.study_name=kept", "hydra.sweeper.n_trials=2"]
    marker = workdir / "MARKER"
    # The plan's own refusals (grammar, keys, each job's checks) are tested in-process above
    # (test_the_sweepers_plan_refuses_bad_space_input_...); these pass through the rest of a sweep's start.
    cases = [
        (["dropout=interval(0,1)"], "rnnlab: error: dropout=1.0 is out of range (allowed: >= 0 and < 1) (in the search space at dropout=1.0)"),
        (["train.lr=interval(1e-4,1e-2)"], "rnnlab: error: study 'kept' exists with another search space (differs in train.lr): "
         "re-run its own command to resume it, or use a new hydra.sweeper.study_name"),
        (["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:9/none"], "rnnlab: error: storage='postgresql://nobody@127.0.0.1:9/none' cannot be used: "),
        # Config never reaches an import: each of these would create the marker file if run.
        ([f"++hydra.sweeper.pruner={{_target_:subprocess.check_output,args:[touch,{marker}]}}"],
         "rnnlab: error: hydra.sweeper.pruner._target_='subprocess.check_output' is not allowed (allowed: optuna.pruners.MedianPruner, "),
        ([f"++hydra.launcher.extra={{_target_:pathlib.Path.touch,_args_:[{marker}]}}"],
         "rnnlab: error: hydra.launcher.extra._target_='pathlib.Path.touch' is not allowed (allowed: plain values; "),
        (["hydra.sweeper.custom_search_space=subprocess.check_output"],
         "rnnlab: error: hydra.sweeper.custom_search_space='subprocess.check_output' is not allowed: 'subprocess' is not a module of this project"),
    ]
    for extra, message in cases:
        result = run_cli([*common, *extra], workdir)
        assert result.returncode == 2, (extra, result.stderr[-2000:])
        assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert journal.read_bytes() == before and not marker.exists()
    assert not (workdir / "outputs" / "multirun").exists() or not any((workdir / "outputs" / "multirun").rglob("config.yaml"))


@pytest.mark.slow
def test_a_custom_search_space_function_adds_its_parameters_to_every_trial(workdir):
    # The old plugin's custom_search_space: "module.fn", fn(cfg, trial) suggests more params.
    (workdir / "my_space.py").write_text(
        "def extra(cfg, trial):\n"
        "    trial.suggest_float('train.momentum', 0.5, 0.95)\n"
        "    trial.suggest_categorical('dropout', [0.0, 0.1])\n"
    )
    args = [*SWEEP, "hydra.sweeper.n_trials=2", "train.lr=tag(log,interval(1e-4,1e-2))",
            "hydra.sweeper.custom_search_space=my_space.extra", "train.optimizer=sgd"]
    result = run_cli(args, workdir, env={"PYTHONPATH": str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(workdir)
    assert len(study.trials) == 2
    for trial in study.trials:
        assert set(trial.params) == {"train.lr", "train.momentum", "dropout"}
        assert 0.5 <= trial.params["train.momentum"] <= 0.95 and trial.params["dropout"] in (0.0, 0.1)
    configs = [p.read_text() for p in (workdir / "outputs" / "multirun").rglob("config.yaml")]
    momenta = {round(t.params["train.momentum"], 6) for t in study.trials}
    assert any(f"momentum: {m}" in c for c in configs for m in momenta)  # the job ran with the suggested value


MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _mysql_reachable() -> str | None:
    return _reachable("pymysql", 3306, "mysql", "MySQL/MariaDB")


@pytest.mark.slow
@pytest.mark.skipif(_mysql_reachable() is not None, reason=str(_mysql_reachable()))
def test_two_workers_share_one_study_in_mysql(workdir):
    # A database of its own, empty: both workers start on a fresh schema, as on a new cluster
    # (they race to create Optuna's tables; MariaDB reports the loser as a duplicate row).
    import pymysql

    name = f"rnnlab_{uuid.uuid4().hex[:8]}"
    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    connection.cursor().execute(f"CREATE DATABASE {name}")
    url = MYSQL.replace("/test", f"/{name}")
    try:
        _two_workers(workdir, [f"hydra.sweeper.storage={url}"], url)
    finally:
        connection.cursor().execute(f"DROP DATABASE {name}")
        connection.close()


@pytest.mark.slow
def test_a_cma_es_sweep_runs_end_to_end(workdir):
    pytest.importorskip("cmaes", reason="pip install 'rnnlab[cmaes]'")
    args = [*SWEEP, "hydra/sweeper/sampler=cmaes", "hydra.sweeper.n_trials=3",
            "train.lr=tag(log,interval(1e-4,1e-2))", "dropout=interval(0,0.3)"]
    result = run_cli(args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(workdir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(1e-4 <= t.params["train.lr"] <= 1e-2 and 0 <= t.params["dropout"] <= 0.3 for t in study.trials)


def test_a_new_study_names_its_objectives_for_the_dashboard_and_a_resumed_one_keeps_them(tmp_path):
    storage = sweep.open_storage(str(tmp_path / "j"))
    study = sweep.load_or_create_study(storage, "s", ["minimize", "minimize"], {}, metrics=["val_loss", "n_params"])
    assert study.metric_names == ["val_loss", "n_params"]
    again = sweep.load_or_create_study(sweep.open_storage(str(tmp_path / "j")), "s", ["minimize", "minimize"], {})
    assert again.metric_names == ["val_loss", "n_params"]
    assert sweep.load_or_create_study(storage, "unnamed", ["minimize"], {}).metric_names is None


def _storage_url(kind: str, tmp_path: Path) -> str:
    if kind == "journal":
        return str(tmp_path / "optuna.journal")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    reason = _postgres_reachable() if kind == "postgres" else _mysql_reachable()
    if reason is not None:
        pytest.skip(reason)
    return POSTGRES if kind == "postgres" else MYSQL


# Every sampler on the journal, every storage with TPE: the seed comes from the trial number,
# which every storage hands out once per study (the full 4 x 4 took 65 s here for no more).
@pytest.mark.parametrize("name,storage_kind", [*[(n, "journal") for n in ("tpe", "random", "cmaes", "nsgaii")],
                                               *[("tpe", k) for k in ("sqlite", "postgres", "mysql")]])
def test_two_workers_started_at_once_draw_different_trials_and_one_alone_repeats_itself(name, storage_kind, tmp_path):
    # The README's recipe: a study made first, then two workers that find it empty at the same
    # moment. Seeded by what they found (seed + 0 trials), both drew one stream: trial k of one
    # worker equalled trial k of the other, 8 trials for 4 configurations.
    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import SAMPLERS

    if name == "cmaes":
        pytest.importorskip("cmaes", reason="pip install 'rnnlab[cmaes]'")
    url = _storage_url(storage_kind, tmp_path)
    space = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.5)}

    def draw(study_name: str, workers: int) -> list[tuple[float, float]]:
        storage = sweep.open_storage(url)
        sweep.load_or_create_study(storage, study_name, ["minimize"], {})
        sweeper = a_sweeper(sampler=SAMPLERS[name])
        sweeper._check_settings()
        studies = [optuna.load_study(study_name=study_name, storage=sweep.open_storage(url), sampler=sweeper._sampler(space, 0))
                   for _ in range(workers)]
        beats = [sweep.Heartbeat(s, s._storage, 60, 600) for s in studies]
        drawn = []
        try:
            for _ in range(8 // workers):
                trials = [sweep.claim(b, space, sampler_for=lambda n: sweeper._sampler(space, n)) for b in beats]
                for b, t in zip(beats, trials):  # both asked before either told, as at once
                    b.study.tell(t, t.params["train.lr"] * 100 + t.params["dropout"])
                    drawn.append((t.params["train.lr"], t.params["dropout"]))
        finally:
            for b in beats:
                b.close()
        if storage_kind in ("postgres", "mysql"):
            optuna.delete_study(study_name=study_name, storage=url)
        return drawn

    tag = uuid.uuid4().hex[:8]
    two = draw(f"two-{tag}", 2)
    assert len(set(two)) == 8, two
    alone = [draw(f"alone-{tag}-{i}", 1) for i in range(2)]
    assert alone[0] == alone[1] and len(set(alone[0])) == 8


def test_a_default_study_name_reads_task_cell_and_keys_and_an_old_hashed_study_still_resumes(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import _default_name

    storage = sweep.open_storage(str(tmp_path / "j"))
    cfg = OmegaConf.create({"data": {"name": "co2"}, "cell": {"name": "gru"}})
    space = {"train.lr": FloatDistribution(1e-4, 1e-2, log=True), "depth": IntDistribution(1, 3)}
    name = _default_name(["hidden_size=8"], space, cfg, storage)
    assert name.startswith("co2-gru-depth+lr-") and len(name.rsplit("-", 1)[1]) == 8
    assert _default_name(["hidden_size=8"], space, cfg, storage) == name  # the same command, the same study
    assert _default_name(["hidden_size=16"], space, cfg, storage) != name
    swept = _default_name([], {**space, "cell": CategoricalDistribution(["rnn", "gru"])}, cfg, storage)
    assert swept.startswith("co2-cell+depth+lr-")  # the cell swept: not named by one of its choices
    # A study named as rnnlab named them before (sweep-<sha1[:10]>) is found by the same command.
    import hashlib

    text = json.dumps([sorted(["hidden_size=8"]), sorted((k, repr(d)) for k, d in space.items())])
    old = "sweep-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    sweep.load_or_create_study(storage, old, ["minimize"], {})
    assert _default_name(["hidden_size=8"], space, cfg, storage) == old
