"""Hydra's composition outside a Hydra job: a config from overrides, and every job of a command.

    compose(["cell=gru", "depth=2"])              -> Config     (what `python -m rnnlab ...` would run)
    jobs(["-m", "cell=rnn,gru", "depth=1,2,4"])   -> every job's composed config, as plain dicts

``jobs`` is what lets the entry point check a grid of any size before Hydra creates a folder
(``check_jobs``, the one way rnnlab checks input: the entry point and the sweeper both call it):
Hydra's own compose costs ~70 ms a job here, so it runs once per combination of config-group
choices (``cell=``, ``data=``: they change the config's shape) and each job's value overrides
(``depth=4``, ``+train.x=1``, ``~probe``) are then applied to a copy of that base with the
semantics Hydra gives them (tests/test_compose.py checks the result equals Hydra's compose).
Hydra's own settings (``hydra.*``, ``hydra/launcher=``) are left to Hydra.
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rnnlab.config import Config, ConfigError

if TYPE_CHECKING:
    from rnnlab.run import Prepared

CONFIG_MODULE = "rnnlab.conf"


def root(base: float, n: int) -> float:
    """``${root:2,${data.length}}`` = 2^(1/T): a value that follows the task's length, as IndRNN's
    bound on its recurrent weights does (conf/cell/indrnn_li2018.yaml); ``${root:0.5,T}`` = 2^(-1/T)."""
    if not (isinstance(n, int) and n >= 1) or not float(base) > 0:
        raise ConfigError(f"${{root:{base},{n}}}: the base must be > 0 and the root an integer >= 1")
    return float(base) ** (1 / n)


def register_resolvers() -> None:
    """The interpolations rnnlab's configs may use, for any composition in this process
    (jobs below, the CLI's Hydra app, tests composing through Hydra). Idempotent."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("root", root, replace=True)


register_resolvers()  # at import: whoever composes imports this module first (the CLI, the sweeper, tests)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The validated config one run of ``python -m rnnlab *overrides`` would get."""
    from rnnlab.config import validate

    (raw,) = list(jobs(list(overrides)))
    return validate(raw)


def jobs(argv: list[str]) -> Iterator[dict[str, Any]]:
    """Every job of a command line (``-m``: the grid of its sweeps), as the plain dict Hydra
    would compose for it, ``hydra`` removed. Raises ConfigError with one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    multirun = "-m" in argv or "--multirun" in argv
    groups, values = _axes(argv, multirun)

    def base_of(choice: tuple[str, ...]) -> Any:
        try:
            cfg = hydra_compose("config", overrides=list(choice), return_hydra_config=True)
        except HydraException as e:
            raise ConfigError(_explain_group(e, list(choice))) from None
        except (ValueError, TypeError, AssertionError) as e:  # Hydra's own checks of a group override (cell=0)
            raise ConfigError(f"{_one_line(e)} (in: {' '.join(choice)})") from None
        hydra_node = cfg.hydra
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg, hydra_node

    # Inside a Hydra app (a job, the sweeper) Hydra is set up already, with this config module.
    ready = GlobalHydra.instance().is_initialized()
    with contextlib.nullcontext() if ready else initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        # What the config itself says of the sweep (an experiment's grid, hydra.mode: MULTIRUN),
        # read as Hydra reads it: from the primary config, where a swept group keeps its default.
        first_choice = tuple(g[0] for g in groups if len(g) == 1)
        hydra_settings = tuple(_hydra_overrides(argv))  # hydra.sweeper.params.x=..., hydra/sweeper=...
        first, hydra_node = base_of(first_choice + hydra_settings)
        if hydra_settings:
            first_choice = None  # composed with them: not a job's base
        params = _sweeper_params(hydra_node)
        if params or (not multirun and hydra_node.mode == RunMode.MULTIRUN):
            multirun = True
            groups, values = _axes(_with_params(params, argv), multirun)
        for choice in itertools.product(*groups):
            base = first if choice == first_choice else base_of(choice)[0]
            for assignment in itertools.product(*values):
                cfg = base.copy()
                for override in assignment:
                    _apply(cfg, override)
                try:
                    yield OmegaConf.to_container(cfg, resolve=True)
                except Exception as e:  # interpolation errors and the like
                    raise ConfigError(_one_line(e)) from None


def check_jobs(raws: Sequence[dict[str, Any]], keep: int = 0, cache: dict[str, Any] | None = None) -> list[Prepared]:
    """Check composed jobs (plain dicts, as ``jobs`` gives them) before anything is written:
    what needs no torch for every job first (config.check_common: a bad ``depth`` answers at
    once), then each job's schema (config.validate), then its cell, data and paths
    (rnnlab.run.prepare). Raises ConfigError or RunError, one line.

    Returns the first ``keep`` jobs' Prepared; the others are let go once checked, since each
    holds its data. ``cache``: shared by calls whose jobs may share data (see prepare)."""
    from rnnlab.config import check_common, validate

    for raw in raws:
        check_common(raw)
    configs = [validate(raw) for raw in raws]
    from rnnlab.run import prepare  # imports torch: after the cheap checks of every job

    cache = {} if cache is None else cache
    kept = []
    for config in configs:
        prepared = prepare(config, cache=cache)
        if len(kept) < keep:
            kept.append(prepared)
    return kept


def _hydra_overrides(argv: list[str]) -> list[str]:
    """The command's overrides of Hydra's own settings (hydra.x=..., hydra/group=...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return [a for a in argv if not a.startswith("-") and (a.startswith(("hydra.", "hydra/", "+hydra", "++hydra", "~hydra"))
                                                         and parser.parse_override(a) is not None)]


_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _sweeper_params(hydra_node: Any) -> dict[str, str]:
    """hydra.sweeper.params of Hydra's own (basic) sweeper: a grid a config declares (an
    experiment's cells x seeds). Another sweeper's params are its search space, its to check."""
    from omegaconf import OmegaConf

    sweeper = hydra_node.sweeper
    if sweeper.get("_target_") != _BASIC_SWEEPER or not sweeper.get("params"):
        return {}
    return {str(k): str(v) for k, v in OmegaConf.to_container(sweeper.params, resolve=True).items()}


def _with_params(params: dict[str, str], argv: list[str]) -> list[str]:
    """The overrides Hydra's basic sweeper runs (BasicSweeper.sweep): hydra.sweeper.params
    first, each replaced by a command-line override of the same key, then the rest of the
    command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        given = {parser.parse_override(a).get_key_element(): a for a in argv if not a.startswith("-")}
        lines = [given.pop(parser.parse_override(f"{k}={v}").get_key_element(), f"{k}={v}") for k, v in params.items()]
    except HydraException as e:
        raise ConfigError(f"hydra.sweeper.params: {_one_line(e)}") from None
    return lines + [a for a in argv if a.startswith("-") or a in given.values()]


def _axes(argv: list[str], multirun: bool) -> tuple[list[list[str]], list[list[Any]]]:
    """Split the command's overrides into group choices (strings for Hydra's compose) and
    value overrides (parsed), each a list of alternatives: one unless it is a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides([a for a in argv if not a.startswith("-")])
    except HydraException as e:
        raise ConfigError(_one_line(e)) from None
    known_groups = config_groups()
    groups: list[list[str]] = []
    values: list[list[Any]] = []
    for o in parsed:
        if o.is_hydra_override() or o.key_or_group.startswith("hydra"):
            continue  # Hydra's own settings (launcher, sweeper, dirs) are Hydra's to check
        lines = [o.input_line]
        if multirun and o.is_sweep_override():
            if o.is_interval_sweep():
                continue  # a continuous range: its sweeper samples and checks it
            prefix = o.input_line.split(o.key_or_group, 1)[0]  # +, ++ or ~
            lines = [f"{prefix}{o.get_key_element().lstrip('+~')}={v}" for v in o.sweep_string_iterator()]
            if not lines:
                raise ConfigError(f"{o.input_line}: the sweep is empty")
        if o.key_or_group in known_groups or o.package is not None:
            groups.append(lines)
        else:
            values.append([parser.parse_override(line) for line in lines])
    return groups, values


def config_groups() -> set[str]:
    """The config groups rnnlab ships (cell, data, ..., nested ones as a/b): read from conf/."""
    from importlib.resources import files

    found: set[str] = set()

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                found.add(prefix + entry.name)
                walk(entry, f"{prefix}{entry.name}/")

    walk(files(CONFIG_MODULE), "")
    return found


def _apply(cfg: Any, override: Any) -> None:
    """One value override, as Hydra applies it after composing (ConfigLoaderImpl): ``key=v``
    changes an existing key, ``+key=v`` adds a new one, ``++key=v`` adds or changes, ``~key``
    deletes; dict values merge into what is there."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    key, value = override.key_or_group, override.value()
    exists = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is not _MISSING
    try:
        if override.is_delete():
            if not exists:
                raise ConfigError(f"{override.input_line}: cannot delete '{key}', it does not exist")
            parent, _, leaf = key.rpartition(".")
            with open_dict(cfg):
                del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        elif override.is_add():
            if exists and not isinstance(value, (dict, list)):
                raise ConfigError(f"{override.input_line}: '{key}' already exists (set it with {override.input_line[1:]})")
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        elif override.is_force_add():
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        elif not exists:
            raise ConfigError(unknown_key(cfg, key))
        else:
            OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{override.input_line}: {_one_line(e)}") from None


_MISSING = object()


def unknown_key(cfg: Any, key: str) -> str:
    """One line for a key that is not in the config: the keys allowed where it goes astray,
    and the nearest of them (``trian.lr`` -> did you mean 'train.lr'?)."""
    from omegaconf import OmegaConf

    parts = key.split(".")
    depth = 0  # parts[:depth] exist and lead to a section
    while depth < len(parts) - 1 and OmegaConf.is_dict(OmegaConf.select(cfg, ".".join(parts[: depth + 1]))):
        depth += 1
    parent = ".".join(parts[:depth])
    node = OmegaConf.select(cfg, parent) if parent else cfg
    allowed = [k for k in node.keys() if not (k == "name" and parent in ("cell", "data"))]
    # The nearest names, preferring one under which the rest of the key exists (trian.lr: train, not trial).
    near = [".".join([*parts[:depth], n, *parts[depth + 1 :]]) for n in difflib.get_close_matches(parts[depth], allowed, n=3)]
    near.sort(key=lambda k: OmegaConf.select(cfg, k, default=_MISSING) is _MISSING)
    hint = f"did you mean '{near[0]}'? " if near else ""
    owner = {"cell": f"cell {node.get('name')!r}", "data": f"dataset {node.get('name')!r}"}.get(parent)
    if owner:
        return f"{key} is not an option of {owner} ({hint}its options: {', '.join(allowed) or 'none'})"
    return f"unknown key '{key}' ({hint}allowed{' in ' + parent if parent else ''}: {', '.join(allowed)})"


def _explain_group(error: Exception, choice: list[str]) -> str:
    """Hydra's multi-line message for a group option that does not exist, as one line."""
    text = str(error)
    if "Could not find" in text and "Available options" in text:
        missing = text.split("Could not find '")[1].split("'")[0]  # e.g. cell/foo
        group, _, option = missing.rpartition("/")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = []
        for line in lines[start + 1 :]:
            if ":" in line or line.startswith("Config search path"):
                break
            options.append(line)
        return f"{group}={option} is not an option of group '{group}' (allowed: {', '.join(options)})"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
