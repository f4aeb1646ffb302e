"""python -m rnnlab.server: loopback unless authenticated."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.slow
def test_the_recommended_server_listens_on_loopback_only(mlflow_server):
    assert listening_addresses(mlflow_server.port) == {"0100007F"}  # 127.0.0.1, nothing else


def run(args, env=None):
    return subprocess.run([sys.executable, "-m", "rnnlab.server", *args], capture_output=True, text=True, env=env)


def test_a_network_facing_server_without_auth_is_refused():
    result = run(["--host", "0.0.0.0"])
    assert result.returncode == 2
    assert result.stderr.strip() == ("rnnlab.server: error: --host 0.0.0.0 would expose an unauthenticated MLflow "
                                     "server to the network (allowed without --auth: 127.0.0.1, ::1, localhost)")


def test_auth_takes_its_password_from_the_environment_only(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "RNNLAB_MLFLOW_ADMIN_PASSWORD"}
    result = run(["--host", "0.0.0.0", "--auth", "--dry-run"], env=env)
    assert result.returncode == 2 and "RNNLAB_MLFLOW_ADMIN_PASSWORD" in result.stderr
    env["RNNLAB_MLFLOW_ADMIN_PASSWORD"] = "correct horse battery"
    store = f"sqlite:///{tmp_path}/m.db"
    result = run(["--host", "0.0.0.0", "--auth", "--dry-run", "--backend-store-uri", store], env=env)
    if "rnnlab[server]" in result.stderr:
        pytest.skip("MLflow's auth extra (Flask-WTF) is not installed: pip install 'rnnlab[server]'")
    assert result.returncode == 0 and "--app-name basic-auth" in result.stdout
    assert "correct horse" not in result.stdout  # never on the command line
    ini = tmp_path / "mlflow-auth.ini"
    assert "admin_password = correct horse battery" in ini.read_text()
    assert ini.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_workers_pass_through_to_mlflow_and_a_bad_count_is_one_line():
    result = run(["--workers", "1", "--dry-run"])
    assert result.returncode == 0 and result.stdout.split()[-2:] == ["--workers", "1"]
    assert run(["--dry-run"]).stdout.split()[-2:] == ["--workers", "4"]  # MLflow's own default
    result = run(["--workers", "0"])
    assert result.returncode == 2
    assert result.stderr.strip() == "rnnlab.server: error: --workers 0 is out of range (allowed: 1 or more)"
