"""The CUDA route's parts that a CPU can check: one GPU job at a time, adapters evaluated in the base
model's dtype, and the prepared GPU smoke test (run here on a tiny model so it cannot rot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_the_local_profile_runs_one_gpu_job_at_a_time(tmp_path):
    """Three jobs declaring gpu=1 on three free cores: with the repo's profile they never overlap."""
    (tmp_path / "profiles" / "default").mkdir(parents=True)
    shutil.copy(REPO / "profiles" / "default" / "config.yaml", tmp_path / "profiles" / "default")
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("out{i}.txt", i=range(3))\n'
        "rule job:\n"
        '    output: "out{i}.txt"\n'
        "    resources: gpu=1\n"
        '    shell: "python3 -c \'import time; print(time.time())\' > {output}; sleep 1; '
        'python3 -c \'import time; print(time.time())\' >> {output}"\n'
    )
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "3", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spans = sorted(tuple(map(float, (tmp_path / f"out{i}.txt").read_text().split())) for i in range(3))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two gpu=1 jobs overlapped: {spans}"


def _saved_adapter(tmp_path, dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(cfg).to(dtype).eval()
    model = get_peft_model(base, LoraConfig(r=32, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    # Train-like: the saved adapter is fp32 whatever the base (peft's master weights).
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float() * (30.0 if "lora_B" in name else 1.0)
    model.save_pretrained(tmp_path / "adapter")
    return model.unload(), tmp_path / "adapter"


def test_adapters_evaluate_in_the_base_dtype_and_fp32_is_unchanged(tmp_path):
    from peft import PeftModel

    from repro.lm.adapters import adapter_dtypes, load_for_evaluation

    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    # fp32 base: the same model as peft's default load, bit for bit (the default config's numbers).
    base, adapter = _saved_adapter(tmp_path, torch.float32)
    ours = load_for_evaluation(base, adapter)
    with torch.no_grad():
        ours_logits = ours(input_ids=ids).logits
    peft_default = PeftModel.from_pretrained(ours.unload(), adapter, is_trainable=False).eval()
    with torch.no_grad():
        assert torch.equal(ours_logits, peft_default(input_ids=ids).logits)
    assert adapter_dtypes(ours) == {torch.float32}

    # bf16 base: the adapters compute in bf16 (peft's default would keep them fp32 and upcast inputs).
    base, adapter = _saved_adapter(tmp_path / "bf16", torch.bfloat16)
    (tmp_path / "bf16").mkdir(exist_ok=True)
    ours = load_for_evaluation(base, adapter)
    assert adapter_dtypes(ours) == {torch.bfloat16}
    with torch.no_grad():
        native = ours(input_ids=ids).logits.float()
        with ours.disable_adapter():
            bare = ours(input_ids=ids).logits.float()
    peft_default = PeftModel.from_pretrained(ours.unload(), adapter, is_trainable=False).eval()
    assert adapter_dtypes(peft_default) == {torch.float32}
    with torch.no_grad():
        upcast = peft_default(input_ids=ids).logits.float()
    # The adapters' effect is kept: bf16 rounding of the adapter branch is small against what it adds.
    effect = (upcast - bare).norm()
    assert effect > 1.0
    assert (native - upcast).norm() < 0.05 * effect, ((native - upcast).norm(), effect)


def test_the_forgetting_evaluation_loads_a_bf16_model_with_bf16_adapters(tmp_path, tiny_model_dir):
    """evaluate_run's loader on a bf16 config; the lm-eval jobs load through the same function."""
    from peft import LoraConfig, get_peft_model

    from repro.lm.adapters import adapter_dtypes
    from repro.lm.forgetting import _load_peft
    from repro.lm.models import load_model

    base, _ = load_model(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "ckpt")
    model, _ = _load_peft(tiny_model_dir, tmp_path / "ckpt", "cpu", "bfloat16", 1)
    assert adapter_dtypes(model) == {torch.bfloat16}
    model, _ = _load_peft(tiny_model_dir, tmp_path / "ckpt", "cpu", "float32", 1)
    assert adapter_dtypes(model) == {torch.float32}
    src = (REPO / "src/repro/lm/forgetting.py").read_text() + (REPO / "src/repro/lm/evals.py").read_text()
    assert "PeftModel.from_pretrained" not in src, "evaluation must load adapters through repro.lm.adapters"


@pytest.mark.timeout(300)
def test_the_gpu_smoke_script_runs_every_section_on_a_tiny_cpu_model(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([str(BIN / "python"), "benchmarks/gpu_smoke.py", "--device", "cpu", "--steps", "6",
                           "--steps-7b", "3", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    errors = {k: v.get("error") for k, v in sections.items() if v["status"] == "error"}
    assert not errors, errors
    assert sections["fused_ce"]["status"] == "skipped" and sections["dag"]["status"] == "skipped"
    step = sections["step_smollm"]["liger"]
    assert step["measured_steps"] > 0 and step["input_tokens_per_s"] > 0
    mem = sections["memory_7b"]
    # The memory model is asked about the model that ran (the tiny one here), with its batch.
    assert mem["with_checkpointing"]["estimate_gb"]["total_gpu"] > 0
    assert (mem["without_checkpointing"]["estimate_gb"]["activations"]
            > mem["with_checkpointing"]["estimate_gb"]["activations"])
    assert sections["eval_7b"]["tokens_per_s"]["adapters_native"] > 0


def test_the_language_model_rules_name_the_cuda_conda_env_on_a_cuda_config():
    import re

    text = (REPO / "workflow/rules/lm.smk").read_text()
    choice = re.search(r"^LM_CONDA_ENV = (.*)$", text, re.M).group(1)
    envs = {device: eval(choice, {"config": {"device": device}}) for device in ("cpu", "cuda")}  # noqa: S307
    assert envs == {"cpu": "../../envs/lm.yaml", "cuda": "../../envs/lm-cuda.yaml"}
    assert all((REPO / "workflow/rules" / path).resolve().is_file() for path in envs.values())
    blocks = re.findall(r"^rule (\w+):(.*?)(?=^rule |\Z)", text, re.M | re.S)
    holding_the_model = [name for name, body in blocks if name != "aggregate"]
    assert holding_the_model and all("LM_CONDA_ENV" in dict(blocks)[n] for n in holding_the_model)
