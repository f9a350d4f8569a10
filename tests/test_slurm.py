"""The test preset on a real single-node SLURM cluster through profiles/slurm.

Skipped (with the command that enables it) where Debian's slurm and munge packages are absent;
`.ci/run` installs them, so CI runs it for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml
from workflow_helpers import REPO, snakemake

from repro.lm.runs import planned_runs

pytestmark = pytest.mark.slow


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout


# Two fine-tuning runs of the test preset, each fine-tuned with a GPU (two at once, one per fake GPU)
# and evaluated for forgetting. The reference is the local run of the whole preset, which the other
# end-to-end tests share: its workspace, with Snakemake's records, is copied and the two runs' folders
# removed, so the cluster reruns exactly their four jobs on the model and data the local run made.
# Every other rule goes through the same executor path; at several seconds of SLURM and Snakemake
# overhead per job (two workflow parses, squeue polls) each would add CPU time and no further coverage.
PRESET = yaml.safe_load((REPO / "presets" / "test.yaml").read_text())
RUNS = [run for run in planned_runs(PRESET) if (run.method, run.rank) in {("lora", 1), ("rslora", 4)}]
SLURM_TARGETS = tuple(f"{run.directory()}/eval.csv" for run in RUNS)


def test_test_preset_runs_under_slurm_like_locally(test_preset_run, slurm, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(test_preset_run, ws, symlinks=True)
    shutil.rmtree(ws / ".snakemake" / "log")
    for run in RUNS:
        shutil.rmtree(ws / run.directory())
    before = slurm.allocated_job_ids()
    proc = snakemake(
        ws, *SLURM_TARGETS, "--workflow-profile", "profiles/slurm", "--configfile", "presets/test.yaml",
        # The loopback cluster has no accounting database to guess an account from, and jobs of
        # seconds should be polled for in seconds.
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1", "--jobs", "4",
        # GPU requests go through GRES on the fake devices (the tiny model still runs on the CPU).
        "--set-resources", "finetune:gpu=1", timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # Exactly the removed runs' jobs ran, every one on SLURM with an id slurmctld allocated.
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", out).group(1))
    submitted = {int(j): int(s) for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)}
    assert not re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert len(submitted) == steps == 2 * len(RUNS), out[-3000:]
    assert set(submitted.values()) <= slurm.allocated_job_ids() - before

    # Each command's provenance manifest carries the SLURM job it ran in.
    manifests = [json.loads(m.read_text()) for run in RUNS for m in (ws / run.directory()).rglob("provenance/*.json")]
    assert len(manifests) == len(submitted)
    job_ids = {int((m.get("slurm") or {}).get("SLURM_JOB_ID", -1)) for m in manifests}
    assert job_ids == set(submitted.values()), sorted(job_ids ^ set(submitted.values()))[:5]

    # Fine-tuning jobs were given a GPU by the scheduler.
    finetune_logs = sorted((ws / "logs/slurm/rule_finetune").rglob("*.log"))
    assert len(RUNS) == 2 and len(finetune_logs) == len(RUNS)
    for log in finetune_logs:
        info = _scontrol_job(int(log.stem))
        assert re.search(r"gres/gpu[:=]1|gpu:1", info), info

    # Same seed, same numbers as the local run of the same preset (wall-clock fields aside).
    for run in RUNS:
        a, b = (json.loads((root / run.directory() / "summary.json").read_text()) for root in (ws, test_preset_run))
        assert a.pop("seconds_this_session") > 0 and b.pop("seconds_this_session") > 0
        assert a == b, run.key
        for name in ("train_log.csv", "eval.csv"):
            _assert_same_numbers(ws, test_preset_run, f"{run.directory()}/{name}")


def _assert_same_numbers(ws, local_ws, rel: str) -> None:
    a, b = (pd.read_csv(root / rel) for root in (ws, local_ws))
    timings = [c for c in a.columns if "seconds" in c or c == "tokens_per_s"]
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings), check_exact=True, obj=rel)
    assert len(a.columns) - len(timings) >= 5, rel
