"""Shared helpers: running the CLI in a subprocess, in a scratch directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One thread per test process, and for every CLI, sweep job and server it starts (they inherit
# the environment): the suite runs one xdist worker per core, and on two cores two 2-thread
# torch processes run at a quarter of one's speed (OpenMP threads spin waiting for a
# descheduled sibling). Tests that measure threads set them themselves.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# The longest files first: xdist hands whole files to its workers in collection order, and
# these two (Slurm jobs, multi-worker sweeps: minutes each) last left one worker running alone.
FIRST = ("test_slurm.py", "test_sweep.py")


def pytest_collection_modifyitems(items: list) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: every file keeps its own order


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


@pytest.fixture(scope="session")
def _mlflow_store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once per pytest run: creating one runs MLflow's schema
    migrations, 2-5 s of CPU here, in whichever process opens it first."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, _mlflow_store_template: Path) -> str:
    """The URI of this test's own empty MLflow store, tmp_path/mlflow.db (a copy of the
    template), for tests whose subject is not the store's creation."""
    shutil.copy(_mlflow_store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def add_store(_mlflow_store_template: Path):
    """A function that puts an empty MLflow store at <folder>/outputs/mlflow.db, the CLI's
    default, as a project's first run leaves it: a run there skips MLflow's schema migrations
    (~5 s of wall time here), which only the tests of a first run need to pay."""

    def add(folder: Path) -> Path:
        (folder / "outputs").mkdir(parents=True, exist_ok=True)
        shutil.copy(_mlflow_store_template, folder / "outputs" / "mlflow.db")
        return folder

    return add


@pytest.fixture
def tracked_workdir(tmp_path: Path, add_store) -> Path:
    """A directory to run the CLI in, its default MLflow store there already (see add_store)."""
    return add_store(tmp_path)


@pytest.fixture
def float64():
    """Float64 as the default dtype for one test (references are compared in float64)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def onednn_products(monkeypatch):
    """The hand-written loops' float32 products on oneDNN, whatever this host's race chose
    (rnnlab.bptt.cpu_products): for the tests that check oneDNN's products themselves."""
    from rnnlab import bptt

    monkeypatch.setattr(bptt, "_products", "onednn")


@pytest.fixture
def one_thread():
    """Torch on one thread for one test, restored after. For the studies' small runs (hidden
    sizes 32-64): a second thread buys nothing there, and on a loaded host (load 5-7 on these
    2 cores) two threads waiting on each other made a 2 s run take 10-40 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base: str, timeout: float) -> bool:
    """Whether an MLflow server (or `mlflow ui`) at ``base`` answers /health within ``timeout`` s."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1)
            return True
        except OSError:
            time.sleep(0.3)
    return False


class MlflowServer:
    """A real `mlflow server` on loopback, started the way the README recommends
    (python -m rnnlab.server), that a test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        args = [sys.executable, "-m", "rnnlab.server", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
                "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]  # 4 cost ~8 s of CPU per start
        self.proc = subprocess.Popen(args, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        if not healthy(self.uri, timeout):
            raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers
            self.proc.wait(timeout=60)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs at tmp_path/disk, for what a full disk does (needs root, as in CI here);
    ``fill(path, leave)`` takes all but ``leave`` bytes of it with one file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or 'mount failed'}): a full disk is tried as root")

    def fill(leave: int) -> None:
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - leave))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def initial_probe(overrides: list[str], out: Path) -> dict[str, float]:
    """The probe summary of a run's initial weights (probe.at=[0] among ``overrides``, one step)."""
    from rnnlab.compose import compose
    from rnnlab.probe import summary_metrics
    from rnnlab.run import run

    (probe,) = run(compose(overrides), output_dir=out).probes
    assert probe.step == 0  # the initial weights
    return summary_metrics(probe)
