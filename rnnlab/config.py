"""The configuration schema: dataclasses mirroring conf/ key for key, and ``validate``.

``validate`` turns the composed config (a plain nested dict) into these dataclasses or raises
``ConfigError`` with one line naming the key, the bad value and what is allowed, before
anything is built or written. Hydra is not imported here: the schema is plain Python.

The keys every run has are dataclass fields. A cell's options are the typed keyword arguments
of its class (chosen by ``cell.name``) and a dataset's those of its loader (``data.name``):
one source of truth, and an option that means nothing for the chosen cell or dataset is an
error, not silently ignored.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad configuration value; the message is one line, ready for the user."""


def _bounded(default: Any, *, ge: float | None = None, gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with an allowed range (checked by ``validate``)."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "lt": lt})


# ----------------------------------------------------------------------------------- sections


@dataclass
class CellConfig:
    name: str = "lstm"
    options: dict[str, Any] = field(default_factory=dict)  # the cell class's keyword arguments


@dataclass
class DataConfig:
    """``name``, the window keys, and ``options``: the keyword arguments of the loader.

    The window keys belong to the forecasting datasets (loaders that return a Series, cut into
    windows); they are None for the sequence tasks, whose loaders take their own (data.length)."""

    name: str = "weather"
    lookback: int | None = _bounded(48, ge=1)  # input steps per window
    horizon: int | None = _bounded(1, ge=1)  # predict the target this many steps after the last input
    stride: int | None = _bounded(1, ge=1)  # steps between consecutive window starts
    val_fraction: float | None = _bounded(0.15, gt=0, lt=1)  # chronological split: train | val | test
    test_fraction: float | None = _bounded(0.15, gt=0, lt=1)
    season: int | None = _bounded(24, ge=1)  # steps per season, for the seasonal-naive baseline
    options: dict[str, Any] = field(default_factory=dict)  # e.g. weather: years, seed


@dataclass
class TrainConfig:
    epochs: int = _bounded(10, ge=1)
    batch_size: int = _bounded(64, ge=1)
    lr: float = _bounded(2e-3, gt=0)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    momentum: float = _bounded(0.9, ge=0, lt=1)  # sgd only (rmsprop runs without, as Arjovsky et al. 2016)
    weight_decay: float = _bounded(0.0, ge=0)
    clip: float = _bounded(1.0, ge=0)  # max global gradient norm; 0 turns clipping off
    patience: int = _bounded(4, ge=0)  # early stopping: epochs without a better val loss; 0 = off
    on_nonfinite: Literal["fail", "skip"] = "fail"  # a NaN/inf loss: end the run, or skip that step
    steps_per_epoch: int = _bounded(0, ge=0)  # cap on batches per epoch (copy with truncation: several steps each); 0 = a full pass
    steps: int = _bounded(0, ge=0)  # exactly this many optimiser steps (replaces epochs as the budget); 0 = off
    eval_batch_size: int = _bounded(1024, ge=1)


@dataclass
class LyapunovConfig:
    """The top Lyapunov exponents of every layer's hidden dynamics (rnnlab/jacobians.py)."""

    k: int = _bounded(4, ge=0)  # exponents per layer, largest first; 0 turns them off
    steps: int = _bounded(1000, ge=2)  # length of the driving input sequence (the training data's inputs)
    warmup: int = _bounded(100, ge=0)  # steps the frame aligns before exponents are averaged; < steps
    when: Literal["end", "probes"] = "end"  # after training, or at every probe too


@dataclass
class ProbeConfig:
    """The gradient probe (rnnlab/probe.py): ||dL/dh^l_t||, weight-gradient norms, spectra,
    the state Jacobian and Lyapunov exponents."""

    every: int = _bounded(10, ge=0)  # probe every this many optimiser steps, from step 0; 0: only at ``at``
    at: list[int] = field(default_factory=list)  # more steps to probe (updates made before it), increasing
    resolution: int = _bounded(1, ge=1)  # keep ||dL/dh_t|| at every this-many-th step back from the loss's
    spectra_every: int = _bounded(100, ge=1)  # W_hh's spectra on probed steps that are multiples of this (~14 ms each)
    jacobian_samples: int = _bounded(1, ge=0)  # the state Jacobian along this many samples' trajectories; 0: off
    jacobian_every: int = _bounded(100, ge=1)  # ... on probed steps that are multiples of this (~4 steps each)
    lyapunov: LyapunovConfig = field(default_factory=LyapunovConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str = "rnnlab"
    run_name: str | None = None  # None: cell-d{depth}-h{hidden}-k{truncation}


@dataclass
class TrialConfig:
    """Set per job by the Optuna sweeper (hydra/sweeper=optuna), never by hand: how the job
    finds its trial, to report val_loss each epoch and be pruned. Empty outside a sweep."""

    storage: str = ""  # the study's storage: a journal file path or a database URL
    study: str = ""
    number: int = -1
    parent_run: str | None = None  # the sweep's MLflow run; this job's run becomes its child
    threads: int = 0  # torch threads: this job's share of the machine's cores; 0 = torch's default
    pruner: dict = field(default_factory=dict)  # {name: median, n_startup_trials: 5, ...}: a name of rnnlab.sweep.PRUNER_CLASSES, plain values


@dataclass
class Config:
    cell: CellConfig = field(default_factory=CellConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    depth: int = _bounded(4, ge=1)
    hidden_size: int = _bounded(64, ge=1)
    dropout: float = _bounded(0.0, ge=0, lt=1)
    bidirectional: bool = False  # every layer also runs backward in time (many-to-one tasks only)
    truncation: int = _bounded(0, ge=0)  # truncated BPTT length k; 0 = full BPTT
    seed: int = _bounded(0, ge=0, lt=2**32)  # numpy's and torch's seeds are 32-bit
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allocator: Literal["tuned", "system"] = "tuned"  # tuned: no per-step mmap/munmap (docs/internals.md)
    quiet: bool = False  # no progress bar (sweeps)
    resume: str | None = None  # a checkpoint file or folder, a run id, or auto (see README)
    trial: TrialConfig = field(default_factory=TrialConfig)  # set by the sweeper


# --------------------------------------------------------------------------------- validation


def check_common(raw: dict[str, Any]) -> Config:
    """The checks that need no torch (every key but the cell's and the dataset's options), so
    that a bad ``depth=0`` answers in well under a second; ``validate`` does them too."""
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    _section(raw, "cell")
    _section(raw, "data")
    return _build(Config, {**raw, "cell": {}, "data": {}}, "")


def validate(raw: dict[str, Any]) -> Config:
    """Check a composed config (plain dict) against the schema and return the dataclasses."""
    cfg = check_common(raw)
    from rnnlab.cells import CELLS  # cells and loaders are the schema of their options
    from rnnlab.data import DATASETS

    cell = dict(_section(raw, "cell"))
    data = dict(_section(raw, "data"))
    name = cell.pop("name", None)
    if name not in CELLS:
        raise ConfigError(f"cell.name={name!r} is not a cell (allowed: {', '.join(CELLS)})")
    cfg.cell = CellConfig(name, _options(CELLS[name].__init__, cell, f"cell {name!r}", "cell.", skip=3))
    name = data.get("name")
    if name not in DATASETS:
        raise ConfigError(f"data.name={name!r} is not a dataset (allowed: {', '.join(DATASETS)})")
    common = window_keys(DATASETS[name])
    cfg.data = _build(DataConfig, {k: v for k, v in data.items() if k in common | {"name"}}, "data.")
    if not common:  # a sequence task: no windows
        cfg.data = DataConfig(name, **dict.fromkeys(_WINDOW_KEYS))
    extra = {k: v for k, v in data.items() if k not in common | {"name"}}
    cfg.data.options = _options(DATASETS[name], extra, f"dataset {name!r}", "data.", skip=0)
    _check_together(cfg)
    return cfg


_WINDOW_KEYS = [f.name for f in dataclasses.fields(DataConfig) if f.name not in ("name", "options")]


def window_keys(loader: Any) -> set[str]:
    """The window keys a dataset has: all of them for a forecasting loader (one that returns a
    Series), none for a sequence task."""
    from rnnlab.data import Series

    return set(_WINDOW_KEYS) if _hints(loader).get("return") is Series else set()


@functools.cache
def _hints(obj: Any) -> dict[str, Any]:
    """typing.get_type_hints, once per class or function: a grid validates thousands of jobs."""
    return typing.get_type_hints(obj)


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r} must be a config group, not a value")
    return value


def _options(fn: Any, raw: dict[str, Any], owner: str, prefix: str, skip: int) -> dict[str, Any]:
    """Check ``raw`` against the typed keyword arguments of ``fn`` (after the first ``skip``)."""
    params = list(inspect.signature(fn).parameters)[skip:]
    hints = _hints(fn)
    for key in raw:
        if key not in params:
            raise ConfigError(f"{prefix}{key} is not an option of {owner} (its options: {', '.join(params) or 'none'})")
    return {key: _convert(value, hints[key], prefix + key) for key, value in raw.items()}


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}{key}' (allowed: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], _section(raw, name), f"{prefix}{name}.")
            continue
        values[name] = _convert(raw[name], hints[name], prefix + name)
        _check_range(values[name], f, prefix + name)
    return cls(**values)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Accept ``value`` if it has type ``hint`` (ints widen to floats); else one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed (allowed: {', '.join(map(str, args))})")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    return value if hint is Any else _scalar(value, hint, key)


def _scalar(value: Any, hint: type, key: str) -> Any:
    """A number, string or bool of type ``hint``: ints widen to floats, floats must be finite."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {hint.__name__}")
    return value


def _check_range(value: Any, f: dataclasses.Field, key: str) -> None:
    ge, gt, lt = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("lt")
    if value is None or (ge is None and gt is None and lt is None):
        return
    low = f">= {ge}" if ge is not None else f"> {gt}" if gt is not None else ""
    high = f"< {lt}" if lt is not None else ""
    bad = (ge is not None and value < ge) or (gt is not None and value <= gt) or (lt is not None and value >= lt)
    if bad:
        raise ConfigError(f"{key}={value!r} is out of range (allowed: {' and '.join(filter(None, [low, high]))})")


def sequence_steps(cfg: Config) -> tuple[int | None, str, str]:
    """The time steps one training example spans (None where the dataset decides: a stream's
    data.length is read by the dataset), what they are, and the key that sets them."""
    from rnnlab.data import DATASETS

    if cfg.data.lookback:  # a window
        return cfg.data.lookback, "the window", f"data.lookback={cfg.data.lookback}"
    if cfg.data.name == "copy":  # 10 symbols, T - 1 blanks, the delimiter, 10 recall steps
        length = cfg.data.options.get("length", inspect.signature(DATASETS["copy"]).parameters["length"].default)
        return length + 20, "a copy sequence", f"data.length+20={length + 20}"
    length = cfg.data.options.get("length")
    return length, "the window", f"data.length={length}"


def _check_together(cfg: Config) -> None:
    """Rules that involve more than one key."""
    if cfg.tracking.enabled and not cfg.tracking.experiment.strip():
        raise ConfigError(f"tracking.experiment={cfg.tracking.experiment!r} is empty (allowed: a name; or tracking=none)")
    if cfg.truncation and cfg.data.name == "char_lm":
        raise ConfigError(
            f"truncation={cfg.truncation} does not apply to data=char_lm (allowed: 0): its chunks of "
            "data.length steps are the truncation, with the state carried from chunk to chunk"
        )
    steps, what, key = sequence_steps(cfg)
    if steps and cfg.truncation > steps:
        raise ConfigError(f"truncation={cfg.truncation} is longer than {what} (allowed: 0 for full BPTT, or 1..{key})")
    if cfg.data.val_fraction and cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {cfg.data.val_fraction + cfg.data.test_fraction:g} "
            "leaves no training data (allowed: a sum < 1)"
        )
    from rnnlab.sweep import SweepError, choice_spec  # imports no Optuna: a registry name, plain values

    try:
        choice_spec("pruner", cfg.trial.pruner, "trial.pruner")  # never a class to import from config
    except SweepError as e:
        raise ConfigError(str(e)) from None
    _check_probe(cfg)
    needed = {"csv": ("path", "target"), "jena": ("path",), "char_lm": ("path",)}
    problems = [f"data.{key} is empty: data={cfg.data.name} needs data.{key}=..."
                for key in needed.get(cfg.data.name, ()) if not cfg.data.options.get(key)]
    path = cfg.data.options.get("path")
    if problems and path and not Path(path).exists():  # every problem of the input at once, not one per try
        problems.insert(0, f"data.path={path!r}: no such file")
    if problems:
        raise ConfigError("; ".join(problems))


def _check_probe(cfg: Config) -> None:
    p = cfg.probe
    for i, step in enumerate(p.at):
        if step < 0 or (i and step <= p.at[i - 1]):
            raise ConfigError(f"probe.at={p.at} is not allowed (allowed: optimiser steps >= 0, increasing, e.g. [0,100,1000])")
    ly = p.lyapunov
    if ly.k and ly.warmup >= ly.steps:
        raise ConfigError(f"probe.lyapunov.warmup={ly.warmup} leaves no steps to average (allowed: 0..{ly.steps - 1}, "
                          f"below probe.lyapunov.steps={ly.steps})")
    if ly.k > cfg.hidden_size:
        raise ConfigError(f"probe.lyapunov.k={ly.k} is more exponents than a layer's state has "
                          f"(allowed: 0..hidden_size={cfg.hidden_size})")


def as_raw(cfg: Config) -> dict[str, Any]:
    """The config back in conf/'s layout (cell and dataset options inline in their sections),
    so that ``validate(as_raw(cfg)) == cfg``: what a run writes to its config.yaml."""
    raw = dataclasses.asdict(cfg)
    raw["cell"] = {"name": cfg.cell.name, **cfg.cell.options}
    windows = {k: v for k, v in raw["data"].items() if k not in ("name", "options") and v is not None}
    raw["data"] = {"name": cfg.data.name, **windows, **cfg.data.options}
    return raw


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted keys -> values, for tracking params (cell options flattened as cell.<option>)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        items = dataclasses.asdict(node).items() if dataclasses.is_dataclass(node) else node.items()
        for key, value in items:
            if key == "options":
                walk(value, prefix)
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(cfg, "")
    return out


# ------------------------------------------------------------------- identity and redaction

# Keys that may differ between a run and its resumption: how it runs, not what it computes.
RESUME_FREE_KEYS = frozenset({"resume", "quiet", "allocator", "device", "train.epochs", "train.steps"})

_SECRET_NAME = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.IGNORECASE)


def config_hash(flat: dict[str, Any]) -> str:
    """A short fingerprint of what a run computes (for resume=auto and the run's tags)."""
    import hashlib
    import json

    kept = {k: v for k, v in flat.items() if k not in RESUME_FREE_KEYS and not k.startswith(("tracking.", "trial."))}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def secret_keys(unresolved: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys whose value comes from an environment variable named like a secret
    (``${oc.env:DB_PASSWORD}``): their values are never logged."""
    found: set[str] = set()
    for key, value in unresolved.items():
        if isinstance(value, dict):
            found |= secret_keys(value, f"{prefix}{key}.")
        elif isinstance(value, str) and any(_SECRET_NAME.search(m) for m in _ENV_REFERENCE.findall(value)):
            found.add(f"{prefix}{key}")
    return found


def redact(values: dict[str, Any], secrets: set[str] | frozenset[str], prefix: str = "") -> dict[str, Any]:
    """A copy with secret keys masked and passwords in URIs (scheme://user:pw@host) masked."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = redact(value, secrets, f"{dotted}.")
        elif dotted in secrets:
            out[key] = "***"
        elif isinstance(value, str):
            out[key] = _URI_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", value)
        else:
            out[key] = value
    return out
