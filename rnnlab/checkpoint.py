"""Checkpoints that survive being killed mid-write.

``torch.save`` straight onto the final path destroys the previous checkpoint when the process
dies half-way. Here a checkpoint is written to a temporary file in the same folder, fsynced,
and renamed over the final path (atomic on POSIX), then the folder is fsynced so the rename
itself survives a crash. A reader sees the old checkpoint or the new one, never a torn one.

Checkpoints hold only tensors and plain values, so ``torch.load(weights_only=True)`` always
works; rnnlab never unpickles arbitrary objects.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TEMP_PREFIX = ".checkpoint-"  # leftovers of a killed save start with this


def save(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename, fsync dir)."""
    path = Path(path)
    # Serialised in memory first: torch.save writing to a full disk raises a RuntimeError from
    # its C++ stream ("unexpected pos"); a plain write raises OSError (ENOSPC) that says why.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save`` (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def clean_temporaries(folder: Path) -> list[Path]:
    """Delete what killed saves left behind in ``folder``; returns what was removed."""
    removed = sorted(Path(folder).glob(f"{TEMP_PREFIX}*.tmp"))
    for leftover in removed:
        leftover.unlink(missing_ok=True)
    return removed


# ------------------------------------------------------------------ finding one to resume from
#
# Beside each checkpoint.pt lies checkpoint.json: what run and config it belongs to. Finding a
# checkpoint by run id or by config then needs no tracking server and no unpickling.

SIDECAR = "checkpoint.json"


def write_sidecar(folder: Path, info: dict[str, Any]) -> None:
    import json

    path = Path(folder) / SIDECAR
    temp = path.with_name(f"{TEMP_PREFIX}{SIDECAR}.tmp")
    temp.write_text(json.dumps(info))
    os.replace(temp, path)


def find(
    outputs: Path, *, run_id: str | None = None, run_key: str | None = None,
    config_hash: str | None = None, unfinished: bool = False,
) -> Path | None:
    """The newest checkpoint under ``outputs`` whose sidecar names this run (by MLflow run id
    or the trainer's own run key) or config. With ``unfinished``, only of runs that never
    finished: a resumed run saves into its own new folder, so the folder it resumed from still
    reads unfinished once it has finished, and is skipped by its run key."""
    import json

    found, finished = [], set()
    for sidecar in Path(outputs).glob(f"**/{SIDECAR}"):
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if info.get("finished") and info.get("run_key"):
            finished.add(info["run_key"])
        if (run_id is None or info.get("run_id") == run_id) and (run_key is None or info.get("run_key") == run_key) and (
            config_hash is None or info.get("config_hash") == config_hash
        ):
            found.append((sidecar.stat().st_mtime, sidecar.parent / "checkpoint.pt", info))
    if unfinished:
        found = [item for item in found if not item[2].get("finished") and item[2].get("run_key") not in finished]
    found = [item[:2] for item in found if item[1].is_file()]
    return max(found)[1] if found else None
