"""Forgetting L_f and fine-tuning loss L_ft at every checkpoint of a run.

L_f = mean over positions of -sum_v p_base(v|ctx) log p_ft(v|ctx): the cross-entropy of the fine-tuned
model against the base model's full next-token distribution (not the ground-truth tokens). It splits
exactly as L_f = H(p_base) + KL(p_base || p_ft); all three are reported, each computed directly.

One pass (``evaluate_run``): the base model is loaded once per job and every checkpoint's adapter is
loaded once onto the device (in several sweeps only when they do not all fit, see ``plan_sweeps``);
each batch of a forgetting corpus gets one forward with the adapters disabled, and that base
distribution serves every checkpoint, whose adapter is copied in place into the LoRA parameters
before its own forward. Nothing vocabulary-sized outlives a batch, so memory no longer grows with the
corpus, and a run with K checkpoints costs K + 1 forwards per batch where the previous path, without
its whole-corpus cache, cost 2K.

In fp32 each checkpoint's adapter is merged into a scratch copy of the weights for its forward (see
AdapterBank): L_f, H and L_ft then agree with peft's unmerged forward to ~1e-9 relative and KL to
~1e-8 absolute, the rounding of fp32 sums of size L_f; ``merge_adapters=False`` reproduces the
previous path bit for bit.

``evaluate.max_cache_gb`` bounds the base distribution kept for one batch (fp32, kept positions x
vocabulary). When a batch's exceeds it, only the base model's last hidden states are kept and the
output layer is reapplied for each checkpoint: no second decoder pass, identical numbers.

The previous path, checkpoint after checkpoint, is the reference the one-pass results and the
benchmark (benchmarks/lm_speed.py) are checked against; it lives beside the tests
(``tests/reference_forgetting.py``), since no pipeline step runs it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..faults import kill_point
from ..io import atomic_open
from .adapters import AdapterBank
from .tokens import collate, encode_rows

# Output-layer rows per vocabulary chunk: fp32 temporaries of a chunk stay near 256 MB whatever the
# vocabulary, while each chunk is still a large enough matmul to reach the device's GEMM speed.
CHUNK_ELEMENTS = 1 << 26


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


def base_probs(logits):
    """Base-model probabilities (fp32 logits in) and their log-normaliser."""
    lse = torch.logsumexp(logits, dim=-1)
    return (logits - lse.unsqueeze(-1)).exp_(), lse


def base_distribution(logits):
    """Base-model probabilities and per-position entropy from its logits.

    H = lse(z) - sum_v p_v z_v, the same expression as the cross-entropy below: with identical logits
    (an untrained adapter) the two agree bit for bit, so KL is exactly 0 at step 0.
    """
    probs, lse = base_probs(logits)
    return probs, lse - _dot(probs, logits)


def cross_entropy_to(probs, logits):
    """-sum_v p_v log q_v for q = softmax(logits), as lse(z) - sum_v p_v z_v (no log-softmax tensor)."""
    return torch.logsumexp(logits, dim=-1) - _dot(probs, logits)


def _dot(a, b):
    # A batched dot product over the vocabulary: one pass over both tensors, no temporary.
    return torch.einsum("...v,...v->...", a, b)


class ForgettingCorpus:
    """One forgetting corpus, tokenised and cut into batches."""

    def __init__(self, name: str, rows: list[dict], tokenizer, batch_size: int):
        lengths = {len(r["input_ids"]) for r in rows}
        self.name = name
        self.examples = encode_rows(rows, tokenizer, max(lengths), what=f"forgetting corpus {name}")
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id

    def batches(self, device):
        for lo in range(0, len(self.examples), self.batch_size):
            ids, mask, _ = collate(self.examples[lo : lo + self.batch_size], self.pad_id)
            yield ids.to(device), mask.to(device)

    def n_batches(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def n_positions(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def _hidden(model, ids, mask, keep):
    """Last hidden states at the kept positions, (n_kept, hidden)."""
    decoder = model.get_base_model().get_decoder()
    return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[keep]


def _chunks(n: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // vocab)
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def forgetting_one_pass(model, corpora, bank: AdapterBank, steps, max_cache_gb: float, tick=None) -> dict:
    """L_f, base entropy and KL of every checkpoint in ``steps`` (all held in ``bank``), one sweep per corpus.

    Per batch: the decoder runs once with adapters disabled, then once per checkpoint (not for a
    checkpoint whose adapter is still zero, as at step 0: that is the base forward again). The output
    layer runs chunk by chunk on the kept positions only, in the model's dtype; everything over the
    vocabulary is upcast per chunk and reduced in fp32, sums accumulate in fp64. Returns
    {step: {corpus name: {loss_forget, base_entropy, kl_forget, forget_positions}}}.
    """
    head = model.get_base_model().get_output_embeddings()
    vocab = head.weight.shape[0]
    device = head.weight.device
    out = {s: {} for s in steps}
    base_steps = {s for s in steps if bank.is_base(s)}
    with torch.inference_mode():
        for corpus in corpora:
            acc = torch.zeros(len(steps), 2, dtype=torch.float64, device=device)  # ce, kl per checkpoint
            ent_sum = torch.zeros((), dtype=torch.float64, device=device)
            n = 0
            for ids, mask in corpus.batches(device):
                keep = mask.bool()
                with bank.base():
                    h_base = _hidden(model, ids, mask, keep)
                n_kept = h_base.shape[0]
                n += n_kept
                chunks = _chunks(n_kept, vocab)
                keep_probs = n_kept * vocab * 4 <= max_cache_gb * 1e9
                probs, entropy = [], []
                for c in chunks:
                    p, ent = base_distribution(head(h_base[c]).float())
                    probs.append(p if keep_probs else None)
                    entropy.append(ent.double())
                    ent_sum += entropy[-1].sum()
                if tick:
                    tick(1)
                for i, step in enumerate(steps):
                    if step in base_steps:  # L_f = H(p_base) and KL = 0, exactly what a forward gives
                        acc[i, 0] += sum(ent.sum() for ent in entropy)
                        if tick:
                            tick(1)
                        continue
                    with bank.applied(step):
                        h_ft = _hidden(model, ids, mask, keep)
                    for c, p, ent in zip(chunks, probs, entropy):
                        if p is None:
                            p, _ = base_probs(head(h_base[c]).float())
                        ce = cross_entropy_to(p, head(h_ft[c]).float()).double()
                        acc[i, 0] += ce.sum()
                        acc[i, 1] += (ce - ent).sum()
                    if tick:
                        tick(1)
            ent_mean = float(ent_sum) / n
            for i, step in enumerate(steps):
                ce_sum, kl_sum = acc[i].tolist()
                out[step][corpus.name] = {
                    "loss_forget": ce_sum / n,
                    "base_entropy": ent_mean,
                    "kl_forget": kl_sum / n,
                    "forget_positions": n,
                }
    return out


def heldout_loss(model, examples, pad_id: int, batch_size: int, tick=None) -> tuple[float, int]:
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
            if tick:
                tick(1)
    return total / count, count


def _adapter_budget_bytes(device) -> float:
    """Memory the stored adapters of one sweep may take: half of what the device has free now."""
    if torch.device(device).type == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free / 2
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024 / 2
    except (OSError, KeyError, ValueError):
        return float("inf")


def plan_sweeps(steps: list[int], adapter_bytes: int, budget_bytes: float) -> list[list[int]]:
    """Checkpoints evaluated together: as many as their stored adapters fit in the budget (at least one).

    Every extra sweep costs one more base forward per batch; at the paper's largest ranks the adapters
    of all checkpoints do not fit on one GPU at once.
    """
    per_sweep = max(1, int(budget_bytes // max(adapter_bytes, 1))) if budget_bytes != float("inf") else len(steps)
    return [steps[i : i + per_sweep] for i in range(0, len(steps), per_sweep)]


def check_checkpoints(run_dir: Path, checkpoints: dict[int, Path], recorded: dict | None = None) -> dict[int, str]:
    """Refuse a run whose listed adapter checkpoints are missing or damaged, before any model is loaded;
    return each checkpoint's SHA-256.

    ``recorded``: the SHA-256 the run's summary.json lists per step; a checkpoint whose bytes changed
    since it was saved (same size or not) is refused. A checkpoint cannot be rebuilt from the run's
    resumable state (that holds the last step only), so the way out is to retrain the run; training is
    deterministic, so the numbers come out the same.
    """
    from ..io import InputError, sha256_file
    from .models import check_safetensors

    retrain = f"delete the run folder {run_dir} and rerun to retrain it"
    digests = {}
    for step, ckpt in sorted(checkpoints.items()):
        path = ckpt / "adapter_model.safetensors"
        try:
            check_safetensors(path, f"adapter checkpoint (step {step})")
        except InputError as exc:
            raise InputError(f"{exc}; {retrain}") from exc
        digests[step] = sha256_file(path)
        expected = (recorded or {}).get(str(step))
        if expected is not None and digests[step] != expected:
            raise InputError(f"{path}: SHA-256 {digests[step][:12]}... differs from the {expected[:12]}... its "
                             f"run's summary.json records (the checkpoint changed after training); {retrain}")
    return digests


def _read_run(summary_path: Path):
    """The run's folder, summary, checkpoint folders by step and their verified SHA-256."""
    summary_path = Path(summary_path)
    run_dir = summary_path.parent
    summary = json.loads(summary_path.read_text())
    checkpoints = {int(s): run_dir / p for s, p in summary["checkpoints"].items()}
    digests = check_checkpoints(run_dir, checkpoints, summary.get("checkpoint_sha256"))
    return run_dir, summary, checkpoints, digests


def _load_peft(model_dir: Path, first_checkpoint: Path, device: str, dtype: str, threads: int):
    from .adapters import load_for_evaluation
    from .models import load_model

    torch.set_num_threads(threads)
    base, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    return load_for_evaluation(base, first_checkpoint), tokenizer


def _heldout_examples(heldout_rows, tokenizer, summary):
    heldout = encode_rows(heldout_rows, tokenizer, summary["max_length"], what="held-out data")
    # The mean is order-free; batching similar lengths together only removes padding work.
    heldout.sort(key=lambda e: len(e.input_ids))
    return heldout


def _row(step: int, loss_ft: float, n_ft: int, per_corpus: list[tuple[str, dict]]) -> dict:
    # Column order is eval.csv's format: the first corpus also fills the unsuffixed columns.
    row = {"step": step, "loss_ft": loss_ft, "ft_tokens": n_ft}
    for i, (name, res) in enumerate(per_corpus):
        for key, value in res.items():
            row[f"{key}__{name}"] = value
            if i == 0:
                row[key] = value
    return row


def _write_csv(rows: list[dict], out_csv: Path) -> None:
    with atomic_open(out_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
    adapter_budget_gb: float | None = None,
    merge_adapters: bool | None = None,
    cache: bool = True,
) -> list[dict]:
    """L_ft and L_f of every checkpoint of a run in one pass over each corpus; writes eval.csv.

    ``adapter_budget_gb`` caps the checkpoints' adapters held at once (default: half the device's
    free memory); checkpoints beyond it go to further sweeps, each with its own base forwards.
    ``merge_adapters``: see AdapterBank (default: merged when the weights are fp32).
    ``cache``: each checkpoint's row is kept in ``<run>/eval_cache/forgetting/`` under a key of its
    adapter's SHA-256 and everything else it depends on; only checkpoints without a matching entry are
    evaluated (a run continued to more steps evaluates its new checkpoints only).
    """
    from tqdm.auto import tqdm

    from ..io import rows_sha256
    from .evalcache import CheckpointCache
    from .models import model_fingerprint

    run_dir, summary, checkpoints, digests = _read_run(summary_path)
    settings = {"batch_size": batch_size, "device": device, "dtype": dtype, "threads": threads,
                "merge_adapters": merge_adapters, "model_content": model_fingerprint(model_dir),
                "max_length": summary["max_length"], "heldout": rows_sha256(heldout_rows),
                "forgetting": [[name, rows_sha256(rows)] for name, rows in forgetting.items()]}
    if dtype != "float32":
        # Rows cached when the adapters of a low-precision base still computed in fp32 are not these.
        settings["adapter_dtype"] = dtype
    store = CheckpointCache(run_dir / "eval_cache" / "forgetting", settings) if cache else None
    results = {}
    if store is not None:
        for step in checkpoints:
            row = store.get(step, digests[step])
            if row is not None:
                results[step] = row
    todo = sorted(s for s in checkpoints if s not in results)
    if results:
        print(f"{run_dir}: {len(results)} checkpoints' results cached, evaluating {todo or 'none'}", flush=True)

    if todo:
        model, tokenizer = _load_peft(model_dir, checkpoints[todo[0]], device, dtype, threads)
        corpora = [ForgettingCorpus(name, rows, tokenizer, batch_size) for name, rows in forgetting.items()]
        heldout = _heldout_examples(heldout_rows, tokenizer, summary)
        bank = AdapterBank(model, merge=merge_adapters)
        dev = next(model.parameters()).device
        budget = adapter_budget_gb * 1e9 if adapter_budget_gb is not None else _adapter_budget_bytes(dev)
        sweeps = plan_sweeps(todo, bank.nbytes, budget)

        # One tick per forward pass, so the bar's rate and estimate hold across the mixed phases.
        n_heldout = -(-len(heldout) // batch_size)
        corpus_batches = sum(c.n_batches() for c in corpora)
        total = sum(corpus_batches * (1 + len(s)) + n_heldout * len(s) for s in sweeps)
        bar = tqdm(total=total, desc=f"evaluating {run_dir.name}", unit="fwd", disable=not progress)
        for sweep in sweeps:
            for step in sweep:
                bank.load(step, checkpoints[step])
            forgetting_res = forgetting_one_pass(model, corpora, bank, sweep, max_cache_gb, tick=bar.update)
            kill_point("evaluate:after-forgetting-pass")
            for step in sweep:
                with bank.applied(step):
                    loss_ft, n_ft = heldout_loss(model, heldout, tokenizer.pad_token_id, batch_size, tick=bar.update)
                results[step] = _row(step, loss_ft, n_ft, [(c.name, forgetting_res[step][c.name]) for c in corpora])
                if store is not None:
                    store.put(step, digests[step], results[step])
            bank.clear()
        bar.close()
    rows = [results[s] for s in sorted(results)]
    _write_csv(rows, out_csv)
    return rows
