"""Forgetting L_f and fine-tuning loss L_ft at every checkpoint of a run.

L_f = mean over positions of -sum_v p_base(v|ctx) log p_ft(v|ctx): the cross-entropy of the fine-tuned
model against the base model's full next-token distribution (not the ground-truth tokens). It splits
exactly as L_f = H(p_base) + KL(p_base || p_ft); all three are reported, each computed directly.

The base model is loaded once per job; its distribution on each forgetting corpus is computed once
(with the adapter disabled) and kept in memory when it fits in ``max_cache_gb``, otherwise recomputed
batch by batch. Adapters are swapped in place between checkpoints.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .tokens import collate, encode_rows


def soft_cross_entropy(base_logprobs, ft_logprobs, mask=None) -> dict[str, float]:
    """Sums (not means) of cross-entropy, base entropy and KL over the positions selected by mask.

    Inputs are log-probabilities of shape (..., V). Returned with the position count so that callers
    can average over several batches exactly. The reference definition; the evaluation loop computes
    the same quantities from logits without materialising log-probabilities (tested against this).
    """
    p = base_logprobs.exp()
    ce = -(p * ft_logprobs).sum(-1)
    ent = -(p * base_logprobs).sum(-1)
    kl = (p * (base_logprobs - ft_logprobs)).sum(-1)
    if mask is not None:
        ce, ent, kl = ce[mask], ent[mask], kl[mask]
    return {
        "ce": float(ce.double().sum()),
        "entropy": float(ent.double().sum()),
        "kl": float(kl.double().sum()),
        "n": int(torch.as_tensor(ce).numel()),
    }


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def base_distribution(logits):
    """Base-model probabilities and per-position entropy from its logits.

    H = lse(z) - sum_v p_v z_v, the same expression as the cross-entropy below: with identical logits
    (an untrained adapter) the two agree bit for bit, so KL is exactly 0 at step 0.
    """
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1))
    return probs, lse - _dot(probs, logits)


def cross_entropy_to(probs, logits):
    """-sum_v p_v log q_v for q = softmax(logits), as lse(z) - sum_v p_v z_v (no log-softmax tensor)."""
    return torch.logsumexp(logits, dim=-1) - _dot(probs, logits)


def _dot(a, b):
    # A batched dot product over the vocabulary: one pass over both tensors, no temporary.
    return torch.einsum("...v,...v->...", a, b)


class ForgettingCorpus:
    """One forgetting corpus with the base model's distribution (cached or recomputed)."""

    def __init__(self, name: str, rows: list[dict], tokenizer, batch_size: int):
        lengths = {len(r["input_ids"]) for r in rows}
        self.name = name
        self.examples = encode_rows(rows, tokenizer, max(lengths), what=f"forgetting corpus {name}")
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id
        self.cache: list | None = None

    def batches(self, device):
        for lo in range(0, len(self.examples), self.batch_size):
            ids, mask, _ = collate(self.examples[lo : lo + self.batch_size], self.pad_id)
            yield ids.to(device), mask.to(device)

    def n_positions(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    def prepare(self, model, max_cache_gb: float, vocab_size: int) -> None:
        need_gb = self.n_positions() * vocab_size * 4 / 1e9
        if need_gb > max_cache_gb:
            self.cache = None
            return
        device = next(model.parameters()).device
        cache = []
        with torch.inference_mode(), model.disable_adapter():
            for ids, mask in self.batches(device):
                cache.append(base_distribution(_logits(model, ids, mask)))
        self.cache = cache

    def evaluate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        ce_sum = ent_sum = kl_sum = 0.0
        n = 0
        with torch.inference_mode():
            for b, (ids, mask) in enumerate(self.batches(device)):
                if self.cache is not None:
                    probs, entropy = self.cache[b]
                else:
                    with model.disable_adapter():
                        probs, entropy = base_distribution(_logits(model, ids, mask))
                ce = cross_entropy_to(probs, _logits(model, ids, mask))
                keep = mask.bool()
                ce, entropy = ce[keep].double(), entropy[keep].double()
                ce_sum += float(ce.sum())
                ent_sum += float(entropy.sum())
                kl_sum += float((ce - entropy).sum())
                n += int(keep.sum())
        return {
            "loss_forget": ce_sum / n,
            "base_entropy": ent_sum / n,
            "kl_forget": kl_sum / n,
            "forget_positions": n,
        }


def heldout_loss(model, examples, pad_id: int, batch_size: int) -> tuple[float, int]:
    """Token-weighted mean next-token cross-entropy over supervised tokens of held-out examples."""
    from .finetune import causal_lm_loss

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(examples), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(examples[lo : lo + batch_size], pad_id))
            loss, n = causal_lm_loss(model, ids, mask, labels, fast=True)
            total += float(loss) * n
            count += n
    return total / count, count


def evaluate_run(
    summary_path: Path,
    model_dir: Path,
    heldout_rows: list[dict],
    forgetting: dict[str, list[dict]],
    out_csv: Path,
    batch_size: int = 8,
    max_cache_gb: float = 4.0,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int = 2,
    progress: bool = True,
) -> list[dict]:
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from .models import load_model

    torch.set_num_threads(threads)
    summary_path = Path(summary_path)
    run_dir = summary_path.parent
    summary = json.loads(summary_path.read_text())
    checkpoints = {int(s): run_dir / p for s, p in summary["checkpoints"].items()}
    missing = [str(p) for p in checkpoints.values() if not (p / "adapter_model.safetensors").exists()]
    if missing:
        raise FileNotFoundError(f"{summary_path}: checkpoints listed but missing: {', '.join(missing)}")

    base, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    first = min(checkpoints)
    model = PeftModel.from_pretrained(base, checkpoints[first], is_trainable=False)
    model.eval()
    vocab = model.get_base_model().get_output_embeddings().weight.shape[0]
    corpora = [ForgettingCorpus(name, rows, tokenizer, batch_size) for name, rows in forgetting.items()]
    for corpus in corpora:
        corpus.prepare(model, max_cache_gb, vocab)
    heldout = encode_rows(heldout_rows, tokenizer, summary["max_length"], what="held-out data")
    # The mean is order-free; batching similar lengths together only removes padding work.
    heldout.sort(key=lambda e: len(e.input_ids))

    rows = []
    dev = next(model.parameters()).device
    for step in tqdm(sorted(checkpoints), desc=f"evaluating {run_dir.name}", disable=not progress):
        weights = load_file(checkpoints[step] / "adapter_model.safetensors", device=str(dev))
        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"{checkpoints[step]}: adapter keys do not match the model: {unexpected[:3]}")
        loss_ft, n_ft = heldout_loss(model, heldout, tokenizer.pad_token_id, batch_size)
        row = {"step": step, "loss_ft": loss_ft, "ft_tokens": n_ft}
        for i, corpus in enumerate(corpora):
            res = corpus.evaluate(model)
            for key, value in res.items():
                row[f"{key}__{corpus.name}"] = value
                if i == 0:
                    row[key] = value
        rows.append(row)
    out_csv = Path(out_csv)
    tmp = out_csv.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_csv)
    return rows
