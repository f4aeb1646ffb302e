"""Clean up after runs that could not clean up after themselves.

    python -m rnnlab.reap                      # mark zombie RUNNING runs KILLED (default store)
    python -m rnnlab.reap --uri http://...     # another store
    python -m rnnlab.reap --replay             # also send what writers spooled under outputs/

A run's writer process stamps the tag ``rnnlab.heartbeat`` every 30 s. When a trainer and its
writer are both killed (a dead node, ``kill -9`` of the job's process group) the run stays
RUNNING in MLflow for ever; this marks those whose heartbeat is older than twice its interval
as KILLED. Run it from cron, or before comparing runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.reap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    parser.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    parser.add_argument("--replay", action="store_true", help="send spooled tracking data found under --outputs")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)

    from rnnlab.tracking.recovery import SPOOL, reap, replay

    if args.replay:
        for spool in sorted(args.outputs.glob(f"**/{SPOOL}")):
            print(f"replayed {replay(spool)} item(s) from {spool}")
    reaped = reap(args.uri, args.experiment)
    for run_id in reaped:
        print(f"KILLED {run_id} (stale heartbeat)")
    print(f"{len(reaped)} zombie run(s) reaped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
