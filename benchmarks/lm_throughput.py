"""Tokens per second of a fine-tuning step and of scoring, per LoRA rank: the figures the cluster
resource requests and `repro forecast` are built on.

Each rank is measured on the same full-length batches (batch_size x max_length tokens, the unit the
forecast counts), training with repro's step (fast loss, AdamW on the adapters) and scoring with the
adapter attached under no_grad. Ranks are measured in alternating rounds so machine noise hits all
alike; the ratio printed is each rank's throughput over rank 1's, measured in the same run.

    python benchmarks/lm_throughput.py                         # default model as fetched by the pipeline
    python benchmarks/lm_throughput.py --random-init --device cuda --dtype bfloat16 --ranks 1 16 256
    python benchmarks/lm_throughput.py ... --record            # write the rows to src/repro/cluster/throughput.csv

`--record` replaces rows of the same (model, device, dtype, phase, rank; threads on a CPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from repro.cluster.shapes import KNOWN_SHAPES  # noqa: E402
from repro.cluster.throughput import TABLE, record_rows  # noqa: E402
from repro.lm.adapters import build_adapter_model  # noqa: E402
from repro.lm.finetune import causal_lm_loss  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHAPES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "llama-2-7b": "meta-llama/Llama-2-7b-chat-hf"}


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name()
    for known in ("H200", "H100", "A100", "L40S"):
        if known in name:
            return known
    return name.replace(" ", "_")


def load_base(args):
    if not args.random_init:
        from repro.lm.models import load_model

        model, _ = load_model(args.model_dir, dtype=args.dtype, device=args.device)
        return model
    # Random weights of the real architecture: speed does not depend on the values.
    from transformers import LlamaConfig, LlamaForCausalLM

    s = KNOWN_SHAPES[SHAPES[args.model]]
    cfg = LlamaConfig(vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                      num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                      num_key_value_heads=s.num_key_value_heads, max_position_embeddings=max(4096, args.max_length),
                      tie_word_embeddings=args.model == "smollm2-135m")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=args.device, dtype=DTYPES[args.dtype])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--model-dir", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="steps per rank per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--record", action="store_true", help=f"write the rows to {TABLE.relative_to(REPO)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if 1 not in args.ranks:
        args.ranks = [1, *args.ranks]  # the baseline of the printed ratios

    base = load_base(args)
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(3, vocab, (args.batch_size, args.max_length), generator=gen).to(args.device)
    mask = torch.ones_like(batch)
    labels = batch.clone()
    tokens = batch.numel()

    models = {}
    for rank in args.ranks:
        # One adapter per rank on copies sharing nothing, so no rank's state affects another's timing.
        import copy

        m = build_adapter_model(copy.deepcopy(base), "rslora", rank, 16, 0.0, TARGETS)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        models[rank] = (m, opt)

    def train_step(m, opt):
        m.train()
        loss, _ = causal_lm_loss(m, batch, mask, labels, fast=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(m, _opt):
        m.eval()
        m(input_ids=batch, attention_mask=mask).logits.float().logsumexp(-1).sum().item()

    phases = {"train": train_step, "eval": eval_step}
    for m, opt in models.values():  # warm-up outside the measurement
        for step in phases.values():
            step(m, opt)
    seconds = {(p, r): [] for p in phases for r in args.ranks}
    for rnd in range(args.rounds):
        for rank, (m, opt) in models.items():
            for phase, step in phases.items():
                sync(args.device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(m, opt)
                sync(args.device)
                seconds[(phase, rank)].append(time.perf_counter() - t0)
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)

    dev = device_name(args.device)
    today = dt.date.today().isoformat()
    command = "python benchmarks/lm_throughput.py " + " ".join(sys.argv[1:]).replace("--record", "").strip()
    rows = []
    print(f"\n{args.model} on {dev}, {args.dtype}, batch {args.batch_size} x {args.max_length} tokens, "
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    for phase in phases:
        base_tps = tokens * args.steps * args.rounds / sum(seconds[(phase, 1)])
        for rank in args.ranks:
            tps = tokens * args.steps * args.rounds / sum(seconds[(phase, rank)])
            spread = statistics.pstdev(seconds[(phase, rank)]) / statistics.mean(seconds[(phase, rank)])
            print(f"{phase:5s} rank {rank:5d}: {tps:10.1f} tok/s   ratio vs rank 1 {tps / base_tps:5.2f}x"
                  f"   (round-to-round spread {spread:.0%})")
            rows.append({"model": args.model, "device": dev, "dtype": args.dtype, "phase": phase, "rank": rank,
                         "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
                         "tokens_per_s": f"{tps:.1f}", "source": "measured", "measured": today,
                         "command": command})
    if args.record:
        replaced = record_rows(rows)
        print(f"recorded {len(rows)} rows in {TABLE.relative_to(REPO)} ({len(replaced)} replaced)")


if __name__ == "__main__":
    main()
