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
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_MODULE = "rnnlab.conf"
OUTPUTS = Path("outputs")  # where runs, multiruns and the default MLflow store live (cwd-relative)
_INFO_FLAGS = {"--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion", "-sc"}
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
_MAX_PREFLIGHT_JOBS = 256


_EARLY_WRITER: Any = None  # a tracking writer started at launch, for the first job to take


def _start_writer(argv: list[str]) -> None:
    """Start the tracking writer at launch, before the store is known, so that MLflow's import
    (~1.4 s of CPU) and the store's connection run beside the job's start-up (first step ~3 s
    after launch) rather than beside its first training steps, where they took CPU from
    torch's threads. The first job takes it over, or lets it go if tracking is off."""
    global _EARLY_WRITER
    if "tracking=none" not in argv:
        import atexit

        from rnnlab.tracking.writer import Writer

        _EARLY_WRITER = Writer()
        atexit.register(_let_go_of_the_writer)  # bad input exits before a job takes it


def _let_go_of_the_writer() -> None:
    if _EARLY_WRITER is not None:
        _EARLY_WRITER.close()


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
        _start_writer(argv)
        preflight(argv)
    import os

    import hydra  # here, not at the top: --help answers without importing Hydra
    from omegaconf import OmegaConf

    # Output folders are named by time to the microsecond *and* process id, so runs started
    # in the same instant never share a folder (Hydra's default names them by the second).
    OmegaConf.register_new_resolver("rnnlab_pid", os.getpid, replace=True)
    _register_sweeper()
    try:
        hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")(_hydra_job)()
    finally:
        if _FAILED_JOBS:
            print(f"rnnlab: {len(_FAILED_JOBS)} job(s) failed:", *_FAILED_JOBS, sep="\n  ", file=sys.stderr)
            raise SystemExit(1)


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


class RunError(Exception):
    """A job's bad input or a known failure: one line for the user."""


_FAILED_JOBS: list[str] = []  # multirun: one line per failed job, summarised at the end


def _hydra_job(cfg: DictConfig) -> dict[str, float]:
    import logging
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from rnnlab.config import ConfigError, redact, secret_keys, validate

    hydra_cfg = HydraConfig.get()
    # A plain multirun reports its failed jobs at the end; in an Optuna sweep the sweeper
    # accounts for failed and pruned trials itself (max_failure_rate), so they are not listed.
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    listed = multirun and not OmegaConf.select(cfg, "trial.study", default="")
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
        try:
            config = validate(raw)
        except ConfigError as e:
            raise RunError(str(e)) from None
        secrets = secret_keys(OmegaConf.to_container(cfg, resolve=False))
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(redact(raw, secrets))))
        command = redact({"command": " ".join(["python -m rnnlab", *overrides])}, set())["command"]
        return run(config, output_dir, command, secrets)
    except RunError as e:
        if not multirun:
            fail(str(e))
        logging.getLogger("rnnlab").error("job failed: %s", e)
        if listed:
            _FAILED_JOBS.append(f"job {hydra_cfg.job.num} ({' '.join(overrides)}): {e}")
        raise
    except Exception as e:
        # The job's log file (Hydra's) gets the traceback; in a multirun the other jobs go on.
        logging.getLogger("rnnlab").error("job failed:\n%s", traceback.format_exc())
        if listed:
            _FAILED_JOBS.append(f"job {hydra_cfg.job.num} ({' '.join(overrides)}): {_one_line(e)}")
        raise


def run(config: Any, output_dir: Path, command: str, secrets: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """One job: data, model, tracker, train (or resume), test, report.

    Returns the summary a sweeper optimises: ``val_loss`` (the best epoch's), ``n_params``,
    and the test numbers (reported, never to be optimised on). Raises RunError for bad input
    (before anything is written) and for a run that diverged; SystemExit(143/130) when a
    signal stopped it after saving a checkpoint."""
    from rnnlab import runtime

    if config.allocator == "tuned":
        runtime.tune_allocator()
    global _EARLY_WRITER
    writer, _EARLY_WRITER = _EARLY_WRITER, None  # started at launch (the first job takes it)
    if config.tracking.enabled:  # else first thing: its MLflow import overlaps the start-up below
        from rnnlab.tracking.writer import Writer

        if writer is None:
            writer = Writer(config.tracking.uri)
        else:
            writer.connect(config.tracking.uri)
    try:
        return _run(config, output_dir, command, secrets, writer)
    finally:
        if writer is not None and not writer.opened:
            writer.close()  # the run was rejected before it was opened: nothing was written


def _run(config: Any, output_dir: Path, command: str, secrets: set[str] | frozenset[str], writer: Any) -> dict[str, float]:
    from rnnlab import runtime
    import numpy as np
    import torch

    from rnnlab import checkpoint
    from rnnlab.config import ConfigError, config_hash, flatten, redact
    from rnnlab.console import ProgressBar, summary
    from rnnlab.data import DATASETS, DataError, Series, Windows, make_windows
    from rnnlab.model import StackedRNN, count_parameters
    from rnnlab.probe import Probe, dh_matrix, save_records, summary_metrics
    from rnnlab.figures import plot_decay, plot_gradient_heatmaps, plot_predictions
    from rnnlab.tracking import NullTracker, Tracker, TrackingError, check_params, ui_command
    from rnnlab.train import Interrupted, NonFiniteError, TrainState, fit_ridge, predict, score, train
    from rnnlab.sweep import job_trial

    started = time.perf_counter()
    trial = job_trial(config.trial)  # in a sweep: reports val_loss each epoch, may prune
    d = config.data
    run_name = config.tracking.run_name or f"{config.cell.name}-d{config.depth}-h{config.hidden_size}-k{config.truncation}"
    flat = redact(flatten(config), secrets)
    digest = config_hash(flat)
    # Everything that can reject the input happens before anything is written.
    try:
        device = runtime.pick_device(config.device)
        data = DATASETS[d.name](**d.options)  # generated or read once per run
        if isinstance(data, Series):  # a forecasting dataset: cut into windows
            data = make_windows(data, d.lookback, d.horizon, d.stride, d.val_fraction, d.test_fraction, d.season)
        runtime.seed_everything(config.seed)
        model = StackedRNN(  # the head follows from the data's task, never from a flag
            config.cell.name, data.n_features, config.hidden_size, config.depth,
            output_size=data.task.n_outputs, many_to_many=data.task.many_to_many,
            dropout=config.dropout, bidirectional=config.bidirectional, **config.cell.options,
        )
        resume_from = _resume_point(config.resume, flat, digest, config.tracking.uri)
        n_params = count_parameters(model)
        # "cell" too, beside "cell.name": filters read naturally (params.cell IN ('rnn', 'lstm')).
        params = {**flat, "cell": config.cell.name, "n_params": n_params, "n_features": data.n_features}
        check_params(params)
    except (ConfigError, DataError, TrackingError, ValueError) as e:
        raise RunError(str(e)) from None
    state = TrainState.from_payload(resume_from["train"]) if resume_from else None
    run_id = resume_from.get("run_id") if resume_from else None
    # The trainer's own name for this run, known at once (the MLflow run id comes later, from
    # the writer): checkpoints carry it, and the run is tagged with it, so a resume always
    # finds its run even if it was stopped before the run existed.
    run_key = resume_from["run_key"] if resume_from else uuid.uuid4().hex

    if config.tracking.enabled:
        tags = {"mlflow.source.name": "rnnlab", "rnnlab.command": command, "rnnlab.output_dir": str(output_dir),
                "rnnlab.config_hash": digest, "rnnlab.run_key": run_key}
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tags.update(trial.tags)
        try:  # fails fast on a store that cannot work; opening it overlaps the training
            tracker: Any = Tracker(config.tracking.uri, config.tracking.experiment, run_name, tags,
                                   run_id=run_id, spool_dir=output_dir, writer=writer)
        except TrackingError as e:
            raise RunError(str(e)) from None
        if state is None:
            tracker.log_params(params)  # a resumed run has them (MLflow params never change)
    else:
        tracker = NullTracker()

    def save(train_state: TrainState, finished: bool = False) -> None:
        payload = {"train": train_state.payload(), "config": flat, "config_hash": digest,
                   "run_id": tracker.run_id, "run_key": run_key}
        checkpoint.save(payload, output_dir / "checkpoint.pt")
        checkpoint.write_sidecar(output_dir, {
            "run_id": tracker.run_id, "run_key": run_key, "config_hash": digest, "epoch": train_state.epoch,
            "step": train_state.step, "finished": finished,
        })

    bar = ProgressBar(config.train.epochs, quiet=config.quiet)
    first_step: list[float] = []

    def progress(epoch: int, batch: int, n_batches: int, loss: float, val: float | None) -> None:
        if not first_step:
            first_step.append(time.perf_counter() - _LAUNCHED)
        bar(epoch, batch, n_batches, loss, val)

    # The probe needs backpropagation through time; a frozen recurrence (an ESN) has none.
    recurrent = any(p.requires_grad for p in model.layers.parameters())
    probe = (
        Probe(config.probe.every, config.probe.resolution, config.probe.spectra_every)
        if config.probe.every and recurrent else None
    )

    stop = runtime.StopOnSignal()
    status, exit_code = "FAILED", 0
    last_state: list[TrainState] = []  # the latest saved state, to mark it finished at the end

    def save_latest(train_state: TrainState) -> None:
        last_state[:] = [train_state]
        save(train_state)

    readout = model.layers[0]  # an echo state network's head is solved, not trained
    closed_form = getattr(readout, "readout", None) == "ridge"
    try:
        result = fit_ridge(model, data, config.train, readout.ridge, device=device, log=tracker.log_metrics) \
            if closed_form else train(
            model, data, config.train, truncation=config.truncation, seed=config.seed,
            device=device, log=tracker.log_metrics, progress=progress, resume=state,
            save=save_latest,
            stop_requested=stop.requested, probe=probe, on_epoch_end=trial.on_epoch_end,
            on_probe=lambda record: tracker.log_metrics(summary_metrics(record), record.step),
        )
        scores = score(model, data, "test", config.train.eval_batch_size, device)
        forecast = isinstance(data, Windows)
        final = {f"test_{name}": value for name, value in scores.items()}  # test_loss, test_accuracy, ...
        final["baseline_loss"] = data.baseline_loss("test")  # the task's trivial predictor, same loss
        if forecast:
            test_mse = scores["loss"]
            truth = data.targets("test")
            naive = data.baselines("test")  # predictions of the naive forecasts
            baselines = {name: float(np.mean((p - truth) ** 2)) for name, p in naive.items()}
            final.update({
                "test_mse": test_mse,
                "test_rmse": float(np.sqrt(test_mse) * data.std[0]),  # in the target's own units
                "test_mse_persistence": baselines["persistence"],
                "test_mse_seasonal": baselines["seasonal"],
            })
        wall = time.perf_counter() - started
        final.update({
            "best_val_loss": result.best_val_loss,
            "startup_seconds": first_step[0] if first_step else float("nan"),
            "wall_seconds": wall,
        })
        tracker.log_metrics(final, result.steps)

        torch.save(model.state_dict(), output_dir / "model.pt")
        artifacts = ["config.yaml", "model.pt"]
        if forecast:  # a predictions plot only means something for a forecast
            stretch = slice(0, min(len(truth), 7 * d.season))  # a week of the test split
            targets_at = data.starts["test"][stretch] + d.lookback - 1 + d.horizon
            axis = data.time[targets_at] if data.time is not None else targets_at
            model_pred = predict(model, data, "test", config.train.eval_batch_size, device)[stretch]
            plot_predictions(
                axis, data.unscale(truth[stretch]),
                {run_name: data.unscale(model_pred), "persistence": data.unscale(naive["persistence"][stretch])},
                output_dir / "predictions.png", f"{data.columns[0]}: test split, first {stretch.stop} windows",
            )
            artifacts.append("predictions.png")
        if probe is not None and probe.records:  # matrices once, as artifacts, not as metric keys
            save_records(probe.records, output_dir / "gradients.npz")
            plot_gradient_heatmaps(dh_matrix(probe.records), [r.step for r in probe.records],
                                   output_dir / "gradient_heatmaps.png")
            last = probe.records[-1]
            plot_decay({f"layer {l}": last.dh[l, 0] for l in range(last.dh.shape[0])}, output_dir / "gradient_decay.png",
                       f"{run_name}: ||dL/dh_t|| at step {last.step}")
            artifacts += ["gradients.npz", "gradient_heatmaps.png", "gradient_decay.png"]
        for name in artifacts:
            tracker.log_artifact(output_dir / name)
        if last_state:
            save(last_state[0], finished=True)  # resume=auto must not pick a finished run up again
        status = "FINISHED"
    except trial.pruned:  # stopped early by the sweep's pruner: not a failure
        status = "KILLED"
        raise
    except (Interrupted, KeyboardInterrupt):
        status, exit_code = "KILLED", stop.exit_code if stop.requested() else 130
    except NonFiniteError as e:
        what = e.what.replace(" ", "_")
        tracker.set_tags({"rnnlab.failure": f"nonfinite_{what}@step={e.step}"})
        _log_traceback(tracker, output_dir)
        kept = f"; the last good checkpoint is {output_dir / 'checkpoint.pt'}" if last_state else ""
        raise RunError(f"{e}: the run diverged (lower train.lr, or train.clip){kept}") from None
    except Exception:
        _log_traceback(tracker, output_dir)
        raise
    finally:
        stop.restore()
        try:  # a stopped job has seconds before the scheduler kills it: don't wait long
            tracker.finish(status, timeout=1.0 if status == "KILLED" else 60.0)
        except TrackingError as e:
            print(f"rnnlab: warning: {e} (the run's files are in {output_dir})", file=sys.stderr)

    if exit_code:
        import logging
        import os

        where = tracker.run_id or output_dir
        print(f"rnnlab: stopped; checkpoint saved. Continue with: {command} resume={where}", file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit now: a normal exit would join the tracking writer, which may still be flushing;
        # it already knows the run is KILLED and finishes on its own.
        os._exit(exit_code)

    rows = [
        ("test MSE", f"{test_mse:.5f}   (scaled target; RMSE {final['test_rmse']:.3f} in {data.columns[0]} units)"),
        ("  persistence", f"{baselines['persistence']:.5f}   model/baseline {_ratio(test_mse, baselines['persistence'])}"),
        ("  seasonal naive", f"{baselines['seasonal']:.5f}   model/baseline {_ratio(test_mse, baselines['seasonal'])}"),
    ] if forecast else _task_rows(data.task, final)
    rows += [
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
            ("tracking", _tracking_cost(tracker)),
        ]
    print(summary(rows, f"rnnlab run {run_name}"))
    return {"val_loss": result.best_val_loss, "n_params": float(n_params), **final}


def _tracking_cost(tracker: Any) -> str:
    """What tracking cost this run: the trainer's seconds in Tracker calls and waiting for the
    last delivery, and the writer process's CPU (on a machine torch keeps busy, CPU it took
    from somewhere). experiments/benchmarks/tracking.py reads this line."""
    cpu = f"{tracker.writer_cpu_seconds:.1f} s" if tracker.writer_cpu_seconds is not None else "unknown"
    early = tracker.writer_cpu_before_open
    before = f" ({early:.1f} s before the run opened)" if early is not None else ""
    return f"{tracker.call_seconds:.2f} s in calls, {tracker.finish_seconds:.2f} s in finish, writer {cpu} CPU{before}"


def _ratio(model: float, baseline: float) -> str:
    return f"{model / baseline:.2f}" if baseline > 0 else "- (the baseline is exact)"


def _resume_point(resume: str | None, flat: dict[str, Any], digest: str, uri: str) -> dict[str, Any] | None:
    """The checkpoint ``resume`` names: a file or folder, a run id, or ``auto`` (the newest
    unfinished checkpoint of this same config under outputs/; none found: start afresh)."""
    import json

    from rnnlab import checkpoint
    from rnnlab.config import ConfigError

    if resume is None:
        return None
    path = Path(resume)
    if resume == "auto":
        path = checkpoint.find(OUTPUTS, config_hash=digest, unfinished=True)
        if path is None:
            return None
    elif path.is_dir():
        path = path / "checkpoint.pt"
    elif not path.is_file():
        path = checkpoint.find(OUTPUTS, run_id=resume)
        if path is None:  # saved before the writer knew the run id: find it by the run's key
            from rnnlab.tracking.queries import run_key_of

            key = run_key_of(uri, resume)
            path = checkpoint.find(OUTPUTS, run_key=key) if key else None
        if path is None:
            raise ConfigError(f"resume={resume!r}: no such checkpoint file, and no checkpoint of that run id under {OUTPUTS}/")
    if not path.is_file():
        raise ConfigError(f"resume={resume!r}: {str(path)!r} holds no checkpoint")
    checkpoint.clean_temporaries(path.parent)
    sidecar = path.parent / checkpoint.SIDECAR
    if sidecar.is_file() and json.loads(sidecar.read_text()).get("finished"):
        raise ConfigError(f"resume={resume!r}: that run already finished (checkpoint {str(path)!r})")
    payload = checkpoint.load(path)
    if payload["config_hash"] != digest:
        differs = [k for k in sorted(set(payload["config"]) | set(flat)) if payload["config"].get(k) != flat.get(k)
                   and not _ignored_on_resume(k)]
        shown = ", ".join(f"{k}={payload['config'].get(k)!r} there, {flat.get(k)!r} here" for k in differs[:3])
        raise ConfigError(f"resume={resume!r}: the checkpoint was made with another config ({shown})")
    return payload


def _ignored_on_resume(key: str) -> bool:
    from rnnlab.config import RESUME_FREE_KEYS

    return key in RESUME_FREE_KEYS or key.startswith(("tracking.", "trial."))


def _log_traceback(tracker: Any, output_dir: Path) -> None:
    """A failed run keeps its traceback: in the output folder and as an MLflow artifact."""
    import traceback

    path = output_dir / "traceback.txt"
    path.write_text(traceback.format_exc())
    tracker.log_artifact(path)


def _task_rows(task: Any, final: dict[str, float]) -> list[tuple[str, str]]:
    """The summary's first rows for a sequence task: its loss next to the trivial baseline's."""
    loss = "MSE" if task.kind == "regression" else "cross-entropy"
    rows = [
        (f"test {loss}", f"{final['test_loss']:.5f}"),
        ("  trivial baseline", f"{final['baseline_loss']:.5f}   model/baseline {_ratio(final['test_loss'], final['baseline_loss'])}"),
    ]
    if "test_accuracy" in final:
        rows.append(("test accuracy", f"{final['test_accuracy']:.4f}"))
    if "test_bpc" in final:
        rows.append(("bits per character", f"{final['test_bpc']:.4f}"))
    if "test_wrong" in final:
        rows.append(("wrong predictions", f"{final['test_wrong']:.0f} (|error| >= {task.tolerance})"))
    return rows


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


if __name__ == "__main__":
    main()
