"""Cluster plumbing: resource requests derived from the config, the cost forecast, conda env names
(their pins: tests/test_lock.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from repro.cluster.resources import job_resources
from repro.cluster.shapes import KNOWN_SHAPES, model_shape
from repro.cluster.throughput import COLUMNS, forecast, rate, read_table
from repro.config import load_config

REPO = Path(__file__).resolve().parents[1]


class Wildcards(dict):
    __getattr__ = dict.__getitem__


def _resolve(res: dict, **wildcards) -> dict:
    return {k: (v(Wildcards(wildcards)) if callable(v) else v) for k, v in res.items()}


def test_tiny_shape_counts_the_parameters_and_adapters_of_the_real_model(tiny_model_dir):
    from conftest import TINY

    from repro.lm.adapters import build_adapter_model, count_trainable
    from repro.lm.models import load_model

    model, _ = load_model(tiny_model_dir)
    shape = model_shape({"source": "tiny", "tiny": TINY})
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for rank in (1, 4):
        adapted = build_adapter_model(load_model(tiny_model_dir)[0], "lora", rank, 16, 0.0, targets)
        assert shape.adapter_parameters(rank, targets) == count_trainable(adapted)


def test_known_shapes_match_published_sizes():
    # Llama 2 7B: 6.74e9 parameters; SmolLM2-135M: 134.5e6 (tied embeddings).
    assert KNOWN_SHAPES["meta-llama/Llama-2-7b-chat-hf"].parameters == pytest.approx(6.74e9, rel=1e-3)
    assert KNOWN_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"].parameters == pytest.approx(134.5e6, rel=1e-3)


def test_requests_follow_the_config(monkeypatch):
    for var in ("REPRO_SLURM_PARTITION", "REPRO_SLURM_GPU_PARTITION", "REPRO_SLURM_ACCOUNT", "REPRO_SLURM_GPU_MODEL"):
        monkeypatch.delenv(var, raising=False)
    paper = load_config(REPO / "presets/paper.yaml")
    default = load_config(REPO / "config.yaml")
    ft = _resolve(job_resources("finetune", paper), rank="256")
    assert ft["gpu"] == 1 and ft["mem_mb"] > 2 * 6.7e9 * 2 / 2**20 and ft["cpus_per_task"] == paper["finetune"]["threads"]
    # Twice the steps, about twice the time; a higher rank never asks for less.
    longer = {**paper, "finetune": {**paper["finetune"], "max_steps": 2 * paper["finetune"]["max_steps"]}}
    ft2 = _resolve(job_resources("finetune", longer), rank="256")
    assert 1.6 < ft2["runtime"] / ft["runtime"] < 2.1
    assert _resolve(job_resources("finetune", paper), rank="2048")["runtime"] >= ft["runtime"]
    # A CPU config asks for no GPU anywhere and for as many CPUs as its threads.
    for family in ("download_model", "prepare_data", "finetune", "evaluate"):
        res = _resolve(job_resources(family, default), rank="4")
        assert "gpu" not in res and res["runtime"] >= 10 and res["mem_mb"] >= 2000
    assert _resolve(job_resources("finetune", default), rank="4")["cpus_per_task"] == default["finetune"]["threads"]
    # Placement comes from the environment, GPU jobs to their own partition.
    monkeypatch.setenv("REPRO_SLURM_PARTITION", "cpu-short")
    monkeypatch.setenv("REPRO_SLURM_GPU_PARTITION", "gpu-a100")
    monkeypatch.setenv("REPRO_SLURM_ACCOUNT", "lab42")
    assert job_resources("finetune", paper)["slurm_partition"] == "gpu-a100"
    assert job_resources("light", paper) == {**job_resources("light", paper), "slurm_partition": "cpu-short",
                                              "slurm_account": "lab42"}


def test_unknown_model_names_the_key_to_add():
    with pytest.raises(KeyError, match="model.shape"):
        model_shape({"name": "x", "source": "hf", "hf_repo": "someone/unknown-model"})


def test_forecast_prefers_measurements_and_says_which_it_used():
    paper = load_config(REPO / "presets/paper.yaml")
    estimate = rate(paper, "train", 16, table=[])
    assert estimate.source.startswith("estimate")
    row = {"model": "llama-2-7b", "device": "H100", "dtype": "bfloat16", "phase": "train", "batch_size": 16,
           "max_length": 1024, "threads": 8, "measured": "2026-01-01", "command": "x"}
    table = [{**row, "rank": "8", "tokens_per_s": "1000"}, {**row, "rank": "128", "tokens_per_s": "500"}]
    measured = rate(paper, "train", 32, table=table)
    assert measured.source.startswith("measured") and 500 < measured.tokens_per_s < 1000
    assert rate(paper, "train", 4, table=table).tokens_per_s == 1000
    rows = forecast(paper, table=table)
    ft = [r for r in rows if r["family"] == "finetune"]
    assert sum(r["jobs"] for r in ft) == 2 * 9
    tokens = paper["finetune"]["max_steps"] * paper["finetune"]["batch_size"] * paper["finetune"]["max_length"]
    r8 = next(r for r in ft if r["rank"] == 8)
    assert r8["hours_per_job"] == pytest.approx(tokens / 1000 / 3600, rel=0.01)


def test_recording_replaces_estimates_and_the_forecast_reads_the_measurement(tmp_path):
    from repro.cluster.throughput import record_rows

    paper = load_config(REPO / "presets/paper.yaml")
    table = tmp_path / "throughput.csv"
    common = {"model": "llama-2-7b", "device": "H100", "dtype": "bfloat16", "phase": "train", "batch_size": 4,
              "max_length": 1024, "command": "x"}
    estimates = [{**common, "rank": r, "threads": 8, "tokens_per_s": "900", "source": "estimate", "measured": ""}
                 for r in (16, 256)]
    cpu = {**common, "device": "cpu", "dtype": "float32", "rank": 16, "tokens_per_s": "10", "source": "measured",
           "measured": "2026-01-01"}
    assert record_rows(estimates + [{**cpu, "threads": 1}, {**cpu, "threads": 2}], table) == []
    est = rate(paper, "train", 16, table=read_table(table))
    assert est.source.startswith("estimate") and est.tokens_per_s == 900
    measured = {**common, "rank": 16, "threads": 1, "tokens_per_s": "1234.5", "source": "measured",
                "measured": "2026-02-02"}
    replaced = record_rows([measured], table)
    # A GPU row's key has no thread count: the estimate at 8 threads is the row replaced.
    assert [(r["rank"], r["source"]) for r in replaced] == [("16", "estimate")]
    rows = read_table(table)
    assert len(rows) == 4 and {r["threads"] for r in rows if r["device"] == "cpu"} == {"1", "2"}
    # Measurements of the pair win over its remaining estimates, at every rank.
    for rank in (16, 256):
        got = rate(paper, "train", rank, table=rows)
        assert got.source == "measured 2026-02-02" and got.tokens_per_s == 1234.5
    # An estimate never displaces a measurement.
    record_rows([{**estimates[0], "tokens_per_s": "1"}], table)
    assert rate(paper, "train", 16, table=read_table(table)).tokens_per_s == 1234.5
    table.write_text(table.read_text().replace("measured,2026-02-02", "guessed,2026-02-02"))
    with pytest.raises(ValueError, match="source"):
        read_table(table)


def test_gradient_checkpointing_costs_a_forward_in_the_flop_estimate():
    paper = load_config(REPO / "presets/paper.yaml")
    on = {**paper, "finetune": {**paper["finetune"], "gradient_checkpointing": True}}
    off = {**paper, "finetune": {**paper["finetune"], "gradient_checkpointing": False}}
    ratio = rate(off, "train", 16, table=[]).tokens_per_s / rate(on, "train", 16, table=[]).tokens_per_s
    assert 1.4 < ratio < 1.5  # three forwards' worth of FLOPs instead of two, plus the adapters'


def test_recorded_throughput_table_is_well_formed():
    rows = read_table()
    # The table ships with the package: the CPU rows the default's forecast and requests are sized by.
    assert any(r["device"] == "cpu" and r["phase"] == "train" for r in rows)
    assert any(r["device"] == "cpu" and r["phase"] == "eval" for r in rows)
    for row in rows:
        assert set(COLUMNS) <= set(row) and float(row["tokens_per_s"]) > 0 and int(row["rank"]) >= 1


@pytest.mark.slow
def test_forecast_cli_counts_the_same_jobs_as_snakemake(tmp_path):
    from workflow_helpers import BIN, make_workspace

    ws = make_workspace(tmp_path / "ws")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(BIN / "repro"), "forecast", "--configfile", "presets/paper.yaml", "--format", "json"],
                          cwd=ws, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for family in ("finetune", "evaluate"):
        assert sum(r["jobs"] for r in out["rows"] if r["family"] == family) == out["dag_jobs"][family]
    assert out["device_hours"] > 1


def test_every_rule_names_a_conda_env_that_exists():
    names = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n?\s*"([^"]+)"', smk.read_text()):
            target = (smk.parent / env).resolve()
            assert target.is_file(), f"{smk.name}: conda env {env} does not exist"
            names.add(target.name)
    assert names, "no rule names a conda env"


def test_memory_and_time_requests_grow_with_the_attempt():
    """A retry after an out-of-memory or time-limit kill asks for more (1x, 2x, 3x the first request)."""
    from snakemake.common import get_input_function_aux_params

    paper = load_config(REPO / "presets/paper.yaml")
    for family in ("finetune", "evaluate", "compression_enumerate", "light"):
        res = job_resources(family, paper)
        wc = Wildcards(rank="256", n="5")
        for key in ("mem_mb", "runtime"):
            # Snakemake hands `attempt` to a resource function only when it is one of its parameters.
            assert "attempt" in get_input_function_aux_params(res[key], {"attempt": 2, "input": []})
            first = res[key](wc)
            assert first > 0 and [res[key](wc, attempt=a) for a in (1, 2, 3)] == [first, 2 * first, 3 * first]
        assert not callable(res["cpus_per_task"])
