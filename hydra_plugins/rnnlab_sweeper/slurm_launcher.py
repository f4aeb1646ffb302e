"""``hydra/launcher=slurm``: hydra-submitit-launcher's Slurm launcher, with what a sweep on a
real cluster needs and it lacks:

- **Checks before anything is submitted** (preflight): the partition exists, a GPU is asked
  only of a partition that has one. One line, before the study or a parent run exists.
- **One outcome per job.** Its launch waited on the jobs in order and raised on the first that
  ended without a result (``scancel``, a node failure): the other trials of the array were
  still running, and the sweep failed them all. Here each job's outcome is its own: a job lost
  to Slurm is a JobLost exception that the sweeper records FAIL with its Slurm state, retried.
- **Preemption.** A job warned by Slurm (submitit's ``--signal=USR2@<signal_delay_s>`` before
  its time limit, or the same signal sent to it) is stopped by rnnlab after a checkpoint; the
  sweeper then submits it again with ``resume=auto`` (up to ``max_num_timeout`` times; also
  after a TIMEOUT), so the new job continues the same MLflow run from that checkpoint, as the
  same Optuna trial (its number is in the job's overrides; it stays RUNNING meanwhile).

submitit is imported lazily, as in the parent class: Hydra imports this module at start-up.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

try:  # pip install 'rnnlab[slurm]'; without it, hydra/launcher=slurm is Hydra's "not found"
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:
    SlurmLauncher = object
    SlurmQueueConf = None

RESUME = "resume=auto"
# rnnlab's exit status after a signal stopped it is 143 (128 + SIGTERM's 15); sacct reports a
# batch job that exited 143 as ExitCode 15:0 (Slurm 22.05), an srun step's as 143.
STOPPED = (143, 15)
POLL_S = 5.0  # seconds between the sweeper's sacct calls for the job it waits on


class RnnlabSlurmLauncher(SlurmLauncher):  # type: ignore[misc, valid-type]
    def preflight(self) -> Optional[str]:
        """Why this cluster cannot run these jobs (one line), or None. Asks Slurm itself
        (scontrol, sinfo): the partition, and GPUs where gpus_per_task or gres asks for them."""
        params = self.params
        if not _which("sbatch"):
            return "hydra/launcher=slurm: sbatch is not on PATH (run the sweep on a Slurm login node)"
        partition = params.get("partition")
        shown = _slurm(["scontrol", "show", "partition", *([partition] if partition else [])])
        if shown is None:
            return "hydra/launcher=slurm: scontrol does not answer (is slurmctld up? SLURM_CONF?)"
        names = _slurm(["sinfo", "-h", "-o", "%R"]) or ""
        allowed = ", ".join(sorted(set(names.split()))) or "none"
        if partition and f"PartitionName={partition}" not in shown.split():
            return f"hydra.launcher.partition={partition!r} is not a partition of this cluster (allowed: {allowed})"
        if not partition and "PartitionName=" not in shown:
            return f"hydra.launcher.partition=null: this cluster has no default partition (allowed: {allowed})"
        gpus = params.get("gpus_per_task") or params.get("gpus_per_node") or (
            "gpu" in str(params.get("gres") or "") and 1)
        if gpus:
            where = ["-p", partition] if partition else []
            gres = _slurm(["sinfo", "-h", *where, "-o", "%G"]) or ""
            if "gpu" not in gres:
                which = f"partition {partition!r}" if partition else "the default partition"
                return (f"hydra.launcher.gpus_per_task={params.get('gpus_per_task')}: {which} has no GPUs "
                        f"(its nodes' gres: {gres.strip() or 'none'}); set hydra.launcher.gpus_per_task=null "
                        "for CPU jobs, or pick a GPU partition")
        return None

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """The job, in its Slurm allocation. Slurm's warning (submitit's signal: USR2 unless
        SUBMITIT_PREEMPT_SIGNAL says otherwise) becomes rnnlab's polite stop while it trains:
        finish the step, checkpoint, end the MLflow run KILLED, exit 143. submitit's own
        handler would requeue the job from inside it at once, mid-step, with no checkpoint of
        that step; the sweeper resubmits it instead, once it has stopped (see launch)."""
        import submitit

        warning = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        before = signal.getsignal(warning)

        def on_warning(number: int, frame: Any) -> None:
            stop = signal.getsignal(signal.SIGUSR1)  # rnnlab's, while it trains (rnnlab.runtime.StopOnSignal)
            print(f"rnnlab: Slurm's warning (SIG{submitit.JobEnvironment.USR_SIG}): "
                  + ("stopping after this step" if callable(stop) else "not training; going on"), file=sys.stderr, flush=True)
            if callable(stop):
                stop(signal.SIGUSR1, frame)

        signal.signal(warning, on_warning)
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        finally:
            signal.signal(warning, before)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # hydra-submitit-launcher 1.2's launch, but: each job's own outcome, and a job that
        # stopped on Slurm's warning or its time limit submitted again with resume=auto.
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        from rnnlab.sweep import JobLost

        self.task_function = _by_reference(self.task_function)
        params = self.params
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        job_params = [(list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                      for idx, overrides in enumerate(job_overrides, start=initial_job_idx)]
        jobs = executor.map_array(self, *zip(*job_params))
        returns = []
        for job, (overrides, *rest) in zip(jobs, job_params):
            resubmitted = 0
            while True:
                # submitit asks sacct less and less often (every 60 s after 2 min): a job lost
                # to scancel, that never writes a result, was seen up to a minute late.
                asked = time.monotonic()
                while not job.done():  # its result file, and sacct on submitit's own schedule
                    time.sleep(0.5)
                    if time.monotonic() - asked > POLL_S:
                        asked = time.monotonic()
                        if job.done(force_check=True):
                            break
                try:
                    returns.append(job.results()[0])
                    break
                except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
                    state, code = _final_state(job.job_id)
                    # Stopped by rnnlab on Slurm's warning (exit 143, not a cancel), or killed at its
                    # time limit: the same trial again, from its checkpoint.
                    if (state == "TIMEOUT" or (state == "FAILED" and code in STOPPED)) and resubmitted < params["max_num_timeout"]:
                        resubmitted += 1
                        print(f"rnnlab: Slurm job {job.job_id} stopped ({state}, exit {code}); "
                              f"submitted again with {RESUME} ({resubmitted} of {params['max_num_timeout']})", file=sys.stderr)
                        again = [o for o in overrides if not o.startswith("resume=")] + [RESUME]
                        job = executor.submit(self, again, *rest)
                        continue
                    lost = JobReturn(overrides=filter_overrides(overrides), status=JobStatus.FAILED)
                    lost._return_value = JobLost(f"Slurm job {job.job_id} ended {state or job.state} (exit {code}) "
                                                 f"without a result ({_last_line(e)}); its log: {job.paths.stderr}")
                    returns.append(lost)
                    break
        return returns


def _by_reference(function: Any) -> Any:
    """The task function as its module's attribute. ``python -m rnnlab`` runs rnnlab/__main__.py
    as ``__main__``, whose functions cloudpickle copies by value with the globals they use: the
    launch-time tracking writer among them, whose queue cannot be pickled. As
    ``rnnlab.__main__._hydra_job`` it is pickled by name, and the job imports it."""
    import importlib

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(function, "__module__", None) != "__main__" or spec is None:
        return function
    return getattr(importlib.import_module(spec.name), function.__name__, function)


def _final_state(job_id: str) -> tuple:
    """(state, exit code) of a finished job, from sacct: ("FAILED", 143), ("CANCELLED", 0)."""
    out = _slurm(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State,ExitCode"]) or ""
    for line in out.splitlines():
        state, _, code = line.partition("|")
        try:
            return state.split()[0] if state else None, int(code.split(":")[0])
        except ValueError:
            continue
    return None, None


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def _slurm(args: List[str]) -> Optional[str]:
    """What a Slurm client printed; "" for "not found" (a partition that does not exist);
    None where the controller does not answer."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode == 0:
        return out.stdout
    return "" if "not found" in (out.stdout + out.stderr).lower() else None


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else type(error).__name__


if SlurmQueueConf is not None:
    ConfigStore.instance().store(
        group="hydra/launcher", name="rnnlab_slurm", provider="rnnlab",
        node=SlurmQueueConf(_target_="hydra_plugins.rnnlab_sweeper.slurm_launcher.RnnlabSlurmLauncher"),
    )
