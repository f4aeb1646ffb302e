"""Start an MLflow tracking server for rnnlab runs, safely by default.

    python -m rnnlab.server                         # http://127.0.0.1:5000, store outputs/mlflow.db
    python -m rnnlab.server --port 5001 --backend-store-uri postgresql://...
    python -m rnnlab.server --workers 1             # one server process: enough for one user's runs
    RNNLAB_MLFLOW_ADMIN_PASSWORD=... python -m rnnlab.server --host 0.0.0.0 --auth

``mlflow server`` has no authentication unless asked, and anyone who reaches it can read and
delete every run. So this binds 127.0.0.1 (this machine only) unless authentication is on:
``--auth`` runs MLflow's basic-auth app (``pip install "rnnlab[server]"``) with the admin
account's password taken from the environment (never from the command line, where ``ps``
shows it to every user). Reach a loopback server from elsewhere through an SSH tunnel.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from pathlib import Path

PASSWORD_VARIABLE = "RNNLAB_MLFLOW_ADMIN_PASSWORD"


def command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The mlflow server command line and environment these arguments ask for (or SystemExit)."""
    env = dict(os.environ)
    cmd = [shutil.which("mlflow") or "mlflow", "server", "--host", args.host, "--port", str(args.port),
           "--backend-store-uri", args.backend_store_uri, "--artifacts-destination", args.artifacts_destination,
           "--workers", str(args.workers)]
    if not args.auth:
        if not _loopback(args.host):
            _fail(f"--host {args.host} would expose an unauthenticated MLflow server to the network "
                  f"(allowed without --auth: 127.0.0.1, ::1, localhost)")
        return cmd, env
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if len(password) < 12:
        _fail(f"--auth needs the admin password in the environment variable {PASSWORD_VARIABLE} (12 characters or more)")
    try:
        import flask_wtf  # noqa: F401  (MLflow's basic-auth app needs it)
    except ImportError:
        _fail('--auth needs MLflow\'s auth extra: pip install "rnnlab[server]"')
    folder = Path(args.backend_store_uri.removeprefix("sqlite:///")).parent if args.backend_store_uri.startswith("sqlite:///") else Path("outputs")
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "mlflow-auth.ini"
    ini.touch(mode=0o600, exist_ok=True)
    os.chmod(ini, 0o600)  # it holds the admin password
    ini.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{(folder / 'mlflow-auth.db').resolve()}\n"
        "admin_username = admin\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini.resolve())
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", os.urandom(24).hex())
    return cmd + ["--app-name", "basic-auth"], env


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> None:
    print(f"rnnlab.server: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default="sqlite:///outputs/mlflow.db")
    parser.add_argument("--artifacts-destination", default="outputs/mlartifacts")
    parser.add_argument("--workers", type=int, default=4, help="server processes (MLflow's default 4; each imports "
                        "MLflow, ~2 s of CPU at start: 1 serves one user's runs)")
    parser.add_argument("--auth", action="store_true", help=f"basic auth; admin password from ${PASSWORD_VARIABLE}")
    parser.add_argument("--dry-run", action="store_true", help="print the mlflow command and exit")
    args = parser.parse_args(argv)
    if args.workers < 1:
        _fail(f"--workers {args.workers} is out of range (allowed: 1 or more)")
    cmd, env = command(args)
    if args.dry_run:
        print(" ".join(cmd))
        return
    store = args.backend_store_uri
    if store.startswith("sqlite:///"):
        Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
