"""The previous forgetting evaluation, checkpoint after checkpoint: the reference that the one-pass
evaluation (``repro.lm.forgetting.evaluate_run``) is tested against and that
``benchmarks/lm_speed.py`` times as its baseline.

Per checkpoint, the base distribution is read from a whole-corpus cache when it fits in
``max_cache_gb`` and recomputed per batch otherwise: two forwards per batch and checkpoint without
the cache. No pipeline step runs it, so it lives with the tests; the benchmark puts tests/ on its path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from repro.lm.adapters import load_adapter_weights
from repro.lm.forgetting import (
    ForgettingCorpus,
    _heldout_examples,
    _load_peft,
    _read_run,
    _row,
    _write_csv,
    base_distribution,
    cross_entropy_to,
    heldout_loss,
)


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


class ReferenceCorpus(ForgettingCorpus):
    """One forgetting corpus with the base model's distribution (cached or recomputed)."""

    def __init__(self, name: str, rows: list[dict], tokenizer, batch_size: int):
        super().__init__(name, rows, tokenizer, batch_size)
        self.cache: list | None = None

    def prepare(self, model, max_cache_gb: float, vocab_size: int) -> None:
        """Cache the whole corpus's base distribution when it fits in max_cache_gb."""
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
        """L_f of the model's active adapter (two forwards per batch without a cache)."""
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


def evaluate_per_checkpoint(
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
    """The previous evaluation of a run: same arguments and eval.csv as ``evaluate_run``."""
    from tqdm.auto import tqdm

    run_dir, summary, checkpoints, _ = _read_run(summary_path)
    model, tokenizer = _load_peft(model_dir, checkpoints[min(checkpoints)], device, dtype, threads)
    vocab = model.get_base_model().get_output_embeddings().weight.shape[0]
    corpora = [ReferenceCorpus(name, rows, tokenizer, batch_size) for name, rows in forgetting.items()]
    for corpus in corpora:
        corpus.prepare(model, max_cache_gb, vocab)
    heldout = _heldout_examples(heldout_rows, tokenizer, summary)

    rows = []
    for step in tqdm(sorted(checkpoints), desc=f"evaluating {run_dir.name}", disable=not progress):
        load_adapter_weights(model, checkpoints[step])
        loss_ft, n_ft = heldout_loss(model, heldout, tokenizer.pad_token_id, batch_size)
        rows.append(_row(step, loss_ft, n_ft, [(c.name, c.evaluate(model)) for c in corpora]))
    _write_csv(rows, out_csv)
    return rows
