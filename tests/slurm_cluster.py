"""A real single-node SLURM cluster on loopback, for the cluster-profile test.

Debian's slurmctld, slurmd and munge run as root with their state, spool, logs and pid files in a
scratch directory; two fake GPUs (character devices aliasing /dev/null) back a `gpu:2` GRES so GPU
requests are scheduled for real. The executor plugin's job step strips SLURM_CONF, so the config must
sit at the default path: /etc/slurm/slurm.conf and gres.conf are symlinked for the cluster's lifetime
and whatever was there before is put back on stop. Daemons are stopped by the PIDs in their pid
files.

    python tests/slurm_cluster.py start SCRATCH     # prints the PIDs; `stop SCRATCH` ends them
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ETC = Path("/etc/slurm")
DAEMONS = ("slurmctld", "slurmd", "munged", "munge", "sbatch", "squeue", "sinfo", "scontrol", "srun")
INSTALL_HINT = ("apt-get install -y slurmctld slurmd slurm-client munge  (as root; `make test` on CI "
                "installs them through .ci/run)")


def missing_requirements() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"SLURM test skipped: {', '.join(absent)} not installed; to run it: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "SLURM test skipped: starting slurmd and munged needs root"
    return None


def _run(*cmd: str, check: bool = True, timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"SLURM cluster: timed out waiting for {what}")


class SlurmCluster:
    def __init__(self, scratch: Path, cpus: int | None = None, memory_mb: int = 20000, gpus: int = 2):
        self.scratch = Path(scratch).resolve()
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 2
        self.memory_mb = memory_mb
        self.gpus = gpus
        self.started_munge = False

    @property
    def ctld_log(self) -> Path:
        return self.scratch / "slurmctld.log"

    def _write_config(self) -> None:
        s = self.scratch
        for sub in ("state", "spool"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = s / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a char device aliasing /dev/null
        (s / "slurm.conf").write_text("\n".join([
            "ClusterName=repro-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2", "SchedulerParameters=sched_interval=1",
            "MinJobAge=3600",  # finished jobs stay visible to scontrol for the rest of a slow test run
            f"StateSaveLocation={s}/state", f"SlurmdSpoolDir={s}/spool",
            f"SlurmctldPidFile={s}/slurmctld.pid", f"SlurmdPidFile={s}/slurmd.pid",
            f"SlurmctldLogFile={self.ctld_log}", f"SlurmdLogFile={s}/slurmd.log",
            "GresTypes=gpu",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
            f"Gres=gpu:{self.gpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        last = self.gpus - 1
        files = f"{s}/fakegpu[0-{last}]" if self.gpus > 1 else f"{s}/fakegpu0"
        (s / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File={files}\n")

    def _link_config(self) -> None:
        ETC.mkdir(parents=True, exist_ok=True)
        for name in ("slurm.conf", "gres.conf"):
            target = ETC / name
            if target.exists() or target.is_symlink():
                shutil.move(str(target), self.scratch / f"saved-{name}")
            target.symlink_to(self.scratch / name)

    def _restore_config(self) -> None:
        # Stateless on purpose: `stop` from another process must put /etc/slurm back as well.
        for name in ("slurm.conf", "gres.conf"):
            target, backup = ETC / name, self.scratch / f"saved-{name}"
            if target.is_symlink() and Path(os.readlink(target)) == self.scratch / name:
                target.unlink()
            if (backup.exists() or backup.is_symlink()) and not (target.exists() or target.is_symlink()):
                shutil.move(str(backup), target)

    def _munge_ok(self) -> bool:
        return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0

    def start(self) -> "SlurmCluster":
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._link_config()
        try:
            if not self._munge_ok():
                Path("/run/munge").mkdir(parents=True, exist_ok=True)
                shutil.chown("/run/munge", "munge", "munge")
                _run("runuser", "-u", "munge", "--", "/usr/sbin/munged")
                self.started_munge = True
                _wait(self._munge_ok, 15, "munged")
            _run("/usr/sbin/slurmctld", "-c")
            _wait(lambda: _pid(self.scratch / "slurmctld.pid") is not None, 20, "slurmctld")
            _wait(lambda: _run("sinfo", "-h", check=False).returncode == 0, 30, "slurmctld to answer")
            _run("/usr/sbin/slurmd")
            _wait(lambda: _pid(self.scratch / "slurmd.pid") is not None, 20, "slurmd")
            _wait(self._node_ready, 60, f"node {self.host} to become idle")
        except Exception:
            self.stop()
            raise
        return self

    def _node_ready(self) -> bool:
        state = _run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip().lower()
        if any(s in state for s in ("inval", "drain", "down")):
            _run("scontrol", "update", f"nodename={self.host}", "state=resume", check=False)
            return False
        return state.startswith("idle") or state.startswith("mix") or state.startswith("alloc")

    def pids(self) -> dict[str, int | None]:
        return {"slurmctld": _pid(self.scratch / "slurmctld.pid"), "slurmd": _pid(self.scratch / "slurmd.pid"),
                "munged": _pid(Path("/run/munge/munged.pid")) if self.started_munge else None}

    def allocated_job_ids(self) -> set[int]:
        """Job ids slurmctld allocated, read from its log (there is no accounting database)."""
        import re

        text = self.ctld_log.read_text(errors="replace") if self.ctld_log.exists() else ""
        # The main scheduler logs "Allocate JobId=N"; on a busy machine the backfill scheduler may start
        # the job instead and logs "_start_job: Started JobId=N".
        return {int(m) for m in re.findall(r"(?:sched: Allocate|sched/backfill: _start_job: Started) JobId=(\d+)", text)}

    def stop(self) -> None:
        for pid in self.pids().values():
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            end = time.monotonic() + 15
            while time.monotonic() < end:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)
        self._restore_config()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    action, scratch = sys.argv[1], Path(sys.argv[2])
    cluster = SlurmCluster(scratch)
    if action == "start":
        cluster.start()
        print(cluster.pids())
    elif action == "stop":
        cluster.started_munge = True
        cluster.stop()
    else:
        raise SystemExit("usage: slurm_cluster.py start|stop SCRATCH")
