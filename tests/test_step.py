"""The training step's parts on CPU: packed layout, loss paths, bf16 autocast, deferred syncs,
gradient checkpointing, the optimizer choice, and the gpu preset's step settings on a tiny model."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from workflow_helpers import tiny_run_spec

from repro.lm.adapters import build_adapter_model
from repro.lm.finetune import RunSpec, train_run
from repro.lm.models import load_model
from repro.lm.step import (
    StepOptions,
    StepRunner,
    causal_lm_loss,
    layout_batch,
    make_optimizer,
    pack_rows,
    plain_linear_cross_entropy,
    prepare_model,
    select_cross_entropy,
)
from repro.lm.tokens import IGNORE, Example, collate

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("first", 4)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _adapted(model_dir, dtype="float32", seed=0):
    base, tok = load_model(model_dir, dtype=dtype)
    torch.manual_seed(seed)  # lora_A's random init: the same adapters on every call
    model = build_adapter_model(base, "rslora", 4, 16, 0.0, TARGETS)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero adapters, so they take part in every number below
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model, tok


def _examples(n, seed=0, vocab=400):
    """Examples of spread lengths (12..90 tokens), the first third a prompt without labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(12, 91, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * (length // 3) + ids[length // 3 :]))
    return out


def _text_rows(n, seed=1, vocab=400):
    """Token-block rows (every token supervised) of spread lengths, as stdlib-source data gives."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (int(torch.randint(8, 61, (1,), generator=g)),),
                                        generator=g).tolist()} for _ in range(n)]


def _per_example_losses(model, batch) -> dict[int, float]:
    base = model.get_base_model()
    hidden = base.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.sup_index)
    nll = F.cross_entropy(base.get_output_embeddings()(hidden).float(), batch.sup_targets, reduction="none")
    owner = torch.tensor(batch.sup_owner)
    return {i: float(nll[owner == i].mean()) for i in sorted(set(batch.sup_owner))}


def test_pack_rows_fills_rows_within_capacity_and_places_each_example_once():
    lengths = [30, 5, 17, 40, 12, 8, 25, 3]
    rows = pack_rows(lengths, 48)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 48 for r in rows)
    assert len(rows) == 3 < len(lengths)  # 140 tokens: three rows of 48 is the fewest possible
    assert pack_rows(lengths, 48) == rows
    with pytest.raises(ValueError, match="finetune.packing"):
        pack_rows([50], 48)


def test_padded_layout_is_collate_with_host_side_supervision(tiny_model_dir):
    _, tok = load_model(tiny_model_dir)
    examples = _examples(5)
    ids, mask, labels = collate(examples, tok.pad_token_id)
    batch = layout_batch(examples, tok.pad_token_id)
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)
    assert batch.position_ids is None
    keep = labels[:, 1:] != IGNORE
    # The host-side index selects exactly the positions boolean indexing selects, in the same order.
    assert torch.equal(labels[:, 1:].flatten()[batch.sup_index], labels[:, 1:][keep])
    assert batch.n_supervised == int(keep.sum()) == sum(e.n_supervised for e in examples)
    assert batch.n_tokens == int(mask.sum())
    bucketed = layout_batch(examples, tok.pad_token_id, pad_to_multiple=16)
    assert bucketed.input_ids.shape[1] % 16 == 0 and bucketed.input_ids.shape[1] >= ids.shape[1]


def test_packed_batch_gives_the_same_per_example_losses_as_the_padded_one(tiny_model_dir):
    model, tok = _adapted(tiny_model_dir)
    model.eval()
    examples = _examples(8)
    cap = 2 * max(len(e.input_ids) for e in examples)
    padded = layout_batch(examples, tok.pad_token_id)
    packed = layout_batch(examples, tok.pad_token_id, packing=True, row_capacity=cap)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # several examples share a row
    assert packed.attention_mask is None and packed.n_supervised == padded.n_supervised
    with torch.no_grad():
        a, b = _per_example_losses(model, padded), _per_example_losses(model, packed)
        assert a.keys() == b.keys() == set(range(len(examples)))
        for i in a:
            assert b[i] == pytest.approx(a[i], rel=1e-5, abs=1e-6), f"example {i}"
        # The mean loss of the step is the same too (the same examples, the same supervised tokens).
        la, _ = causal_lm_loss(model, padded.input_ids, padded.attention_mask, padded.labels, True,
                               supervised=(padded.sup_index, padded.sup_targets, padded.n_supervised))
        lb, _ = causal_lm_loss(model, packed.input_ids, packed.attention_mask, packed.labels, True,
                               position_ids=packed.position_ids,
                               supervised=(packed.sup_index, packed.sup_targets, packed.n_supervised))
        assert float(lb) == pytest.approx(float(la), rel=1e-5)
        # Control: the same packed rows with positions that do not restart let examples attend to
        # their row neighbours, and the later examples' losses change.
        leaky = copy.copy(packed)
        leaky.position_ids = torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)
        c = _per_example_losses(model, leaky)
    later = [i for r in packed.rows for i in r[1:]]
    exact = max(abs(b[i] - a[i]) for i in a)
    assert later and max(abs(c[i] - a[i]) for i in later) > 100 * max(exact, 1e-7)


def test_plain_cross_entropy_is_the_fallback_on_cpu_and_equals_transformers_loss(tiny_model_dir):
    fn, name = select_cross_entropy("cpu", fused=True)
    assert fn is plain_linear_cross_entropy and name == "plain"
    assert select_cross_entropy("cpu", fused=False)[1] == "plain"
    model, tok = _adapted(tiny_model_dir)
    examples = _examples(4)
    ids, mask, labels = collate(examples, tok.pad_token_id)
    batch = layout_batch(examples, tok.pad_token_id)
    with torch.no_grad():
        ours, n = causal_lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, True,
                                 supervised=(batch.sup_index, batch.sup_targets, batch.n_supervised),
                                 cross_entropy=fn)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert n == batch.n_supervised
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's fused kernel runs on CUDA only")
def test_fused_cross_entropy_agrees_with_the_plain_path():
    pytest.importorskip("liger_kernel")
    fused, name = select_cross_entropy("cuda", fused=True)
    assert name == "liger"
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        hidden = torch.randn(300, 64, device="cuda", generator=g).to(dtype).requires_grad_(True)
        weight = (torch.randn(1000, 64, device="cuda", generator=g) * 0.1).to(dtype)
        targets = torch.randint(0, 1000, (300,), device="cuda", generator=g)
        losses, grads = [], []
        for fn in (plain_linear_cross_entropy, fused):
            hidden.grad = None
            loss = fn(hidden, weight, None, targets)
            loss.backward()
            losses.append(float(loss))
            grads.append(hidden.grad.float().clone())
        assert losses[1] == pytest.approx(losses[0], rel=rel)
        assert torch.allclose(grads[1], grads[0], rtol=rel * 10, atol=1e-3)


def test_bf16_autocast_runs_adapters_in_bf16_and_stays_close_to_fp32(tiny_model_dir):
    model, tok = _adapted(tiny_model_dir)
    batch = layout_batch(_examples(4), tok.pad_token_id)
    sup = (batch.sup_index, batch.sup_targets, batch.n_supervised)
    ref, _ = causal_lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, True, supervised=sup)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = causal_lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, True, supervised=sup)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=2e-2)
    for n, p in model.named_parameters():
        if p.requires_grad:  # master weights and their gradients stay fp32
            assert p.dtype == p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
            cos = F.cosine_similarity(p.grad.flatten(), ref_grads[n].flatten(), dim=0)
            assert cos > 0.95, n

    # On a bf16 base, peft upcasts each adapter's input to fp32 unless the step switches that off.
    seen = {}
    for options in (StepOptions(), StepOptions(autocast=True)):
        bf16, _ = _adapted(tiny_model_dir, dtype="bfloat16")
        prepare_model(bf16, options)
        lora_a = bf16.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"]
        assert lora_a.weight.dtype == torch.float32
        hook = lora_a.register_forward_pre_hook(lambda m, args, o=options: seen.__setitem__(o.autocast, args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=options.autocast):
            bf16(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hook.remove()
    assert seen == {False: torch.float32, True: torch.bfloat16}


def _log(run_dir):
    with open(run_dir / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


def test_deferred_sync_writes_the_same_train_log_as_syncing_every_step(tiny_model_dir, instruct_rows, tmp_path):
    rows = instruct_rows["train"]
    every = _log_after(train_run(tiny_run_spec(sync_every=1), tiny_model_dir, rows, tmp_path / "a", progress=False), tmp_path / "a")
    # Only the last step and the probe sync: eight steps' metrics wait on the device.
    deferred = _log_after(train_run(tiny_run_spec(sync_every=100, resume_every=100, checkpoints=[8]), tiny_model_dir, rows,
                                    tmp_path / "b", progress=False), tmp_path / "b")
    assert len(every) == len(deferred) == 9
    timing = {"seconds", "tokens_per_s"}
    for a, b in zip(every, deferred):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert float(b["seconds"]) > 0


def _log_after(summary, run_dir):
    assert summary["steps_done"] == 8
    return _log(run_dir)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    grads = {}
    for ckpt in (False, True):
        model, tok = _adapted(tiny_model_dir)
        prepare_model(model, StepOptions(gradient_checkpointing=ckpt))
        model.train()
        batch = layout_batch(_examples(4), tok.pad_token_id)
        loss, _ = causal_lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, True,
                                 supervised=(batch.sup_index, batch.sup_targets, batch.n_supervised))
        loss.backward()
        grads[ckpt] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    assert torch.allclose(grads[True], grads[False], rtol=1e-5, atol=1e-8)


def test_optimizer_is_foreach_on_cpu_and_updates_like_the_default():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fast = make_optimizer(params, 1e-2, device="cpu")
    slow = make_optimizer(twins, 1e-2, device="cpu", fused=False)
    assert fast.defaults["foreach"] is True and not fast.defaults.get("fused")
    for _ in range(3):
        for a, b in zip(params, twins):
            a.grad = torch.sin(a.detach())
            b.grad = torch.sin(b.detach())
        fast.step()
        slow.step()
    for a, b in zip(params, twins):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_step_runner_defers_nonfinite_losses_to_the_flush(tiny_model_dir):
    model, tok = _adapted(tiny_model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    calls = []

    def loss_fn(*args, **kwargs):
        loss, n = causal_lm_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), n

    runner = StepRunner(model, make_optimizer(params, 1e-3), params, StepOptions(), "cpu", loss_fn=loss_fn)
    examples = _examples(6)
    for step in (1, 2, 3):
        runner.run(runner.layout(examples[2 * step - 2 : 2 * step], tok.pad_token_id), step)
    out = runner.flush()
    assert [m["step"] for m in out] == [1, 2, 3]
    assert out[0]["loss"] > 0 and out[1]["loss"] != out[1]["loss"]  # NaN reported at its own step
    assert runner.flush() == []


def _gpu_preset_spec(packing: bool, compile: bool, **kw) -> RunSpec:
    from conftest import REPO

    from repro.config import load_config

    cfg = load_config(REPO / "presets/gpu.yaml")
    assert cfg["dtype"] == "bfloat16" and cfg["finetune"]["autocast"] and cfg["finetune"]["compile"]
    cfg["device"] = "cpu"  # everything else as the preset sets it
    cfg["finetune"].update(max_steps=4, batch_size=4, max_length=64, threads=1, resume_every=2, packing=packing,
                           compile=compile, **kw)
    return RunSpec.from_config(cfg, "stdlib-instruct", "rslora", 8, 1e-3, 0)


def _check_gpu_preset_run(spec, tiny_model_dir, instruct_rows, run_dir):
    from safetensors.torch import load_file

    rows = instruct_rows["train"] + _text_rows(48)
    summary = train_run(spec, tiny_model_dir, rows, run_dir, progress=False)
    log = _log(run_dir)
    assert [int(r["step"]) for r in log] == list(range(1, 6))
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) and float(r["grad_norm"]) > 0 for r in log)
    assert summary["dtype"] == "bfloat16" and summary["bf16_autocast"] is True and summary["cross_entropy"] == "plain"
    first = load_file(run_dir / summary["checkpoints"]["0"] / "adapter_model.safetensors")
    last = load_file(run_dir / summary["checkpoints"]["4"] / "adapter_model.safetensors")
    # fp32 master weights on a bf16 base, and they trained.
    assert {t.dtype for t in last.values()} == {torch.float32}
    assert any(not torch.equal(first[k], last[k]) for k in first)
    return log


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_gpu_preset_step_settings_train_on_cpu(tiny_model_dir, instruct_rows, tmp_path, packing):
    spec = _gpu_preset_spec(packing, compile=False)
    assert spec.step.pad_to_multiple == 64 and spec.sync_every == 64 and spec.step.fused_cross_entropy
    _check_gpu_preset_run(spec, tiny_model_dir, instruct_rows, tmp_path / "run")


@pytest.mark.slow
def test_gpu_preset_step_settings_train_on_cpu_compiled(tiny_model_dir, instruct_rows, tmp_path):
    # The graphs the CUDA presets compile (decoder layers with LoRA, bf16 autocast, checkpointing,
    # dynamic shapes), captured forward and backward. aot_eager runs them with eager kernels: on CUDA
    # inductor would generate Triton kernels, which a CPU cannot run; the C++ kernels it generates for
    # a CPU instead take gcc about a minute and a half on two cores from a cold cache, and show nothing
    # about the GPU path.
    from torch._dynamo.utils import counters

    counters.clear()
    spec = _gpu_preset_spec(True, compile=True, gradient_checkpointing=True, compile_backend="aot_eager")
    assert spec.step_options().compile_backend == "aot_eager"
    log = _check_gpu_preset_run(spec, tiny_model_dir, instruct_rows, tmp_path / "compiled")
    # Dynamo traced the layers into graphs without falling back to eager Python.
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    assert counters["aot_autograd"]["total"] >= 1
    eager = _check_gpu_preset_run(_gpu_preset_spec(True, compile=False, gradient_checkpointing=True),
                                  tiny_model_dir, instruct_rows, tmp_path / "eager")
    # Compiled layers compute the same step as eager ones (bf16: up to rounding).
    for a, b in zip(log, eager):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=3e-2)


def test_autocast_auto_follows_the_cpu_flags_and_the_run_records_what_it_used(tmp_path, tiny_model_dir,
                                                                              instruct_rows):
    from repro.lm.step import native_bf16, resolve_autocast

    with_bf16, without = tmp_path / "zen4", tmp_path / "old"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert native_bf16("cpu", str(with_bf16)) and not native_bf16("cpu", str(without))
    assert not native_bf16("cpu", str(tmp_path / "no-such-file"))
    assert resolve_autocast(True, "cpu") is True and resolve_autocast(False, "cpu") is False
    assert resolve_autocast("auto", "cpu") == native_bf16("cpu")
    with pytest.raises(ValueError, match="finetune.autocast"):
        resolve_autocast("sometimes", "cpu")

    spec = tiny_run_spec(max_steps=2, autocast="auto")
    summary = train_run(spec, tiny_model_dir, instruct_rows["train"], tmp_path / "run", progress=False)
    assert summary["autocast"] == "auto" and summary["bf16_autocast"] is native_bf16("cpu")
