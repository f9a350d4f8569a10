"""Experiment tracking: runs logged to MLflow from their files, read back through the MLflow client."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import snakemake as _snakemake

from repro.config import load_config
from repro.lm.tracking import TrackingError, build_record, public_uri, resolve_uri, track

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 0)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_KEYS = ["model", "dataset", "method", "rank", "lr", "seed"]


def _write_run(root: Path, method: str, rank: int, losses=(3.0, 2.5), scale: float = 1.0) -> Path:
    run = root / "results/lm/runs/m/d" / method / f"r{rank}" / "lr0.001" / "seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "model": "m", "dataset": "d", "method": method, "rank": rank, "lr": 0.001, "seed": 0, "alpha": 16.0,
        "scaling": [16.0 / rank if method == "lora" else 16.0 / math.sqrt(rank)], "max_steps": 2,
        "trainable_params": 100 * rank, "checkpoints": {"0": "checkpoints/step-000000"}}))
    # Two optimizer steps and the final gradient probe (updated = 0), which is not a training step.
    (run / "train_log.csv").write_text(
        "step,updated,loss,grad_norm,grad_norm_global,lr,tokens,supervised_tokens,seconds,tokens_per_s\n"
        f"1,1,{losses[0]},{0.5 * scale},{0.9 * scale},0.001,64,30,0.1,640.0\n"
        f"2,1,{losses[1]},{0.4 * scale},{0.8 * scale},0.001,60,28,0.1,600.0\n"
        f"3,0,2.25,{0.3 * scale},{0.7 * scale},0.001,62,29,0.1,620.0\n")
    (run / "provenance").mkdir()
    (run / "provenance/finetune.json").write_text(json.dumps({
        "git": None, "code_git": {"commit": "a" * 40, "dirty": True}, "config_hash": "c0ffee123456",
        "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:01:00+00:00",
        "lock": {"sha256": "b" * 64}}))
    return run / "summary.json"


def _write_runs_csv(root: Path, ranks=(1, 4), forget_shift: float = 0.0) -> Path:
    rows = []
    for rank in ranks:
        for step in (0, 1, 2):
            rows.append({"model": "m", "dataset": "d", "method": "lora", "rank": rank, "lr": 0.001, "seed": 0,
                         "step": step, "trainable_params": 100 * rank, "loss_ft": 3.0 - 0.1 * step,
                         "loss_forget": 2.0 + 0.01 * step * rank + forget_shift, "kl_forget": 0.01 * step * rank,
                         "base_entropy": 2.0, "grad_norm": 0.5, "scaling": 16.0 / rank,
                         "task_repro_knowledge_acc": 0.5 if step != 1 else float("nan"),
                         "run_dir": f"results/lm/runs/m/d/lora/r{rank}/lr0.001/seed0"})
    path = root / "results/lm/runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_record_holds_params_steps_and_evaluations_of_one_run(tmp_path):
    summary = _write_run(tmp_path, "lora", 4)
    runs_csv = _write_runs_csv(tmp_path)
    rec = build_record(summary, pd.read_csv(runs_csv), runs_csv)
    assert rec.key == "m/d/lora/r4/lr0.001/seed0" and rec.name == "lora-r4-lr0.001-seed0"
    assert rec.params["method"] == "lora" and rec.params["rank"] == "4" and rec.params["lr"] == "0.001"
    assert rec.params["scaling"] == "4.0" and rec.params["trainable_params"] == "400"
    assert "checkpoints" not in rec.params
    by_key: dict[str, list] = {}
    for key, value, step in rec.metrics:
        by_key.setdefault(key, []).append((step, value))
    # Optimizer steps only: the probe row (step 3) is the gradient at the last checkpoint, not a step.
    assert by_key["train/loss"] == [(1, 3.0), (2, 2.5)]
    assert by_key["train/tokens_per_s"] == [(1, 640.0), (2, 600.0)]
    assert "train/lr" not in by_key and "train/updated" not in by_key
    # Evaluations at the checkpoint steps of this run only (rank 4), unevaluated checkpoints left out.
    assert by_key["eval/loss_forget"] == [(0, 2.0), (1, 2.04), (2, 2.08)]
    assert by_key["eval/task_repro_knowledge_acc"] == [(0, 0.5), (2, 0.5)]
    assert not {"eval/rank", "eval/step", "eval/trainable_params", "eval/scaling", "eval/lr"} & set(by_key)
    assert rec.tags["repro.git_commit"] == "a" * 40 and rec.tags["repro.git_dirty"] == "true"
    assert rec.tags["repro.config_hash"] == "c0ffee123456" and rec.tags["repro.lock_sha256"] == "b" * 64
    assert rec.end_ms - rec.start_ms == 60_000
    # The content hash changes with anything logged.
    other = build_record(summary, pd.read_csv(_write_runs_csv(tmp_path, forget_shift=0.5)), runs_csv)
    assert other.content_hash != rec.content_hash


def test_bad_run_files_are_named(tmp_path):
    summary = _write_run(tmp_path, "lora", 4)
    runs_csv = _write_runs_csv(tmp_path, ranks=(1,))
    with pytest.raises(TrackingError, match="runs.csv: no row for the run in .*r4"):
        build_record(summary, pd.read_csv(runs_csv), runs_csv)
    log = summary.parent / "train_log.csv"
    log.write_text(log.read_text().replace("tokens_per_s", "tps"))
    runs_csv = _write_runs_csv(tmp_path)
    with pytest.raises(TrackingError, match=r"train_log.csv: columns \['tokens_per_s'\] missing"):
        build_record(summary, pd.read_csv(runs_csv), runs_csv)


def test_uri_comes_from_the_config_then_the_environment_then_the_local_store():
    assert resolve_uri("http://h:5000", environ={"MLFLOW_TRACKING_URI": "http://env:1"}) == "http://h:5000"
    assert resolve_uri(None, environ={"MLFLOW_TRACKING_URI": "http://env:1"}) == "http://env:1"
    assert resolve_uri(None, environ={}) == "sqlite:///results/mlruns/mlflow.db"
    # Each config's local store lives in its own results folder.
    assert resolve_uri(None, "results-test", environ={}) == "sqlite:///results-test/mlruns/mlflow.db"
    assert public_uri("https://me:secret@host:8443/x") == "https://me:***@host:8443/x"
    # On in the embedded default, off in the test preset.
    assert load_config(REPO / "config.yaml")["tracking"]["enabled"] is True
    assert load_config(REPO / "presets/test.yaml")["tracking"]["enabled"] is False


def test_local_store_is_idempotent_and_replaces_a_changed_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    summaries = [_write_run(tmp_path, "lora", r) for r in (1, 4)]
    runs_csv = _write_runs_csv(tmp_path)
    uri = resolve_uri(None, environ={})  # the local SQLite store under results/mlruns/
    first = track(summaries, runs_csv, uri, "exp", out=tmp_path / "results/tracking/mlflow.json")
    assert first["counts"] == {"created": 2, "replaced": 0, "unchanged": 0}
    assert (tmp_path / "results/mlruns/mlflow.db").is_file()
    again = track(summaries, runs_csv, uri, "exp")
    assert again["counts"] == {"created": 0, "replaced": 0, "unchanged": 2}
    assert {r["run_id"] for r in again["runs"]} == {r["run_id"] for r in first["runs"]}

    # Retrained rank 4: its record is replaced, the other run is left alone.
    _write_run(tmp_path / "retrained", "lora", 4, losses=(3.0, 1.5))
    shutil.copy(tmp_path / "retrained/results/lm/runs/m/d/lora/r4/lr0.001/seed0/train_log.csv",
                summaries[1].parent / "train_log.csv")
    third = track(summaries, runs_csv, uri, "exp")
    assert third["counts"] == {"created": 0, "replaced": 1, "unchanged": 1}
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp")
    active = client.search_runs([exp.experiment_id])
    assert len(active) == 2
    r4 = next(r for r in active if r.data.params["rank"] == "4")
    history = client.get_metric_history(r4.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 1.5)]
    assert r4.info.status == "FINISHED" and r4.info.start_time == 1767225600000
    # Artifacts of the local store stay under results/mlruns/ too.
    assert exp.artifact_location == (tmp_path / "results/mlruns/artifacts").resolve().as_uri()


# ---------------------------------------------------------------------- a real tracking server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on the loopback address with its own SQLite store, stopped at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    # No job runner: it serves MLflow's GenAI jobs, which tracking never submits (a third process and
    # about 4 CPU-seconds of start-up).
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after 120 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        # The server's workers run in its own session: stop the whole group.
        # Its store is thrown away: no need to wait for a graceful shutdown.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()


def _job_stats(output: str) -> dict[str, int]:
    """Snakemake's job-stats table: rule -> count."""
    jobs, inside = {}, False
    for line in output.splitlines():
        words = line.split()
        if words[:2] == ["job", "count"]:
            inside, jobs = True, {}
        elif inside and words and words[0] == "total":
            inside = False
        elif inside and len(words) == 2 and words[1].isdigit():
            jobs[words[0]] = int(words[1])
    return jobs


@pytest.mark.slow
def test_test_preset_runs_reach_a_real_mlflow_server(test_preset_run, mlflow_server, tmp_path):
    """Rule track_runs on the shared test-preset run, against a tracking server; every run read back."""
    from mlflow.tracking import MlflowClient

    ws = tmp_path / "ws"
    shutil.copytree(test_preset_run, ws, symlinks=True)  # the shared run stays read-only
    cfg = yaml.safe_load((ws / "presets/test.yaml").read_text())
    cfg["tracking"] = {"enabled": True, "uri": mlflow_server, "experiment": "repro-test-preset"}
    cfg["results"] = "results-test"  # the finished run's folder, named explicitly (else results-tracked/)
    (ws / "tracked.yaml").write_text(yaml.safe_dump(cfg))

    proc = _snakemake(ws, "--cores", "1", "--configfile", "tracked.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:] + (ws / "results-test/logs/tracking/track_runs.log").read_text()[-3000:]
    # Turning tracking on adds exactly this rule to the finished run: nothing is retrained.
    assert _job_stats(proc.stdout + proc.stderr) == {"all": 1, "track_runs": 1}
    marker = json.loads((ws / "results-test/tracking/mlflow.json").read_text())
    assert marker["tracking_uri"] == mlflow_server and marker["counts"]["created"] == 4

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("repro-test-preset")
    runs = pd.read_csv(ws / "results-test/lm/runs.csv")
    tracked = client.search_runs([exp.experiment_id])
    assert len(tracked) == len(runs.groupby(RUN_KEYS)) == 4
    task_cols = [c for c in runs if c.startswith("task_") and not c.endswith(("_stderr", "_n"))]
    assert task_cols and "refusal_rate" in runs
    for run in tracked:
        run_dir = ws / run.data.tags["repro.run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        p = run.data.params
        assert (p["model"], p["dataset"], p["method"]) == (summary["model"], summary["dataset"], summary["method"])
        assert (int(p["rank"]), float(p["lr"]), int(p["seed"])) == (summary["rank"], summary["lr"], summary["seed"])
        assert float(p["scaling"]) == summary["scaling"][0]
        manifest = json.loads((run_dir / "provenance/finetune.json").read_text())
        git = manifest["git"] or manifest["code_git"]
        assert run.data.tags["repro.config_hash"] == manifest["config_hash"]
        assert run.data.tags["mlflow.source.git.commit"] == git["commit"]

        log = pd.read_csv(run_dir / "train_log.csv")
        log = log[log["updated"] == 1]
        for col in ("loss", "grad_norm", "tokens_per_s"):
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"train/{col}"))
            assert got == list(zip(log["step"], log[col])), col
        mine = runs[(runs["method"] == summary["method"]) & (runs["rank"] == summary["rank"])].sort_values("step")
        for col in ["loss_ft", "loss_forget", "kl_forget", "refusal_rate", *task_cols]:
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"eval/{col}"))
            want = [(s, v) for s, v in zip(mine["step"], mine[col]) if pd.notna(v)]
            assert want and got == want, col

    # Running the rule's command again logs nothing twice.
    summaries = sorted(str(p.relative_to(ws)) for p in (ws / "results-test/lm/runs").rglob("summary.json"))
    again = subprocess.run([str(BIN / "repro"), "track", "--configfile", "tracked.yaml", "--runs", "results-test/lm/runs.csv",
                            "--experiment", "repro-test-preset", "--out", "again.json", *summaries], cwd=ws,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((ws / "again.json").read_text())["counts"] == {"created": 0, "replaced": 0, "unchanged": 4}
    assert len(client.search_runs([exp.experiment_id])) == 4


def test_log_batches_stay_within_mlflows_limits_and_keep_everything():
    from repro.lm.tracking import MAX_ENTRIES, MAX_PARAMS, _batches

    params, metrics = list(range(130)), list(range(2500))
    batches = list(_batches(params, metrics))
    assert all(len(p) <= MAX_PARAMS and len(p) + len(m) <= MAX_ENTRIES for p, m in batches)
    assert [x for p, _ in batches for x in p] == params and [x for _, m in batches for x in m] == metrics
    assert len(list(_batches(params[:20], metrics[:300]))) == 1
