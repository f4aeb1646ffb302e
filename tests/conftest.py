"""Shared helpers: running the CLI in a subprocess, in a scratch directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A run small enough for a test: a few weeks of data, a small net, a handful of steps.
TINY = [
    "data.years=0.12", "depth=2", "hidden_size=8", "data.lookback=24",
    "train.epochs=2", "train.steps_per_epoch=4", "train.batch_size=16", "quiet=true",
]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty directory to run the CLI in (its outputs/ lands here)."""
    return tmp_path


@pytest.fixture
def float64():
    """Float64 as the default dtype for one test (references are compared in float64)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
