"""The test preset on a real single-node SLURM cluster through profiles/slurm.

Skipped (with the command that enables it) where Debian's slurm and munge packages are absent;
`.ci/run` installs them, so CI runs it for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime

import pandas as pd
import pytest
import yaml
from workflow_helpers import REPO, snakemake

from repro.lm.runs import planned_runs

pytestmark = [pytest.mark.slow, pytest.mark.schedule("first", 0)]


def _scontrol_job(job_id: int) -> str:
    return subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout


def _job_interval(scontrol_text: str) -> tuple[datetime, datetime]:
    start, end = (re.search(rf"\b{key}=(\S+)", scontrol_text).group(1) for key in ("StartTime", "EndTime"))
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


# One fine-tuning and one forgetting evaluation of the test preset, each given a GPU (two at once, one
# per fake GPU). The reference is the local run of the whole preset, which the other end-to-end tests
# share: its workspace, with Snakemake's records, is copied, one run's folder is removed and another
# run's evaluation, so the cluster reruns exactly those two jobs, side by side, on the model, data and
# checkpoints the local run made. Every other rule goes through the same executor path; at several seconds
# of SLURM and Snakemake overhead per job (two workflow parses, squeue polls) each would add CPU time and no
# further coverage, and a second level of jobs would add a round of status polls (about 30 s).
PRESET = yaml.safe_load((REPO / "presets" / "test.yaml").read_text())
FINETUNED, EVALUATED = (next(run for run in planned_runs(PRESET) if (run.method, run.rank) == key)
                        for key in (("lora", 1), ("rslora", 4)))
RESULTS = "results-test"  # the test preset's own folder
SLURM_TARGETS = (f"{FINETUNED.directory(RESULTS)}/summary.json", f"{EVALUATED.directory(RESULTS)}/eval.csv")


def test_test_preset_runs_under_slurm_like_locally(test_preset_run, slurm, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(test_preset_run, ws, symlinks=True)
    shutil.rmtree(ws / ".snakemake" / "log")
    shutil.rmtree(ws / FINETUNED.directory(RESULTS))
    evaluated = ws / EVALUATED.directory(RESULTS)
    (evaluated / "eval.csv").unlink()
    for manifest in (evaluated / "provenance").glob("evaluate-forgetting*.json"):
        manifest.unlink()
    before = slurm.allocated_job_ids()
    proc = snakemake(
        ws, *SLURM_TARGETS, "--workflow-profile", "profiles/slurm", "--configfile", "presets/test.yaml",
        # The loopback cluster has no accounting database to guess an account from, and jobs of
        # seconds should be polled for in seconds.
        "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1", "--jobs", "4",
        # GPU requests go through GRES on the fake devices (the tiny model still runs on the CPU).
        "--set-resources", "finetune:gpu=1", "evaluate:gpu=1", timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # Exactly the two removed jobs ran, both on SLURM with an id slurmctld allocated.
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", out).group(1))
    submitted = {int(j): int(s) for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)}
    assert not re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert len(submitted) == steps == 2, out[-3000:]
    assert set(submitted.values()) <= slurm.allocated_job_ids() - before

    # Each command's provenance manifest carries the SLURM job it ran in.
    manifests = [json.loads(m.read_text()) for m in [*(ws / FINETUNED.directory(RESULTS)).rglob("provenance/*.json"),
                                                     *(evaluated / "provenance").glob("evaluate-forgetting*.json")]]
    assert len(manifests) == len(submitted)
    job_ids = {int((m.get("slurm") or {}).get("SLURM_JOB_ID", -1)) for m in manifests}
    assert job_ids == set(submitted.values()), sorted(job_ids ^ set(submitted.values()))[:5]

    # The scheduler gave each job a GPU of its own, and ran them at the same time.
    logs = {rule: sorted((ws / f"logs/slurm/rule_{rule}").rglob("*.log")) for rule in ("finetune", "evaluate")}
    assert [len(found) for found in logs.values()] == [1, 1], logs
    infos = [_scontrol_job(int(found[0].stem)) for found in logs.values()]
    for info in infos:
        assert re.search(r"gres/gpu[:=]1|gpu:1", info), info
    (start_a, end_a), (start_b, end_b) = (_job_interval(info) for info in infos)
    assert start_a < end_b and start_b < end_a, infos

    # Same seed, same numbers as the local run of the same preset (wall-clock fields aside).
    a, b = (json.loads((root / FINETUNED.directory(RESULTS) / "summary.json").read_text()) for root in (ws, test_preset_run))
    assert a.pop("seconds_this_session") > 0 and b.pop("seconds_this_session") > 0
    assert a == b, FINETUNED.key
    _assert_same_numbers(ws, test_preset_run, f"{FINETUNED.directory(RESULTS)}/train_log.csv")
    _assert_same_numbers(ws, test_preset_run, f"{EVALUATED.directory(RESULTS)}/eval.csv")


def _assert_same_numbers(ws, local_ws, rel: str) -> None:
    a, b = (pd.read_csv(root / rel) for root in (ws, local_ws))
    timings = [c for c in a.columns if "seconds" in c or c == "tokens_per_s"]
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings), check_exact=True, obj=rel)
    assert len(a.columns) - len(timings) >= 5, rel
