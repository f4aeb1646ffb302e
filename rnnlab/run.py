"""One run, importable: check the input, build data and model, fit, test, report.

    from rnnlab.compose import compose
    from rnnlab.run import run

    result = run(compose(["cell=gru", "depth=2", "train.epochs=3"]))
    result.metrics["test_mse"], result.run_id, result.model

``prepare`` does everything that can refuse the input (the device, the data file, the cell's
options, the resume point, the tracking store's address) and writes nothing; the entry point
calls it for every job of a command before Hydra creates a folder, and ``run`` reuses what it
built. ``run`` then writes the run's folder, opens its MLflow run (rnnlab.tracking), trains
with rnnlab.train and reports. Hydra is not imported here: the entry point (``__main__``) is
only the glue between Hydra's jobs and this function.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.config import Config, ConfigError, as_raw, config_hash, flatten, redact, sequence_steps

log = logging.getLogger("rnnlab")

OUTPUTS = Path("outputs")  # where runs, multiruns and the default MLflow store live (cwd-relative)


class RunError(Exception):
    """A run's bad input or a known failure (it diverged): one line for the user."""


class Stopped(Exception):
    """A signal (SIGTERM, SIGUSR1, Ctrl-C) stopped the run after it saved a checkpoint; the
    message says how to continue it. ``exit_code`` is what a shell would report (143, 130)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Hooks:
    """What a caller can watch or steer, as plain callables (all optional). Tracking, the
    sweep's trial and the progress bar are wired by ``run`` itself from the config."""

    on_epoch_end: Callable[[int, float], None] = lambda epoch, val_loss: None  # raise to stop
    on_probe: Callable[[Any], None] = lambda record: None  # a rnnlab.probe.ProbeRecord
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None  # besides MLflow
    stop_requested: Callable[[], bool] = lambda: False  # polled after each batch, besides signals


@dataclass
class Result:
    metrics: dict[str, float]  # what a sweeper optimises (val_loss) and the test numbers
    status: str  # FINISHED (or KILLED: pruned by its sweep)
    output_dir: Path
    run_id: str | None  # the MLflow run, None without tracking
    model: Any  # the trained StackedRNN, with its best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics
    probes: list[Any] = field(default_factory=list)  # ProbeRecords, in step order


@dataclass
class Prepared:
    """What ``prepare`` built and checked: ``run`` uses it instead of doing it again."""

    config: Config
    flat: dict[str, Any]  # dotted params, secrets redacted
    digest: str  # config_hash: what resume=auto matches
    data: Any  # Windows | Sequences | Stream
    device: Any  # torch.device
    resume: dict[str, Any] | None  # the checkpoint payload to continue from
    n_params: int
    secrets: frozenset[str] = frozenset()  # the keys redacted in ``flat``


def prepare(config: Config, secrets: frozenset[str] | set[str] = frozenset(), cache: dict[str, Any] | None = None) -> Prepared:
    """Everything that can refuse this config, before anything is written. Raises RunError
    with one line. ``cache``: a dict shared by the jobs of one command, so that jobs with
    equal data sections load their data once, and equal models are checked once."""
    from rnnlab import bptt, runtime
    from rnnlab.data import DataError
    from rnnlab.model import count_parameters
    from rnnlab.tracking import TrackingError, check_params, check_reachable

    cache = {} if cache is None else cache
    flat = redact(flatten(config), secrets)
    digest = config_hash(flat)
    try:
        device = runtime.pick_device(config.device)
        if device.type == "cpu":
            bptt.cpu_products()  # RNNLAB_CPU_PRODUCTS checked, and the race run, before anything is written
        data = cache.get(data_key := _key("data", config.data))
        if data is None:
            data = cache[data_key] = load_data(config)
            _forget_oldest_data(cache)
        model_key = _key("model", [config.cell, config.depth, config.hidden_size, config.dropout,
                                   config.bidirectional, data.n_features, data.task])
        if model_key not in cache:  # the cell's own checks, on the meta device: no memory
            cache[model_key] = count_parameters(build_model(config, data, device="meta"))
        n_params = cache[model_key]
        runtime.check_memory(n_params, config.hidden_size, config.depth, 2 if config.bidirectional else 1,
                             config.train.batch_size, config.truncation or sequence_steps(config)[0], device)
        resume = resume_point(config.resume, flat, digest, config.tracking.uri if config.tracking.enabled else "")
        check_params({**flat, "n_params": n_params, "n_features": data.n_features})
        if config.tracking.enabled:
            check_reachable(config.tracking.uri)
    except (ConfigError, DataError, TrackingError, ValueError) as e:
        raise RunError(str(e)) from None
    return Prepared(config, flat, digest, data, device, resume, n_params, frozenset(secrets))


_CACHED_DATASETS = 4  # a grid over many datasets keeps only the last few loaded


def _key(kind: str, value: Any) -> str:
    return f"{kind}:" + json.dumps(value, sort_keys=True, default=lambda v: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else str(v))


def _forget_oldest_data(cache: dict[str, Any]) -> None:
    datasets = [k for k in cache if k.startswith("data:")]
    for key in datasets[: max(len(datasets) - _CACHED_DATASETS, 0)]:
        del cache[key]


def load_data(config: Config) -> Any:
    """The dataset, generated or read, and cut into windows if it is a forecasting series."""
    from rnnlab.data import DATASETS, Series, make_windows

    d = config.data
    data = DATASETS[d.name](**d.options)
    if isinstance(data, Series):
        data = make_windows(data, d.lookback, d.horizon, d.stride, d.val_fraction, d.test_fraction, d.season)
    return data


def build_model(config: Config, data: Any, device: Any = None) -> Any:
    """The StackedRNN this config describes; its head follows from the data's task, never a flag."""
    import torch

    from rnnlab.model import StackedRNN

    with torch.device(device) if device is not None else contextlib.nullcontext():
        return StackedRNN(
            config.cell.name, data.n_features, config.hidden_size, config.depth,
            output_size=data.task.n_outputs, many_to_many=data.task.many_to_many,
            dropout=config.dropout, bidirectional=config.bidirectional, **config.cell.options,
        )


def run(
    config: Config,
    hooks: Hooks | None = None,
    *,
    output_dir: str | Path | None = None,
    prepared: Prepared | None = None,
    command: str | None = None,
    secrets: frozenset[str] | set[str] = frozenset(),
    launched: float | None = None,
    writer: Any = None,
) -> Result:
    """One run: data, model, MLflow run, train (or resume), test, artifacts, summary table.

    ``output_dir``: the run's folder (default: a new one under outputs/runs/). ``command``: the
    command line that reproduces it (a tag, and the hint printed when it stops). ``launched``:
    a time.perf_counter() reading that start-up is counted from (default: now). ``writer``: a
    tracking writer started early (the entry point starts one at launch).

    Raises RunError for bad input (before anything is written) and for a run that diverged;
    Stopped after a signal, once the checkpoint is saved."""
    from rnnlab import runtime

    hooks = hooks or Hooks()
    launched = time.perf_counter() if launched is None else launched
    if prepared is None or prepared.secrets != frozenset(secrets):  # params and hash must be redacted alike
        cache = {} if prepared is None else {_key("data", config.data): prepared.data}
        prepared = prepare(config, secrets, cache=cache)
    output_dir = Path(output_dir) if output_dir is not None else new_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    command = command or "python -m rnnlab"
    if config.allocator == "tuned":
        runtime.tune_allocator()
    if config.tracking.enabled:  # first: its MLflow import overlaps the start-up below
        from rnnlab.tracking.writer import Writer

        if writer is None:
            writer = Writer(config.tracking.uri)
        else:
            writer.connect(config.tracking.uri)
    try:
        _write_config(config, secrets, output_dir)
        return _Run(prepared, hooks, output_dir, command, launched, writer).go()
    finally:
        if writer is not None and not writer.opened:
            writer.close()  # the run was rejected before it was opened: nothing was written


def new_output_dir() -> Path:
    """outputs/runs/<date>/<time>-<pid>: Hydra's pattern (conf/config.yaml), for runs started from Python."""
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return OUTPUTS / "runs" / f"{stamp}-{time.time_ns() % 1_000_000_000 // 1000:06d}-{os.getpid()}"


def _write_config(config: Config, secrets: frozenset[str] | set[str], output_dir: Path) -> None:
    import yaml

    (output_dir / "config.yaml").write_text(yaml.safe_dump(redact(as_raw(config), secrets), sort_keys=False))


class _Run:
    """One run's pieces and its steps, in the order they happen (``go``)."""

    def __init__(self, prepared: Prepared, hooks: Hooks, output_dir: Path, command: str, launched: float, writer: Any) -> None:
        self.p, self.config, self.hooks, self.output_dir = prepared, prepared.config, hooks, output_dir
        self.command, self.launched, self.writer = command, launched, writer
        self.first_step: float | None = None
        self.last_state: Any = None  # the latest saved TrainState, marked finished at the end
        self.lyapunov_end: Any = None  # (layers, k) exponents of the trained model, when probe.lyapunov.when=end
        c = self.config
        self.name = c.tracking.run_name or f"{c.cell.name}-d{c.depth}-h{c.hidden_size}-k{c.truncation}"
        resume = prepared.resume
        # The trainer's own name for this run, known at once (the MLflow run id comes later,
        # from the writer): checkpoints carry it and the run is tagged with it, so a resume
        # always finds its run even if it was stopped before the run existed.
        self.run_key = resume["run_key"] if resume else uuid.uuid4().hex
        self.refused = False  # the store refused the run (see _check_tracking)
        self.saved_step: int | None = None  # the optimiser step of the last checkpoint written
        self.unsaved: str | None = None  # why the latest save failed (a full disk), until one succeeds

    def go(self) -> Result:
        from rnnlab import runtime
        from rnnlab.sweep import job_trial
        from rnnlab.train import Interrupted, NonFiniteError

        trial = job_trial(self.config.trial)  # in a sweep: reports val_loss each epoch, may prune
        self._continue_products()
        self.tracker = self._open_tracker(trial.tags)
        runtime.seed_everything(self.config.seed)
        self.model = build_model(self.config, self.p.data)
        self.probe = self._probe()
        stop = runtime.StopOnSignal()
        status, stopped, pruned = "FAILED", None, False
        try:
            result = self._fit(stop, trial)
            final = self._test(result)
            final.update(self._lyapunov(result.steps))
            self._artifacts()
            if self.last_state is not None:
                self._save(self.last_state, finished=True)  # resume=auto must not pick it up again
            status = "FINISHED"
        except trial.pruned:  # stopped early by the sweep's pruner: not a failure
            status, pruned = "KILLED", True
            raise
        except (Interrupted, KeyboardInterrupt):
            status, stopped = "KILLED", self._stopped(stop)
        except NonFiniteError as e:
            self._keep_traceback()
            self.tracker.set_tags({"rnnlab.failure": f"nonfinite_{e.what.replace(' ', '_')}@step={e.step}"})
            kept = f"; the last good checkpoint is {self.output_dir / 'checkpoint.pt'}" if self.saved_step is not None else ""
            raise RunError(f"{e}: the run diverged (lower train.lr, or train.clip){kept}") from None
        except Exception:
            self._keep_traceback()
            raise
        finally:
            stop.restore()
            self._finish(status, patient=pruned)
            trial.record_run(self.tracker.run_id)
        if stopped is not None:
            raise stopped
        table = report(self.config, self.p, self.name, result, final, self.tracker, self.output_dir)
        print(table)
        log.info("summary\n%s", table)  # the run folder's log file (Hydra's) keeps it, with what tracking cost
        if self.tracker.run_id:
            log.info("tracking: %s", _tracking_cost(self.tracker))
        stop.pass_on()  # a stop asked for after the last step: the run is complete, its caller may stop
        probes = list(self.probe.records) if self.probe is not None else []
        return Result(
            {"val_loss": result.best_val_loss, "n_params": float(self.p.n_params), **final}, status,
            self.output_dir, self.tracker.run_id, self.model, result.history, probes,
        )

    # ------------------------------------------------------------------------------ pieces

    def _open_tracker(self, trial_tags: dict[str, str]) -> Any:
        from rnnlab import bptt
        from rnnlab.tracking import NullTracker, Tracker, TrackingError

        c = self.config
        if not c.tracking.enabled:
            return NullTracker()
        tags = {"mlflow.source.name": "rnnlab", "rnnlab.command": self.command,
                "rnnlab.output_dir": str(self.output_dir), "rnnlab.config_hash": self.p.digest,
                "rnnlab.run_key": self.run_key, **trial_tags}
        if self.p.device.type == "cpu":  # the loops' products round differently on MKL and oneDNN
            tags["rnnlab.cpu_products"] = bptt.products_in_use()
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run_id = self.p.resume.get("run_id") if self.p.resume else None
        try:  # fails fast on a store that cannot work; opening it overlaps the training
            tracker = Tracker(c.tracking.uri, c.tracking.experiment, self.name, tags,
                              run_id=run_id, spool_dir=self.output_dir, writer=self.writer)
        except TrackingError as e:
            raise RunError(str(e)) from None
        if self.p.resume is None:  # a resumed run has them (MLflow params never change)
            tracker.log_params({**run_params(self.p.flat, c), "n_params": self.p.n_params,
                                "n_features": self.p.data.n_features})
        return tracker

    def _probe(self) -> Any:
        from rnnlab.probe import Probe

        # The probe needs backpropagation through time; a frozen recurrence (an ESN) has none.
        recurrent = any(p.requires_grad for p in self.model.layers.parameters())
        pc = self.config.probe
        wanted = pc.every or pc.at
        if not (wanted and recurrent):
            return None
        ly = pc.lyapunov
        return Probe(pc.every, pc.resolution, pc.spectra_every, at=tuple(pc.at), jacobian_samples=pc.jacobian_samples,
                     jacobian_every=pc.jacobian_every, lyapunov_k=ly.k if ly.when == "probes" else 0,
                     lyapunov_steps=ly.steps, lyapunov_warmup=ly.warmup)

    def _lyapunov(self, step: int) -> dict[str, float]:
        """The trained model's top Lyapunov exponents per layer (probe.lyapunov, when=end),
        driven by the training inputs: batches joined end to end into probe.lyapunov.steps
        steps. Logged at the last step, with the seconds they took."""
        import numpy as np
        import torch

        from rnnlab import jacobians
        from rnnlab.probe import lyapunov

        ly = self.config.probe.lyapunov
        if not ly.k or ly.when != "end" or jacobians.unsupported(self.model) is not None:
            return {}
        started = time.perf_counter()
        windows, have = [], 0
        for x, _ in self.p.data.batches("train", self.config.train.batch_size, np.random.default_rng(self.config.seed)):
            windows.append(x)
            have += x.size(0) * x.size(1)
            if have >= ly.steps:
                break
        x = torch.cat(windows).to(self.p.device)
        self.lyapunov_end = lyapunov(self.model, x, ly.k, ly.steps, ly.warmup)
        metrics = {f"lyapunov/l{l}/{i}": float(v) for l, row in enumerate(self.lyapunov_end) for i, v in enumerate(row, 1)}
        metrics["lyapunov_seconds"] = time.perf_counter() - started
        self._log(metrics, step)
        return metrics

    def _fit(self, stop: Any, trial: Any) -> Any:
        """Gradient training, or the closed-form fit of a cell whose readout is solved (an ESN
        with readout=ridge): the cell declares which (``Cell.readout``)."""
        from rnnlab.console import ProgressBar
        from rnnlab.probe import summary_metrics
        from rnnlab.train import TrainState, fit_ridge, planned_epochs, train

        c, log = self.config, self._log
        readout = self.model.layers[0]
        if getattr(readout, "readout", "gradient") == "ridge":
            return fit_ridge(self.model, self.p.data, c.train, readout.ridge, device=self.p.device, log=log)
        bar = ProgressBar(planned_epochs(self.p.data, c.train, c.truncation), quiet=c.quiet)

        def progress(epoch: int, batch: int, n_batches: int, loss: float, val: float | None) -> None:
            if self.first_step is None:
                self.first_step = time.perf_counter() - self.launched
            bar(epoch, batch, n_batches, loss, val)

        def on_epoch_end(epoch: int, val_loss: float) -> None:
            self._check_tracking(epoch)
            trial.on_epoch_end(epoch, val_loss)
            self.hooks.on_epoch_end(epoch, val_loss)

        def on_probe(record: Any) -> None:
            log(summary_metrics(record), record.step)
            self.hooks.on_probe(record)

        def save_latest(state: Any) -> None:
            self.last_state = state
            self._save(state)

        resume = TrainState.from_payload(self.p.resume["train"]) if self.p.resume else None
        return train(
            self.model, self.p.data, c.train, truncation=c.truncation, seed=c.seed, device=self.p.device,
            log=log, progress=progress, resume=resume, save=save_latest, probe=self.probe,
            stop_requested=lambda: stop.requested() or self.hooks.stop_requested(),
            on_epoch_end=on_epoch_end, on_probe=on_probe,
        )

    def _check_tracking(self, epoch: int) -> None:
        """Stop at an epoch's end if the store refused the run (it opens while the first epoch
        trains), with its checkpoint written: not trained to the end with nothing tracked."""
        from rnnlab.tracking import TrackingError

        try:
            self.tracker.check()
        except TrackingError as e:
            self.refused = True
            raise RunError(f"{e}; the run stopped after epoch {epoch}, its checkpoint is in {self.output_dir} "
                           f"(resume={self.output_dir} once the store works, or tracking=none)") from None

    def _continue_products(self) -> None:
        """A resumed CPU run takes the matrix products its checkpoint was trained with (MKL's
        and oneDNN's round differently in the last bit), or says in one warning why it cannot
        and so will not repeat an uninterrupted run bit for bit."""
        saved = self.p.resume.get("cpu_products") if self.p.resume else None
        if saved is None or self.p.device.type != "cpu":
            return
        from rnnlab import bptt

        why = bptt.continue_products(saved)
        if why is not None:
            print(f"rnnlab: warning: resuming with other matrix products ({why}): the resumed run will not "
                  "repeat an uninterrupted one bit for bit", file=sys.stderr)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)
        self.hooks.log(metrics, step)

    def _save(self, state: Any, finished: bool = False) -> None:
        """The checkpoint and its sidecar. A save the disk refuses (full, read-only) leaves the
        previous checkpoint whole (checkpoint.save is atomic) and training goes on, with one
        warning until a save succeeds again; a stop then says which step it can resume from."""
        from rnnlab import checkpoint
        from rnnlab.train import planned_epochs

        payload = {"train": state.payload(), "config": self.p.flat, "config_hash": self.p.digest,
                   "run_id": self.tracker.run_id, "run_key": self.run_key}
        if self.p.device.type == "cpu":  # a resume takes the same products (_continue_products)
            from rnnlab import bptt

            payload["cpu_products"] = bptt.products_in_use()
        try:
            checkpoint.save(payload, self.output_dir / "checkpoint.pt")
            checkpoint.write_sidecar(self.output_dir, {
                "run_id": self.tracker.run_id, "run_key": self.run_key, "config_hash": self.p.digest,
                "epoch": min(state.epoch, planned_epochs(self.p.data, self.config.train, self.config.truncation)),
                "step": state.step, "finished": finished,
            })
        except OSError as e:
            if self.unsaved is None:
                kept = f"the one of step {self.saved_step} is kept" if self.saved_step is not None else "there is none yet"
                print(f"rnnlab: warning: checkpoint of step {state.step} not saved in {self.output_dir} ({e.strerror}); "
                      f"{kept}, training goes on", file=sys.stderr)
            self.unsaved = e.strerror or type(e).__name__
            return
        self.unsaved, self.saved_step = None, state.step

    def _test(self, result: Any) -> dict[str, float]:
        """The test split's numbers beside the task's baselines, logged at the last step."""
        import numpy as np

        from rnnlab.data import Sequences, Windows
        from rnnlab.train import score

        data, c = self.p.data, self.config
        scores = score(self.model, data, "test", c.train.eval_batch_size, self.p.device)
        final = {f"test_{name}": value for name, value in scores.items()}  # test_loss, test_accuracy, ...
        final["baseline_loss"] = data.baseline_loss("test")  # the task's trivial predictor, same loss
        if isinstance(data, Sequences) and data.baseline_accuracy is not None:
            final["baseline_accuracy"] = data.baseline_accuracy  # copy: a memoryless model's, ~0.93
        if isinstance(data, Windows):
            truth = data.targets("test")
            naive = {name: float(np.mean((p - truth) ** 2)) for name, p in data.baselines("test").items()}
            final.update({
                "test_mse": scores["loss"],
                "test_rmse": float(np.sqrt(scores["loss"]) * data.std[0]),  # in the target's own units
                "test_mse_persistence": naive["persistence"],
                "test_mse_seasonal": naive["seasonal"],
            })
        final.update({
            "best_val_loss": result.best_val_loss,
            "startup_seconds": self.first_step if self.first_step is not None else float("nan"),
            "wall_seconds": time.perf_counter() - self.launched,  # from where startup_seconds counts
        })
        self.tracker.log_metrics(final, result.steps)
        return final

    def _artifacts(self) -> None:
        """The weights, the config, and the figures that mean something for this run."""
        from rnnlab import checkpoint
        from rnnlab.data import Windows

        try:
            checkpoint.save(self.model.state_dict(), self.output_dir / "model.pt")  # atomic, as checkpoints
            names = ["config.yaml", "model.pt"]
            if isinstance(self.p.data, Windows):  # a predictions plot only means something for a forecast
                names.append(self._plot_predictions())
            if self.probe is not None and self.probe.records:  # matrices once, as artifacts, not as metric keys
                names += self._gradient_artifacts()
        except OSError as e:  # a full disk: say where things stand, in one line
            kept = f"; the checkpoint of step {self.saved_step} is kept" if self.saved_step is not None else ""
            raise RunError(f"cannot write the run's files in {self.output_dir} ({e.strerror}){kept}") from None
        for name in names:
            self.tracker.log_artifact(self.output_dir / name)

    def _plot_predictions(self) -> str:
        from rnnlab.figures import plot_predictions
        from rnnlab.train import predict

        data, d, c = self.p.data, self.config.data, self.config
        truth = data.targets("test")
        stretch = slice(0, min(len(truth), 7 * d.season))  # a week of the test split
        targets_at = data.starts["test"][stretch] + d.lookback - 1 + d.horizon
        axis = data.time[targets_at] if data.time is not None else targets_at
        model_pred = predict(self.model, data, "test", c.train.eval_batch_size, self.p.device)[stretch]
        persistence = data.baselines("test")["persistence"][stretch]
        # The plot is in the target's own units (unscaled); the datasets rnnlab makes or ships
        # know theirs, a user's column (csv, jena's "T (degC)") carries its own name.
        unit = {"weather": "°C", "co2": "ppmv", "sunspots": "yearly mean sunspot number"}.get(d.name)
        plot_predictions(
            axis, data.unscale(truth[stretch]),
            {self.name: data.unscale(model_pred), "persistence": data.unscale(persistence)},
            self.output_dir / "predictions.png",
            f"{self.name}: {d.horizon}-step forecast of {data.columns[0]}, test split (first {stretch.stop} windows)",
            f"{data.columns[0]} ({unit})" if unit else data.columns[0],
            "time" if data.time is not None else "time step of the series",
        )
        return "predictions.png"

    def _gradient_artifacts(self) -> list[str]:
        from rnnlab.figures import plot_decay, plot_gradient_heatmaps, plot_lyapunov
        from rnnlab.probe import log_dh_matrix, save_records

        records = self.probe.records
        save_records(records, self.output_dir / "gradients.npz", lyapunov_end=self.lyapunov_end)
        plot_gradient_heatmaps(log_dh_matrix(records), [r.step for r in records],
                               self.output_dir / "gradient_heatmaps.png", self.name)
        last = records[-1]
        layers = range(last.log_dh.shape[0])
        plot_decay({f"layer {l}": last.log_dh[l, 0] for l in layers}, self.output_dir / "gradient_decay.png",
                   f"{self.name}: ||dL/dh_t|| at step {last.step}",
                   bands={f"layer {l}": (last.log_dh_p10[l, 0], last.log_dh_p90[l, 0]) for l in layers})
        names = ["gradients.npz", "gradient_heatmaps.png", "gradient_decay.png"]
        spectrum, when = self.lyapunov_end, "after training"
        if spectrum is None and last.lyapunov is not None:
            spectrum, when = last.lyapunov, f"at step {last.step}"
        if spectrum is not None:
            plot_lyapunov({f"layer {l}": row for l, row in enumerate(spectrum)}, self.output_dir / "lyapunov.png",
                          f"{self.name}: Lyapunov exponents {when}")
            names.append("lyapunov.png")
        return names

    def _stopped(self, stop: Any) -> Stopped:
        """A signal (or Ctrl-C) stopped training after a checkpoint: how to continue."""
        code = stop.exit_code if stop.requested() else 130
        where = self.tracker.run_id or self.output_dir
        again = " ".join(a for a in self.command.split() if not a.startswith("resume="))
        if self.unsaved and self.saved_step is None:
            return Stopped(f"stopped; no checkpoint could be saved in {self.output_dir} ({self.unsaved})", code)
        saved = f"the checkpoint of step {self.saved_step} is kept ({self.unsaved} since)" if self.unsaved else "checkpoint saved"
        return Stopped(f"stopped; {saved}. Continue with: {again} resume={where}", code)

    def _keep_traceback(self) -> None:
        """A failed run keeps its traceback: in the output folder and as an MLflow artifact."""
        import traceback

        path = self.output_dir / "traceback.txt"
        try:
            path.write_text(traceback.format_exc())
        except OSError:  # a full disk: the error itself still reaches the user
            return
        self.tracker.log_artifact(path)

    def _finish(self, status: str, patient: bool = False) -> None:
        """Close the MLflow run. A job stopped by a signal has seconds before the scheduler
        kills it, so it waits 1 s; a pruned trial is not in a hurry and waits as a finished run
        does (so its run exists and the trial can name it)."""
        from rnnlab.tracking import TrackingError

        try:
            self.tracker.finish(status, timeout=1.0 if status == "KILLED" and not patient else 60.0)
        except TrackingError as e:
            if self.refused:  # said already, in the run's error
                return
            print(f"rnnlab: warning: {e} (the run's files are in {self.output_dir})", file=sys.stderr)


# ------------------------------------------------------------------------------------ report


def report(config: Config, p: Prepared, name: str, result: Any, final: dict[str, float], tracker: Any, output_dir: Path) -> str:
    """The table printed at the end: the test loss beside its baselines, size, time, where to look."""
    from rnnlab.console import summary
    from rnnlab.data import Windows

    data = p.data
    rows = _forecast_rows(data, final) if isinstance(data, Windows) else _task_rows(data.task, final)
    rows += [
        ("parameters", f"{p.n_params:,}"),
        ("epochs", f"{result.epochs_run} (best {result.best_epoch}), {result.steps:,} steps"),
        ("wall time", f"{final['wall_seconds']:.1f} s (the first step at {final['startup_seconds']:.1f} s)"),
        ("output dir", str(output_dir)),
    ]
    if tracker.run_id:
        from rnnlab.tracking import ui_rows

        rows += [("run id", tracker.run_id), *ui_rows(config.tracking.uri, tracker.experiment_id, tracker.run_id)]
    return summary(rows, f"rnnlab run {name}")


def _tracking_cost(tracker: Any) -> str:
    """What tracking cost this run: the trainer's seconds in Tracker calls and waiting for the
    last delivery, and the writer process's CPU (on a machine torch keeps busy, CPU it took
    from somewhere). experiments/benchmarks/tracking.py reads this line."""
    cpu = f"{tracker.writer_cpu_seconds:.1f} s" if tracker.writer_cpu_seconds is not None else "unknown"
    early = tracker.writer_cpu_before_open
    before = f" ({early:.1f} s before the run opened)" if early is not None else ""
    return f"{tracker.call_seconds:.2f} s in calls, {tracker.finish_seconds:.2f} s in finish, writer {cpu} CPU{before}"


def _forecast_rows(data: Any, final: dict[str, float]) -> list[tuple[str, str]]:
    mse = final["test_mse"]
    return [
        ("test MSE", f"{mse:.5f}   (scaled target; RMSE {final['test_rmse']:.3f} in {data.columns[0]} units)"),
        ("  persistence", f"{final['test_mse_persistence']:.5f}   model/baseline {_ratio(mse, final['test_mse_persistence'])}"),
        ("  seasonal naive", f"{final['test_mse_seasonal']:.5f}   model/baseline {_ratio(mse, final['test_mse_seasonal'])}"),
    ]


def _task_rows(task: Any, final: dict[str, float]) -> list[tuple[str, str]]:
    """The summary's first rows for a sequence task: its loss next to the trivial baseline's."""
    loss = "MSE" if task.kind == "regression" else "cross-entropy"
    rows = [
        (f"test {loss}", f"{final['test_loss']:.5f}"),
        ("  trivial baseline", f"{final['baseline_loss']:.5f}   model/baseline {_ratio(final['test_loss'], final['baseline_loss'])}"),
    ]
    if "test_accuracy" in final:
        rows.append(("test accuracy", f"{final['test_accuracy']:.4f}"))
    if "baseline_accuracy" in final:
        rows.append(("  memoryless", f"{final['baseline_accuracy']:.4f}   (blanks right, symbols guessed: no memory at all)"))
    if "test_bpc" in final:
        rows.append(("bits per character", f"{final['test_bpc']:.4f}"))
    if "test_wrong" in final:
        rows.append(("wrong predictions", f"{final['test_wrong']:.0f} (|error| >= {task.tolerance})"))
    return rows


def _ratio(model: float, baseline: float) -> str:
    return f"{model / baseline:.2f}" if baseline > 0 else "- (the baseline is exact)"


# ------------------------------------------------------------------------------------ resume


def run_params(flat: dict[str, Any], config: Config) -> dict[str, Any]:
    """The params that apply to this run, for MLflow's run table and compare view: not the
    window keys a sequence task has none of (None), and not trial.* outside a sweep."""
    in_sweep = bool(config.trial.study)
    return {k: v for k, v in flat.items() if v is not None and (in_sweep or not k.startswith("trial."))}


def resume_point(resume: str | None, flat: dict[str, Any], digest: str, uri: str) -> dict[str, Any] | None:
    """The checkpoint ``resume`` names: a file or folder, a run id, or ``auto`` (the newest
    unfinished checkpoint of this same config under outputs/; none found: start afresh)."""
    from rnnlab import checkpoint

    if resume is None:
        return None
    path = _checkpoint_path(resume, digest, uri)
    if path is None:
        return None
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


def _checkpoint_path(resume: str, digest: str, uri: str) -> Path | None:
    """Where ``resume`` points: None for auto with nothing to continue."""
    from rnnlab import checkpoint

    path = Path(resume)
    if resume == "auto":
        found = checkpoint.find(OUTPUTS, config_hash=digest, unfinished=True)
        done = None if found else checkpoint.find(OUTPUTS, config_hash=digest)
        if done is not None:  # never reopened: a finished run stays as it ended
            print(f"rnnlab: resume=auto: the run with this config finished (checkpoint {str(done)!r}); "
                  "starting a new run", file=sys.stderr)
        return found
    if path.is_dir():
        return path / "checkpoint.pt"
    if path.is_file():
        return path
    found = checkpoint.find(OUTPUTS, run_id=resume)
    if found is None and uri:  # saved before the writer knew the run id: find it by the run's key
        from rnnlab.tracking.queries import run_key_of

        key = run_key_of(uri, resume)
        found = checkpoint.find(OUTPUTS, run_key=key) if key else None
    if found is None:
        raise ConfigError(f"resume={resume!r}: no such checkpoint file, and no checkpoint of that run id under {OUTPUTS}/")
    return found


def _ignored_on_resume(key: str) -> bool:
    from rnnlab.config import RESUME_FREE_KEYS

    return key in RESUME_FREE_KEYS or key.startswith(("tracking.", "trial."))


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
