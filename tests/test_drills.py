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

import contextlib
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

from repro.io import sha256_file

pytestmark = pytest.mark.drills

CONFIG = "drills.yaml"
MODEL = "tiny-llama"
RUN = f"results-drills/lm/runs/{MODEL}/stdlib-instruct/rslora/r4/lr0.001/seed0"
RUN_LOG = f"results-drills/logs/evaluate/{MODEL}/stdlib-instruct/rslora_r4_lr0.001_seed0.log"
TEB_TARGET = "results-drills/teb/models/ar-c0.5/target/seed0"
TEB_MODEL = "results-drills/teb/models/ar-c0.5/teb/beta100/seed0"
COMP = "n5_d1"
COMP_FILES = [f"results-drills/compression/enumerate/{COMP}.json", f"results-drills/compression/schemes/{COMP}_unlabeled.jsonl.gz",
              f"results-drills/compression/schemes/{COMP}_unlabeled.json",
              f"results-drills/compression/verify/schemes/{COMP}_unlabeled.json"]
LAW_FILES = ["results-drills/laws/fits.csv", "results-drills/laws/early_stopping.csv", "results-drills/laws/gradnorm_by_rank.csv",
             "results-drills/laws/gradnorm_spread.csv"]
TARGETS = ["results-drills/lm/runs.csv", "results-drills/laws/fits.csv", f"{TEB_MODEL}/summary.json", COMP_FILES[-1]]


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
    A run's evaluation results are also cached per checkpoint (``<run>/eval_cache/``): a first run has
    none, so they go with the evaluation's output.
    """
    caches = {"eval.csv": "forgetting", "tasks.csv": "tasks"}
    for rel in rels:
        (ws / rel).unlink()
        if Path(rel).name in caches:
            shutil.rmtree(ws / Path(rel).parent / "eval_cache" / caches[Path(rel).name], ignore_errors=True)


def test_killed_fine_tuning_resumes_from_its_last_saved_state(clean, tmp_path):
    """SIGKILL the fine-tuning job itself after step 5 (Snakemake carries on and reports it failed):
    the rerun resumes from step 4, its last saved state, and ends bit-identical to the reference."""
    ws = copy_of(clean, tmp_path)
    shutil.rmtree(ws / RUN)
    not_yet_made(ws, "results-drills/lm/runs.csv", "results-drills/lm/steps.csv")
    assert sm(ws, "results-drills/lm/runs.csv", REPRO_KILL_AFTER_STEP="5").returncode != 0
    assert not (ws / RUN / "summary.json").exists()
    assert sorted(p.name for p in (ws / RUN / "checkpoints").iterdir())[-1] == "step-000004"
    ok(sm(ws, "results-drills/lm/runs.csv", "--rerun-incomplete"))
    assert json.loads((ws / RUN / "summary.json").read_text())["resumed_from"] == 4
    same_bytes(ws, clean, f"{RUN}/eval.csv", f"{RUN}/checkpoints/step-000008/adapter_model.safetensors")
    same_csv(ws, clean, f"{RUN}/tasks.csv")
    same_csv(ws, clean, "results-drills/lm/runs.csv")


def test_killed_forgetting_evaluation(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, f"{RUN}/eval.csv", "results-drills/lm/runs.csv", "results-drills/lm/steps.csv")
    killed(ws, "results-drills/lm/runs.csv", kill_at="evaluate:after-forgetting-pass")
    assert not (ws / RUN / "eval.csv").exists()
    recover(ws, "results-drills/lm/runs.csv")
    same_bytes(ws, clean, f"{RUN}/eval.csv")
    same_csv(ws, clean, "results-drills/lm/runs.csv")


def test_killed_lm_eval_tasks(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    not_yet_made(ws, f"{RUN}/tasks.csv", f"{RUN}/tasks.responses.jsonl", "results-drills/lm/runs.csv", "results-drills/lm/steps.csv")
    killed(ws, "results-drills/lm/runs.csv", kill_at="evaluate_tasks:after-first-checkpoint")
    assert not (ws / RUN / "tasks.csv").exists()
    recover(ws, "results-drills/lm/runs.csv")
    same_csv(ws, clean, f"{RUN}/tasks.csv")
    same_bytes(ws, clean, f"{RUN}/tasks.responses.jsonl")
    same_csv(ws, clean, "results-drills/lm/runs.csv")


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
    killed(ws, "results-drills/laws/fits.csv", kill_at="fit_laws:after-fits")
    # The job died half-way: its first table is written, the others are not; the marker says so.
    assert (ws / LAW_FILES[0]).exists() and not (ws / LAW_FILES[-1]).exists()
    recover(ws, "results-drills/laws/fits.csv")
    same_bytes(ws, clean, *LAW_FILES)
    fits = sorted(p.name for p in (clean / "results-drills/laws/fits").glob("*.json"))
    assert fits and fits == sorted(p.name for p in (ws / "results-drills/laws/fits").glob("*.json"))
    same_bytes(ws, clean, *(f"results-drills/laws/fits/{name}" for name in fits))


# ------------------------------------------------------------------------------- damaged inputs


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def test_damaged_model_weights(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    weights = f"resources/models/{MODEL}/model.safetensors"
    _truncate(ws / weights)
    data = f"results-drills/data/{MODEL}/manifest.json"
    assert sm(ws, data, "--forcerun", "prepare_data").returncode != 0
    log = log_of(ws, f"results-drills/logs/prepare_data/{MODEL}.log")
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
    log = log_of(ws, f"results-drills/logs/finetune/{MODEL}/stdlib-instruct/rslora_r4_lr0.001_seed0.log")
    assert f"{RUN}/state/resume/optimizer.pt: damaged resume state" in log, log[-2000:]
    assert f"delete {RUN}/state/resume" in log
    shutil.rmtree(ws / RUN / "state/resume")
    ok(sm(ws, f"{RUN}/eval.csv", f"{RUN}/tasks.csv", "results-drills/lm/runs.csv"))
    assert json.loads((ws / RUN / "summary.json").read_text())["resumed_from"] == 0
    same_bytes(ws, clean, f"{RUN}/eval.csv")
    same_csv(ws, clean, "results-drills/lm/runs.csv")


def test_data_file_changed_after_its_manifest(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    heldout = f"results-drills/data/{MODEL}/finetune/stdlib-instruct/heldout.jsonl"
    with open(ws / heldout, "a") as fh:
        fh.write('{"id": "planted", "messages": []}\n')
    assert sm(ws, f"{RUN}/eval.csv", "--forcerun", "evaluate").returncode != 0
    log = log_of(ws, RUN_LOG)
    assert re.search(rf"{re.escape(heldout)}: SHA-256 \w+\.\.\. does not match its manifest", log), log[-2000:]
    (ws / f"results-drills/data/{MODEL}/manifest.json").unlink()  # as the message says
    ok(sm(ws, f"{RUN}/eval.csv"))
    same_bytes(ws, clean, heldout, f"{RUN}/eval.csv")
    same_csv(ws, clean, f"{RUN}/train_log.csv")


def test_damaged_teb_task_tensors(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    data = "results-drills/teb/data/ar-c0.5/data.pt"
    _truncate(ws / data)
    assert sm(ws, f"{TEB_MODEL}/summary.json").returncode != 0
    log = log_of(ws, "results-drills/logs/teb/target/ar-c0.5_seed0.log")
    assert f"{data}: damaged task tensor file" in log, log[-2000:]
    (ws / data).unlink()
    ok(sm(ws, f"{TEB_TARGET}/summary.json", f"{TEB_MODEL}/summary.json"))
    same_teb_model(ws, clean, TEB_TARGET)
    same_teb_model(ws, clean, TEB_MODEL)


def _overwrite_inside(path: Path, n_bytes: int) -> None:
    """Same-size damage: ``n_bytes`` zeroed just before the end (tensor data, not the header)."""
    data = bytearray(path.read_bytes())
    data[-n_bytes - 40:-40] = bytes(n_bytes)
    path.write_bytes(bytes(data))


def test_same_size_damage_in_a_checkpoint_is_caught_and_retraining_recovers(clean, tmp_path):
    """64 bytes changed in a checkpoint (its size and header intact): the evaluation refuses it against the
    SHA-256 its run's summary records, and the documented recovery, deleting the run folder and running
    the plain command, retrains and re-evaluates it to the same numbers."""
    ws = copy_of(clean, tmp_path)
    ckpt = f"{RUN}/checkpoints/step-000008/adapter_model.safetensors"
    _overwrite_inside(ws / ckpt, 64)
    assert sm(ws, f"{RUN}/eval.csv", "--forcerun", "evaluate").returncode != 0
    log = log_of(ws, RUN_LOG)
    assert re.search(rf"{re.escape(ckpt)}: SHA-256 \w+\.\.\. differs from", log), log[-2000:]
    assert f"delete the run folder {RUN} and rerun" in log
    shutil.rmtree(ws / RUN)
    ok(sm(ws, f"{RUN}/eval.csv", f"{RUN}/tasks.csv", "results-drills/lm/runs.csv"))
    same_bytes(ws, clean, ckpt, f"{RUN}/eval.csv")
    same_csv(ws, clean, "results-drills/lm/runs.csv")


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_model_file_changed_in_place(clean, tmp_path, file):
    """256 bytes of the weights zeroed, or config.json edited (hidden_act): every job that loads the model
    refuses it against its manifest, naming the file; deleting the model folder refetches the same model."""
    ws = copy_of(clean, tmp_path)
    path = f"resources/models/{MODEL}/{file}"
    if file == "config.json":
        (ws / path).write_text((ws / path).read_text().replace('"silu"', '"gelu"'))
    else:
        _overwrite_inside(ws / path, 256)
    assert sm(ws, f"{RUN}/eval.csv", "--forcerun", "evaluate").returncode != 0
    log = log_of(ws, RUN_LOG)
    assert f"{path}: SHA-256" in log and f"delete the folder resources/models/{MODEL} and rerun" in log, log[-2000:]
    shutil.rmtree(ws / f"resources/models/{MODEL}")
    ok(sm(ws, f"{RUN}/eval.csv"))
    same_bytes(ws, clean, path, f"{RUN}/eval.csv")


def _cut_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])


def _letters_in_loss(path: Path) -> None:
    table = pd.read_csv(path)
    table["loss_forget"] = table["loss_forget"].astype(object)
    table.loc[3, "loss_forget"] = "n/a"
    table.to_csv(path, index=False)


def _without_loss_forget(path: Path) -> None:
    pd.read_csv(path).drop(columns=["loss_forget"]).to_csv(path, index=False)


@pytest.mark.parametrize("damage, message", [(_without_loss_forget, "missing columns ['loss_forget']"),
                                             (_cut_last_line, "its last line has no line break"),
                                             (_letters_in_loss, "row 4, column 'loss_forget': 'n/a' is not a number")])
def test_damaged_runs_table(clean, tmp_path, damage, message):
    """runs.csv without a column, cut in its last line, or with text in a number column: refused naming the
    file (and the row and column), where a lenient read took NaN cells and moved the paper's macros to
    another run; deleted as the message says, it is rebuilt and the fits come out identical."""
    ws = copy_of(clean, tmp_path)
    damage(ws / "results-drills/lm/runs.csv")
    assert sm(ws, "results-drills/laws/fits.csv").returncode != 0
    log = log_of(ws, "results-drills/logs/laws/fit_laws.log")
    assert "results-drills/lm/runs.csv (" in log and message in log and "delete it and rerun" in log, log[-2000:]
    (ws / "results-drills/lm/runs.csv").unlink()
    ok(sm(ws, "results-drills/laws/fits.csv"))
    same_csv(ws, clean, "results-drills/lm/runs.csv")
    same_bytes(ws, clean, *LAW_FILES)


def test_cut_teb_table(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    tables = "results-drills/tables/teb_tasks.tex"
    ok(sm(ws, tables))
    reference = (ws / tables).read_bytes()
    _cut_last_line(ws / "results-drills/teb/evals.csv")
    assert sm(ws, tables, "--forcerun", "teb_tables").returncode != 0
    log = log_of(ws, "results-drills/logs/teb/tables.log")
    assert "results-drills/teb/evals.csv (" in log and "its last line has no line break" in log, log[-2000:]
    (ws / "results-drills/teb/evals.csv").unlink()
    ok(sm(ws, tables))
    assert (ws / tables).read_bytes() == reference


def test_deleted_fit_json(clean, tmp_path):
    """One fit's JSON deleted: the tables and numbers refuse to be made without it (they used to drop the
    law silently), and deleting fits.csv as the message says refits both."""
    ws = copy_of(clean, tmp_path)
    numbers = "results-drills/numbers.tex"
    ok(sm(ws, numbers))
    reference = (ws / numbers).read_text()
    victim = sorted((ws / "results-drills/laws/fits").glob("*linear.json"))[0]
    victim.unlink()
    assert sm(ws, numbers, "--forcerun", "numbers").returncode != 0
    log = log_of(ws, "results-drills/logs/laws/numbers.log")
    assert f"no JSON for ['{victim.name}']" in log and "delete results-drills/laws/fits.csv and rerun" in log, log[-2000:]
    (ws / "results-drills/laws/fits.csv").unlink()
    ok(sm(ws, numbers))
    assert (ws / numbers).read_text() == reference


def test_single_rank_law_table_says_why(clean, tmp_path):
    """`ranks: [1]`: no exponent is identifiable; the law tables say so instead of the fit crashing."""
    ws = copy_of(clean, tmp_path)
    drill_config(ws, ranks=[1])
    ok(sm(ws, "results-drills/tables/linear_law.tex", "results-drills/tables/power_laws.tex"))
    assert "insufficient runs" in (ws / "results-drills/tables/linear_law.tex").read_text()
    assert "one value of P" in (ws / "results-drills/tables/power_laws.tex").read_text()


# ------------------------------------------------------------------------------------- disk full


def _repro_with_file_limit(ws: Path, limit_bytes: int | None, *args: str):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([str(BIN / "repro"), *args], cwd=ws, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_bytes else None)


def test_disk_full_during_fine_tuning(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    out = tmp_path / "run"
    args = ("finetune", "--configfile", "results-drills/config/resolved.json", "--model-dir", f"resources/models/{MODEL}",
            "--data-dir", f"results-drills/data/{MODEL}", "--dataset", "stdlib-instruct", "--method", "rslora",
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
    args = ("teb", "train", "--configfile", "results-drills/config/resolved.json", "--task", "ar-c0.5",
            "--data", "results-drills/teb/data/ar-c0.5/data.pt", "--variant", "target", "--seed", "0", "--no-progress",
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
    logs = [ws / RUN_LOG, ws / RUN_LOG.replace("results-drills/logs/evaluate/", "results-drills/logs/evaluate_tasks/")]
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


def _start_paused(ws: Path, *targets: str, seconds: int = 40) -> subprocess.Popen:
    """A run whose forgetting evaluation waits ``seconds`` after its pass, once its job holds the folder's
    jobs lock (repro.locks)."""
    from repro.locks import lock_holders

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "REPRO_PAUSE_AT": f"evaluate:after-forgetting-pass:{seconds}"}
    run = subprocess.Popen([str(BIN / "snakemake"), "--cores", "1", *targets, "--configfile", CONFIG], cwd=ws,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not lock_holders(ws / "results-drills/.jobs.lock"):
        assert run.poll() is None and time.monotonic() < deadline, "the paused job never started"
        time.sleep(0.2)
    return run


def test_second_run_with_another_config_is_refused(clean, tmp_path):
    """Another config pointed at the same folder (its `results` key) and targets that do not overlap
    (Snakemake's lock lets it through): refused before it writes anything, so the first run's jobs keep
    reading their own resolved config."""
    ws = copy_of(clean, tmp_path)
    resolved = (ws / "results-drills/config/resolved.json").read_bytes()
    not_yet_made(ws, f"{RUN}/eval.csv")
    first = _start_paused(ws, f"{RUN}/eval.csv")
    try:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        second = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "results-drills/compression/enumerate/n6_d1.json",
                                 "--config", "results=results-drills"],
                                cwd=ws, env=env, capture_output=True, text=True, timeout=300)
        out = second.stdout + second.stderr
        assert second.returncode != 0 and "another run is using this results folder" in out, out[-3000:]
        assert (ws / "results-drills/config/resolved.json").read_bytes() == resolved
        assert not (ws / "results-drills/compression/enumerate/n6_d1.json").exists()
        first_out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, first_out[-3000:]
    same_csv(ws, clean, f"{RUN}/eval.csv")


def test_run_over_jobs_of_a_killed_snakemake_is_refused(clean, tmp_path):
    """SIGKILL of Snakemake alone: its job runs on. `--unlock` then a rerun used to find nothing to do while
    the orphan was still writing; the rerun is refused naming the job's pid, and once the job has ended
    `--rerun-incomplete` redoes what it was writing."""
    from repro.locks import lock_holders

    ws = copy_of(clean, tmp_path)
    target = f"{RUN}/eval.csv"
    not_yet_made(ws, target)
    run = _start_paused(ws, target, seconds=30)
    orphans = lock_holders(ws / "results-drills/.jobs.lock")
    os.kill(run.pid, signal.SIGKILL)  # Snakemake only, not its process group
    run.wait(timeout=60)  # not communicate(): the orphaned job's shell still holds the output pipe
    run.stdout.close()
    try:
        ok(sm(ws, "--unlock"))
        again = sm(ws, target)
        out = again.stdout + again.stderr
        assert again.returncode != 0, out[-3000:]
        assert f"jobs of an earlier run are still running (pids {' '.join(map(str, orphans))})" in out, out[-3000:]
        deadline = time.monotonic() + 120
        while lock_holders(ws / "results-drills/.jobs.lock"):
            assert time.monotonic() < deadline, "the orphaned job never ended"
            time.sleep(0.5)
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    ok(sm(ws, target, "--rerun-incomplete"))
    same_csv(ws, clean, target)


# ------------------------------------------------------------------------- missing prerequisites


def _refused_in_one_line(proc, message: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    line = next((line for line in out.splitlines() if message in line), None)
    assert line is not None, out[-3000:]
    assert "Traceback" not in out and "Error in rule" not in out, out[-3000:]


def test_unreachable_tracking_server_stops_the_run_and_keeps_results(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    summary = "results-drills/tracking/mlflow.json"
    ok(sm(ws, summary))
    kept = (ws / summary).read_bytes()
    start = time.monotonic()
    proc = sm(ws, summary, "--forcerun", "track_runs", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    _refused_in_one_line(proc, "tracking server http://127.0.0.1:9 does not answer within 5 s")
    assert time.monotonic() - start < 60
    assert (ws / summary).read_bytes() == kept


def test_cuda_config_without_cuda_and_hub_model_without_network(clean, tmp_path):
    ws = copy_of(clean, tmp_path)
    _refused_in_one_line(sm(ws, f"{RUN}/eval.csv", "--config", "device=cuda"),
                         "device: 'cuda', but torch")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "resources/models/llama-2-7b-chat/manifest.json",
                           "--configfile", "presets/paper.yaml"], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=300)
    _refused_in_one_line(proc, "model 'meta-llama/Llama-2-7b-chat-hf' is not fetched yet and HF_HUB_OFFLINE=1")
    same_csv(ws, clean, f"{RUN}/eval.csv")


def _tree_state(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_config_writes_into_its_own_folder(clean, tmp_path):
    """The test preset, run after another config in the same workflow folder, goes to results-test/ and
    leaves every file of results-drills/ as it was (it used to overwrite 139 of the default run's files)."""
    ws = copy_of(clean, tmp_path)
    before = _tree_state(ws / "results-drills")
    target = "results-test/compression/enumerate/n4_d1.json"
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", target, "--configfile", "presets/test.yaml"],
                          cwd=ws, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
                          capture_output=True, text=True, timeout=600)
    ok(proc)
    assert (ws / target).is_file()
    assert json.loads((ws / "results-test/config/resolved.json").read_text())["results"] == "results-test"
    assert _tree_state(ws / "results-drills") == before
    # Back on the first config: nothing to do, its results are still its own.
    again = sm(ws, *TARGETS, "-n")
    ok(again)
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


def test_slurm_profile_without_a_cluster_touches_nothing(clean, tmp_path):
    """No controller to submit to (the cluster is down, or this is not a login node): one line, and no job
    has removed its outputs (a failed submission used to empty results/compression/enumerate/)."""
    ws = copy_of(clean, tmp_path)
    before = sorted((ws / "results-drills/compression/enumerate").glob("*.json"))
    proc = sm(ws, "--workflow-profile", "profiles/slurm", "--forcerun", "compression_enumerate",
              *[f"results-drills/compression/enumerate/{p.name}" for p in before])
    _refused_in_one_line(proc, "SLURM")
    assert sorted((ws / "results-drills/compression/enumerate").glob("*.json")) == before


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
    ok(sm(ws, f"results-drills/data/{MODEL}/manifest.json"))  # download and data locally: only fine-tuning goes to SLURM
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
    ok(subprocess.run([str(BIN / "repro"), "finetune", "--configfile", "results-drills/config/resolved.json",
                       "--model-dir", f"resources/models/{MODEL}", "--data-dir", f"results-drills/data/{MODEL}",
                       "--dataset", "stdlib-instruct", "--method", "rslora", "--rank", "4", "--lr", "0.001",
                       "--seed", "0", "--out", str(out), "--no-progress"], cwd=ws, capture_output=True, text=True,
                      timeout=600))
    same_csv(out, ws / RUN, "train_log.csv")
