"""Atomic checkpoints: a save killed half-way never costs the previous checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnlab import checkpoint


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    payload = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "rng": torch.get_rng_state(),
               "data_rng": {"state": {"state": 2**100 + 7, "inc": 5}}, "history": [{"loss": 0.5}]}
    checkpoint.save(payload, tmp_path / "c.pt")
    loaded = checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"]) and loaded["epoch"] == 3
    assert loaded["data_rng"]["state"]["state"] == 2**100 + 7 and torch.equal(loaded["rng"], payload["rng"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporaries left


@pytest.mark.slow
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    final = tmp_path / "checkpoint.pt"
    checkpoint.save({"generation": 0, "weights": torch.zeros(10)}, final)
    # A process that saves big checkpoints in a loop; we SIGKILL it while a save is under way.
    code = f"""
import torch
from pathlib import Path
from rnnlab import checkpoint
big = torch.randn(64, 1024, 1024)  # 256 MB: each save takes a while
for generation in range(1, 1000):
    checkpoint.save({{"generation": generation, "weights": big}}, Path({str(final)!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(f"{checkpoint.TEMP_PREFIX}*")):
        time.sleep(0.01)
    time.sleep(0.05)
    assert list(tmp_path.glob(f"{checkpoint.TEMP_PREFIX}*")), "never caught a save in progress"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    loaded = checkpoint.load(final)  # the final path holds a complete checkpoint, old or new
    assert loaded["generation"] >= 0 and loaded["weights"].numel() in (10, 64 * 1024 * 1024)
    leftovers = list(tmp_path.glob(f"{checkpoint.TEMP_PREFIX}*"))
    assert leftovers  # the torn temporary is still there ...
    assert checkpoint.clean_temporaries(tmp_path) == sorted(leftovers)  # ... until the next start
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_find_picks_the_newest_matching_unfinished_checkpoint(tmp_path):
    for name, run_id, digest, finished in [("a", "r1", "h1", False), ("b", "r2", "h1", False), ("c", "r3", "h1", True), ("d", "r4", "h2", False)]:
        folder = tmp_path / name
        folder.mkdir()
        checkpoint.save({"x": 1}, folder / "checkpoint.pt")
        checkpoint.write_sidecar(folder, {"run_id": run_id, "config_hash": digest, "finished": finished})
        time.sleep(0.02)
    assert checkpoint.find(tmp_path, run_id="r1") == tmp_path / "a" / "checkpoint.pt"
    assert checkpoint.find(tmp_path, config_hash="h1") == tmp_path / "c" / "checkpoint.pt"
    assert checkpoint.find(tmp_path, config_hash="h1", unfinished=True) == tmp_path / "b" / "checkpoint.pt"
    assert checkpoint.find(tmp_path, run_id="nope") is None


def test_find_skips_the_folder_a_finished_run_was_resumed_from(tmp_path):
    # killed in "a", resumed (same run key) into "b" and finished there: "a" still reads
    # unfinished, but resume=auto must not reopen the run; "old" is another unfinished run.
    for name, key, finished in [("old", "k0", False), ("a", "k1", False), ("b", "k1", True)]:
        folder = tmp_path / name
        folder.mkdir()
        checkpoint.save({"x": 1}, folder / "checkpoint.pt")
        checkpoint.write_sidecar(folder, {"run_id": "r-" + key, "run_key": key, "config_hash": "h", "finished": finished})
        time.sleep(0.02)
    assert checkpoint.find(tmp_path, config_hash="h", unfinished=True) == tmp_path / "old" / "checkpoint.pt"
    assert checkpoint.find(tmp_path, config_hash="h") == tmp_path / "b" / "checkpoint.pt"
    (tmp_path / "old" / checkpoint.SIDECAR).unlink()
    assert checkpoint.find(tmp_path, config_hash="h", unfinished=True) is None


def test_a_save_on_a_full_disk_fails_and_keeps_the_previous_checkpoint_whole(small_disk):
    disk, fill = small_disk
    path = disk / "checkpoint.pt"
    checkpoint.save({"w": torch.arange(1000.0)}, path)
    fill(leave=4096)
    try:
        checkpoint.save({"w": torch.zeros(100_000)}, path)  # 400 KB into 4 KB
    except OSError as e:
        assert e.errno == 28, e  # ENOSPC
    else:
        raise AssertionError("a 400 KB save fitted into 4 KB")
    assert torch.equal(checkpoint.load(path)["w"], torch.arange(1000.0))
    assert sorted(p.name for p in disk.iterdir()) == ["checkpoint.pt", "filler"]  # no temporary left behind
