"""After a run that could not finish cleanly: the spool file a writer leaves when the store
is down, the replay that sends it later, and the reaper for runs whose trainer and writer
both died (``python -m rnnlab.reap`` runs the last two).

A spool file sits beside the run's other files (``tracking-spool.jsonl``): a header line
naming the store and the run, then one unit of work per line, in the order it was queued
(the kinds are listed in rnnlab/tracking/store.py). The writer rewrites it whole, through a
temporary file, each time its undelivered work changes, and removes it once everything is
delivered; so a file that exists holds exactly what the store is missing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rnnlab.tracking.store import Work, batched, send

SPOOL = "tracking-spool.jsonl"  # undelivered work, beside the run's other files, until delivered


def write_spool(
    spool: Path, uri: str, run_id: str | None, pending: list[Work],
    opening: tuple[str, str, dict[str, str]] | None = None,
) -> None:
    """Replace the spool file with ``pending`` (atomically: a reader sees the old or the new).
    A run the store was never reachable to create has no id: ``opening`` (experiment, run
    name, tags) is what its replay creates it with."""
    header: dict = {"uri": uri, "run_id": run_id}
    if run_id is None and opening is not None:
        header["experiment"], header["run_name"], header["tags"] = opening
    lines = [json.dumps(header)]
    lines += [json.dumps([kind, payload]) for kind, payload in pending]
    temp = spool.with_suffix(".tmp")
    temp.write_text("\n".join(lines) + "\n")
    os.replace(temp, spool)


def replay(spool: Path) -> int:
    """Send what a writer left in its spool file (the store was down when its run ended), in
    order, then remove the file; a run the store never saw is created first, as its writer
    would have. Returns the number of items sent."""
    from mlflow.tracking import MlflowClient

    lines = Path(spool).read_text().splitlines()
    header = json.loads(lines[0])
    client = MlflowClient(header["uri"])
    run_id = header["run_id"]
    if run_id is None:
        from rnnlab.tracking.writer import Sender  # (the writer imports this module)

        run_id = Sender(header["uri"], header["experiment"], header["run_name"], header["tags"], client=client).run_id
    items = [tuple(json.loads(line)) for line in lines[1:] if line.strip()]
    for kind, payload in batched(items):
        send(client, run_id, kind, payload)
    Path(spool).unlink()
    return len(items)


def reap(uri: str, experiment: str | None = None, now: float | None = None) -> list[str]:
    """Mark KILLED every RUNNING rnnlab run whose heartbeat is older than twice its interval
    (its trainer and writer are both gone: a dead node, kill -9 of the whole job). Runs
    without a heartbeat tag are not rnnlab's and are left alone. Returns the reaped run ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    now = time.time() if now is None else now
    reaped = []
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=50000):
        beat, interval = run.data.tags.get("rnnlab.heartbeat"), run.data.tags.get("rnnlab.heartbeat_interval")
        if beat is None or interval is None:
            continue
        if now - float(beat) > 2 * float(interval):
            client.set_tag(run.info.run_id, "rnnlab.reaped", f"heartbeat {now - float(beat):.0f} s old")
            client.set_terminated(run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
    return reaped
