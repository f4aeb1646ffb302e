"""rnnlab's Hydra sweeper on current Optuna: ``hydra/sweeper=optuna``.

It accepts the override grammar and the keys of the PyPI hydra-optuna-sweeper 1.3 (choice,
range, interval, int(interval), tag(log, ...); sampler, direction, storage, study_name,
n_trials, n_jobs, params, max_failure_rate, custom_search_space), so its configs port
unchanged, and adds pruning, resume, heartbeats, failure handling and an MLflow parent run.

This module is the Hydra side: turn overrides into Optuna distributions, check them, and run
the ask -> launch -> tell loop through whatever launcher is configured. The study-side
machinery (storage, claiming, reaping, recording, summary) is rnnlab/sweep.py. Hydra imports
every module under hydra_plugins at start-up, so nothing heavy is imported at the top.
"""
# No `from __future__ import annotations` here: Hydra's plugin scan executes this module before
# it is in sys.modules, and dataclasses cannot resolve string annotations then.
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

# ------------------------------------------------------------------------------------ configs
# Samplers and pruners are {name: <rnnlab.sweep's registry name>, **plain options}: swap with
# hydra/sweeper/sampler=random, tune with hydra.sweeper.sampler.seed=1. The options listed are
# the ones worth overriding. The 1.3 plugin's {_target_: optuna.samplers.TPESampler, ...} is
# still read, for the classes in the registry only (rnnlab.sweep.choice_spec).

SAMPLERS = {
    "tpe": {"name": "tpe", "seed": 0, "n_startup_trials": 10,
            "multivariate": False, "constant_liar": True},  # constant_liar: parallel workers spread out
    "random": {"name": "random", "seed": 0},
    "grid": {"name": "grid", "seed": 0},  # search_space: from params
    "cmaes": {"name": "cmaes", "seed": 0, "n_startup_trials": 1, "sigma0": None},
    "nsgaii": {"name": "nsgaii", "seed": 0, "population_size": 50},
}
PRUNERS = {
    "median": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "hyperband": {"name": "hyperband", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
    "none": {"name": "none"},
}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.rnnlab_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds sampler and pruner itself (seed, grid space)
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = None
    pruner: Any = None
    # Keys of hydra-optuna-sweeper 1.3:
    direction: Any = "minimize"  # one per objective: minimize | maximize
    storage: Optional[str] = None  # null: the journal file outputs/optuna.journal; or a database URL
    study_name: Optional[str] = None  # null: derived from the search space, so a re-run resumes
    n_trials: int = 20  # finished trials the study should hold (resumes count)
    n_jobs: int = 1  # trials launched at once (a parallel launcher runs them side by side)
    params: Optional[dict[str, Any]] = None  # key: choice(...) | range(...) | interval(...) | value
    max_failure_rate: float = 0.25  # of n_trials; more failures stop the sweep
    custom_search_space: Optional[str] = None  # "module.fn", a module of this project: fn(cfg, trial) suggests more params
    # rnnlab's additions:
    objectives: list[str] = field(default_factory=lambda: ["val_loss"])  # keys of the job's return dict
    heartbeat_interval: float = 5.0  # seconds between a worker's beats for its running trials
    grace_period: float = 30.0  # a RUNNING trial not beaten for this long is failed and retried once
    threads_per_trial: int = 0  # 0: this machine's cores / n_jobs (a Slurm job: its own cpus)
    gpus: int = 0  # local GPUs to give parallel trials one each (CUDA_VISIBLE_DEVICES); 0: untouched
    importance: bool = True  # fANOVA importances and figures at the end
    balance: Optional[str] = None  # a choice(...) key of the space: its choices take turns (equal shares of n_trials)


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="rnnlab")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="rnnlab")
for _name, _node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="rnnlab")
# hydra/launcher=slurm's base config (rnnlab_slurm) and its class: rnnlab's entry point imports
# this module by name (an editable install hides hydra_plugins from Hydra's scan), so the
# launcher module is imported from here too, and its class registered in setup.
from hydra_plugins.rnnlab_sweeper import slurm_launcher as _slurm  # noqa: E402  (light: submitit is lazy)


def fail(message: str, status: int = 2) -> None:
    """rnnlab's convention for bad input: one line on stderr, exit status 2."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# -------------------------------------------------------------------------- grammar -> space


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override, or its plain value (a str) if fixed.
    Raises ValueError with a one-line reason on what cannot be sampled."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, ChoiceSweep):  # choice(a,b) and a,b
        choices = [v if isinstance(v, (str, int, float, bool)) or v is None else Transformer.encode(v)
                   for v in value.list]
        if not choices:
            raise ValueError(f"{key}: empty choice")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        items = list(override.sweep_iterator())
        if not items:
            raise ValueError(f"{key}=range({value.start},{value.stop},{value.step}): the range is empty")
        if value.shuffle:
            return CategoricalDistribution(items)
        last = items[-1]  # Hydra's range excludes stop, like Python's
        if all(isinstance(v, int) for v in (value.start, value.step)):
            return IntDistribution(int(value.start), int(last), step=int(value.step))
        return FloatDistribution(float(value.start), float(last), step=float(value.step))
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if low > high:
            raise ValueError(f"{key}=interval({low},{high}): low > high")
        if log and low <= 0:
            raise ValueError(f"{key}: log scale needs bounds > 0 (got interval({low},{high}))")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ValueError(
        f"{override.input_line}: not a distribution this sweeper knows "
        "(use choice(...), a,b,c, range(...), interval(...), int(interval(...)), tag(log, ...))"
    )


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if isinstance(value, str):
        return value if value.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(value)
    if isinstance(value, float):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------------ sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Any, storage: Optional[str], study_name: Optional[str],
                 n_trials: int, n_jobs: int, params: Optional[dict[str, Any]], max_failure_rate: float,
                 custom_search_space: Optional[str], objectives: list[str], heartbeat_interval: float,
                 grace_period: float, threads_per_trial: int, gpus: int, importance: bool,
                 balance: Optional[str] = None) -> None:
        self.sampler_spec = _plain(sampler)
        self.pruner_spec = _plain(pruner)
        self.interrupted = False  # a first Ctrl-C (_interrupt)
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.storage_url = storage
        self.study_name = study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.params = _plain(params) or {}
        self.max_failure_rate = max_failure_rate
        self.custom_search_space = custom_search_space
        self.objectives = list(objectives)
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.threads_per_trial, self.gpus, self.importance = threads_per_trial, gpus, importance
        self.balance = balance
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from rnnlab.sweep import SweepError, check_plain

        self.config = config
        self.hydra_context = hydra_context
        # Hydra instantiates the launcher recursively: a {_target_: ...} anywhere in its settings
        # would be imported and called here. Its settings must be plain data; its own class is
        # Hydra's to check (a registered plugin only).
        settings = _plain(config.hydra.launcher)
        try:
            check_plain({k: v for k, v in settings.items() if k != "_target_"}, "hydra.launcher")
        except SweepError as e:
            fail(str(e))
        self.in_process, self.own_cpus = _launcher_runs(settings)
        self.launcher_settings = settings
        if isinstance(_slurm.RnnlabSlurmLauncher, type) and _slurm.SlurmQueueConf is not None:
            Plugins.instance().register(_slurm.RnnlabSlurmLauncher)  # idempotent
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # ------------------------------------------------------------------ checks, before anything
    def plan(self, arguments: list[str]) -> tuple[list[str], dict[str, Any], DictConfig]:
        """Fixed overrides, the search space and the composed job config; every bad input
        fails here with one line, before the storage is opened."""
        self._check_settings()
        fixed, space = self._parse(arguments)
        if self.sampler_spec["name"] == "grid":
            continuous = [k for k, d in space.items() if not hasattr(d, "choices") and d.step is None]
            if continuous:
                fail(f"the grid sampler needs choice(...) or range(...), not interval(...), for {', '.join(continuous)}")
        if self.balance is not None and not hasattr(space.get(self.balance), "choices"):
            keys = [k for k, d in space.items() if hasattr(d, "choices")]
            fail(f"hydra.sweeper.balance={self.balance!r} is not a choice(...) of the search space "
                 f"(allowed: {', '.join(keys) if keys else 'none: the space has no choice(...)'})")
        self._sampler(space, 0)  # its options: a bad one fails here, not after the study is open
        preflight = getattr(getattr(self, "launcher", None), "preflight", None)  # a cluster's launcher: partition, GPUs
        why = preflight() if preflight is not None else None
        if why:
            fail(why)
        cache: dict[str, Any] = {}  # the checks' data, loaded once per data section
        job_cfg = self._compose(fixed, space, None, cache)
        for key, d in space.items():  # each choice and each bound, the others at their first value
            for probe in (d.choices if hasattr(d, "choices") else (d.low, d.high)):
                self._compose(fixed, space, (key, probe), cache)
        return fixed, space, job_cfg

    def _check_settings(self) -> None:
        """The sweeper's own keys (hydra.sweeper.*), one line for the first bad one."""
        from rnnlab.sweep import SweepError, build, choice_spec

        try:  # names and plain values only: nothing from these settings is imported or run
            self.sampler_spec = choice_spec("sampler", self.sampler_spec, "hydra.sweeper.sampler")
            self.pruner_spec = choice_spec("pruner", self.pruner_spec, "hydra.sweeper.pruner")
            build("pruner", self.pruner_spec, "hydra.sweeper.pruner")  # its options, before a job needs them
        except SweepError as e:
            fail(str(e))
        if not self.sampler_spec:
            fail(f"hydra.sweeper.sampler is empty (allowed: hydra/sweeper/sampler={'|'.join(SAMPLERS)})")
        self.search_function = _user_function(self.custom_search_space) if self.custom_search_space else None
        if len(self.directions) != len(self.objectives):
            fail(f"hydra.sweeper.direction has {len(self.directions)} entries for {len(self.objectives)} "
                 f"objectives {self.objectives}: give one per objective")
        for d in self.directions:
            if d not in ("minimize", "maximize"):
                fail(f"hydra.sweeper.direction={d!r} is not allowed (allowed: minimize, maximize)")
        if self.n_trials < 0 or self.n_jobs < 1:
            fail(f"hydra.sweeper.n_trials={self.n_trials}, n_jobs={self.n_jobs}: need n_trials >= 0 and n_jobs >= 1")
        if not 0 <= self.max_failure_rate <= 1:
            fail(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} is out of range (allowed: 0..1)")
        if any(o.startswith("test") for o in self.objectives):
            fail(f"hydra.sweeper.objectives={self.objectives}: never optimise on the test split (use val_loss)")

    def _parse(self, arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The command's and the config's overrides: fixed ones, and the search space's distributions."""
        parser = OverridesParser.create()
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        try:
            overrides = parser.parse_overrides(lines)
        except Exception as e:
            fail(_one_line(e).split(" See https://")[0])
        fixed, space = [], {}
        for o in overrides:
            try:
                d = distribution(o)
            except ValueError as e:
                fail(str(e))
            if isinstance(d, str):
                fixed.append(o.input_line)
            else:
                space[o.get_key_element()] = d
        return fixed, space

    def _compose(self, fixed: list[str], space: dict[str, Any], probe: Optional[tuple[str, Any]],
                 cache: dict[str, Any]) -> DictConfig:
        from rnnlab.sweep import SweepError, check_job

        point = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in space.items()}
        if probe:
            point[probe[0]] = probe[1]
        overrides = fixed + [f"{k}={override_value(v)}" for k, v in point.items()]
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as e:
            text = _one_line(e)
            unknown = re.search(r"Could not override '([^']+)'", text)
            if unknown:
                where = f" when {probe[0]}={probe[1]}" if probe and probe[0] != unknown.group(1) else ""
                fail(f"{unknown.group(1)} is not a key of the config{where} (see python -m rnnlab --cfg job)")
            fail(text)
        try:
            check_job({k: _plain(cfg[k]) for k in cfg if k != "hydra"}, cache)  # hydra.*: unresolvable before a job
        except SweepError as e:
            fail(f"{e} (in the search space{f' at {probe[0]}={probe[1]}' if probe else ''})")
        return cfg

    # ------------------------------------------------------------------------------- the loop
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from rnnlab import sweep as S

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        fixed, space, job_cfg = self.plan(arguments)
        described = {k: repr(d) for k, d in space.items()}
        try:
            self.storage = S.open_storage(self.storage_url, repair=True)
            name = self.study_name or _default_name(fixed, space, job_cfg, self.storage)
            study = S.load_or_create_study(self.storage, name, self.directions, described, metrics=self.objectives)
        except S.SweepError as e:
            fail(str(e))
        # The sampler is seeded per trial, from the trial's number (see rnnlab.sweep.trial_seed;
        # grid: once per worker, from the trials it finds, see _loop).
        first = len(study.trials) if self.sampler_spec["name"] == "grid" else 0
        study = optuna.load_study(study_name=name, storage=self.storage, sampler=self._sampler(space, first),
                                  pruner=S.build("pruner", self.pruner_spec, "hydra.sweeper.pruner"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        parent = self._parent_run(study, job_cfg, sweep_dir)
        storage_for_jobs = self.storage_url if self.storage_url and "://" in self.storage_url \
            else str(Path(self.storage_url or S.DEFAULT_STORAGE).resolve())
        threads = self._threads()
        common = [*fixed, f"++trial.storage={override_value(storage_for_jobs)}", f"++trial.study={override_value(name)}",
                  f"++trial.parent_run={parent or 'null'}", f"++trial.threads={threads}",
                  f"++trial.pruner={_dict_override(self.pruner_spec)}"]
        if threads:  # Numba reads its thread count from the environment, once, at import
            common.append(f"++hydra.job.env_set.NUMBA_NUM_THREADS={threads}")
        print(f"rnnlab: study {name!r} in {_where(self.storage_url)}: {S.count(study).done} of {self.n_trials} "
              f"trials done; sweep dir {sweep_dir}", file=sys.stderr)
        status = "FAILED"
        heartbeat = S.Heartbeat(study, self.storage, self.heartbeat_interval, self.grace_period)
        # Signal handlers belong to the main thread (a sweep driven from another keeps Python's).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._interrupt) if main else None
        try:
            self._loop(study, space, common, heartbeat)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            heartbeat.close()
            self._finish(study, parent, sweep_dir, status)

    def _interrupt(self, number: int, frame: Any) -> None:
        """A first Ctrl-C between trials (or one a finished trial passed on) stops the sweep
        before its next trial; a second stops it at once. A trial running in this process
        has its own handler meanwhile: it checkpoints and stops (rnnlab.runtime.StopOnSignal)."""
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("rnnlab: Ctrl-C: the sweep stops before its next trial (again: at once)", file=sys.stderr, flush=True)

    def _loop(self, study: Any, space: dict[str, Any], common: list[str], heartbeat: Any) -> None:
        from rnnlab import sweep as S

        batch_max = 1 if self.in_process else self.n_jobs  # in this process: one job after another
        # Seeded per trial (rnnlab.sweep.trial_seed), except grid: it picks an unvisited point of
        # the grid, which the study knows (running ones included), and re-picks a failed one; its
        # one seeded stream per worker keeps that re-pick from repeating the same point.
        grid = self.sampler_spec["name"] == "grid"
        sampler_for = None if grid else (lambda n: self._sampler(space, n))
        while True:
            if self.interrupted:
                raise KeyboardInterrupt
            S.reap(study, self.storage, self.grace_period)
            c = S.count(study)
            if c.failed > self.max_failure_rate * self.n_trials:
                reasons = [t.user_attrs.get(S.FAIL_REASON, "?") for t in study.trials if t.state.name == "FAIL"]
                fail(f"{c.failed} trials failed, more than max_failure_rate={self.max_failure_rate} of "
                     f"n_trials={self.n_trials}; the last: {reasons[-1]}", status=1)
            free = self.n_trials - (c.done + c.running + c.waiting)
            size = min(batch_max, max(free, 0) + c.waiting)
            if size == 0:
                if c.running == 0 and c.waiting == 0:
                    return  # n_trials results, nothing left in flight anywhere
                time.sleep(min(self.heartbeat_interval, 2.0))  # others' trials: they may die and need a retry
                continue
            trials = []
            for _ in range(size):
                if self.balance is not None and S.count(study).waiting == 0:  # a retry keeps its own params
                    S.enqueue_balanced(study, self.balance, space[self.balance].choices)
                trials.append(S.claim(heartbeat, space, sampler_for=sampler_for))
            self._run_batch(study, trials, common, heartbeat)

    def _run_batch(self, study: Any, trials: list[Any], common: list[str], heartbeat: Any) -> None:
        from rnnlab import sweep as S

        jobs = []
        for slot, trial in enumerate(trials):
            if self.search_function:
                self.search_function(self.config, trial)
            params = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
            gpu = [f"++hydra.job.env_set.CUDA_VISIBLE_DEVICES={slot % self.gpus}"] if self.gpus else []
            jobs.append([*common, *params, f"++trial.number={trial.number}", *gpu])
        try:
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
            outcomes = []
            for r in returns:
                try:
                    outcomes.append(r.return_value)
                except Exception as e:  # the job raised: Hydra kept the exception for us
                    outcomes.append(e)
        except KeyboardInterrupt:
            for trial in trials:
                S.fail_trial(study, self.storage, trial.number, "interrupted (Ctrl-C)", retry=True)
            raise
        except BaseException as e:  # a job called sys.exit, or a launcher lost its worker
            reason = f"the job exited (status {e.code})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {_one_line(e)}"
            for trial in trials:
                S.fail_trial(study, self.storage, trial.number, reason, retry=len(trials) > 1)
            outcomes = []
        self.job_idx += len(trials)
        for trial, outcome in zip(trials, outcomes):
            state = S.record(heartbeat, trial, outcome, self.objectives)
            print(f"rnnlab: trial {trial.number} {state} {trial.params}", file=sys.stderr)

    # ---------------------------------------------------------------------------- pieces
    def _sampler(self, space: dict[str, Any], number: int) -> Any:
        """The sampler that draws trial ``number``: seeded from the configured seed and the
        trial's number, so workers sharing a study draw different trials (a null seed: random).
        Grid's ``number`` is the count of trials its worker found when it started."""
        from rnnlab.sweep import SweepError, build, trial_seed

        spec = dict(self.sampler_spec)
        if spec.get("seed") is not None:  # grid: seed + the trials a worker found (one stream per worker)
            seed = int(spec["seed"])
            spec["seed"] = seed + number if spec["name"] == "grid" else trial_seed(seed, number)
        if spec["name"] == "grid":
            spec["search_space"] = {k: (list(d.choices) if hasattr(d, "choices") else
                                        list(_frange(d.low, d.high, d.step))) for k, d in space.items()}
        spec = {k: v for k, v in spec.items() if v is not None or k == "seed"}
        try:
            return build("sampler", spec, "hydra.sweeper.sampler")
        except SweepError as e:
            fail(str(e))

    def _threads(self) -> int:
        if self.threads_per_trial:
            return self.threads_per_trial
        if self.own_cpus:
            # A Slurm job's own cpus_per_task. Not torch's default: where Slurm does not bind
            # tasks to their CPUs (TaskPlugin=task/none), torch saw every core of the node.
            return int(self.launcher_settings.get("cpus_per_task") or 0)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.n_jobs)

    def _parent_run(self, study: Any, job_cfg: DictConfig, sweep_dir: Path) -> Optional[str]:
        """One MLflow parent run per study, shared by every worker and every resume."""
        if not OmegaConf.select(job_cfg, "tracking.enabled", default=False):
            return None
        from rnnlab import sweep as S
        from rnnlab.tracking import parent_run as tracking

        uri, experiment = str(job_cfg.tracking.uri), str(job_cfg.tracking.experiment)
        self.tracking = (uri, experiment)
        run_id = self._await_parent(study)
        if run_id:
            try:
                tracking.reopen_run(uri, run_id)
            except tracking.TrackingError as e:
                fail(str(e))
            return run_id
        try:
            run_id = tracking.start_sweep_run(uri, experiment, study.study_name, {
                "rnnlab.study": study.study_name, "rnnlab.sweep_dir": str(sweep_dir),
                "rnnlab.command": " ".join(["python -m rnnlab", *sys.argv[1:]]),
            })
        except tracking.TrackingError as e:
            fail(str(e))
        study.set_user_attr(S.PARENT_RUN, run_id)
        if study.user_attrs.get(S.CREATOR) == S.worker_id():
            return run_id  # the study's creator: the only worker that makes one without waiting
        # A study from before rnnlab kept a creator, or whose creator died before its parent
        # run existed: two workers may get here at once. Keep the one the study kept.
        time.sleep(1.0)
        winner = study.user_attrs[S.PARENT_RUN]
        if winner != run_id:
            tracking.delete_run(uri, run_id)
        return winner

    def _await_parent(self, study: Any, patience: float = 60.0) -> Optional[str]:
        """The study's parent run id. Workers started at once on a new study (the README's
        recipe without the n_trials=0 step) race: only the worker whose create won (the study's
        creator, rnnlab.sweep.CREATOR) makes the parent run; the others wait for its id, so
        MLflow gets one parent run, not one per worker. None: make one (this worker is the
        creator, or the creator left none within ``patience`` seconds)."""
        from rnnlab import sweep as S

        start = time.monotonic()
        while True:
            attrs = study.user_attrs  # read from the storage each time
            if attrs.get(S.PARENT_RUN):
                return attrs[S.PARENT_RUN]
            creator, waited = attrs.get(S.CREATOR), time.monotonic() - start
            # No creator after 2 s: a study from before rnnlab kept one (its creator stores it
            # a moment after the create); nobody to wait for.
            if creator == S.worker_id() or (creator is None and waited > 2.0) or waited > patience:
                return None
            time.sleep(0.5)

    def _finish(self, study: Any, parent: Optional[str], sweep_dir: Path, status: str) -> None:
        from rnnlab import sweep as S

        result = S.summarize(study, self.objectives, sweep_dir, importance=self.importance)
        best = result.get("best_value")
        print(f"rnnlab: study {study.study_name!r}: {result['counts']}"
              + (f"; best {self.objectives[0]}={best:.5g} with {result['best_params']}" if best is not None else ""),
              file=sys.stderr)
        if parent:
            from rnnlab.tracking import parent_run as tracking

            metrics = {f"best_{self.objectives[0]}": best} if best is not None else {}
            metrics.update({f"trials_{k}": v for k, v in result["counts"].items() if v})
            tags = {f"best.{k}": str(v) for k, v in result.get("best_params", {}).items()}
            tracking.log_sweep(self.tracking[0], parent, metrics, tags, result["files"], status)


def _default_name(fixed: list[str], space: dict[str, Any], job_cfg: DictConfig, storage: Any) -> str:
    """The same command gives the same study, so re-running it resumes. A readable name, as
    the study and its MLflow parent run are listed by it: ``<task>-<cell>-<swept keys>-<hash>``
    (``co2-lstm-lr+depth-1a2b3c4d``; the cell is left out when it is swept). A study that
    rnnlab named ``sweep-<hash>`` before is found under that name, so it still resumes."""
    text = json.dumps([sorted(fixed), sorted((k, repr(d)) for k, d in space.items())])
    digest = hashlib.sha1(text.encode()).hexdigest()
    import optuna

    old = "sweep-" + digest[:10]
    if old in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return old
    task = str(OmegaConf.select(job_cfg, "data.name", default="") or "sweep")
    parts = [task] if "cell" in space else [task, str(OmegaConf.select(job_cfg, "cell.name", default="") or "")]
    parts.append("+".join(k.rpartition(".")[2] for k in sorted(space)) or "fixed")
    name = "-".join(p for p in parts if p)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:80]
    return f"{name}-{digest[:8]}"


def _where(url: Optional[str]) -> str:
    from rnnlab.sweep import DEFAULT_STORAGE, _hide_password

    return _hide_password(url) if url else DEFAULT_STORAGE


def _dict_override(spec: dict[str, Any]) -> str:
    return "{" + ",".join(f"{k}:{'null' if v is None else override_value(v)}" for k, v in spec.items()) + "}"


def _frange(low: float, high: float, step: float) -> list[float]:
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    return [low + i * step for i in range(n)]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def _launcher_runs(settings: dict[str, Any]) -> tuple[bool, bool]:
    """(in_process, own_cpus) of the configured launcher, read from its settings, since Hydra's
    launchers declare neither: the basic launcher has no settings at all and runs a batch in
    this process, one job after another; joblib's (n_jobs) run side by side here; Slurm's
    (submitit, with a partition) run on nodes of their own, with their own cpus_per_task."""
    options = set(settings) - {"_target_"}
    return not options, "partition" in options


def _user_function(path: str) -> Any:
    """hydra.sweeper.custom_search_space: ``module.fn`` where the module is a file of this
    project (under the current directory), never one of Python's own libraries or an installed
    package. The module is located without running it, and anything else is refused before it
    is imported: a config may call the user's own search-space code, and nothing else."""
    import importlib
    import importlib.util
    import sysconfig

    key = f"hydra.sweeper.custom_search_space={path!r}"
    here = Path.cwd().resolve()
    module, _, name = path.rpartition(".")
    top = module.partition(".")[0]
    if not module or not all(part.isidentifier() for part in path.split(".")):
        fail(f"{key} is not allowed (allowed: module.function, the module a .py file under {here})")
    spec = importlib.util.find_spec(top)  # a top-level name: located, not run
    if spec is None:
        fail(f"{key}: no module {top!r} (allowed: a .py file under {here})")
    libraries = [Path(p).resolve() for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
    places = [spec.origin] if spec.has_location and spec.origin else list(spec.submodule_search_locations or [])
    places = [Path(p).resolve() for p in places if os.path.isabs(p)]
    if not places or not all(p.is_relative_to(here) and not any(p.is_relative_to(lib) for lib in libraries) for p in places):
        where = ", ".join(map(str, places)) or "built in"
        fail(f"{key} is not allowed: {top!r} is not a module of this project ({where}; allowed: a .py file under {here})")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        fail(f"{key}: {_one_line(e)}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:400]
