"""GPU memory of fine-tuning jobs (repro.cluster.memory): the estimate, the GPU each job asks for, and
the config check that refuses a sweep no allowed GPU can hold."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import yaml

from repro.cluster.memory import (
    FIT_MARGIN,
    GB,
    GPU_MEMORY_GB,
    choose_gpu,
    gpu_fit_errors,
    job_memory,
    layer_activation_bytes_per_token,
    module_fans,
    usable_bytes,
)
from repro.cluster.resources import job_resources
from repro.cluster.shapes import KNOWN_SHAPES
from repro.cluster.throughput import forecast
from repro.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]
LLAMA2_7B = KNOWN_SHAPES["meta-llama/Llama-2-7b-chat-hf"]
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Wildcards(dict):
    __getattr__ = dict.__getitem__


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(REPO / "presets/paper.yaml")


def _raw(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _with(cfg: dict, **finetune) -> dict:
    out = copy.deepcopy(cfg)
    out["finetune"].update(finetune)
    return out


def test_rank_2048_adapter_state_is_82_gb(paper):
    """5.12e9 fp32 adapter parameters; weights, gradients and AdamW's two moments are 16 bytes each."""
    params = LLAMA2_7B.adapter_parameters(2048, ALL_MODULES)
    assert params == pytest.approx(5.12e9, rel=0.01)
    est = job_memory(paper, 2048)
    assert (est.adapter_weights, est.adapter_gradients, est.optimizer_state) == (4 * params, 4 * params, 8 * params)
    assert est.adapter_weights + est.adapter_gradients + est.optimizer_state == pytest.approx(82e9, rel=0.01)
    # The bf16 base: 2 bytes for each of Llama-2-7B's 6.74e9 parameters.
    assert est.base_weights == pytest.approx(13.5e9, rel=0.01)
    # The fused AdamW of the CUDA preset updates in place; torch's foreach path needs sqrt(v) once more.
    assert est.optimizer_workspace == 0
    assert job_memory(_with(paper, fused_optimizer=False), 2048).optimizer_workspace == 4 * params
    # Already over an 80 GB H100 before a single activation.
    assert est.total_gpu > GPU_MEMORY_GB["H100"] * GB


def test_fans_are_the_ones_the_adapter_count_uses():
    fans = module_fans(LLAMA2_7B)
    per_rank = LLAMA2_7B.num_hidden_layers * sum(sum(fans[m]) for m in ALL_MODULES)
    assert LLAMA2_7B.adapter_parameters(7, ALL_MODULES) == 7 * per_rank


def test_paper_sweep_fits_the_gpu_each_job_requests(paper, monkeypatch):
    assert paper["cluster"]["gpus"] == ["H100", "H200"]
    chosen = {}
    for rank in paper["finetune"]["ranks"]:
        est = job_memory(paper, rank)
        gpu = choose_gpu(paper, rank)
        assert gpu is not None and est.total_gpu <= usable_bytes(gpu) <= GPU_MEMORY_GB[gpu] * GB, rank
        chosen[rank] = gpu
    assert chosen[2048] == "H200"
    assert {chosen[r] for r in paper["finetune"]["ranks"] if r <= 512} == {"H100"}
    assert job_memory(paper, 2048).total_gpu > usable_bytes("H100")
    assert gpu_fit_errors(paper) == []

    # SLURM: without REPRO_SLURM_GPU_MODEL the ranks an H100 holds ask for any GPU, r = 2048 for an H200.
    monkeypatch.delenv("REPRO_SLURM_GPU_MODEL", raising=False)
    request = job_resources("finetune", paper)["gpu_model"]
    assert [request(Wildcards(rank=str(r))) for r in (4, 512, 2048)] == [None, None, "h200"]
    # With the site's choice set, the ranks that fit keep it; only r = 2048 moves.
    monkeypatch.setenv("REPRO_SLURM_GPU_MODEL", "h100")
    request = job_resources("finetune", paper)["gpu_model"]
    assert [request(Wildcards(rank=str(r))) for r in (4, 512, 2048)] == ["h100", "h100", "h200"]
    # Jobs that are not fine-tuning keep the site's setting as a plain value.
    assert job_resources("evaluate", paper)["gpu_model"] == "h100"


def test_a_sweep_that_fits_asks_for_the_sites_gpu_only(monkeypatch):
    monkeypatch.delenv("REPRO_SLURM_GPU_MODEL", raising=False)
    gpu = load_config(REPO / "presets/gpu.yaml")
    assert "gpu_model" not in job_resources("finetune", gpu)
    monkeypatch.setenv("REPRO_SLURM_GPU_MODEL", "a100")
    assert job_resources("finetune", gpu)["gpu_model"] == "a100"


def test_paper_preset_on_h100_only_is_refused_naming_the_rank_and_the_gpus(paper, tmp_path):
    raw = _raw("presets/paper.yaml")
    raw["cluster"]["gpus"] = ["H100"]
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    message = str(err.value)
    index = raw["finetune"]["ranks"].index(2048)
    assert f"finetune.ranks[{index}]" in message and "cluster.gpus" in message
    # Only the rank that does not fit is named, with its breakdown and the remedies.
    assert message.count("finetune.ranks[") == 1
    assert "adapter gradients 20.5" in message and "AdamW moments 40.9" in message
    assert "H200" in message and "finetune.target_modules" in message and "smaller rank" in message
    path = tmp_path / "paper-h100.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"finetune\.ranks\[8\].*cluster\.gpus"):
        load_config(path)
    # Fewer adapted modules are a remedy indeed: attention only fits the H100 at r = 2048.
    raw["finetune"]["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert choose_gpu(validate_config(raw), 2048) == "H100"


def test_gradient_checkpointing_cuts_activations_at_paper_scale(paper):
    # The per-token, per-layer count of a Llama-2-7B decoder layer in bf16: 20h + 8i, the fp32
    # logsumexp of 32 heads, the bf16 attention bias of a 1024-wide row, and 2 bytes of each of the
    # seven adapters' rank-wide intermediates.
    h, i = LLAMA2_7B.hidden_size, LLAMA2_7B.intermediate_size
    assert layer_activation_bytes_per_token(LLAMA2_7B, paper, 16) == 20 * h + 8 * i + 4 * 32 + 2 * 1024 + 7 * 2 * 16
    on = job_memory(_with(paper, gradient_checkpointing=True), 16).activations
    off = job_memory(_with(paper, gradient_checkpointing=False), 16).activations
    tokens = 16 * 1024
    assert off > 32 * tokens * (20 * h + 8 * i)  # every layer's saved tensors: ~90 GB
    assert off / on > 8
    assert on < 10e9  # what the preset's comment promises: layer inputs ~4 GB, one layer recomputed


@pytest.mark.parametrize("checkpointing", [True, False])
def test_activations_grow_linearly_in_batch_times_length(paper, checkpointing):
    base = _with(paper, gradient_checkpointing=checkpointing)
    one = job_memory(base, 64).activations
    assert job_memory(_with(base, batch_size=32), 64).activations == 2 * one
    # Memory-efficient attention keeps no T x T scores: only the attention mask, a T-wide bias per
    # token, grows faster than the tokens (bytes per token: ~2T of ~172,000 at T = 1024).
    for batch, length in ((16, 2048), (8, 2048)):
        ratio = job_memory(_with(base, batch_size=batch, max_length=length), 64).activations / one
        assert batch * length / (16 * 1024) <= ratio <= 1.02 * batch * length / (16 * 1024)
    # Nothing else of the estimate depends on the tokens but the output layer.
    a, b = job_memory(base, 64), job_memory(_with(base, batch_size=32), 64)
    assert (a.base_weights, a.adapter_weights, a.optimizer_state) == (b.base_weights, b.adapter_weights,
                                                                     b.optimizer_state)


def test_plain_cross_entropy_holds_the_fp32_logits(paper):
    fused = job_memory(paper, 16).output_layer
    plain = job_memory(_with(paper, fused_cross_entropy=False), 16).output_layer
    assert plain > 3 * 4 * 16 * 1024 * LLAMA2_7B.vocab_size  # three fp32 n x V tensors
    assert fused < 1e9 < plain


def test_finetune_host_memory_covers_a_checkpoint_save(paper, monkeypatch):
    monkeypatch.delenv("REPRO_SLURM_GPU_MODEL", raising=False)
    mem = job_resources("finetune", paper)["mem_mb"]
    checkpoint = 4 * LLAMA2_7B.adapter_parameters(2048, ALL_MODULES)
    assert checkpoint == pytest.approx(20.5e9, rel=0.01)
    assert job_memory(paper, 2048).host_checkpoint >= checkpoint
    first = mem(Wildcards(rank="2048"))
    # Loading the bf16 model (held twice while converting) and the checkpoint's host copy, together.
    assert first * 2**20 > checkpoint + 2 * 2 * LLAMA2_7B.parameters
    assert first - mem(Wildcards(rank="4")) >= (checkpoint - 4 * LLAMA2_7B.adapter_parameters(4, ALL_MODULES)) / 2**20
    # Retries still ask for more.
    assert mem(Wildcards(rank="2048"), attempt=2) == 2 * first


def test_forecast_rows_carry_memory_and_gpu(paper, capsys):
    rows = forecast(paper, table=[])
    finetune = {r["rank"]: r for r in rows if r["family"] == "finetune"}
    assert set(finetune) == set(paper["finetune"]["ranks"])
    for rank, row in finetune.items():
        assert row["gpu_memory_gb"] == pytest.approx(job_memory(paper, rank).total_gpu / GB)
        assert row["gpu"] == ("H200" if rank == 2048 else "H100")
    assert 80 < finetune[2048]["gpu_memory_gb"] < (1 - FIT_MARGIN) * 141
    assert all({"gpu_memory_gb", "gpu"} <= set(r) for r in rows)
    assert all(r["gpu"] is None for r in rows if r["family"] != "finetune")

    from repro.cluster.cli import cmd_forecast

    args = argparse.Namespace(configfile=REPO / "presets/paper.yaml", gpu=None, format="table", no_dag=True,
                              memory=True)
    assert cmd_forecast(args) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == "2048")
    assert "5,117,050,880" in line and line.split()[-1] == "H200"


@pytest.mark.parametrize("name", ["config.yaml", "presets/test.yaml"])
def test_cpu_configs_have_no_gpu_to_fit(name):
    cfg = load_config(REPO / name)
    assert cfg["device"] == "cpu" and cfg["cluster"]["gpus"] == ["H100"]
    assert gpu_fit_errors(cfg) == []
    # Not even at a rank no GPU could hold: a CPU job is sized by its host memory request.
    assert gpu_fit_errors(_with(cfg, ranks=[1 << 20])) == []
    assert job_memory(cfg, 4).cuda_context == 0
    rows = forecast(cfg)
    assert all(r["gpu_memory_gb"] is None and r["gpu"] is None for r in rows)


def test_gpu_preset_fits_an_h100():
    cfg = load_config(REPO / "presets/gpu.yaml")
    assert gpu_fit_errors(cfg) == []
    assert {choose_gpu(cfg, r) for r in cfg["finetune"]["ranks"]} == {"H100"}
    assert job_memory(cfg, max(cfg["finetune"]["ranks"])).total_gpu < 20e9


def test_a_gpu_model_of_unknown_shape_is_refused_until_the_config_states_its_shape():
    from repro.cluster.shapes import LLAMA2_7B
    from repro.config import ConfigError, validate_config

    raw = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    raw["model"] = {**raw["model"], "name": "my-llama", "hf_repo": "someone/unknown-7b"}
    with pytest.raises(ConfigError, match=r"model\.shape"):
        validate_config(copy.deepcopy(raw))
    # The same architecture stated in the config is sized like the known Llama-2-7B.
    raw["model"]["shape"] = {"parameters": LLAMA2_7B.parameters, "hidden_size": 4096, "intermediate_size": 11008,
                             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                             "vocab_size": 32000}
    cfg = validate_config(raw)
    known = validate_config(yaml.safe_load((REPO / "presets" / "paper.yaml").read_text()))
    assert job_memory(cfg, 2048) == job_memory(known, 2048)


def test_stating_the_model_shape_reruns_nothing():
    """model.shape sizes requests only: the download's identity (and so everything after it) is unchanged."""
    from repro.config import validate_config
    from repro.lm.runs import model_settings

    raw = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    plain = validate_config(copy.deepcopy(raw))
    raw["model"]["shape"] = {"parameters": 6.7e9, "hidden_size": 4096, "intermediate_size": 11008,
                             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                             "vocab_size": 32000}
    stated = validate_config(raw)
    assert stated["model"]["shape"] and model_settings(stated) == model_settings(plain)
