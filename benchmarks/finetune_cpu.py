"""Training-step throughput of repro's fine-tuning loop against a plain transformers + peft loop.

Both loops train the same model (default: SmolLM2-135M-Instruct as fetched by the pipeline), with
the same LoRA config (rank, alpha, target modules), dtype, batch size, max_length, AdamW and data:
each round, every loop consumes exactly the same examples once, so both do the same useful work
(supervised tokens). Loops are measured alternately, round after round, in one process, so machine
noise hits both alike. Reported: supervised tokens per second and the ratio to the baseline.

The plain loop is what one writes from the transformers/peft docs: random batches padded to the
longest example, ``model(**batch, labels=labels).loss``. repro's loop differs in two ways, each also
measured on its own: batches grouped by length (less padding) and the output layer computed only at
supervised positions (no vocabulary-sized matmul and softmax for prompt and padding tokens).

    python benchmarks/finetune_cpu.py                       # needs resources/models/<default model>
    python benchmarks/finetune_cpu.py --random-init         # SmolLM2-135M architecture, random weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from repro.lm.adapters import build_adapter_model  # noqa: E402
from repro.lm.data import build_stdlib_instruct  # noqa: E402
from repro.lm.finetune import batch_schedule, causal_lm_loss  # noqa: E402
from repro.lm.tokens import collate, encode_rows  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(args):
    from repro.lm.models import load_model

    if not args.random_init:
        model, tok = load_model(args.model_dir, device=args.device)
        return model, tok
    # Random weights of the real architecture (for machines without the converted model).
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from repro.lm.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer(8000) if not (args.model_dir / "tokenizer.json").exists() else AutoTokenizer.from_pretrained(args.model_dir)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(args.device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def plain_step(model, opt, batch, pad_id, device):
    ids, mask, labels = (t.to(device) for t in collate(batch, pad_id))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def repro_step(model, opt, batch, pad_id, device, fast):
    ids, mask, labels = (t.to(device) for t in collate(batch, pad_id))
    loss, _ = causal_lm_loss(model, ids, mask, labels, fast=fast)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "resources/models/smollm2-135m-instruct")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--compile", action="store_true",
                        help="compare the plain loop with repro's step on torch.compile'd decoder layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load(args)
    model = build_adapter_model(model, "rslora", args.rank, 16, 0.0, TARGETS)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    spec = {"max_train": 4000, "max_heldout": 1, "heldout_percent": 1, "max_answer_chars": 400}
    examples = encode_rows(build_stdlib_instruct(spec, 0)["train"], tok, args.max_length)
    lengths = [len(e.input_ids) for e in examples]
    pad = tok.pad_token_id

    # Every loop sees the same examples each round: the first steps*batch_size of a permutation.
    n_per_round = args.steps * args.batch_size
    variants = {
        "plain transformers+peft": (False, lambda b: plain_step(model, opt, b, pad, args.device)),
        "repro: length grouping only": (True, lambda b: repro_step(model, opt, b, pad, args.device, fast=False)),
        "repro: fast loss only": (False, lambda b: repro_step(model, opt, b, pad, args.device, fast=True)),
        "repro (both)": (True, lambda b: repro_step(model, opt, b, pad, args.device, fast=True)),
    }
    if args.compile:
        # Compiled layers change the model for every later call, so this variant runs alone.
        import copy

        from repro.lm.finetune import compile_decoder_layers

        # The baseline keeps an uncompiled copy of the same model (and its own optimizer).
        plain_model = copy.deepcopy(model)
        plain_opt = torch.optim.AdamW([p for p in plain_model.parameters() if p.requires_grad], lr=1e-5)
        t0 = time.perf_counter()
        compile_decoder_layers(model)
        variants = {"plain transformers+peft": (False, lambda b: plain_step(plain_model, plain_opt, b, pad, args.device)),
                    "repro (both), compiled layers": (True, lambda b: repro_step(model, opt, b, pad, args.device, fast=True))}
        for T in sorted({len(examples[i].input_ids) for i in range(8)})[:2]:
            repro_step(model, opt, [e for e in examples if len(e.input_ids) == T][:args.batch_size], pad, args.device, True)
        print(f"compile + two warm-up shapes: {time.perf_counter() - t0:.1f} s (not counted below)")
    # Warm-up (allocator, thread pools) outside the measurement.
    for _grouped, step in variants.values():
        step([examples[i] for i in range(args.batch_size)])
    seconds = {k: [] for k in variants}
    tokens_per_round = None
    for rnd in range(args.rounds):
        pool = torch.randperm(len(examples), generator=torch.Generator().manual_seed(rnd))[:n_per_round].tolist()
        sub_lengths = [lengths[i] for i in pool]
        tokens_per_round = sum(examples[i].n_supervised for i in pool)
        for name, (grouped, step) in variants.items():
            sched = batch_schedule(sub_lengths, args.batch_size, seed=rnd, n_batches=args.steps, group_by_length=grouped)
            assert sorted(i for b in sched for i in b) == list(range(n_per_round))  # same examples
            t0 = time.perf_counter()
            for b in sched:
                step([examples[pool[i]] for i in b])
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - t0)
            print(f"round {rnd + 1}/{args.rounds} {name:30s} {tokens_per_round / seconds[name][-1]:8.1f} supervised tok/s", flush=True)

    base = "plain transformers+peft"
    result = {"config": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    print(f"\nrank {args.rank}, batch {args.batch_size}, max_length {args.max_length}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, device {args.device}")
    for name in variants:
        # Ratio of total time over all rounds (same work), and the median per-round ratio.
        ratio = sum(seconds[base]) / sum(seconds[name])
        per_round = statistics.median(b / s for b, s in zip(seconds[base], seconds[name]))
        tps = tokens_per_round * args.rounds / sum(seconds[name])
        result["variants"][name] = {"supervised_tokens_per_s": tps, "ratio_vs_plain": ratio, "median_round_ratio": per_round}
        print(f"{name:30s} {tps:8.1f} tok/s   ratio vs plain {ratio:5.2f}x (median per round {per_round:4.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
