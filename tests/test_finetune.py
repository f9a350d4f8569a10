"""Fine-tuning: checkpoint grid, scaling rules, parameter counts, exact fast loss, resume, NaN stop."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from workflow_helpers import tiny_run_spec

from repro.lm import finetune as ft
from repro.lm.adapters import adapter_scalings, build_adapter_model, count_trainable
from repro.lm.finetune import TrainingDivergedError, batch_schedule, causal_lm_loss, train_run
from repro.lm.models import load_model
from repro.lm.tokens import collate, encode_rows

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_batch_schedule_is_deterministic_and_covers_each_epoch():
    lengths = [5, 50, 7, 48, 9, 46, 11, 44, 13, 42, 15, 40]
    a = batch_schedule(lengths, 3, seed=1, n_batches=8, group_by_length=True)
    b = batch_schedule(lengths, 3, seed=1, n_batches=8, group_by_length=True)
    assert a == b
    assert a != batch_schedule(lengths, 3, seed=2, n_batches=8, group_by_length=True)
    first_epoch = sorted(i for batch in a[:4] for i in batch)
    assert first_epoch == list(range(12))
    # Grouping by length must cut padding relative to random batches.
    def padding(schedule):
        return sum(max(lengths[i] for i in bt) * len(bt) - sum(lengths[i] for i in bt) for bt in schedule)
    grouped = batch_schedule(lengths, 3, seed=0, n_batches=4, group_by_length=True)
    plain = batch_schedule(lengths, 3, seed=0, n_batches=4, group_by_length=False)
    assert padding(grouped) < padding(plain)


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_scaling_lora_alpha_over_r_and_rslora_alpha_over_sqrt_r(tiny_model_dir, rank):
    alpha = 16.0
    outs = {}
    for method in ("lora", "rslora"):
        base, _ = load_model(tiny_model_dir)
        model = build_adapter_model(base, method, rank, alpha, 0.0, TARGETS)
        expected = alpha / rank if method == "lora" else alpha / math.sqrt(rank)
        (scaling,) = adapter_scalings(model)
        assert scaling == pytest.approx(expected)
        # The scaling must act on the output: give both models the same non-zero adapters and compare.
        lora_params = sorted((n, p) for n, p in model.named_parameters() if "lora_" in n)
        for i, (_, p) in enumerate(lora_params):
            p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(i))
        layer = model.get_base_model().model.layers[0].self_attn.q_proj
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs[method] = layer(x) - layer.base_layer(x)
    ratio = (outs["rslora"].norm() / outs["lora"].norm()).item()
    assert ratio == pytest.approx(math.sqrt(rank), rel=1e-4)


def test_trainable_params_are_adapters_only(tiny_model_dir):
    base, _ = load_model(tiny_model_dir)
    cfg = base.config
    model = build_adapter_model(base, "lora", 4, 16, 0.0, TARGETS)
    h, m, heads, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads
    d_kv = h // heads * kv
    shapes = [(h, h), (h, d_kv), (h, d_kv), (h, h), (h, m), (h, m), (m, h)]  # (in, out) per module
    expected = cfg.num_hidden_layers * sum(4 * (i + o) for i, o in shapes)
    assert count_trainable(model) == expected
    # An unfrozen embedding must not be counted.
    model.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    assert count_trainable(model) == expected


def test_fast_loss_equals_full_logits_loss_and_gradients(tiny_model_dir, instruct_rows):
    base, tok = load_model(tiny_model_dir)
    model = build_adapter_model(base, "rslora", 4, 16, 0.0, TARGETS)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    examples = encode_rows(instruct_rows["train"][:4], tok, 96)
    ids, mask, labels = collate(examples, tok.pad_token_id)
    assert (labels == -100).any() and (labels != -100).any()
    results = {}
    for fast in (True, False):
        model.zero_grad()
        loss, n = causal_lm_loss(model, ids, mask, labels, fast=fast)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results[fast] = (loss.item(), n, grads)
    assert results[True][1] == results[False][1] == sum(e.n_supervised for e in examples)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert torch.allclose(results[True][2], results[False][2], rtol=1e-4, atol=1e-7)


def _log(run_dir):
    with open(run_dir / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_resumed_run_ends_with_the_same_numbers(tiny_model_dir, instruct_rows, tmp_path):
    rows = instruct_rows["train"]
    full = train_run(tiny_run_spec(), tiny_model_dir, rows, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_after_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_run(tiny_run_spec(), tiny_model_dir, rows, tmp_path / "resumed", on_step=kill_after_5, progress=False)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    # State was saved at step 4 (grid) after step 3 (resume_every); steps 5.. are replayed.
    resumed = train_run(tiny_run_spec(), tiny_model_dir, rows, tmp_path / "resumed", progress=False)
    assert resumed["resumed_from"] == 4
    assert full["checkpoints"] == resumed["checkpoints"]
    log_a, log_b = _log(tmp_path / "full"), _log(tmp_path / "resumed")
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [str(s) for s in range(1, 10)]
    for a, b in zip(log_a, log_b):
        assert float(a["loss"]) == float(b["loss"]) and float(a["grad_norm"]) == float(b["grad_norm"])
    for step, rel in full["checkpoints"].items():
        wa, wb = _adapter(tmp_path / "full" / rel), _adapter(tmp_path / "resumed" / rel)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"checkpoint {step} differs after resume"
    # Training did something: the last adapter differs from the first.
    first, last = _adapter(tmp_path / "full" / full["checkpoints"]["0"]), _adapter(tmp_path / "full" / full["checkpoints"]["8"])
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tiny_model_dir, instruct_rows, tmp_path, monkeypatch):
    real = ft.causal_lm_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, n = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), n

    monkeypatch.setattr(ft, "causal_lm_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 3.*step-000002"):
        train_run(tiny_run_spec(), tiny_model_dir, instruct_rows["train"], tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-000000", "step-000001", "step-000002"]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_summary_records_scaling_and_params(tiny_model_dir, instruct_rows, tmp_path):
    summary = train_run(tiny_run_spec(method="lora", rank=8, max_steps=2), tiny_model_dir, instruct_rows["train"],
                        tmp_path / "r", progress=False)
    assert len(summary["scaling"]) == 1 and summary["scaling"][0] == pytest.approx(16 / 8)
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["trainable_params"] == summary["trainable_params"] > 0
    assert set(on_disk["checkpoints"]) == {"0", "1", "2"}
