"""Forgetting metric: the definition on a toy distribution, the step-0 identity L_f = H, KL = 0, and the
one-pass evaluation against the previous checkpoint-by-checkpoint path."""

from __future__ import annotations

import math

import pytest
import torch
from reference_forgetting import evaluate_per_checkpoint

from repro.lm.finetune import RunSpec, train_run
from repro.lm.forgetting import evaluate_run, plan_sweeps, soft_cross_entropy


def test_soft_cross_entropy_on_hand_computed_distribution():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    res = soft_cross_entropy(p.log(), q.log())
    ce0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    ce1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h0, h1 = math.log(2), ce1
    assert res["n"] == 2
    assert res["ce"] == pytest.approx(ce0 + ce1, rel=1e-6)
    assert res["entropy"] == pytest.approx(h0 + h1, rel=1e-6)
    assert res["kl"] == pytest.approx((ce0 - h0) + 0.0, abs=1e-6)
    # Against the ground-truth token instead of the distribution the number would differ.
    assert res["ce"] != pytest.approx(-(math.log(0.25) + math.log(0.9)), rel=1e-3)


def test_soft_cross_entropy_respects_mask():
    p = torch.log_softmax(torch.randn(2, 3, 5), -1)
    q = torch.log_softmax(torch.randn(2, 3, 5), -1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    res = soft_cross_entropy(p, q, mask)
    assert res["n"] == 3
    manual = -(p.exp() * q).sum(-1)[mask].sum().item()
    assert res["ce"] == pytest.approx(manual, rel=1e-6)


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, instruct_rows, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    spec = RunSpec(model="tiny", dataset="d", method="rslora", rank=8, lr=3e-3, seed=0, max_steps=4,
                   batch_size=2, max_length=96, threads=1)
    train_run(spec, tiny_model_dir, instruct_rows["train"], run_dir, progress=False)
    return run_dir


def _corpus(tiny_model_dir):
    from repro.lm.data import build_pydoc_topics
    from repro.lm.models import load_model

    _, tok = load_model(tiny_model_dir)
    return build_pydoc_topics({"num_sequences": 3, "length": 24}, tok)


@pytest.mark.parametrize("cache_gb", [4.0, 0.0], ids=["cached-base", "recomputed-base"])
def test_step0_forgetting_equals_base_entropy_and_grows_after(trained_run, tiny_model_dir, instruct_rows, tmp_path, cache_gb):
    rows = evaluate_run(
        trained_run / "summary.json", tiny_model_dir, instruct_rows["heldout"],
        {"topics": _corpus(tiny_model_dir)}, tmp_path / "eval.csv", batch_size=2, max_cache_gb=cache_gb,
        threads=1, progress=False, cache=False,  # each path computed, not read from the run's cache
    )
    assert [r["step"] for r in rows] == [0, 1, 2, 4]
    step0 = rows[0]
    assert step0["kl_forget"] == pytest.approx(0.0, abs=1e-7)
    assert step0["loss_forget"] == pytest.approx(step0["base_entropy"], rel=1e-6)
    assert step0["forget_positions"] == 3 * 24
    for r in rows:
        assert r["base_entropy"] == pytest.approx(step0["base_entropy"], rel=1e-6)
        assert r["loss_forget"] == pytest.approx(r["base_entropy"] + r["kl_forget"], rel=1e-6)
    assert rows[-1]["kl_forget"] > 1e-6  # the adapter moved the model away from the base
    assert rows[-1]["loss_ft"] < step0["loss_ft"]  # and fine-tuning lowered the held-out loss


def test_logit_form_matches_the_reference_definition():
    from repro.lm.forgetting import base_distribution, cross_entropy_to

    g = torch.Generator().manual_seed(0)
    zb, zf = torch.randn(3, 7, 50, generator=g) * 3, torch.randn(3, 7, 50, generator=g) * 3
    ref = soft_cross_entropy(torch.log_softmax(zb, -1), torch.log_softmax(zf, -1))
    probs, entropy = base_distribution(zb)
    assert float(cross_entropy_to(probs, zf).double().sum()) == pytest.approx(ref["ce"], rel=1e-5)
    assert float(entropy.double().sum()) == pytest.approx(ref["entropy"], rel=1e-5)
    # Identical logits give exactly zero KL, not merely a small number.
    assert torch.equal(cross_entropy_to(probs, zb), entropy)


@pytest.mark.parametrize(
    "cache_gb,budget_gb,merge",
    [(4.0, None, False), (4.0, None, True), (0.0, None, True), (4.0, 1e-12, True)],
    ids=["peft-branch", "merged", "base-logits-recomputed-from-hidden", "one-checkpoint-per-sweep"],
)
def test_one_pass_equals_the_per_checkpoint_path(trained_run, tiny_model_dir, instruct_rows, tmp_path, cache_gb,
                                                 budget_gb, merge):
    from repro.lm.data import build_pydoc_topics
    from repro.lm.models import load_model

    _, tok = load_model(tiny_model_dir)
    # Two corpora, the second with a ragged last batch, so column layout and batch edges are both covered.
    forgetting = {"topics": _corpus(tiny_model_dir), "short": build_pydoc_topics({"num_sequences": 5, "length": 20}, tok)}
    common = dict(batch_size=2, threads=1, progress=False)
    # The reference is the old path where it costs two forwards per checkpoint: no base cache.
    ref = evaluate_per_checkpoint(trained_run / "summary.json", tiny_model_dir, instruct_rows["heldout"], forgetting,
                                  tmp_path / "ref.csv", max_cache_gb=0.0, **common)
    new = evaluate_run(trained_run / "summary.json", tiny_model_dir, instruct_rows["heldout"], forgetting,
                       tmp_path / "eval.csv", max_cache_gb=cache_gb, adapter_budget_gb=budget_gb,
                       merge_adapters=merge, cache=False, **common)
    # eval.csv keeps its format: same header, same column order, one row per checkpoint.
    assert (tmp_path / "eval.csv").read_text().splitlines()[0] == (tmp_path / "ref.csv").read_text().splitlines()[0]
    assert [r["step"] for r in new] == [r["step"] for r in ref] == [0, 1, 2, 4]
    for r, n in zip(ref, new):
        assert list(n) == list(r)
        for key, value in r.items():
            if isinstance(value, int):
                assert n[key] == value, key
            elif key.startswith("kl_forget"):
                # KL is a difference of two fp32 quantities of size L_f: its precision is relative to L_f.
                assert n[key] == pytest.approx(value, rel=1e-6, abs=1e-6 * r["loss_forget"]), key
            else:
                assert n[key] == pytest.approx(value, rel=1e-6), key
    assert new[0]["kl_forget"] == 0.0 and new[-1]["kl_forget"] > 1e-6


def test_one_pass_runs_the_base_once_per_batch(tiny_model_dir):
    from reference_forgetting import ReferenceCorpus

    from repro.lm.adapters import AdapterBank, build_adapter_model
    from repro.lm.forgetting import forgetting_one_pass
    from repro.lm.models import load_model

    base, tok = load_model(tiny_model_dir)
    model = build_adapter_model(base, "lora", 4, 8, 0.0, ["q_proj", "v_proj"]).eval()
    bank = AdapterBank(model)
    g = torch.Generator().manual_seed(0)
    for step in (0, 5, 9):
        bank.add(step, {k: torch.randn(t.shape, generator=g) * 0.1 for k, t in bank.targets.items()})
    assert bank.merge  # fp32 weights: merged by default
    corpus = ReferenceCorpus("c", _corpus(tiny_model_dir), tok, batch_size=2)  # 3 sequences: 2 batches
    calls = []
    model.get_base_model().get_decoder().register_forward_hook(lambda *a: calls.append(1))
    weights = {n: (p, p.detach().clone()) for n, p in model.named_parameters() if "base_layer" in n}
    res = forgetting_one_pass(model, [corpus], bank, [0, 5, 9], max_cache_gb=1.0)
    assert len(calls) == 2 * (1 + 3)  # per batch: one base forward, one per checkpoint
    # The merged weights were scratch: the model is left with its own base weights, untouched.
    assert all(p is weights[n][0] and torch.equal(p, weights[n][1])
               for n, p in model.named_parameters() if "base_layer" in n)
    # Each checkpoint's number is its own adapter's: the reference path on the same adapter agrees.
    bank.activate(5)
    assert res[5]["c"]["loss_forget"] == pytest.approx(corpus.evaluate(model)["loss_forget"], rel=1e-6)
    assert len({res[s]["c"]["kl_forget"] for s in res}) == 3


def test_a_zero_adapter_reuses_the_base_forward_with_the_same_numbers(tiny_model_dir):
    from repro.lm.adapters import AdapterBank, build_adapter_model
    from repro.lm.forgetting import ForgettingCorpus, forgetting_one_pass
    from repro.lm.models import load_model

    base, tok = load_model(tiny_model_dir)
    model = build_adapter_model(base, "lora", 4, 8, 0.0, ["q_proj", "v_proj"]).eval()
    bank = AdapterBank(model)
    g = torch.Generator().manual_seed(1)
    random = {k: torch.randn(t.shape, generator=g) * 0.1 for k, t in bank.targets.items()}
    bank.add(0, {k: (torch.zeros_like(t) if ".lora_B." in k else t) for k, t in random.items()})  # as LoRA starts
    bank.add(1, {k: (torch.zeros_like(t) if ".lora_A." in k else t) for k, t in random.items()})
    bank.add(2, random)
    assert [bank.is_base(s) for s in (0, 1, 2)] == [True, False, False]  # only the all-zero-B test is trusted
    corpus = ForgettingCorpus("c", _corpus(tiny_model_dir), tok, batch_size=2)  # 2 batches
    calls = []
    model.get_base_model().get_decoder().register_forward_hook(lambda *a: calls.append(1))
    res = forgetting_one_pass(model, [corpus], bank, [0, 1, 2], max_cache_gb=1.0)
    assert len(calls) == 2 * (1 + 2)  # step 0 runs no forward of its own
    assert res[0]["c"]["kl_forget"] == 0.0
    assert res[0]["c"]["loss_forget"] == res[0]["c"]["base_entropy"]
    # What the forward would have given: step 1's adapter also adds nothing (A = 0), and is run.
    assert res[1]["c"]["loss_forget"] == pytest.approx(res[0]["c"]["loss_forget"], rel=1e-12)
    assert res[2]["c"]["kl_forget"] > 1e-6


def test_adapter_bank_rejects_foreign_keys(tiny_model_dir):
    from repro.lm.adapters import AdapterBank, build_adapter_model
    from repro.lm.models import load_model

    base, _ = load_model(tiny_model_dir)
    bank = AdapterBank(build_adapter_model(base, "lora", 4, 8, 0.0, ["q_proj"]))
    weights = {k: torch.zeros(t.shape) for k, t in bank.targets.items()}
    weights.pop(next(iter(weights)))  # a missing key would silently keep the previous checkpoint's weights
    with pytest.raises(RuntimeError, match="missing"):
        bank.add(1, weights, source="ckpt")


def test_sweeps_hold_as_many_checkpoints_as_fit():
    steps = [0, 1, 2, 4, 8]
    assert plan_sweeps(steps, 100, float("inf")) == [steps]
    assert plan_sweeps(steps, 100, 250) == [[0, 1], [2, 4], [8]]
    assert plan_sweeps(steps, 100, 10) == [[0], [1], [2], [4], [8]]  # never fewer than one
