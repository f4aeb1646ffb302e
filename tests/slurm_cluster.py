"""A one-node Slurm cluster on this machine, for the tests: munged, slurmdbd, slurmctld and
slurmd with their state, spool, key and sockets in one folder, stopped by PID afterwards.

Accounting is real (slurmdbd on the machine's MariaDB, a database of its own, dropped at the
end): submitit learns a job's state from sacct, which without slurmdbd only answers "Slurm
accounting storage is disabled", and then a cancelled job would be waited for forever.

Debian's slurm-wlm, slurmdbd and munge are installed when missing (as root, where apt exists). Every
daemon runs in the foreground of its own process group (-D, -F), so nothing outlives the tests
and nothing touches the machine's own /etc/slurm or /run/munge."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "slurmdbd", "munge")
MYSQL = ("127.0.0.1", 3306)


class Unavailable(RuntimeError):
    """Why no cluster can be had here (the tests skip with it)."""


def install() -> None:
    """slurm-wlm and munge, if missing: dpkg -s first, so a machine that has them pays nothing."""
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0] \
        if shutil.which("dpkg") else list(PACKAGES)
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} not installed, and installing needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:  # a stale package index: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                              capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-300:]}")


class Cluster:
    """``Cluster(folder).start()``; ``env`` is what a client (sinfo, sbatch, submitit) needs."""

    def __init__(self, folder: Path, time_limit_min: int = 10) -> None:
        self.folder = folder
        self.time_limit_min = time_limit_min
        self.host = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.munge_socket = folder / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.partition = "debug"

    def _node_line(self) -> str:
        """This machine as slurmd sees it (CPUs, sockets, memory), so the node is never drained
        for having less than the config says."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("NodeName="))
        line = re.sub(r"NodeName=\S+", f"NodeName={self.host}", line)
        self.cpus = int(re.search(r"CPUs=(\d+)", line).group(1))
        return line

    def write_config(self) -> None:
        f = self.folder
        for d in ("state", "spool", "log"):
            (f / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=rnnlab-test
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
InactiveLimit=0
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
{self._node_line()} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime={self.time_limit_min} State=UP OverSubscribe=NO
""")

    def write_dbd_config(self) -> None:
        f = self.folder
        dbd = f / "slurmdbd.conf"  # next to slurm.conf: where slurmdbd looks (SLURM_CONF's folder)
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdPort={self.dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost={MYSQL[0]}
StoragePort={MYSQL[1]}
StorageUser=root
StorageLoc={self.database}
PidFile={f / 'slurmdbd.pid'}
LogFile={f / 'log' / 'slurmdbd.log'}
""")
        dbd.chmod(0o600)  # slurmdbd refuses a config others can read

    def _sql(self, statement: str) -> None:
        import pymysql

        connection = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", autocommit=True)
        try:
            connection.cursor().execute(statement)
        finally:
            connection.close()

    def _spawn(self, args: list[str], log: str) -> None:
        out = open(self.folder / "log" / log, "ab")
        self.procs.append(subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self, timeout: float = 60) -> "Cluster":
        for tool in ("munged", "mungekey", "slurmdbd", "slurmctld", "slurmd", "sinfo", "srun", "sacct"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise Unavailable(f"{tool} not found")
        try:
            __import__("pymysql")
            socket.create_connection(MYSQL, timeout=1).close()
        except (ImportError, OSError) as e:
            raise Unavailable(f"slurmdbd needs MariaDB/MySQL on {MYSQL[0]}:{MYSQL[1]} and PyMySQL to drop its database ({e})")
        self.dbd_port = _free_port()
        self.database = f"slurm_acct_{os.getpid()}_{int(time.time())}"
        self.write_config()
        self.write_dbd_config()
        key = self.folder / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key), "--force"], check=True, capture_output=True)
        key.chmod(0o400)
        self._spawn(["munged", "-F", "--force", "--key-file", str(key), "--socket", str(self.munge_socket),
                     "--pid-file", str(self.folder / "munged.pid"), "--seed-file", str(self.folder / "munge.seed"),
                     "--log-file", str(self.folder / "log" / "munged.log")], "munged.out")
        _wait(lambda: self.munge_socket.exists(), 10, "munged's socket", self)
        self._spawn(["slurmdbd", "-D"], "slurmdbd.out")

        def dbd_up() -> bool:
            return subprocess.run(["sacctmgr", "-i", "add", "cluster", "rnnlab-test"], capture_output=True,
                                  env=self.env, timeout=10).returncode == 0

        _wait(dbd_up, timeout, "slurmdbd to answer sacctmgr", self)
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env)
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mix")

        _wait(idle, timeout, "the node to be idle in sinfo", self)
        hello = subprocess.run(["srun", "-N1", "-t", "1", "hostname"], capture_output=True, text=True,
                               env=self.env, timeout=timeout)
        if hello.returncode != 0:
            self.stop()
            raise Unavailable(f"srun hostname failed: {hello.stderr.strip()[-300:]}")
        return self

    def squeue(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True, env=self.env)
        return out.stdout.split("\n") if out.stdout.strip() else []

    def stop(self) -> None:
        """Every daemon this started, by its PID (the controller and node last: they answer
        scancel of what is left)."""
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env=self.env, timeout=30)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = []
        if getattr(self, "database", None):
            try:
                self._sql(f"DROP DATABASE IF EXISTS {self.database}")
            except Exception:
                pass  # the server went away: nothing of ours is left to drop

    def logs(self) -> str:
        """The daemons' last log lines, for a failed assertion."""
        parts = []
        for log in sorted((self.folder / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"== {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = cluster.logs()
            cluster.stop()
            raise Unavailable(f"timed out waiting for {what}:\n{logs}")
        time.sleep(0.3)
