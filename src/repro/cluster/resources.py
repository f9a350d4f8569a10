"""Cluster resources of every rule, derived from the config by one function.

Snakemake's SLURM executor maps `mem_mb`, `runtime` (minutes), `cpus_per_task`, `gpu` and
`slurm_partition`/`slurm_account` to sbatch options. Requests are derived from the model's shape,
the batch, the sequence length and the number of steps, with throughput taken from
`repro.cluster.throughput` (measured where a measurement exists), so a change of preset changes the
requests instead of leaving a laptop's literals in a cluster submission.

Partition and account come from the environment, never from the repository:
  REPRO_SLURM_PARTITION      partition of CPU jobs (unset: the cluster's default partition)
  REPRO_SLURM_GPU_PARTITION  partition of GPU jobs (unset: REPRO_SLURM_PARTITION, then the default)
  REPRO_SLURM_ACCOUNT        account charged (unset: the executor guesses or submits without one)
  REPRO_SLURM_GPU_MODEL      GPU type requested with the GPUs, e.g. h100 (unset: any)

A fine-tuning job whose estimated GPU memory (`repro.cluster.memory`) exceeds the GPU that
REPRO_SLURM_GPU_MODEL names (unset: the first of the config's `cluster.gpus`) asks for the first GPU of
`cluster.gpus` that holds it instead (`gpu_model`, e.g. h200); every other job keeps the site's choice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .memory import gpu_model_request, job_memory
from .shapes import ModelShape, model_shape
from .throughput import lm_seconds

# Runtime requests are estimates; a job killed at its time limit loses up to `resume_every` steps
# and is resubmitted by the profile's retries, so the margin is generous rather than tight.
RUNTIME_SAFETY = 2.0
MIN_RUNTIME_MIN = 10
MIN_MEM_MB = 2000
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _runtime_minutes(seconds: float) -> int:
    return max(MIN_RUNTIME_MIN, int(math.ceil(RUNTIME_SAFETY * seconds / 60.0)))


def _host_mem_mb(shape: ModelShape, dtype: str, source: str) -> int:
    # Loading holds the weights once in their stored dtype and once converted; GGUF de-quantisation
    # goes through float32.
    bytes_per = 4 if source == "pypi-gguf" else BYTES.get(dtype, 4)
    return max(MIN_MEM_MB, int(2 * shape.parameters * bytes_per / 2**20) + 1500)


def _finetune_host_mem_mb(cfg: dict, rank: int) -> int:
    """Host memory a fine-tuning job needs beyond loading the model: the host copy of the adapter
    state dict that every checkpoint and resume save makes (20.5 GB at r = 2048 on Llama-2-7B's seven
    modules). Loading and saving happen at different times, yet they are added rather than overlapped:
    the job's cgroup is also charged the page cache of the files it reads and writes (the weights at
    load, each checkpoint as it is written), and dirty pages cannot be dropped before they reach the
    disk. On a CPU the training state itself (adapters, gradients, AdamW, activations) lives in host
    memory too."""
    estimate = job_memory(cfg, rank)
    extra = estimate.host_checkpoint
    if cfg["device"] != "cuda":
        extra += estimate.total_gpu - estimate.base_weights - estimate.cuda_context
    return int(math.ceil(extra / 2**20))


def _slurm_placement(gpu: bool) -> dict:
    out = {}
    partition = os.environ.get("REPRO_SLURM_GPU_PARTITION" if gpu else "REPRO_SLURM_PARTITION") or (
        os.environ.get("REPRO_SLURM_PARTITION") if gpu else None)
    if partition:
        out["slurm_partition"] = partition
    if os.environ.get("REPRO_SLURM_ACCOUNT"):
        out["slurm_account"] = os.environ["REPRO_SLURM_ACCOUNT"]
    if gpu and os.environ.get("REPRO_SLURM_GPU_MODEL"):
        out["gpu_model"] = os.environ["REPRO_SLURM_GPU_MODEL"]
    return out


@dataclass(frozen=True)
class GrowsWithAttempt:
    """A request that grows with Snakemake's attempt number: ``base`` x attempt.

    The SLURM profile retries a failed job (``retries: 2``); a job killed for exceeding its memory or
    time limit would fail again at the same request, so every retry asks for one more multiple of the
    first request (1x, 2x, 3x). ``base`` is a number or a function of the job's wildcards. Snakemake
    passes ``attempt`` because it is a parameter name of ``__call__``; called with wildcards alone (the
    forecast, the tests) it gives the first attempt's request.
    """

    base: object

    def __call__(self, wildcards, attempt: int = 1) -> int:
        value = self.base(wildcards) if callable(self.base) else self.base
        return int(value) * max(1, int(attempt))


def _grow(res: dict) -> dict:
    return {k: GrowsWithAttempt(v) if k in ("mem_mb", "runtime") else v for k, v in res.items()}


# Jobs of these families load the language model and run on the config's device.
LM_DEVICE_JOBS = ("prepare_data", "finetune", "evaluate", "evaluate_tasks")
# Small CPU jobs: tables, fits, figures, bookkeeping.
LIGHT_JOBS = {"mem_mb": MIN_MEM_MB, "runtime": 30, "cpus_per_task": 1}


def job_resources(family: str, cfg: dict, device_name: str | None = None) -> dict:
    """`resources:` of one rule family: ``mem_mb`` and ``runtime`` grow with the attempt number
    (GrowsWithAttempt), the others are numbers."""
    return _grow(_first_attempt(family, cfg, device_name))


def _first_attempt(family: str, cfg: dict, device_name: str | None = None) -> dict:
    if family in LM_DEVICE_JOBS or family == "download_model":
        shape = model_shape(cfg["model"])
        on_gpu = cfg["device"] == "cuda" and family != "download_model"
        threads = cfg["finetune"]["threads"]
        res = {"mem_mb": _host_mem_mb(shape, cfg["dtype"], cfg["model"]["source"]),
               "cpus_per_task": threads if family != "download_model" else 1}
        if family == "download_model":
            # A hub download of the weights at a modest 20 MB/s, plus conversion.
            res["runtime"] = _runtime_minutes(shape.parameters * BYTES.get(cfg["dtype"], 4) / 20e6 + 120)
        elif family in ("finetune", "evaluate", "evaluate_tasks"):
            # The base model's evaluation has no rank: it is costed as the smallest adapter.
            res["runtime"] = lambda wildcards: _runtime_minutes(
                lm_seconds(family, cfg, int(wildcards.get("rank", 1)), device_name))
        else:
            res["runtime"] = _runtime_minutes(lm_seconds(family, cfg, 1, device_name))
        if family == "finetune":
            loading_mb = res["mem_mb"]
            res["mem_mb"] = lambda wildcards: loading_mb + _finetune_host_mem_mb(cfg, int(wildcards.get("rank", 1)))
        if on_gpu:
            res["gpu"] = 1
        res = {**res, **_slurm_placement(on_gpu)}
        if on_gpu and family == "finetune":
            site_model = os.environ.get("REPRO_SLURM_GPU_MODEL") or None
            # Only where some rank outgrows the site's GPU does the request become a function of the
            # rank; otherwise it stays exactly what the environment asked for.
            if any(gpu_model_request(cfg, rank, site_model) != site_model for rank in cfg["finetune"]["ranks"]):
                res["gpu_model"] = lambda wildcards: gpu_model_request(cfg, int(wildcards.get("rank", 1)), site_model)
        return res
    if family == "teb":
        teb = cfg.get("teb", {})
        on_gpu = teb.get("device", "cpu") == "cuda"
        res = {"mem_mb": 4000, "runtime": 60 if not on_gpu else 240, "cpus_per_task": teb.get("threads", 1)}
        if on_gpu:
            res["gpu"] = 1
        return {**res, **_slurm_placement(on_gpu)}
    if family == "compression_enumerate":
        # M(6, d) holds ~10^8 classes as 8-byte masks with their orbit keys; n <= 5 fits in little.
        return {"mem_mb": lambda wildcards: 16000 if int(wildcards.n) >= 6 else 4000,
                "runtime": lambda wildcards: 120 if int(wildcards.n) >= 6 else 30,
                "cpus_per_task": 1, **_slurm_placement(False)}
    if family == "compression":
        return {"mem_mb": 4000, "runtime": max(30, int(2 * cfg["compression"]["sat"]["time_limit_s"] / 60) + 30),
                "cpus_per_task": 1, **_slurm_placement(False)}
    if family == "laws":
        return {**LIGHT_JOBS, "runtime": 60, **_slurm_placement(False)}
    if family == "light":
        return {**LIGHT_JOBS, **_slurm_placement(False)}
    raise ValueError(f"job_resources: unknown rule family {family!r}")
