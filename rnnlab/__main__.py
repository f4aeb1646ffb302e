"""The Hydra entry point: compose, validate, wire the pieces, nothing else.

    python -m rnnlab [key=value ...]          one run
    python -m rnnlab -m key=a,b other=1,2     a grid (Hydra multirun)

Only Hydra is imported at start-up (``--help`` stays fast); torch, Numba and MLflow are imported
when a job runs. Before any job runs, ``preflight`` composes every job of the command and
validates it, so a bad value fails with one line before anything trains or is written.
"""
from __future__ import annotations

import time

_LAUNCHED = time.perf_counter()  # before the heavy imports: start-up time is measured from here

import itertools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_MODULE = "rnnlab.conf"
_INFO_FLAGS = {"--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion", "-sc"}
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
_MAX_PREFLIGHT_JOBS = 256


def fail(message: str) -> None:
    """One line on stderr and exit status 2: the convention for bad input."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    argv = sys.argv[1:]
    flags = {a.split("=")[0] for a in argv if a.startswith("-")}
    if flags & {"--help", "-h"} and len(argv) == 1:
        print(help_text())
        return
    if not (flags & (_INFO_FLAGS | _CONFIG_FLAGS | {"--help", "-h"})):
        preflight(argv)
    import hydra  # here, not at the top: --help answers without importing Hydra

    _register_sweeper()
    hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")(_hydra_job)()


def _register_sweeper() -> None:
    """Hydra finds plugins by listing the hydra_plugins namespace, which an editable install
    (pip install -e, PEP 660) hides from it. Importing the sweeper by name works everywhere."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


def help_text() -> str:
    """Groups, options and the default config, read straight from the YAML files (with their
    comments). Hydra's own --help composes every group dozens of times: ~1 s. This is ~0.05 s;
    ``python -m rnnlab key=value --help`` still shows Hydra's, with the overrides applied."""
    from importlib.resources import files

    import yaml

    conf = files(CONFIG_MODULE)
    main_text = (conf / "config.yaml").read_text()
    main_cfg = yaml.safe_load(main_text)
    defaults = {k: v for d in main_cfg["defaults"] if isinstance(d, dict) for k, v in d.items()}
    header = main_cfg["hydra"]["help"]["header"]
    footer = main_cfg["hydra"]["help"]["footer"]
    groups, sections = [], []
    for group in sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name[0] != "_" and p.name != "hydra"):
        options = sorted(f.name[:-5] for f in (conf / group).iterdir() if f.name.endswith(".yaml"))
        marked = [f"{o}*" if o == defaults.get(group) else o for o in options]
        groups.append(f"{group + ':':<10}{', '.join(marked)}")
        if defaults.get(group):  # sweep: null has no default option to show
            body = (conf / group / f"{defaults[group]}.yaml").read_text().strip().splitlines()
            sections.append(f"{group}:   # {group}={defaults[group]}")
            sections += ["  " + line for line in body if not line.startswith("#")]
    top = main_text.split("_self_", 1)[1].split("hydra:", 1)[0].strip()
    top = "\n".join(line for line in top.splitlines() if not line.startswith("- ")).strip()  # defaults after _self_
    return "\n".join([
        header, "",
        "== Config groups (group=option; * = default) ==", *groups, "",
        "== Config (override any key: key=value, e.g. train.lr=3e-3) ==", top, *sections, "",
        footer,
    ])


def preflight(argv: list[str]) -> None:
    """Compose and validate every job of this command before the first one starts."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from rnnlab.config import ConfigError, validate

    multirun = "-m" in argv or "--multirun" in argv
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        fail(_one_line(e))
    choices: list[list[str]] = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue  # Hydra's own settings (launcher, sweeper, dirs) are Hydra's to check
        if multirun and o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:
                continue  # a continuous range (interval): its sweeper samples and checks it
            if not values:
                fail(f"{o.input_line}: the sweep is empty")
            choices.append([f"{o.get_key_element()}={v}" for v in values])
        else:
            choices.append([o.input_line])
    jobs = list(itertools.islice(itertools.product(*choices), _MAX_PREFLIGHT_JOBS))
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose("config", overrides=list(job))
                validate(OmegaConf.to_container(cfg, resolve=True))
            except ConfigError as e:
                fail(str(e))
            except HydraException as e:
                fail(_explain(e, list(job), compose))
            except Exception as e:  # interpolation errors and the like
                fail(_one_line(e))


def _explain(error: Exception, job: list[str], compose: Any) -> str:
    """Hydra's multi-line composition errors, as one line naming key, value and what is allowed."""
    from omegaconf import OmegaConf

    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if text.startswith("Could not override"):
        key = text.split("'")[1]
        parent, _, _ = key.rpartition(".")
        others = [o for o in job if not o.lstrip("+~").startswith(key + "=")]
        try:
            node = compose("config", overrides=others)
            node = OmegaConf.select(node, parent) if parent else node
            allowed = ", ".join(k for k in node.keys() if k not in ("hydra", "name"))
        except Exception:
            return f"unknown key '{key}' (see python -m rnnlab --help)"
        if parent == "cell":
            return f"{key} is not an option of cell {node.get('name')!r} (its options: {allowed or 'none'})"
        if parent == "data":
            return f"{key} is not an option of dataset {node.get('name')!r} (its options: {allowed})"
        return f"unknown key '{key}' (allowed: {allowed})"
    if "Could not find" in text and "Available options" in text:
        missing = text.split("Could not find '")[1].split("'")[0]  # e.g. cell/foo
        group, _, option = missing.rpartition("/")
        start = lines.index(next(line for line in lines if line.startswith("Available options")))
        options = [line for line in lines[start + 1 :] if not line.startswith("Config search path")]
        options = options[: next((i for i, line in enumerate(options) if ":" in line), len(options))]
        return f"{group}={option} is not an option of group '{group}' (allowed: {', '.join(options)})"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _hydra_job(cfg: DictConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rnnlab.config import ConfigError, validate

    hydra_cfg = HydraConfig.get()
    raw = OmegaConf.to_container(cfg, resolve=True)
    try:
        config = validate(raw)
    except ConfigError as e:
        fail(str(e))
    output_dir = Path(hydra_cfg.runtime.output_dir)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    command = " ".join(["python -m rnnlab", *hydra_cfg.overrides.task])
    return run(config, output_dir, command)


def run(config: Any, output_dir: Path, command: str) -> dict[str, float]:
    """One job: data, model, tracker, train, test, report.

    Returns the summary a sweeper optimises: ``val_loss`` (the best epoch's), ``n_params``,
    and the test numbers (reported, never to be optimised on)."""
    from rnnlab import runtime

    if config.allocator == "tuned":
        runtime.tune_allocator()
    import numpy as np
    import torch

    from rnnlab.config import ConfigError, flatten
    from rnnlab.console import ProgressBar, summary
    from rnnlab.data import DATASETS, DataError, make_windows
    from rnnlab.model import StackedRNN, count_parameters
    from rnnlab.tracking import NullTracker, Tracker, TrackingError, plot_predictions, ui_command
    from rnnlab.sweep import job_trial
    from rnnlab.train import evaluate, predict, train

    started = time.perf_counter()
    trial = job_trial(config.trial)  # in a sweep: reports val_loss each epoch, may prune
    d = config.data
    run_name = config.tracking.run_name or f"{config.cell.name}-d{config.depth}-h{config.hidden_size}-k{config.truncation}"
    # Everything that can reject the input happens before the tracker writes anything.
    try:
        device = runtime.pick_device(config.device)
        series = DATASETS[d.name](**d.options)
        data = make_windows(series, d.lookback, d.horizon, d.stride, d.val_fraction, d.test_fraction, d.season)
        runtime.seed_everything(config.seed)
        model = StackedRNN(
            config.cell.name, data.n_features, config.hidden_size, config.depth,
            dropout=config.dropout, **config.cell.options,
        )
    except (ConfigError, DataError, ValueError) as e:
        fail(str(e))
    n_params = count_parameters(model)
    params = {**flatten(config), "n_params": n_params, "n_features": data.n_features}

    if config.tracking.enabled:
        tags = {"mlflow.source.name": "rnnlab", "rnnlab.command": command, "rnnlab.output_dir": str(output_dir)}
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tags.update(trial.tags)
        try:  # fails fast on a store that cannot work; opening it overlaps the training
            tracker: Any = Tracker(config.tracking.uri, config.tracking.experiment, run_name, tags)
            tracker.log_params(params)
        except TrackingError as e:
            fail(str(e))
    else:
        tracker = NullTracker()

    bar = ProgressBar(config.train.epochs, quiet=config.quiet)
    first_step: list[float] = []

    def progress(epoch: int, batch: int, n_batches: int, loss: float, val: float | None) -> None:
        if not first_step:
            first_step.append(time.perf_counter() - _LAUNCHED)
        bar(epoch, batch, n_batches, loss, val)

    status = "FAILED"
    try:
        result = train(
            model, data, config.train, truncation=config.truncation, seed=config.seed,
            device=device, log=tracker.log_metrics, progress=progress, on_epoch_end=trial.on_epoch_end,
        )
        test_mse = evaluate(model, data, "test", config.train.eval_batch_size, device)
        truth = data.targets("test")
        baselines = {name: float(np.mean((p - truth) ** 2)) for name, p in data.baselines("test").items()}
        wall = time.perf_counter() - started
        final = {
            "test_mse": test_mse,
            "test_rmse": float(np.sqrt(test_mse) * data.std[0]),  # in the target's own units
            "test_mse_persistence": baselines["persistence"],
            "test_mse_seasonal": baselines["seasonal"],
            "best_val_loss": result.best_val_loss,
            "startup_seconds": first_step[0] if first_step else float("nan"),
            "wall_seconds": wall,
        }
        tracker.log_metrics(final, result.steps)

        torch.save(model.state_dict(), output_dir / "model.pt")
        stretch = slice(0, min(len(truth), 7 * d.season))  # a week of the test split
        targets_at = data.starts["test"][stretch] + d.lookback - 1 + d.horizon
        axis = data.time[targets_at] if data.time is not None else targets_at
        model_pred = predict(model, data, "test", config.train.eval_batch_size, device)[stretch]
        plot_predictions(
            axis, data.unscale(truth[stretch]),
            {run_name: data.unscale(model_pred), "persistence": data.unscale(data.baselines("test")["persistence"][stretch])},
            output_dir / "predictions.png", f"{data.columns[0]}: test split, first {stretch.stop} windows",
        )
        for name in ("config.yaml", "model.pt", "predictions.png"):
            tracker.log_artifact(output_dir / name)
        status = "FINISHED"
    except trial.pruned:  # stopped early by the sweep's pruner: not a failure
        status = "KILLED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            tracker.finish(status)
        except TrackingError as e:
            fail(f"{e} (the run's files are in {output_dir})")

    rows = [
        ("test MSE", f"{test_mse:.5f}   (scaled target; RMSE {final['test_rmse']:.3f} in {data.columns[0]} units)"),
        ("  persistence", f"{baselines['persistence']:.5f}   model/baseline {test_mse / baselines['persistence']:.2f}"),
        ("  seasonal naive", f"{baselines['seasonal']:.5f}   model/baseline {test_mse / baselines['seasonal']:.2f}"),
        ("parameters", f"{n_params:,}"),
        ("epochs", f"{result.epochs_run} (best {result.best_epoch}), {result.steps:,} steps"),
        ("wall time", f"{wall:.1f} s (first step {final['startup_seconds']:.1f} s after launch)"),
        ("output dir", str(output_dir)),
    ]
    if tracker.run_id:
        rows += [
            ("run id", tracker.run_id),
            ("open the UI", ui_command(config.tracking.uri)),
            ("", f"then http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}"),
        ]
    print(summary(rows, f"rnnlab run {run_name}"))
    return {"val_loss": result.best_val_loss, "n_params": float(n_params), **final}


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


if __name__ == "__main__":
    main()
