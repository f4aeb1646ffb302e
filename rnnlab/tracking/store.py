"""What every part of rnnlab.tracking knows about an MLflow store: the one error rnnlab raises
for it, what one call may carry, where a local store lives, the cheap checks that it can
work, and how one unit of rnnlab's work becomes one MLflow call.

A unit of work is a ``(kind, payload)`` pair, as the trainer queues it, the writer sends it
and a spool file keeps it (JSON, so payloads are plain lists and dicts):

    ("metrics",  [(key, value, timestamp_ms, step), ...])
    ("params",   {key: value})                 # strings; MLflow params are write-once
    ("tags",     {key: value})
    ("artifact", (local_path, artifact_path))
    ("status",   "FINISHED" | "FAILED" | "KILLED")
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

MAX_METRICS_PER_CALL = 1000  # MLflow's limit for one log_batch
MAX_PARAMS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000  # MLflow rejects (or, on some stores, truncates) longer values

Work = tuple[str, Any]
T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking store could not be reached or refused the run; one line for the user."""


def check_params(params: dict[str, Any]) -> None:
    """Refuse what MLflow would silently truncate, before anything is written."""
    for key, value in params.items():
        if len(str(value)) > MAX_PARAM_LENGTH:
            raise TrackingError(
                f"param {key!r} is {len(str(value))} characters long (MLflow allows {MAX_PARAM_LENGTH})"
            )


def local_store_file(uri: str) -> Path | None:
    """The file of a local SQLite store (``sqlite:///outputs/mlflow.db`` -> outputs/mlflow.db), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def local_store_dir(uri: str) -> Path | None:
    """The folder of a local SQLite store (``sqlite:///outputs/mlflow.db`` -> outputs), else None."""
    file = local_store_file(uri)
    return file.parent if file is not None else None


# The stores an rnnlab run can write to: MLflow's SQL stores and its tracking server. (A
# scheme MLflow does not know, ftp://, used to train to the end with no run at all.)
SERVER_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
STORE_SCHEMES = {"sqlite", *SERVER_PORTS}
ALLOWED_STORES = "sqlite:///path/to/mlflow.db, http(s)://host:port, postgresql://..., mysql://..., mssql://..."


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _sqlite_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER))


def check_reachable(uri: str, create: bool = False) -> None:
    """Cheap checks that fail fast, before training, on a store that cannot work: a local
    store's folder must be writable (``create``: and is made now, as a run or a sweep opens
    it; without, nothing is created, so a run refused later leaves nothing behind), a server
    must accept a connection. Opening the store and creating the run happen in the writer."""
    scheme = urlparse(uri).scheme.split("+")[0]  # postgresql+psycopg2 is postgresql
    if scheme not in STORE_SCHEMES:
        raise TrackingError(f"tracking.uri={uri!r} is not a tracking store (allowed: {ALLOWED_STORES}; or tracking=none)")
    store = local_store_dir(uri)
    if store is not None:
        existing = next(p for p in [store.absolute(), *store.absolute().parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise TrackingError(f"tracking.uri={uri!r}: cannot create {str(store)!r} ({str(existing)!r} is not a writable folder)")
        db = local_store_file(uri)
        if db.exists() and (not db.is_file() or not os.access(db, os.W_OK)):
            raise TrackingError(f"tracking.uri={uri!r}: {str(db)!r} is not a writable file")
        if db.is_file() and db.stat().st_size > 0 and _sqlite_header(db) != SQLITE_HEADER:
            raise TrackingError(f"tracking.uri={uri!r}: {str(db)!r} is not an SQLite database (allowed: an MLflow "
                                "store a run made, or a path that does not exist yet)")
        if create:
            try:
                store.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"tracking.uri={uri!r}: cannot create {str(store)!r} ({e.strerror})") from None
    elif scheme in SERVER_PORTS:
        url = urlparse(uri)
        if not url.hostname and scheme in ("http", "https"):
            raise TrackingError(f"tracking.uri={uri!r} names no host (allowed: {ALLOWED_STORES})")
        if not url.hostname:  # postgresql:///db: the database's local socket
            return
        port = url.port or SERVER_PORTS[scheme]
        try:
            socket.create_connection((url.hostname, port), timeout=3).close()
        except OSError as e:
            raise TrackingError(f"tracking.uri={uri!r}: cannot connect to {url.hostname}:{port} ({e})") from None


def ui_rows(uri: str, experiment_id: str, run_id: str) -> list[tuple[str, str]]:
    """Where to look at a run, on the UI's training view (ui_page): a tracking server's own
    address, or the command that opens the UI on a store (``mlflow ui`` serves on port 5000)."""
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        server = parts._replace(netloc=parts.netloc.rpartition("@")[2])  # never print a password
        return [("open the UI", ui_page(urlunsplit(server), experiment_id, run_id))]
    return [("open the UI", f"mlflow ui --backend-store-uri {uri}"),
            ("", f"then {ui_page('http://127.0.0.1:5000', experiment_id, run_id)}")]


def ui_page(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (or of one run) on its training view.
    MLflow 3.17's UI opens every experiment in its GenAI view (traces) unless the address asks
    for ``workflowType=machine_learning`` (or the browser remembers the user's last switch): the
    experiment's ``mlflow.experimentKind`` tag is not consulted while that switch exists."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def one_line(error: BaseException) -> str:
    """An exception as one short line (MLflow's messages span lines and quote whole requests)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def quiet_mlflow() -> None:
    """Import MLflow, then silence its INFO lines ("Creating initial MLflow database tables...")."""
    import logging

    import mlflow  # noqa: F401  (it configures its loggers on import; override after)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def opening(first_call: Callable[[], T], attempts: int = 10) -> T:
    """The first call on a store, retried: processes that open a brand-new SQLite store at once
    race to create its tables ("table ... already exists"); the loser waits for the winner."""
    for attempt in range(attempts):
        try:
            return first_call()
        except Exception as e:
            if "already exists" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt * 0.5)
    raise AssertionError("unreachable: the last attempt returns or raises")


# What an MLflow client says when the store is not there (rather than refusing the request):
# requests' and urllib3's words for an HTTP server, psycopg2's and PyMySQL's for a database.
UNREACHABLE = (
    "Max retries exceeded", "Connection refused", "Connection reset", "Connection aborted", "timed out",
    "Name or service not known", "Temporary failure in name resolution", "could not connect to server",
    "connection to server at", "server closed the connection", "Can't connect to MySQL", "Lost connection to MySQL",
    "MySQL server has gone away", "database is locked",
)


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store is not there now (worth retrying) rather than refusing."""
    return isinstance(error, (ConnectionError, TimeoutError)) or any(m in str(error) for m in UNREACHABLE)


def batched(work: list[Work]) -> list[Work]:
    """Merge consecutive metrics into calls of at most 1,000; split params into 100s; the rest
    one call each, in order."""
    out: list[Work] = []
    for kind, payload in work:
        if kind == "metrics" and out and out[-1][0] == "metrics" and len(out[-1][1]) + len(payload) <= MAX_METRICS_PER_CALL:
            out[-1] = ("metrics", out[-1][1] + list(payload))
        elif kind == "metrics":
            payload = list(payload)
            out += [("metrics", payload[i : i + MAX_METRICS_PER_CALL]) for i in range(0, len(payload), MAX_METRICS_PER_CALL)]
        elif kind == "params":
            items = list(payload.items())
            out += [("params", dict(items[i : i + MAX_PARAMS_PER_CALL])) for i in range(0, len(items), MAX_PARAMS_PER_CALL)]
        else:
            out.append((kind, payload))
    return out


def send(client: Any, run_id: str, kind: str, payload: Any) -> None:
    """One unit of work (already ``batched``), as one MLflow call."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in payload])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in payload.items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload.items()])
    elif kind == "artifact":
        path, artifact_path = payload
        client.log_artifact(run_id, path, artifact_path)
    elif kind == "status":
        client.set_terminated(run_id, payload)
