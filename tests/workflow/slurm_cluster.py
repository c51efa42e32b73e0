"""A throwaway one-node SLURM cluster on this machine, for tests/workflow/test_slurm.py.

Debian's ``slurmctld``, ``slurmd`` and ``munge`` (installed with apt-get when missing), configured
entirely inside a temporary directory: its own munge key and socket, its own ``slurm.conf`` (no
accounting storage, no cgroups, free ports, the node's CPUs and memory from ``slurmd -C``).  The
three daemons run in the foreground as children of the test process; :meth:`Cluster.stop` ends them
by pid and waits for them.  Clients (``sbatch``, ``squeue``, ``scontrol``) find the cluster through
``SLURM_CONF`` in :attr:`Cluster.env`, which jobs inherit (the executor submits with ``--export=ALL``).

One shim: inside a job, snakemake-executor-plugin-slurm-jobstep (0.6) starts the rule with
``srun`` after deleting every ``SLURM_*`` variable but the job's identity, ``SLURM_CONF`` included,
so that ``srun`` only finds a slurm.conf at the default path (/etc/slurm) or a configless slurmd's
cache, as on a production cluster.  Rather than write /etc/slurm/slurm.conf, the cluster puts an
``srun`` first on the jobs' PATH (:attr:`Cluster.bin`) that sets ``SLURM_CONF`` again and execs
the real one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["PACKAGES", "ClusterUnavailable", "Cluster", "install", "start"]

PACKAGES = ("slurmctld", "slurmd", "munge")
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PARTITION = "evcf-test"  # deliberately not the default partition: the run must name it
MIN_JOB_AGE = 3600  # seconds a finished job stays in squeue/scontrol; the executor polls squeue (no sacct here)


class ClusterUnavailable(RuntimeError):
    """Why no cluster could be started; the test skips with this message."""


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install(timeout: int = 300) -> None:
    """apt-get install the daemons if any is missing; ClusterUnavailable if that is not possible."""
    if all(Path(p).exists() for p in DAEMONS.values()) and shutil.which("mungekey", path=SYSTEM_PATH):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"{', '.join(PACKAGES)} are not installed and installing them needs root")
    if not shutil.which("apt-get", path=SYSTEM_PATH):
        raise ClusterUnavailable(f"{', '.join(PACKAGES)} are not installed and there is no apt-get")
    env = {"PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install_cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout)
        proc = subprocess.run(install_cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr[-2000:]}")


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    cpus: int
    mem_mb: int
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _outputs: list[IO[str]] = field(default_factory=list)  # the daemons' stdout files, closed by stop()

    @property
    def bin(self) -> Path:
        """Put first on the PATH that jobs inherit: holds the ``srun`` shim (see the module docstring)."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """What a client (and, through sbatch --export=ALL, a job) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command (squeue, scontrol, scancel, ...) against this cluster."""
        proc = subprocess.run(list(args), env={"PATH": SYSTEM_PATH, **self.env}, capture_output=True,
                              text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def job(self, jobid: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Partition, NumCPUs, Comment, ...)."""
        text = self.client("scontrol", "show", "job", "--oneliner", jobid)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def stop(self) -> None:
        """Cancel what is left in the queue, then end each daemon we started, by pid, and wait for it."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", str(os.geteuid())], capture_output=True, timeout=30,
                           env={"PATH": SYSTEM_PATH, **self.env})
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    if not self.client("squeue", "--noheader", "--states=RUNNING,COMPLETING,PENDING").strip():
                        break
                except (RuntimeError, subprocess.TimeoutExpired):
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):  # clients before the services they need
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        while self._outputs:
            self._outputs.pop().close()


def _hardware() -> tuple[str, dict[str, str]]:
    """The ``NodeName=... CPUs=... RealMemory=...`` line of ``slurmd -C`` as (name, fields)."""
    out = subprocess.run([DAEMONS["slurmd"], "-C"], capture_output=True, text=True, timeout=30,
                         env={"PATH": SYSTEM_PATH}).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), None)
    if line is None:
        raise ClusterUnavailable(f"`slurmd -C` printed no NodeName line:\n{out}")
    fields = dict(item.split("=", 1) for item in line.split())
    return fields.pop("NodeName"), fields


def _slurm_conf(root: Path, node: str, hw: dict[str, str], munge_socket: Path) -> str:
    hardware = " ".join(f"{k}={v}" for k, v in hw.items())
    return f"""\
# one-node test cluster written by tests/workflow/slurm_cluster.py
ClusterName=evcf-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=NO MaxTime=INFINITE State=UP
"""


def _spawn(cluster: Cluster, name: str, args: list[str]) -> None:
    log = open(cluster.root / f"{name}.out", "w")
    cluster._outputs.append(log)
    cluster.procs[name] = subprocess.Popen([DAEMONS[name], *args], stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env={"PATH": SYSTEM_PATH, **cluster.env})


def _wait_for(what: str, ready: Callable[[], bool], cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise ClusterUnavailable(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                         f"{_tail(cluster.root / f'{name}.out')}")
        try:
            if ready():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.3)
    logs = "\n".join(f"--- {n}:\n{_tail(cluster.root / f'{n}.out')}" for n in cluster.procs)
    raise ClusterUnavailable(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def start(root: Path) -> Cluster:
    """Start munged, slurmctld and slurmd configured under ``root``; wait until the node is idle.

    On failure every daemon already started is stopped again and ClusterUnavailable says why.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster runs slurmd and slurmctld as root (SlurmUser=root)")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge", "bin"):
        (root / sub).mkdir(exist_ok=True)
    munge = root / "munge"
    munge.chmod(0o700)
    key = munge / "munge.key"
    made = subprocess.run(["mungekey", "--create", "--keyfile", str(key)], capture_output=True, text=True,
                          env={"PATH": SYSTEM_PATH})
    if made.returncode != 0:
        raise ClusterUnavailable(f"mungekey could not create {key}: {made.stderr.strip()}")
    node, hw = _hardware()
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, hw, munge / "munge.socket"))
    cluster = Cluster(root=root, conf=conf, node=node, cpus=int(hw["CPUs"]), mem_mb=int(hw["RealMemory"]))
    srun = cluster.bin / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun", path=SYSTEM_PATH)} "$@"\n')
    srun.chmod(0o755)
    try:
        _spawn(cluster, "munged", ["--foreground", "--force", f"--socket={munge}/munge.socket",
                                   f"--key-file={key}", f"--pid-file={munge}/munged.pid",
                                   f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"])
        _wait_for("the munge socket", (munge / "munge.socket").exists, cluster)
        _spawn(cluster, "slurmctld", ["-D", "-f", str(conf)])
        _wait_for("slurmctld", lambda: "UP" in cluster.client("scontrol", "ping"), cluster)
        _spawn(cluster, "slurmd", ["-D", "-f", str(conf)])
        _wait_for("the node to be idle",
                  lambda: cluster.client("sinfo", "--noheader", "--Node", "--format=%T").strip() == "idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster
