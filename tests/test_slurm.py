"""The test preset on a real single-node SLURM cluster through profiles/slurm.

Skipped (with the command that enables it) where Debian's slurm and munge packages are absent;
`.ci/run` installs them, so CI runs it for real.
"""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest
from workflow_helpers import BackgroundSnakemake, make_workspace

pytestmark = pytest.mark.slow


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout


# The language-model and laws branches of the test preset: every kind of job the paper preset sends
# to a GPU cluster (download, data, fine-tuning with a GPU, evaluation, lm-eval tasks, aggregation,
# fits, figures). The compression and TEB branches go through the same executor path; at about ten
# seconds of SLURM and Snakemake overhead per job (two workflow parses and squeue polling), their
# ~80 jobs of a second or two would add many minutes to CI for no further coverage.
SLURM_TARGETS = ("results/lm/runs.csv", "results/laws/fits.csv", "results/numbers.tex",
                 "results/tables/linear_law.tex", "results/figures/forgetting_vs_finetune_tiny-llama_stdlib-instruct.pdf")


def test_test_preset_runs_under_slurm_like_locally(slurm, request, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    before = slurm.allocated_job_ids()
    # The cluster run starts first and the local run it is compared with is built (or awaited) while it
    # runs: most of a SLURM job's wall time is submission and status polling, which the local run fills.
    cluster_run = BackgroundSnakemake(
        ws, *SLURM_TARGETS, "--workflow-profile", "profiles/slurm", "--configfile", "presets/test.yaml",
        # The loopback cluster has no accounting database to guess an account from, and jobs of
        # seconds should be polled for in seconds.
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1", "--jobs", "4",
        # GPU requests go through GRES on the fake devices (the tiny model still runs on the CPU).
        "--set-resources", "finetune:gpu=1",
    )
    try:
        local_ws = request.getfixturevalue("test_preset_run")
    finally:
        proc = cluster_run.wait(timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # Every job went to SLURM, and slurmctld allocated each of those ids.
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", out).group(1))
    submitted = {int(j): int(s) for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)}
    assert not re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert len(submitted) == steps >= 20
    assert set(submitted.values()) <= slurm.allocated_job_ids() - before

    # Each command's provenance manifest carries the SLURM job it ran in.
    manifests = [json.loads(m.read_text()) for root in ("results", "resources")
                 for m in (ws / root).rglob("provenance/*.json")]
    assert len(manifests) >= len(submitted)
    job_ids = {int((m.get("slurm") or {}).get("SLURM_JOB_ID", -1)) for m in manifests}
    assert job_ids <= set(submitted.values()), sorted(job_ids - set(submitted.values()))[:5]

    # Fine-tuning jobs were given a GPU by the scheduler.
    finetune_logs = sorted((ws / "logs/slurm/rule_finetune").rglob("*.log"))
    assert len(finetune_logs) == 4
    for log in finetune_logs:
        info = _scontrol_job(int(log.stem))
        assert re.search(r"gres/gpu[:=]1|gpu:1", info), info

    # Same seed, same numbers as the local run of the same preset.
    a = pd.read_csv(ws / "results/lm/runs.csv").drop(columns=["run_dir"])
    b = pd.read_csv(local_ws / "results/lm/runs.csv").drop(columns=["run_dir"])
    pd.testing.assert_frame_equal(a, b)
    for rel in ("results/laws/fits.csv", "results/laws/gradnorm_spread.csv", "results/numbers.tex",
                "results/tables/linear_law.tex"):
        assert (ws / rel).read_bytes() == (local_ws / rel).read_bytes(), rel
