"""One workflow run at a time per results folder, and no run over jobs that a killed run left running.

Snakemake's own lock covers only overlapping outputs: two runs with other configs and other targets in
one folder would both go ahead, and the jobs of the first would read a resolved config the second
rewrote. So the Snakemake process of a run holds an exclusive lock on ``<results>/.run.lock`` from its
start to its exit, and a second run on the folder is refused. The kernel drops the lock with the
process, so a killed run leaves no stale lock behind.

A killed Snakemake does not take its jobs with it: they run on, write their outputs, and a new run
would start the same jobs beside them. Every ``repro`` job of a run therefore holds a shared lock on
``<results>/.jobs.lock`` (the workflow names it in ``REPRO_JOBS_LOCK``); a new run checks that no job
holds it and, if some do, refuses, naming their process ids.

Locks are advisory ``flock`` locks on the local machine; jobs on cluster nodes are not seen (their
scheduler knows them).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

RUN_LOCK = ".run.lock"
RUN_INFO = ".run.json"
JOBS_LOCK = ".jobs.lock"
JOBS_LOCK_ENV = "REPRO_JOBS_LOCK"

# Open lock files of this process: a flock lives as long as its open file.
_held: list = []


class FolderBusyError(RuntimeError):
    """Another run, or jobs of a killed run, are using the results folder."""


def lock_holders(path: Path) -> list[int]:
    """Process ids holding a flock on ``path`` (from /proc/locks; empty where that is not available)."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ 1234 08:01:5678 0 EOF" (blocked waiters carry a "->" field first)
        if "->" in fields:
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            pids.add(int(fields[4]))
    return sorted(pids)


def claim_results_folder(folder: str | Path, config_source: str) -> None:
    """Make this process the one run using ``folder`` until it exits; refuse when another run or jobs of a
    killed run are using it. Called by the Snakefile when a run starts (never in a dry run)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run = open(folder / RUN_LOCK, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(run, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        run.close()
        try:
            info = json.loads((folder / RUN_INFO).read_text())
            who = (f"Snakemake pid {info.get('pid')} on {info.get('host')}, config {info.get('config')}, "
                   f"started {info.get('started')}")
        except (OSError, ValueError):
            who = "another Snakemake"
        raise FolderBusyError(
            f"{folder}: another run is using this results folder ({who}). Wait for it to finish: two runs "
            "in one folder would mix their settings") from None
    jobs_path = folder / JOBS_LOCK
    with open(jobs_path, "a+") as jobs:
        try:
            fcntl.flock(jobs, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            run.close()
            pids = " ".join(map(str, lock_holders(jobs_path))) or "unknown"
            raise FolderBusyError(
                f"{folder}: jobs of an earlier run are still running (pids {pids}); its Snakemake was "
                f"stopped without them. Wait for them to end (or end them: kill {pids}), then rerun with "
                "--rerun-incomplete; what they were writing is redone") from None
        fcntl.flock(jobs, fcntl.LOCK_UN)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "config": config_source, "argv": sys.argv,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (folder / RUN_INFO).write_text(json.dumps(info, indent=1))
    _held.append(run)


def hold_jobs_lock() -> None:
    """A shared lock on the run's jobs lock (``REPRO_JOBS_LOCK``), held until this job's process exits, so
    that a new run in the folder sees the job even after its Snakemake is gone."""
    path = os.environ.get(JOBS_LOCK_ENV)
    if not path:
        return
    try:
        fh = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
        fcntl.flock(fh, fcntl.LOCK_SH)
    except OSError:  # a folder that cannot be locked (some network file systems): no protection, no failure
        return
    _held.append(fh)
