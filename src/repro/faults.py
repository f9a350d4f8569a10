"""Fault injection for the drills (tests/test_drills.py): a real SIGKILL at a named point of a job.

``REPRO_KILL_AT=<label>`` kills the job's whole process group when it reaches ``kill_point(label)``.
Run under a local Snakemake started in its own session, the group is the job *and* Snakemake, which is
what a lost node or a power cut takes down: outputs stay marked incomplete and the folder stays locked,
so the drill exercises ``snakemake --unlock`` and ``--rerun-incomplete`` for real. Unset, it costs one
environment lookup.

``REPRO_PAUSE_AT=<label>:<seconds>`` makes the job wait there instead, so that a drill can act on the
run while the job is alive (kill its Snakemake, start a second run in the folder).
"""

from __future__ import annotations

import os
import signal
import time

ENV = "REPRO_KILL_AT"
PAUSE_ENV = "REPRO_PAUSE_AT"


def kill_point(label: str) -> None:
    if os.environ.get(ENV) == label:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV, "")
    if pause.rpartition(":")[0] == label:
        time.sleep(float(pause.rpartition(":")[2]))
