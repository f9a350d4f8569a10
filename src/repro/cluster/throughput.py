"""Tokens per second of fine-tuning and evaluation, measured where possible, and the cost forecast.

`throughput.csv` (beside this file) holds one row per (model, device, dtype, phase, rank, and threads
on a CPU): input (non-padding) tokens per second, and its `source`: `measured` (written by
`benchmarks/lm_speed.py --record` or `benchmarks/lm_throughput.py --record`, with the date and the
command) or `estimate` (a FLOP-based figure kept in the table). A measurement replaces any row of its
key, an estimate never replaces a measurement. A preset whose (model, device) pair has no row falls
back to a FLOP count at an assumed model-FLOP utilisation, and every figure the forecast prints says
which it is.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .memory import GB, gpu_for_job, job_memory
from .shapes import KNOWN_SHAPES, ModelShape, lm_work, model_shape

TABLE = Path(__file__).with_name("throughput.csv")
COLUMNS = ["model", "device", "dtype", "phase", "rank", "batch_size", "max_length", "threads",
           "tokens_per_s", "source", "measured", "command"]
SOURCES = ("measured", "estimate")
# Columns that identify a row; a CPU row is also per thread count (GPU rows do not depend on it).
KEY = ("model", "device", "dtype", "phase", "rank")

# Dense peak FLOP/s per device and dtype (vendor data sheets, no sparsity). CPU: the fp32 GEMM rate
# measured on the 2-core development machine, per thread.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("L40S", "bfloat16"): 362e12, ("L40S", "float32"): 91.6e12,
    ("cpu", "float32"): 90e9, ("cpu", "bfloat16"): 45e9,
}
ASSUMED_MFU = 0.35
DEFAULT_GPU = "H100"


def model_key(model_cfg: dict) -> str:
    """Name under which measurements of a model are kept (architecture, not download route)."""
    shape = model_shape(model_cfg)
    for name, known in (("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                        ("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf")):
        if shape == KNOWN_SHAPES[known]:
            return name
    return model_cfg["name"]


def device_key(cfg: dict, gpu: str | None = None) -> str:
    return "cpu" if cfg["device"] == "cpu" else (gpu or DEFAULT_GPU)


def forward_flops_per_token(shape: ModelShape, context: int) -> float:
    # Weight GEMMs, the output layer, and causal attention over an average context of half the length.
    return (2 * shape.non_embedding + 2 * shape.hidden_size * shape.vocab_size
            + 2 * shape.num_hidden_layers * context * shape.hidden_size)


def flops_per_token(shape: ModelShape, phase: str, context: int, adapter_params: int,
                    recompute: bool = False) -> float:
    fwd = forward_flops_per_token(shape, context)
    # Frozen weights need gradients of activations only (about one more forward), adapters need all
    # three; gradient checkpointing runs the forward once more in the backward pass.
    return (3 if recompute else 2) * fwd + 6 * adapter_params if phase == "train" else fwd


@dataclass(frozen=True)
class Rate:
    tokens_per_s: float
    source: str  # "measured <date>" or "estimate (...)"


def read_table(path: Path = TABLE) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = set(COLUMNS) - set(rows[0]) if rows else set()
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    bad = sorted({r["source"] for r in rows} - set(SOURCES))
    if bad:
        raise ValueError(f"{path}: column source must be one of {', '.join(SOURCES)}, not {', '.join(bad)}")
    return rows


def row_key(row: dict) -> tuple:
    key = tuple(str(row[c]) for c in KEY)
    return key + (str(row["threads"]),) if str(row["device"]) == "cpu" else key


def record_rows(rows: list[dict], path: Path = TABLE) -> list[dict]:
    """Write rows into the table, replacing the rows of the same key; returns the replaced rows.

    A measured row replaces an estimate or an older measurement; an estimate row is dropped where
    the table already holds a measurement of its key."""
    for row in rows:
        missing = set(COLUMNS) - set(row)
        if missing:
            raise ValueError(f"record_rows: row {row} lacks columns {sorted(missing)}")
        if row["source"] not in SOURCES:
            raise ValueError(f"record_rows: source must be one of {', '.join(SOURCES)}, not {row['source']!r}")
    existing = read_table(path)
    measured = {row_key(r) for r in existing if r["source"] == "measured"}
    rows = [r for r in rows if r["source"] == "measured" or row_key(r) not in measured]
    new = {row_key(r) for r in rows}
    kept = [r for r in existing if row_key(r) not in new]
    replaced = [r for r in existing if row_key(r) in new]
    tmp = Path(path).with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(kept + rows, key=lambda r: (row_key(r)[:4], int(r["rank"]), row_key(r)[5:])))
    os.replace(tmp, path)
    return replaced


def rate(cfg: dict, phase: str, rank: int, gpu: str | None = None, table: list[dict] | None = None) -> Rate:
    """Tokens/s of `phase` (train or eval) for the config's model at `rank`."""
    table = read_table() if table is None else table
    model, device, dtype = model_key(cfg["model"]), device_key(cfg, gpu), cfg["dtype"]
    threads = cfg["finetune"]["threads"]
    rows = [r for r in table if (r["model"], r["device"], r["dtype"], r["phase"]) == (model, device, dtype, phase)
            and (device != "cpu" or int(r["threads"]) == threads)]
    # Measurements first; the table's estimates only where nothing of the pair was measured.
    # (A row without a source, as tables written before the column had, is a measurement.)
    rows = [r for r in rows if r.get("source", "measured") == "measured"] or rows
    if rows:
        def label(r: dict) -> str:
            if r.get("source", "measured") == "measured":
                return f"measured {r['measured']}"
            return "estimate (throughput table)"

        # Interpolate in log(rank): adapter cost grows with rank, the frozen model's does not.
        pts = sorted((math.log(int(r["rank"])), float(r["tokens_per_s"]), label(r)) for r in rows)
        x = math.log(max(rank, 1))
        if x <= pts[0][0] or len(pts) == 1:
            return Rate(pts[0][1], pts[0][2])
        if x >= pts[-1][0]:
            return Rate(pts[-1][1], pts[-1][2])
        for (x0, y0, d0), (x1, y1, _) in zip(pts, pts[1:]):
            if x0 <= x <= x1:
                y = y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
                return Rate(y, f"{d0} (interpolated in rank)")
    shape = model_shape(cfg["model"])
    peak_key = (device, dtype)
    if peak_key not in PEAK_FLOPS:
        raise KeyError(f"no throughput measurement and no peak FLOP/s for device {device!r} with dtype {dtype!r}")
    peak = PEAK_FLOPS[peak_key] * (threads if device == "cpu" else 1)
    adapter = shape.adapter_parameters(rank, cfg["finetune"]["target_modules"])
    fpt = flops_per_token(shape, phase, cfg["finetune"]["max_length"] // 2, adapter,
                          recompute=bool(cfg["finetune"].get("gradient_checkpointing")))
    return Rate(ASSUMED_MFU * peak / fpt, f"estimate (FLOPs at {ASSUMED_MFU:.0%} of {device} peak)")


def load_seconds(cfg: dict) -> float:
    # Reading and moving the weights at ~0.5 GB/s, plus start-up of Python and torch.
    shape = model_shape(cfg["model"])
    return 30.0 + shape.parameters * 4 / 0.5e9


# Items of lm-eval's standard tasks (test or validation split as lm-eval scores them), and the
# tokens of one scored continuation with its context (question + choice; MMLU's are longer).
TASK_ITEMS = {"arc_easy": 2376, "arc_challenge": 1172, "mmlu": 14042, "hellaswag": 10042}
TASK_TOKENS_PER_CHOICE = {"mmlu": 320, "hellaswag": 110}
DEFAULT_TOKENS_PER_CHOICE = 80
CHOICES = 4
ADVBENCH_PROMPTS = 520
# Greedy decoding runs one forward of the batch per new token: far below scoring throughput.
GENERATION_SLOWDOWN = 10


def evals_tokens(cfg: dict) -> tuple[float, float]:
    """(scored, generated) tokens of one evaluate_tasks job: every selected checkpoint of a run."""
    ev = cfg.get("evals") or {}
    if not ev.get("enabled"):
        return 0.0, 0.0
    limit = ev.get("limit")
    scored = 0.0
    for task in ev.get("tasks", []):
        items = TASK_ITEMS.get(task, 250)
        items = min(items, limit) if limit else items
        scored += items * CHOICES * TASK_TOKENS_PER_CHOICE.get(task, DEFAULT_TOKENS_PER_CHOICE)
    safety = ev.get("safety") or {}
    generated = 0.0
    if safety.get("enabled", True):
        prompts = ADVBENCH_PROMPTS if safety.get("prompts", "local") != "local" else 51
        prompts = min(prompts, safety["limit"]) if safety.get("limit") else prompts
        generated = prompts * safety.get("max_new_tokens", 64)
    checkpoints = len(ev.get("checkpoints", [])) if isinstance(ev.get("checkpoints"), list) else 3
    return checkpoints * scored, checkpoints * generated


def lm_seconds(family: str, cfg: dict, rank: int, gpu: str | None = None, table: list[dict] | None = None) -> float:
    """Wall seconds of one job of an LM rule family at `rank`."""
    work = lm_work(cfg, rank)
    if family == "finetune":
        return load_seconds(cfg) + work["train_tokens"] / rate(cfg, "train", rank, gpu, table).tokens_per_s
    if family == "evaluate":
        return load_seconds(cfg) + work["eval_tokens"] / rate(cfg, "eval", rank, gpu, table).tokens_per_s
    if family == "evaluate_tasks":
        scored, generated = evals_tokens(cfg)
        eval_rate = rate(cfg, "eval", rank, gpu, table).tokens_per_s
        return load_seconds(cfg) + (scored + GENERATION_SLOWDOWN * generated) / eval_rate
    if family == "prepare_data":
        # Sampling decodes one token per forward of the whole batch: an order slower than scoring.
        return load_seconds(cfg) + 10 * work["sample_tokens"] / rate(cfg, "eval", 1, gpu, table).tokens_per_s
    raise ValueError(f"lm_seconds: no cost model for {family!r}")


def forecast(cfg: dict, gpu: str | None = None, table: list[dict] | None = None,
             site_gpu_model: str | None = None) -> list[dict]:
    """Device-hours and job counts of the LM jobs of a config, one row per rule family and rank.

    Fine-tuning rows of a cuda config also carry the job's estimated peak GPU memory
    (``gpu_memory_gb``, see ``repro.cluster.memory``) and the GPU it runs on (``gpu``: the site's,
    ``site_gpu_model`` as REPRO_SLURM_GPU_MODEL gives it, where it holds the job, else the first of
    ``cluster.gpus`` that does); other rows leave both None. Hours stay those of the throughput's device:
    a job sent to a larger GPU (an H200 for an H100) runs at least as fast there.
    """
    ft = cfg["finetune"]
    runs_per_rank = len(ft["datasets"]) * len(ft["methods"]) * len(ft["learning_rates"]) * len(ft["seeds"])
    device = device_key(cfg, gpu)
    rows = []
    families = ("finetune", "evaluate", "evaluate_tasks") if (cfg.get("evals") or {}).get("enabled") else (
        "finetune", "evaluate")
    for family in families:
        for rank in ft["ranks"]:
            phase = "train" if family == "finetune" else "eval"
            r = rate(cfg, phase, rank, gpu, table)
            seconds = lm_seconds(family, cfg, rank, gpu, table)
            memory = {"gpu_memory_gb": None, "gpu": None}
            if family == "finetune" and cfg["device"] == "cuda":
                estimate = job_memory(cfg, rank)
                memory = {"gpu_memory_gb": estimate.total_gpu / GB,
                          "gpu": gpu_for_job(cfg, rank, site_gpu_model, estimate)}
            rows.append({"family": family, "rank": rank, "jobs": runs_per_rank, "device": device,
                         "tokens_per_s": r.tokens_per_s, "hours_per_job": seconds / 3600,
                         "device_hours": runs_per_rank * seconds / 3600, "throughput": r.source, **memory})
    seconds = lm_seconds("prepare_data", cfg, 1, gpu, table)
    r = rate(cfg, "eval", 1, gpu, table)
    rows.append({"family": "prepare_data", "rank": None, "jobs": 1, "device": device, "tokens_per_s": r.tokens_per_s,
                 "hours_per_job": seconds / 3600, "device_hours": seconds / 3600, "throughput": r.source,
                 "gpu_memory_gb": None, "gpu": None})
    return rows
