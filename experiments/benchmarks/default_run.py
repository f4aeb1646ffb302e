"""The default run (``python -m rnnlab``, as shipped) against itself in another checkout.

Each variant is a fresh process in its own scratch folder (a new MLflow store each, paid
alike), the variants interleaved round by round with the order reversed every other round;
the table gives medians of the run's own "wall time" (launch to the end of training and
testing), of the whole process, and of user CPU, each as a ratio to the first variant.

    python experiments/benchmarks/default_run.py --before ../old-checkout [--rounds 2] [--lean]

``--before DIR``: a checkout of an older commit (``git worktree add --detach DIR <commit>``):
its rnnlab package and conf/ are put first on PYTHONPATH. ``--lean`` adds this checkout with
the observatory's newer default extras off (the state Jacobian and the Lyapunov exponents at
the end), to tell the cost of those measurements from the cost of the code around them.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEAN = ["probe.jacobian_samples=0", "probe.lyapunov.k=0"]


def one_run(cwd: Path, pythonpath: str | None, overrides: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "rnnlab", *overrides], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout
    process = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = float(re.search(r"^wall time\s+([\d.]+) s", out, re.M).group(1))
    return {"wall": wall, "process": process, "cpu": after.ru_utime - before.ru_utime}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", metavar="DIR", required=True, help="a checkout of an older commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lean", action="store_true", help="also this checkout without the newer default extras")
    args = parser.parse_args()
    old = Path(args.before).resolve()
    if not (old / "rnnlab" / "conf").exists():  # an editable install maps rnnlab.conf to its own conf/
        (old / "rnnlab" / "conf").symlink_to(old / "conf")
    variants = {f"before ({old.name})": (str(old), []), "now": (None, [])}
    if args.lean:
        variants["now, lean"] = (None, LEAN)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                folder = Path(tmp) / f"{r}-{len(runs[name])}-{name.split()[0]}"
                folder.mkdir()
                runs[name].append(one_run(folder, *variants[name]))
                print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    first = list(variants)[0]
    med = {v: {k: statistics.median(run[k] for run in runs[v]) for k in ("wall", "process", "cpu")} for v in variants}
    print(f"\nload average {load:.2f} before, {os.getloadavg()[0]:.2f} after; {args.rounds} interleaved rounds, medians\n")
    print("| variant | run wall s | x before | process s | x before | user CPU s | x before |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        m, b = med[v], med[first]
        print(f"| {v} | {m['wall']:.1f} | {m['wall'] / b['wall']:.3f} | {m['process']:.1f} | "
              f"{m['process'] / b['process']:.3f} | {m['cpu']:.1f} | {m['cpu'] / b['cpu']:.3f} |")


if __name__ == "__main__":
    main()
