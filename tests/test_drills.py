"""Fault drills on the real DAG (`make drills`; marker `drills`, left out of `make test`).

One uninterrupted run of the smallest DAG that holds every long job type (the test preset with one
method, two ranks and compression at n = 5) is the reference. Each drill copies it, breaks one thing and
checks that the pipeline says what broke and, once the damage is removed as the message says, ends with
the reference's outputs:

- SIGKILL of a fine-tuning job after a step (``REPRO_KILL_AFTER_STEP``): Snakemake carries on, the
  rerun resumes the run from its last saved state.
- SIGKILL in the middle of a job (``REPRO_KILL_AT``, repro/faults.py) takes Snakemake down with it, as a
  lost node or a power cut would: the folder stays locked and the outputs marked incomplete, so the
  rerun is ``snakemake --unlock`` then ``--rerun-incomplete``. Every job type is deterministic on a CPU,
  so outputs must be bit-identical (only wall-time fields are left out of the comparison).
- damaged inputs (model weights, an adapter checkpoint, a resume state, a data file changed after its
  manifest, a runs.csv without a column, TEB task tensors): the failing job's log names the file.
- a full disk (RLIMIT_FSIZE in the job's process), a second Snakemake in the same folder, and a SLURM
  job cancelled in the middle (loopback cluster; skipped without slurm).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import BIN, make_workspace

pytestmark = pytest.mark.drills

CONFIG = "drills.yaml"
MODEL = "tiny-llama"
RUN = f"results/lm/runs/{MODEL}/stdlib-instruct/rslora/r4/lr0.001/seed0"
RUN_LOG = f"logs/evaluate/{MODEL}/stdlib-instruct/rslora_r4_lr0.001_seed0.log"
TEB_TARGET = "results/teb/models/ar-c0.5/target/seed0"
TEB_MODEL = "results/teb/models/ar-c0.5/teb/beta100/seed0"
COMP = "n5_d1"
COMP_FILES = [f"results/compression/enumerate/{COMP}.json", f"results/compression/schemes/{COMP}_unlabeled.jsonl.gz",
              f"results/compression/schemes/{COMP}_unlabeled.json",
              f"results/compression/verify/schemes/{COMP}_unlabeled.json"]
LAW_FILES = ["results/laws/fits.csv", "results/laws/early_stopping.csv", "results/laws/gradnorm_by_rank.csv",
             "results/laws/gradnorm_spread.csv"]
TARGETS = ["results/lm/runs.csv", "results/laws/fits.csv", f"{TEB_MODEL}/summary.json", COMP_FILES[-1]]


def drill_config(ws: Path, **finetune) -> str:
    cfg = yaml.safe_load((ws / "presets/test.yaml").read_text())
    cfg["finetune"].update({"methods": ["rslora"], "ranks": [1, 4], **finetune})
    cfg["compression"]["enumerate"]["n_max"] = 5
    cfg["compression"]["schemes"]["n_max"] = 5
    (ws / CONFIG).write_text(yaml.safe_dump(cfg))
    return CONFIG


def sm(ws: Path, *args: str, kill_at: str | None = None, timeout: int = 600, **env: str):
    """Snakemake in its own session, so a kill point takes it down with its jobs (and nothing else)."""
    extra = {"REPRO_KILL_AT": kill_at} if kill_at else {}
    return subprocess.run(
        # --configfile takes several values: it comes last so that targets are not read as config files.
        [str(BIN / "snakemake"), "--cores", "2", *args, "--configfile", CONFIG], cwd=ws,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra, **env},
        capture_output=True, text=True, timeout=timeout, start_new_session=True)


def ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The uninterrupted reference run (read-only: drills work on copies)."""
    ws = make_workspace(tmp_path_factory.mktemp("clean") / "ws")
    drill_config(ws)
    ok(sm(ws, *TARGETS))
    return ws


def copy_of(clean: Path, tmp_path: Path) -> Path:
    # copytree keeps modification times, and .snakemake holds the metadata records: the copy is as up
    # to date as the reference.
    return Path(shutil.copytree(clean, tmp_path / "ws", symlinks=True))


def killed(ws: Path, *args: str, kill_at: str) -> None:
    proc = sm(ws, *args, kill_at=kill_at)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert any((ws / ".snakemake/locks").iterdir()), "a killed Snakemake leaves its lock"
    assert any((ws / ".snakemake/incomplete").rglob("*")), "the killed job's outputs are marked incomplete"


def recover(ws: Path, *targets: str) -> None:
    ok(sm(ws, "--unlock"))
    ok(sm(ws, *targets, "--rerun-incomplete"))


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if not k.startswith("seconds")}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def same_bytes(a: Path, b: Path, *rels: str) -> None:
    for rel in rels:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def same_json(a: Path, b: Path, rel: str) -> None:
    load = lambda p: _without_times(json.loads((p / rel).read_text()))  # noqa: E731
    assert load(a) == load(b), rel


def same_csv(a: Path, b: Path, rel: str, drop=("seconds", "tokens_per_s", "evals_seconds")) -> None:
    def load(p):
        df = pd.read_csv(p / rel)
        return df.drop(columns=[c for c in df.columns if c in drop or c.startswith("evals_seconds")])
    pd.testing.assert_frame_equal(load(a), load(b), check_exact=True)


def same_teb_model(a: Path, b: Path, rel: str) -> None:
    import torch

    sa, sb = (torch.load(p / rel / "model.pt", weights_only=True) for p in (a, b))
    assert sa["meta"] == sb["meta"] and sa["state_dict"].keys() == sb["state_dict"].keys()
    assert all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"]), rel
    same_csv(a, b, f"{rel}/log.csv")
    same_json(a, b, f"{rel}/summary.json")


def log_of(ws: Path, rel: str) -> str:
    return (ws / rel).read_text(errors="replace")


# ------------------------------------------------------------------------------- SIGKILL mid-job


def not_yet_made(ws: Path, *rels: str) -> None:
    """Remove outputs, as if the run had not reached them yet.

    Snakemake does not rebuild a missing file whose consumers are up to date, so a drill removes the
    job's outputs and everything downstream of them up to its target, as a first run would find them.
    """
    for rel in rels:
        (ws / rel).unlink()


def test_killed_fine_tuning_resumes_from_its_last_saved_state(clean, tmp_path):
    """SIGKILL the fine-tuning job itself after step 5 (Snakemake carries on and reports it failed):
    the rerun resumes from step 4, its last saved state, and ends bit-identical to the reference."""
    ws = copy_of(clean, tmp_path)
    shutil.rmtree(ws / RUN)
    not_yet_made(ws, "results/lm/runs.csv", "results/lm/steps.csv")
    assert sm(ws, "results/lm/runs.csv", REPRO_KILL_AFTER_STEP="5").returncode != 0
    assert not (ws / RUN / "summary.json").exists()
    assert sorted(p.name for p in (ws / RUN / "checkpoints").iterdir())[-1] == "step-000004"
    ok(sm(ws, "results/lm/runs.csv", "--rerun-incomplete"))
    assert json.loads((ws / RUN / "summary.json").read_text())["resumed_from"] == 4
    same_bytes(ws, clean, f"{RUN}/eval.csv", f"{RUN}/checkpoints/step-000008/adapter_model.safetensors")
    same_csv(ws, clean, f"{RUN}/tasks.csv")
    same_csv(ws, clean, "results/lm/runs.csv")


def test_killed_forgetting_evaluation(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, f"{RUN}/eval.csv", "results/lm/runs.csv", "results/lm/steps.csv")
    killed(ws, "results/lm/runs.csv", kill_at="evaluate:after-forgetting-pass")
    assert not (ws / RUN / "eval.csv").exists()
    recover(ws, "results/lm/runs.csv")
    same_bytes(ws, clean, f"{RUN}/eval.csv")
    same_csv(ws, clean, "results/lm/runs.csv")


def test_killed_lm_eval_tasks(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, f"{RUN}/tasks.csv", f"{RUN}/tasks.responses.jsonl", "results/lm/runs.csv", "results/lm/steps.csv")
    killed(ws, "results/lm/runs.csv", kill_at="evaluate_tasks:after-first-checkpoint")
    assert not (ws / RUN / "tasks.csv").exists()
    recover(ws, "results/lm/runs.csv")
    same_csv(ws, clean, f"{RUN}/tasks.csv")
    same_bytes(ws, clean, f"{RUN}/tasks.responses.jsonl")
    same_csv(ws, clean, "results/lm/runs.csv")


def test_killed_teb_training(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, *(f"{d}/{f}" for d in (TEB_TARGET, TEB_MODEL) for f in ("model.pt", "summary.json")))
    killed(ws, f"{TEB_MODEL}/summary.json", kill_at="teb_train:after-epoch-1")
    recover(ws, f"{TEB_MODEL}/summary.json")
    same_teb_model(ws, clean, TEB_TARGET)
    same_teb_model(ws, clean, TEB_MODEL)


def test_killed_compression_enumeration_and_schemes(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, *COMP_FILES)
    killed(ws, COMP_FILES[-1], kill_at="compression_enumerate:before-write")
    ok(sm(ws, "--unlock"))
    # The rerun redoes the enumeration, then dies while the schemes' records are being written.
    killed(ws, COMP_FILES[-1], "--rerun-incomplete", kill_at="compression:after-first-record")
    assert (ws / COMP_FILES[0]).exists() and not (ws / COMP_FILES[1]).exists(), \
        "records are renamed into place only when complete"
    recover(ws, COMP_FILES[-1])
    same_bytes(ws, clean, COMP_FILES[1])
    for rel in (COMP_FILES[0], COMP_FILES[2], COMP_FILES[3]):
        same_json(ws, clean, rel)


def test_killed_law_fits(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, *LAW_FILES)
    killed(ws, "results/laws/fits.csv", kill_at="fit_laws:after-fits")
    # The job died half-way: its first table is written, the others are not; the marker says so.
    assert (ws / LAW_FILES[0]).exists() and not (ws / LAW_FILES[-1]).exists()
    recover(ws, "results/laws/fits.csv")
    same_bytes(ws, clean, *LAW_FILES)
    fits = sorted(p.name for p in (clean / "results/laws/fits").glob("*.json"))
    assert fits and fits == sorted(p.name for p in (ws / "results/laws/fits").glob("*.json"))
    same_bytes(ws, clean, *(f"results/laws/fits/{name}" for name in fits))


# ------------------------------------------------------------------------------- damaged inputs


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def test_damaged_model_weights(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    weights = f"resources/models/{MODEL}/model.safetensors"
    _truncate(ws / weights)
    data = f"results/data/{MODEL}/manifest.json"
    assert sm(ws, data, "--forcerun", "prepare_data").returncode != 0
    log = log_of(ws, f"logs/prepare_data/{MODEL}.log")
    assert f"{weights}: damaged model weights" in log and f"delete resources/models/{MODEL}" in log, log[-2000:]
    shutil.rmtree(ws / f"resources/models/{MODEL}")
    ok(sm(ws, data))
    assert json.loads((ws / data).read_text())["files"] == json.loads((clean / data).read_text())["files"]
    same_bytes(ws, clean, weights)


def test_damaged_adapter_checkpoint_then_damaged_resume_state(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    ckpt = f"{RUN}/checkpoints/step-000004/adapter_model.safetensors"
    with open(ws / ckpt, "r+b") as fh:
        fh.seek(8)
        fh.write(b"\xff" * 16)
    assert sm(ws, f"{RUN}/eval.csv", "--forcerun", "evaluate").returncode != 0
    log = log_of(ws, RUN_LOG)
    assert f"{ckpt}: damaged adapter checkpoint (step 4)" in log and f"delete the run folder {RUN}" in log, log[-2000:]
    # As the message says: the run is retrained. Killed after step 5 (its last saved state is step 4).
    shutil.rmtree(ws / RUN)
    assert sm(ws, f"{RUN}/eval.csv", REPRO_KILL_AFTER_STEP="5").returncode != 0
    assert json.loads((ws / RUN / "state/resume/meta.json").read_text())["step"] == 4
    _truncate(ws / RUN / "state/resume/optimizer.pt")
    assert sm(ws, f"{RUN}/eval.csv").returncode != 0
    log = log_of(ws, f"logs/finetune/{MODEL}/stdlib-instruct/rslora_r4_lr0.001_seed0.log")
    assert f"{RUN}/state/resume/optimizer.pt: damaged resume state" in log, log[-2000:]
    assert f"delete {RUN}/state/resume" in log
    shutil.rmtree(ws / RUN / "state/resume")
    ok(sm(ws, f"{RUN}/eval.csv", f"{RUN}/tasks.csv", "results/lm/runs.csv"))
    assert json.loads((ws / RUN / "summary.json").read_text())["resumed_from"] == 0
    same_bytes(ws, clean, f"{RUN}/eval.csv")
    same_csv(ws, clean, "results/lm/runs.csv")


def test_data_file_changed_after_its_manifest(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    heldout = f"results/data/{MODEL}/finetune/stdlib-instruct/heldout.jsonl"
    with open(ws / heldout, "a") as fh:
        fh.write('{"id": "planted", "messages": []}\n')
    assert sm(ws, f"{RUN}/eval.csv", "--forcerun", "evaluate").returncode != 0
    log = log_of(ws, RUN_LOG)
    assert re.search(rf"{re.escape(heldout)}: SHA-256 \w+\.\.\. does not match its manifest", log), log[-2000:]
    (ws / f"results/data/{MODEL}/manifest.json").unlink()  # as the message says
    ok(sm(ws, f"{RUN}/eval.csv"))
    same_bytes(ws, clean, heldout, f"{RUN}/eval.csv")
    same_csv(ws, clean, f"{RUN}/train_log.csv")


def test_runs_table_missing_a_column(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    runs = pd.read_csv(ws / "results/lm/runs.csv")
    runs.drop(columns=["loss_forget"]).to_csv(ws / "results/lm/runs.csv", index=False)
    assert sm(ws, "results/laws/fits.csv").returncode != 0
    log = log_of(ws, "logs/laws/fit_laws.log")
    assert "results/lm/runs.csv: missing column loss_forget" in log, log[-2000:]
    (ws / "results/lm/runs.csv").unlink()
    ok(sm(ws, "results/laws/fits.csv"))
    same_csv(ws, clean, "results/lm/runs.csv")
    same_bytes(ws, clean, *LAW_FILES)


def test_damaged_teb_task_tensors(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    data = "results/teb/data/ar-c0.5/data.pt"
    _truncate(ws / data)
    assert sm(ws, f"{TEB_MODEL}/summary.json").returncode != 0
    log = log_of(ws, "logs/teb/target/ar-c0.5_seed0.log")
    assert f"{data}: damaged task tensor file" in log, log[-2000:]
    (ws / data).unlink()
    ok(sm(ws, f"{TEB_TARGET}/summary.json", f"{TEB_MODEL}/summary.json"))
    same_teb_model(ws, clean, TEB_TARGET)
    same_teb_model(ws, clean, TEB_MODEL)


# ------------------------------------------------------------------------------------- disk full


def _repro_with_file_limit(ws: Path, limit_bytes: int | None, *args: str):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([str(BIN / "repro"), *args], cwd=ws, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_bytes else None)


def test_disk_full_during_fine_tuning(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    out = tmp_path / "run"
    args = ("finetune", "--configfile", "results/config/resolved.json", "--model-dir", f"resources/models/{MODEL}",
            "--data-dir", f"results/data/{MODEL}", "--dataset", "stdlib-instruct", "--method", "rslora",
            "--rank", "4", "--lr", "0.001", "--seed", "0", "--out", str(out), "--no-progress")
    # Room for an adapter checkpoint (32 KB at rank 4), not for the optimizer state beside it (twice that).
    proc = _repro_with_file_limit(ws, 48_000, *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"out of disk space (or over the file-size limit) while writing under {out}" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing the rule or the resume logic would take as finished: no summary, no resume state.
    assert not (out / "summary.json").exists() and not (out / "train_log.csv").exists()
    assert not (out / "state/resume").exists()
    ok(_repro_with_file_limit(ws, None, *args))
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 0
    same_csv(out, ws / RUN, "train_log.csv")


def test_disk_full_while_saving_a_teb_model(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    out = tmp_path / "target"
    args = ("teb", "train", "--configfile", "results/config/resolved.json", "--task", "ar-c0.5",
            "--data", "results/teb/data/ar-c0.5/data.pt", "--variant", "target", "--seed", "0", "--no-progress",
            "--out", str(out))
    proc = _repro_with_file_limit(ws, 4_000, *args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"no space to write {out / 'model.pt'}" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [], "no partial or temporary file is left"
    ok(_repro_with_file_limit(ws, None, *args))
    shutil.copytree(out, tmp_path / "cmp" / TEB_TARGET)
    same_teb_model(tmp_path / "cmp", clean, TEB_TARGET)


# ----------------------------------------------------------------------------------- concurrency


def test_second_snakemake_in_the_same_folder_is_refused(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    # Two jobs one after the other (one core): the first run holds the folder's lock for both, a window
    # of tens of seconds, wide enough for the second Snakemake to parse the workflow and try the lock.
    targets = (f"{RUN}/eval.csv", f"{RUN}/tasks.csv")
    logs = [ws / RUN_LOG, ws / RUN_LOG.replace("logs/evaluate/", "logs/evaluate_tasks/")]
    not_yet_made(ws, *targets, *(log.relative_to(ws).as_posix() for log in logs))  # a log appears when its job starts
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = subprocess.Popen([str(BIN / "snakemake"), "--cores", "1", *targets, "--configfile", CONFIG],
                             cwd=ws, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(log.exists() for log in logs):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started its job"
            time.sleep(0.2)
        second = sm(ws, *targets)
        # Refused for the lock, which only the first run can hold (had it finished, the second would
        # have found nothing to do and succeeded).
        assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, out[-3000:]
    for rel in targets:
        same_csv(ws, clean, rel)
    locks = ws / ".snakemake/locks"
    assert not locks.exists() or not any(locks.iterdir()), "the first run releases its lock"


# ------------------------------------------------------------------------------------------ SLURM


def _job_limits(job_id: int) -> tuple[int, str, str]:
    info = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True).stdout
    mem = re.search(r"MinMemoryNode=(\d+)M", info) or re.search(r"mem=(\d+)M", info)
    limit = re.search(r"TimeLimit=(\S+)", info)
    state = re.search(r"JobState=(\w+)", info)
    assert mem and limit and state, info
    return int(mem.group(1)), limit.group(1), state.group(1)


def _minutes(limit: str) -> int:
    h, m, s = (int(x) for x in limit.split("-")[-1].split(":"))
    return 60 * h + m + (s > 0)


def test_scancel_mid_finetune_is_retried_bigger_and_resumes(slurm, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    drill_config(ws, ranks=[4], max_steps=300, resume_every=10)
    cfg = yaml.safe_load((ws / CONFIG).read_text())
    cfg["evals"]["enabled"] = False
    (ws / CONFIG).write_text(yaml.safe_dump(cfg))
    ok(sm(ws, f"results/data/{MODEL}/manifest.json"))  # download and data locally: only fine-tuning goes to SLURM
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "snakemake.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "snakemake"), f"{RUN}/summary.json", "--workflow-profile", "profiles/slurm",
             "--configfile", CONFIG, "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
             "--jobs", "1"], cwd=ws, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    meta = ws / RUN / "state/resume/meta.json"
    try:
        deadline = time.monotonic() + 300
        while not (meta.exists() and json.loads(meta.read_text())["step"] >= 30):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        first = int(re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())[0])
        cancelled_at = json.loads(meta.read_text())["step"]
        subprocess.run(["scancel", str(first)], check=True)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    ids = [int(i) for i in re.findall(r"submitted with SLURM jobid (\d+)", text)]
    assert len(ids) == 2 and ids[0] == first, text[-3000:]
    mem1, time1, state1 = _job_limits(ids[0])
    mem2, time2, _ = _job_limits(ids[1])
    assert state1 == "CANCELLED"
    assert mem2 == 2 * mem1 and _minutes(time2) == 2 * _minutes(time1), (mem1, time1, mem2, time2)
    summary = json.loads((ws / RUN / "summary.json").read_text())
    assert cancelled_at <= summary["resumed_from"] < 300 and summary["steps_done"] == 300
    # The resumed run's numbers are an uninterrupted run's.
    out = tmp_path / "uninterrupted"
    ok(subprocess.run([str(BIN / "repro"), "finetune", "--configfile", "results/config/resolved.json",
                       "--model-dir", f"resources/models/{MODEL}", "--data-dir", f"results/data/{MODEL}",
                       "--dataset", "stdlib-instruct", "--method", "rslora", "--rank", "4", "--lr", "0.001",
                       "--seed", "0", "--out", str(out), "--no-progress"], cwd=ws, capture_output=True, text=True,
                      timeout=600))
    same_csv(out, ws / RUN, "train_log.csv")
