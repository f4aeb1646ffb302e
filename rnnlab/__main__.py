"""The Hydra entry point: check every job, then hand each of Hydra's jobs to rnnlab.run.

    python -m rnnlab [key=value ...]          one run
    python -m rnnlab -m key=a,b other=1,2     a grid (Hydra multirun)

Before Hydra creates a folder, ``preflight`` composes every job (rnnlab.compose) and checks
it: what needs no torch for all jobs first, then each job's cell, data and paths
(rnnlab.run.prepare). Bad input fails with one line; no folder, MLflow run or study exists.
"""
from __future__ import annotations

import time

_LAUNCHED = time.perf_counter()  # before the heavy imports: start-up time is measured from here

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

_INFO_FLAGS = {"--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion", "-sc"}
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
_KEEP_PREPARED = 4  # jobs whose data preflight hands on (a big grid's others load their own)

_EARLY_WRITER: Any = None  # a tracking writer started at launch, for the first job to take
_PREPARED: dict[str, Any] = {}  # a job's config (as JSON) -> what preflight built for it
_FAILED_JOBS: list[str] = []  # multirun: one line per failed job, summarised at the end


def main() -> None:
    argv = sys.argv[1:]
    flags = {a.split("=")[0] for a in argv if a.startswith("-")}
    if flags & {"--help", "-h"} and len(argv) == 1:
        from rnnlab.console import help_text

        try:
            print(help_text())
        except BrokenPipeError:  # `python -m rnnlab --help | head`
            sys.stdout = None
        return
    # The sweeper by name, before preflight composes a command that picks it
    # (hydra/sweeper=optuna): an editable install (PEP 660) hides the hydra_plugins namespace
    # from Hydra's plugin scan. Importing it registers its config too (~0.1 s, mostly Hydra's).
    from hydra.core.plugins import Plugins

    from hydra_plugins.rnnlab_sweeper.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
    if not (flags & (_INFO_FLAGS | _CONFIG_FLAGS | {"--help", "-h"})):
        _start_writer(argv)
        preflight(argv)
    import hydra  # here, not at the top: --help answers without importing Hydra
    from omegaconf import OmegaConf

    # Output folders are named by time to the microsecond *and* process id, so runs started
    # in the same instant never share a folder (Hydra's default names them by the second).
    OmegaConf.register_new_resolver("rnnlab_pid", launch_pid, replace=True)
    from rnnlab.compose import register_resolvers

    register_resolvers()  # ${root:...} and the like, also where preflight did not run (--cfg job --resolve)
    try:
        hydra.main(version_base="1.3", config_path="pkg://rnnlab.conf", config_name="config")(_hydra_job)()
    except KeyboardInterrupt:  # a sweep stopped by Ctrl-C between trials: its study and runs say where it is
        print("rnnlab: interrupted; the same command continues", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if _FAILED_JOBS:
            print(f"rnnlab: {len(_FAILED_JOBS)} job(s) failed:", *_FAILED_JOBS, sep="\n  ", file=sys.stderr)
            raise SystemExit(1)


def launch_pid() -> str:
    """The id of the process the user started, for folder names. Its jobs resolve the sweep's
    folder again in their own processes (joblib's workers, Slurm jobs): they inherit this
    variable, so every job lands under the one sweep folder (with its own pid, each got its own)."""
    return os.environ.setdefault("RNNLAB_LAUNCH_PID", str(os.getpid()))


def _start_writer(argv: list[str]) -> None:
    """The tracking writer, at launch: MLflow's import (~1.4 s of CPU) overlaps the job's start-up,
    not its first steps. The first job takes it over, or lets it go if tracking is off."""
    global _EARLY_WRITER
    if "tracking=none" not in argv:
        import atexit

        from rnnlab.tracking.writer import Writer

        _EARLY_WRITER = Writer()
        atexit.register(lambda: _EARLY_WRITER is not None and _EARLY_WRITER.close())  # bad input exits first


def fail(message: str) -> None:
    """One line on stderr and exit status 2: the convention for bad input."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def preflight(argv: list[str]) -> None:
    """Check every job of this command before Hydra creates its first folder."""
    from rnnlab.compose import check_jobs, jobs
    from rnnlab.config import ConfigError
    from rnnlab.run import RunError  # no torch: rnnlab.run imports it where it is used

    try:
        raws = list(jobs(argv))
        kept = check_jobs(raws, keep=_KEEP_PREPARED)
    except (ConfigError, RunError) as e:
        fail(str(e))
    for raw, prepared in zip(raws, kept):  # the first jobs reuse what was built for them here
        _PREPARED[_job_key(raw)] = prepared


def _job_key(raw: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in raw.items() if k != "hydra"}, sort_keys=True, default=str)


def _hydra_job(cfg: Any) -> dict[str, float]:
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from rnnlab.config import ConfigError, redact, secret_keys, validate
    from rnnlab.run import RunError, Stopped, run

    global _EARLY_WRITER
    hydra_cfg = HydraConfig.get()
    # A multirun lists its failed jobs at the end, but a sweep's trials are the sweeper's to count.
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    listed = multirun and not OmegaConf.select(cfg, "trial.study", default="")
    overrides = list(hydra_cfg.overrides.task)
    raw = OmegaConf.to_container(cfg, resolve=True)
    writer, _EARLY_WRITER = _EARLY_WRITER, None  # started at launch (the first job takes it)
    try:
        config = validate(raw)  # what preflight checked, unless a sweeper chose the values
        secrets = secret_keys(OmegaConf.to_container(cfg, resolve=False))
        command = redact({"command": " ".join(["python -m rnnlab", *overrides])}, set())["command"]
        # A single run counts from the process's launch; a multirun's job from its own start (its
        # process launched before every job's preflight and, in a sweep, before earlier trials).
        launched = None if multirun else _LAUNCHED
        return run(config, output_dir=hydra_cfg.runtime.output_dir, prepared=_PREPARED.pop(_job_key(raw), None),
                   command=command, secrets=secrets, launched=launched, writer=writer).metrics
    except Stopped as e:
        print(f"rnnlab: {e}", file=sys.stderr, flush=True)
        logging.shutdown()
        sys.stdout.flush()  # exit now: a normal exit would wait for the tracking writer's last flush,
        os._exit(e.exit_code)  # and it knows the run is KILLED and finishes on its own
    except Exception as e:
        if isinstance(e, (RunError, ConfigError)) and not multirun:
            fail(str(e))
        # The job's log file (Hydra's) gets the traceback; in a multirun the other jobs go on.
        logging.getLogger("rnnlab").exception("job failed: %s", e)
        if listed:
            _FAILED_JOBS.append(f"job {hydra_cfg.job.num} ({' '.join(overrides)}): {' '.join(str(e).split())}")
        raise


if __name__ == "__main__":
    main()
