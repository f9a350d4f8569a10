"""Graphs of the compiled training step, on CPU: one dynamo graph serves every length bucket and batch
layout the pipeline produces (recompiles would eat the limit the layers share and then run them
eagerly), the settings that ensure it are each needed (controls), the compiled step computes what
the uncompiled one computes, and reaching the recompile limit is an error naming its cause.

dynamo's "eager" backend checks the guards and graphs in about a second a graph; "aot_eager" also
traces the backward (whose shape guards join the forward's) and is used where the numbers matter."""

from __future__ import annotations

import pytest
import torch

from repro.lm import step
from repro.lm.adapters import build_adapter_model
from repro.lm.step import (
    CompileWatch,
    RecompileLimitError,
    StepOptions,
    StepRunner,
    causal_lm_loss,
    compile_decoder_layers,
    layout_batch,
    prepare_model,
)
from repro.lm.tokens import IGNORE, Example

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PAD = 0
# A tiny Llama whose head size is 64, the CUDA presets' bucket: duck sizing gave the width-64 bucket
# and the head size (the rotary cos/sin's last dim) one symbol.
TINY64 = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)

# Example lengths of each batch. Padded: three rows, widths 64 (the head size), 128 and 192, batches
# with padding and without (every example as long as the bucket).
PADDED = [[40, 64, 20], [64, 64, 64], [100, 30, 5], [128, 128, 128], [192, 10, 10]]
# One example per batch: every batch is one row.
SINGLE = [[64], [100], [192]]
# Packed into rows of at most 192 tokens: all but [192, 5] would fit in one row.
PACKED = [[40, 64, 20], [64, 30], [100, 30, 5], [150, 30, 7], [192, 5], [20, 30]]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Every decoder layer of every model shares one code object and so one dynamo cache.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(pad_token_id=PAD, tie_word_embeddings=True, **TINY64))
    model = build_adapter_model(base, "rslora", 4, 16, 0.0, TARGETS)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero adapters, so they take part in every number below
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.train()
    assert model.get_base_model().config.head_dim == 64
    return model


def _batches(lengths: list[list[int]], seed: int = 0) -> list[list[Example]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch in lengths:
        examples = []
        for n in batch:
            ids = torch.randint(3, TINY64["vocab_size"], (n,), generator=g).tolist()
            examples.append(Example(ids, [IGNORE] * (n // 3) + ids[n // 3:]))
        out.append(examples)
    return out


class GradRecorder:
    """An optimizer that keeps each step's gradients and never changes the weights."""

    def __init__(self, params):
        self.params, self.grads = params, []

    def step(self):
        self.grads.append([p.grad.detach().clone() for p in self.params])

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _run(options: StepOptions, lengths, *, model=None, before_steps=None, layout=None):
    """Run the step over the batches; (watch, runner, batches run, per-step metrics, per-step gradients)."""
    model = model or _model()
    with CompileWatch() as watch:
        prepare_model(model, options)
        if before_steps:
            before_steps(model)
        params = [p for p in model.parameters() if p.requires_grad]
        recorder = GradRecorder(params)
        runner = StepRunner(model, recorder, params, options, "cpu", row_capacity=192)
        batches = [(layout or runner.layout)(examples, PAD) for examples in _batches(lengths)]
        for i, batch in enumerate(batches):
            runner.run(batch, step=i)
        metrics = runner.flush()
    return watch, runner, batches, metrics, recorder.grads


def _compiled(backend="eager", **kw) -> StepOptions:
    return StepOptions(compile=True, compile_backend=backend, pad_to_multiple=64, **kw)


def _one_graph(watch: CompileWatch) -> None:
    assert watch.recompiles == 0 and watch.failed == 0 and watch.graph_breaks == 0, watch.describe()
    assert list(watch.compiles_per_code.values()) == [1] and watch.graphs == 1, watch.summary()


def test_one_graph_serves_every_bucket_and_the_compiled_step_computes_the_eager_one():
    watch, _, batches, metrics, grads = _run(_compiled("aot_eager"), PADDED)
    assert sorted({tuple(b.input_ids.shape) for b in batches}) == [(3, 64), (3, 128), (3, 192)]
    unpadded = [bool(b.attention_mask.all()) for b in batches]
    assert any(unpadded) and not all(unpadded)
    _one_graph(watch)
    # The reference: the uncompiled model without input grads, through transformers' own masks (the 2-D
    # padding mask), as the step computed before.
    reference = _model()
    params = [p for p in reference.parameters() if p.requires_grad]
    for batch, m, g in zip(batches, metrics, grads):
        loss, _ = causal_lm_loss(reference, batch.input_ids, batch.attention_mask, batch.labels, True,
                                 supervised=(batch.sup_index, batch.sup_targets, batch.n_supervised))
        loss.backward()
        assert m["loss"] == pytest.approx(loss.item(), rel=1e-5)
        for p, got in zip(params, g):
            assert torch.allclose(got, p.grad, rtol=1e-4, atol=1e-6)
            p.grad = None


def test_input_grads_leave_the_loss_and_adapter_gradients_as_they_were():
    batch = layout_batch(_batches(PADDED[:1])[0], PAD, pad_to_multiple=64)
    out = []
    for input_grads in (False, True):
        model = _model()
        if input_grads:
            model.get_base_model().enable_input_require_grads()
        loss, _ = causal_lm_loss(model, batch.input_ids, batch.attention_mask, batch.labels, True,
                                 supervised=(batch.sup_index, batch.sup_targets, batch.n_supervised))
        loss.backward()
        out.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(out[0][1], out[1][1]))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_dense_mask_is_the_one_transformers_builds(implementation):
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask

    from repro.lm.step import dense_attention_mask

    config = LlamaConfig(**TINY64)
    config._attn_implementation = implementation
    for lengths, packing in [([40, 64, 20], False), ([64, 64, 64], False), ([40, 64, 20, 30, 9], True)]:
        batch = layout_batch(_batches([lengths])[0], PAD, packing, 64, 192)
        embeds = torch.zeros(*batch.input_ids.shape, 8)
        theirs = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                    cache=None, position_ids=batch.position_ids)
        ours = dense_attention_mask(batch.input_ids, batch.attention_mask, batch.position_ids, implementation,
                                    embeds.dtype)
        if theirs is None:  # sdpa without padding: is_causal instead of a mask
            assert implementation == "sdpa" and bool(batch.attention_mask.all())
            theirs = torch.ones(64, 64, dtype=torch.bool).tril().expand(3, 1, 64, 64)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs.expand_as(ours)), (lengths, packing)


def test_one_row_batches_and_packed_rows_compile_one_graph():
    watch, *_ = _run(_compiled(), SINGLE)
    _one_graph(watch)
    torch._dynamo.reset()
    watch, _, batches, *_ = _run(_compiled(packing=True), PACKED)
    # Packed batches of several examples take at least two rows, though some fit in one.
    assert {b.input_ids.shape[0] for b in batches} == {2} and batches[-1].input_ids.shape == (2, 64)
    assert all(b.position_ids is not None and b.attention_mask is None for b in batches)
    _one_graph(watch)


def _control(options: StepOptions, lengths, reason: str, **kw) -> CompileWatch:
    """A run with one setting as it was before: more than one graph, a recompilation for ``reason``."""
    watch, *_ = _run(options, lengths, **kw)
    assert watch.graphs > 1 and watch.recompiles >= 1, watch.summary()
    assert any(reason in r for r in watch.reasons), watch.reasons
    return watch


def test_each_setting_is_needed_for_one_graph(monkeypatch):
    # Layer 0's input does not require grad unless the embeddings' output does.
    _control(_compiled(), PADDED[:2], "requires_grad mismatch",
             before_steps=lambda m: m.get_base_model().disable_input_require_grads())
    torch._dynamo.reset()
    # Duck sizing: the width-64 bucket shares the head size's symbol, so the graph holds for width 64 only.
    with monkeypatch.context() as m:
        m.setitem(step.FX_SETTINGS, "use_duck_shape", True)
        _control(_compiled(), [[40, 64, 20], [100, 30, 5]], "size mismatch at index 1")
    torch._dynamo.reset()
    # transformers' own mask handling: None for a batch without padding, a tensor otherwise.
    with monkeypatch.context() as m:
        m.setattr(StepRunner, "attention_inputs", lambda self, b: (b.attention_mask, b.position_ids))
        _control(_compiled(), [[40, 64, 20], [64, 64, 64]], "attention_mask")
    torch._dynamo.reset()
    # A packed batch in one row beside batches of two: dynamo specialises the batch dim of 1.
    _control(_compiled(packing=True), [[150, 100, 30], [64, 30]], "2 <= ",
             layout=lambda examples, pad: layout_batch(examples, pad, True, 64, 192))


def test_the_old_compilation_runs_out_of_graphs():
    # The layers compiled as before (no input grads, duck shapes, transformers' masks): a graph for
    # nearly every batch, until dynamo's recompile limit, after which it ran the layers eagerly,
    # silently. A limit of 4 here (8 by default) keeps the test short.
    model = _model()
    for layer in model.get_base_model().get_decoder().layers:
        layer.compile(dynamic=True, backend="eager")
    batches = [layout_batch(b, PAD, pad_to_multiple=64) for b in _batches(PADDED)]
    with CompileWatch() as watch, torch._dynamo.config.patch(recompile_limit=4):
        for b in batches:
            loss, _ = causal_lm_loss(model, b.input_ids, b.attention_mask, b.labels, True,
                                     supervised=(b.sup_index, b.sup_targets, b.n_supervised))
            loss.backward()
    assert watch.graphs == 4 and watch.failed >= 1, watch.summary()
    assert any("requires_grad" in r for r in watch.reasons), watch.reasons


def test_reaching_the_recompile_limit_is_an_error_naming_the_cause():
    model = _model()
    compile_decoder_layers(model, "eager", recompile_limit=1)
    options = _compiled()
    params = [p for p in model.parameters() if p.requires_grad]
    runner = StepRunner(model, GradRecorder(params), params, options, "cpu")
    three, one = _batches([[40, 64, 20], [64]])
    runner.run(runner.layout(three, PAD))
    # A one-row batch beside three-row ones: a second graph, over a limit of one.
    with pytest.raises(RecompileLimitError, match=r"(?s)recompile limit.*\(1, 64\).*2 <= "):
        runner.run(runner.layout(one, PAD), step=2)
    # The watch saw the first graph and the failed second compilation.
    assert runner.compile_watch.graphs == 1 and runner.compile_watch.failed == 1
    with pytest.raises(RecompileLimitError, match="1 failed"):
        runner.compile_watch.check()
