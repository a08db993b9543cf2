"""A real two-node SLURM cluster on localhost, for testing the sbatch templates.

``local_slurm_cluster()`` starts, in a temporary directory:

* a private ``munged`` (its own key and socket; ``/etc/munge`` and any system munged are left alone),
* ``slurmctld`` and one ``slurmd -N <name>`` per node, all on free ports bound to 127.0.0.1,

waits until ``sinfo`` shows every node idle, and yields a :class:`LocalSlurm` whose ``env`` points
clients (``sbatch``, ``squeue``, ``scontrol``) at the cluster through ``SLURM_CONF``. On exit it
cancels the cluster's jobs and stops exactly the daemons it started, by the PIDs in their pid files.

The nodes are the same machine: each advertises ``cpus_per_node`` CPUs and runs jobs as the current
user. Node names (n1, n2) do not resolve in DNS; templates must not depend on that.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SLURM_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "sinfo",
    "squeue",
    "scontrol",
    "scancel",
    "munged",
    "mungekey",
)
FINISHED_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class SlurmUnavailable(RuntimeError):
    """The SLURM or munge binaries needed for a local cluster are not installed."""


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):  # IndexError: created, not yet written
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"daemon did not write its pid file {path} within {timeout:.0f} s")


@dataclass
class LocalSlurm:
    """Handle on a running local cluster: its directory, client environment and a few helpers."""

    root: Path
    nodes: tuple[str, ...]
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit; returns the job id. ``env`` is added to the submitting environment."""
        full_env = {**self.env, **(env or {})}
        out = subprocess.run(["sbatch", "--parsable", *args], env=full_env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, NodeList, ...); {} once purged."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if out.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait_for(self, job_id: int, predicate, timeout: float, what: str) -> dict[str, str]:
        """Poll the job until ``predicate(info)`` holds; raise with the logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info and predicate(info):
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id}: not {what} after {timeout:.0f} s; last state {info}\n{self.daemon_logs()}")

    def wait_finished(self, job_id: int, timeout: float) -> dict[str, str]:
        return self.wait_for(job_id, lambda i: i.get("JobState") in FINISHED_STATES, timeout, "finished")

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def daemon_logs(self, tail: int = 40) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"----- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)


def _slurm_conf(root: Path, nodes: tuple[str, ...], cpus: int, ctld_port: int, node_ports: list[int], user: str) -> str:
    host = socket.gethostname()
    node_lines = "\n".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs={cpus} RealMemory=1000 State=UNKNOWN"
        for n, p in zip(nodes, node_ports, strict=True)
    )
    return f"""\
ClusterName=ppotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmUser={user}
SlurmdUser={user}
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=600
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmdSpoolDir={root}/spool/%n
StateSaveLocation={root}/state
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
{node_lines}
PartitionName=debug Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


def _stop(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM one daemon we started, then SIGKILL if it lingers."""
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_slurm_cluster(
    nodes: tuple[str, ...] = ("n1", "n2"), cpus_per_node: int = 2, start_timeout: float = 60.0
) -> Iterator[LocalSlurm]:
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(
            f"SLURM/munge binaries not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
        )
    user = getpass.getuser()
    root = Path(tempfile.mkdtemp(prefix="ppo_slurm_"))
    root.chmod(0o755)  # munged requires the socket's directory chain to be world-searchable
    for sub, mode in (("munge", 0o700), ("run", 0o755), ("log", 0o755), ("state", 0o700), ("spool", 0o755)):
        (root / sub).mkdir(mode=mode)
    for n in nodes:
        (root / "spool" / n).mkdir()
    (root / "plugstack.conf").write_text("")
    ctld_port, *node_ports = _free_ports(1 + len(nodes))
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, nodes, cpus_per_node, ctld_port, node_ports, user))

    # Clients must talk to this cluster only, even when the tests themselves run inside a SLURM job.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["SLURM_CONF"] = str(conf)
    cluster = LocalSlurm(root=root, nodes=tuple(nodes), env=env)
    pid_files = {"munged": root / "run" / "munged.pid", "slurmctld": root / "run" / "slurmctld.pid"}
    pid_files.update({f"slurmd-{n}": root / "run" / f"slurmd-{n}.pid" for n in nodes})

    def start(name: str, cmd: list[str]) -> None:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=30)
        cluster.pids[name] = _read_pid(pid_files[name])

    try:
        key = root / "munge" / "munge.key"
        subprocess.run(
            [_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30
        )
        start(
            "munged",
            [
                _which("munged"),
                f"--socket={root}/run/munge.sock",
                f"--key-file={key}",
                f"--pid-file={pid_files['munged']}",
                f"--log-file={root}/log/munged.log",
                f"--seed-file={root}/munge/munged.seed",
            ],
        )
        start("slurmctld", [_which("slurmctld"), "-c", "-i", "-f", str(conf)])
        for n in nodes:
            start(f"slurmd-{n}", [_which("slurmd"), "-N", n, "-f", str(conf)])
        deadline = time.monotonic() + start_timeout
        while set(cluster.node_states().get(n) for n in nodes) != {"idle"}:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nodes not idle after {start_timeout:.0f} s: {cluster.node_states()}\n{cluster.daemon_logs()}"
                )
            time.sleep(0.5)
        yield cluster
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            f"{e.cmd[0]} failed to start ({e.returncode}): {e.stderr}\n{cluster.daemon_logs()}"
        ) from None
    finally:
        if "slurmctld" in cluster.pids:
            cluster.run("scancel", "--user", user, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and cluster.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name in [f"slurmd-{n}" for n in nodes] + ["slurmctld", "munged"]:
            if name in cluster.pids:
                _stop(cluster.pids[name])
        if os.environ.get("PPO_SLURM_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
