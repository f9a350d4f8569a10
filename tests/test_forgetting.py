"""Forgetting metric: the definition on a toy distribution and the step-0 identity L_f = H, KL = 0."""

from __future__ import annotations

import math

import pytest
import torch

from repro.lm.finetune import RunSpec, train_run
from repro.lm.forgetting import evaluate_run, soft_cross_entropy


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
        threads=1, progress=False,
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
