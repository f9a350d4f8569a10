"""The test preset on a real single-node SLURM cluster through profiles/slurm.

Skipped (with the command that enables it) where Debian's slurm and munge packages are absent;
`.ci/run` installs them, so CI runs it for real.
"""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest
from slurm_cluster import SlurmCluster, missing_requirements
from workflow_helpers import make_workspace, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    pids = cluster.pids()
    cluster.stop()
    for name, pid in pids.items():
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                import os

                os.kill(pid, 0)


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout


def test_test_preset_runs_under_slurm_like_locally(slurm, test_preset_run, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    before = slurm.allocated_job_ids()
    proc = snakemake(
        ws, "--workflow-profile", "profiles/slurm", "--configfile", "presets/test.yaml",
        # The loopback cluster has no accounting database to guess an account from, and jobs of
        # seconds should be polled for in seconds.
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1", "--jobs", "4",
        # GPU requests go through GRES on the fake devices (the tiny model still runs on the CPU).
        "--set-resources", "finetune:gpu=1",
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # Every job but the `all` target went to SLURM, and slurmctld allocated each of those ids.
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", out).group(1))
    submitted = {int(j): int(s) for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)}
    local = re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert local == ["all"], local
    assert len(submitted) == steps - 1 > 20
    assert set(submitted.values()) <= slurm.allocated_job_ids() - before

    # Fine-tuning jobs were given a GPU by the scheduler.
    finetune_logs = sorted((ws / "logs/slurm/rule_finetune").rglob("*.log"))
    assert len(finetune_logs) == 4
    for log in finetune_logs:
        info = _scontrol_job(int(log.stem))
        assert re.search(r"gres/gpu[:=]1|gpu:1", info), info

    # Same seed, same numbers as the local run of the same preset.
    local_ws = test_preset_run
    a = pd.read_csv(ws / "results/lm/runs.csv").drop(columns=["run_dir"])
    b = pd.read_csv(local_ws / "results/lm/runs.csv").drop(columns=["run_dir"])
    pd.testing.assert_frame_equal(a, b)
    for rel in ("results/laws/fits.csv", "results/laws/gradnorm_spread.csv",
                "results/compression/tables/counts.csv", "results/compression/tables/existence.csv"):
        assert (ws / rel).read_bytes() == (local_ws / rel).read_bytes(), rel
