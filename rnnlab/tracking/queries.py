"""Reading runs back: the runs ``python -m rnnlab.compare`` overlays and ``python -m
rnnlab.report`` aggregates, and the run a resume continues (found by the trainer's own key,
``rnnlab.run_key``, which a checkpoint carries even when it was saved before MLflow had
given the run an id)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rnnlab.tracking.store import TrackingError, local_store_dir, local_store_file, one_line, quiet_mlflow


def find_run(client: Any, run_key: str) -> str | None:
    """The run tagged with the trainer's own key (``rnnlab.run_key``), in any experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`rnnlab.run_key` = '{run_key}'", max_results=1) if ids else []
    return runs[0].info.run_id if runs else None


def run_key_of(uri: str, run_id: str) -> str | None:
    """The trainer's key of an MLflow run (to find its checkpoint), or None. Never creates a
    store: asking about a run in a store that does not exist yet answers None."""
    store = local_store_dir(uri)
    if store is not None and not local_store_file(uri).is_file():
        return None
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(uri).get_run(run_id).data.tags.get("rnnlab.run_key")
    except Exception:
        return None


def gradient_runs(uri: str, experiment: str, filter_string: str, folder: Path) -> list[dict[str, Any]]:
    """Runs of ``experiment`` matching an MLflow filter string, each with its gradient artifact
    downloaded into ``folder`` (runs without one are skipped). Reads artifacts, not metric
    histories: one file per run instead of one query per metric."""
    from mlflow.tracking import MlflowClient

    # MLflow draws a "Downloading artifacts" bar per file on stderr, which spills into the
    # table compare prints; the caller's own setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(uri)
    out = []
    for run in _matching_runs(client, uri, experiment, filter_string, 1000):
        target = Path(folder) / run.info.run_id
        target.mkdir(parents=True, exist_ok=True)
        try:
            local = client.download_artifacts(run.info.run_id, "gradients.npz", str(target))
        except Exception:  # a run without a probe has no gradients.npz
            continue
        out.append({"run_id": run.info.run_id, "name": run.info.run_name, "params": run.data.params,
                    "metrics": run.data.metrics, "gradients": Path(local)})
    return out


def study_runs(uri: str, experiment: str, filter_string: str, histories: list[str]) -> list[dict[str, Any]]:
    """Runs of ``experiment`` matching an MLflow filter string (params.x IN (...) applied
    here), each with its params, latest metrics, status and the full history of each metric
    in ``histories`` as a list of (step, value), in step order, for ``python -m rnnlab.report``."""
    from mlflow.tracking import MlflowClient

    file = local_store_file(uri)
    if file is not None and not file.is_file():
        raise TrackingError(f"no MLflow store at {uri}")  # never create one by asking
    quiet_mlflow()
    client = MlflowClient(uri)
    out = []
    for run in _matching_runs(client, uri, experiment, filter_string, 50000):
        history = {}
        for key in histories:
            points = client.get_metric_history(run.info.run_id, key) if key in run.data.metrics else []
            history[key] = sorted((m.step, m.value) for m in points)
        out.append({"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                    "params": run.data.params, "metrics": run.data.metrics, "history": history,
                    "tags": run.data.tags})
    return out


def run_file(uri: str, run: dict[str, Any], name: str, into: Path) -> Path | None:
    """One of a run's files (``gradients.npz``): from the run's own folder where it is on this
    machine (tag rnnlab.output_dir), else its MLflow artifact downloaded into ``into``; None
    if the run has neither."""
    local = Path(run["tags"].get("rnnlab.output_dir", "")) / name
    if run["tags"].get("rnnlab.output_dir") and local.is_file():
        return local
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per run in the report's output
    try:
        return Path(MlflowClient(uri).download_artifacts(run["run_id"], name, str(into)))
    except Exception:  # not logged (tracking of artifacts failed, or an older run)
        return None


def _matching_runs(client: Any, uri: str, experiment: str, filter_string: str, most: int) -> list[Any]:
    """The runs of ``experiment`` that an MLflow filter string picks, its ``params.x IN (...)``
    clauses applied here (see _split_param_in); one-line TrackingErrors."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"experiment {experiment!r} not found in {uri}")
    mlflow_filter, wanted = _split_param_in(filter_string)
    try:
        runs = client.search_runs([found.experiment_id], filter_string=mlflow_filter, max_results=most)
    except MlflowException as e:
        raise TrackingError(f"--filter {filter_string!r}: {one_line(e)}") from None
    return [run for run in runs if all(run.data.params.get(k) in values for k, values in wanted.items())]


def _split_param_in(filter_string: str) -> tuple[str, dict[str, set[str]]]:
    """MLflow's stores reject IN on params, so those clauses are taken out and applied here:
    ``"params.cell IN ('rnn', 'lstm') and metrics.x < 1"`` -> ``("metrics.x < 1", {"cell": {"rnn", "lstm"}})``."""
    kept: list[str] = []
    wanted: dict[str, set[str]] = {}
    for clause in re.split(r"\s+and\s+", filter_string, flags=re.IGNORECASE):
        match = re.fullmatch(r"params\.`?([^`\s]+)`?\s+IN\s*\((.*)\)", clause.strip(), flags=re.IGNORECASE)
        if match:
            wanted[match.group(1)] = set(re.findall(r"'([^']*)'", match.group(2)))
        elif clause.strip():
            kept.append(clause.strip())
    return " and ".join(kept), wanted
