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
import yaml
from workflow_helpers import REPO, BackgroundSnakemake, make_workspace

from repro.lm.runs import planned_runs

pytestmark = pytest.mark.slow


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout


# Two fine-tuning runs of the test preset and everything the paper preset sends to a GPU node for them:
# the model download, the data, fine-tuning with a GPU (two at once, one per fake GPU), the forgetting
# evaluation and the lm-eval tasks of each run and of the base model. The other rules (aggregation,
# fits, figures, the compression and TEB branches) go through the same executor path as CPU jobs; at
# several seconds of SLURM and Snakemake overhead per job (two workflow parses, squeue polls that back
# off while nothing finishes) they would add minutes to the suite and no further coverage.
PRESET = yaml.safe_load((REPO / "presets" / "test.yaml").read_text())
RUNS = [run for run in planned_runs(PRESET) if (run.method, run.rank) in {("lora", 1), ("rslora", 4)}]
SLURM_TARGETS = (*(f"{run.directory()}/{name}" for run in RUNS for name in ("eval.csv", "tasks.csv")),
                 f"results/lm/evals/{PRESET['model']['name']}/base.csv")


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
    assert len(submitted) == steps == 3 + 3 * len(RUNS), out[-3000:]
    assert set(submitted.values()) <= slurm.allocated_job_ids() - before

    # Each command's provenance manifest carries the SLURM job it ran in.
    manifests = [json.loads(m.read_text()) for root in ("results", "resources")
                 for m in (ws / root).rglob("provenance/*.json")]
    assert len(manifests) >= len(submitted)
    job_ids = {int((m.get("slurm") or {}).get("SLURM_JOB_ID", -1)) for m in manifests}
    assert job_ids <= set(submitted.values()), sorted(job_ids - set(submitted.values()))[:5]

    # Fine-tuning jobs were given a GPU by the scheduler.
    finetune_logs = sorted((ws / "logs/slurm/rule_finetune").rglob("*.log"))
    assert len(RUNS) == 2 and len(finetune_logs) == len(RUNS)
    for log in finetune_logs:
        info = _scontrol_job(int(log.stem))
        assert re.search(r"gres/gpu[:=]1|gpu:1", info), info

    # Same seed, same numbers as the local run of the same preset (wall-clock fields aside).
    for run in RUNS:
        a, b = (json.loads((root / run.directory() / "summary.json").read_text()) for root in (ws, local_ws))
        assert a.pop("seconds_this_session") > 0 and b.pop("seconds_this_session") > 0
        assert a == b, run.key
        for name in ("train_log.csv", "eval.csv", "tasks.csv"):
            _assert_same_numbers(ws, local_ws, f"{run.directory()}/{name}")
    _assert_same_numbers(ws, local_ws, SLURM_TARGETS[-1])


def _assert_same_numbers(ws, local_ws, rel: str) -> None:
    a, b = (pd.read_csv(root / rel) for root in (ws, local_ws))
    timings = [c for c in a.columns if "seconds" in c or c == "tokens_per_s"]
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings), check_exact=True, obj=rel)
    assert len(a.columns) - len(timings) >= 5, rel
