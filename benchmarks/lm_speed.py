"""Speed of repro's language-model evaluation and training step against their baselines, in one run.

eval: on the same corpus batches, side by side in alternating rounds,
  - one_pass        repro.lm.forgetting.forgetting_one_pass over K checkpoints (one base forward per
                    batch, then one forward per checkpoint with its adapter swapped in place);
  - per_checkpoint  the previous path (ReferenceCorpus.evaluate of tests/reference_forgetting.py,
                    without the base cache): two forwards per batch and checkpoint, adapters set with
                    peft's set_peft_model_state_dict;
  - forward         a bare transformers forward (logits) of the base model over the same tokens,
                    repeated K times;
  - one_pass_unmerged  (fp32 only, where one_pass merges each adapter into the weights) the one pass
                    through peft's low-rank branch, which reproduces the previous path bit for bit.
  All count corpus tokens x K, so ratio_vs_forward = 1 would be an evaluation of each checkpoint at
  the price of one bare forward over the corpus (the ideal is K / (K + 1) less the adapters' cost).

train: repro's step (repro.lm.step.StepRunner, as train_run runs it: length-grouped batches, output
  layer at supervised positions only, AdamW fused on cuda / foreach on cpu, metrics kept on the device
  until the round's end; bf16 autocast by default where the device computes bf16 in hardware, as
  the default config's finetune.autocast "auto" does; on cuda by default also the CUDA presets'
  compiled layers and length buckets of 64, and liger's fused cross-entropy where installed;
  --packing packs examples) against the plain transformers+peft step (finetune_cpu.plain_step) in
  the model's dtype, each on its own copy of the model, on the same synthetic examples each round;
  tok/s counts supervised tokens. With autocast, plain_autocast is the plain step under the same
  bf16 autocast (ratio_vs_plain_autocast: what the step adds beyond bf16 compute). plain_compiled
  runs the plain step on torch.compile(model) (only with --compile: compiling takes minutes on a
  CPU). With several --rank values, train holds one entry per rank. mfu: input
  tokens/s x 4 x (matmul parameters: decoder + output layer) over the device's peak, i.e. forward plus
  the activation-gradient backward of frozen weights; adapter and attention-score FLOPs left out.
  Peak: nominal dense figure for known GPUs, else a measured large matmul in the same dtype.
  peak_mem_gb: CUDA allocator peak during the training rounds; on CPU the process's peak RSS.

--record writes repro's training throughput (input tokens/s, per rank) into the table `repro
forecast` reads (src/repro/cluster/throughput.csv, or --table), replacing the rows of the same model,
device, dtype and rank, estimates included; measure on the GPU the forecast prices, with the preset's
batch_size and max_length (--train-batch-size, --train-max-length):

    python benchmarks/lm_speed.py --device cuda --model llama2-7b --train-batch-size 4 \
        --train-max-length 1024 --gradient-checkpointing --skip-eval --record

(on cuda the plain loop is measured after repro's step has released its model, so only one 7B copy
is ever resident; --baseline none skips it.)

Weights are random with the real architecture (speed does not depend on their values):

    python benchmarks/lm_speed.py --device cpu --model smollm2-135m --json /tmp/lm_speed.json
    python benchmarks/lm_speed.py --device cuda --model llama2-7b --compile --json /tmp/lm_speed.json
    python benchmarks/lm_speed.py --model tiny --json /tmp/tiny.json          # seconds: the test's run
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.append(str(REPO / "tests"))  # the per-checkpoint reference, last so it shadows nothing

from finetune_cpu import TARGETS, plain_step  # noqa: E402
from lm_throughput import device_name as device_key  # noqa: E402  (the table's device names)
from reference_forgetting import ReferenceCorpus  # noqa: E402

from repro.cluster.shapes import LLAMA2_7B, SMOLLM2_135M, ModelShape  # noqa: E402
from repro.cluster.throughput import TABLE, record_rows  # noqa: E402
from repro.lm.adapters import AdapterBank, build_adapter_model  # noqa: E402
from repro.lm.finetune import batch_schedule  # noqa: E402
from repro.lm.forgetting import forgetting_one_pass  # noqa: E402
from repro.lm.step import StepOptions, StepRunner, make_optimizer, native_bf16, prepare_model  # noqa: E402
from repro.lm.tokens import IGNORE, Example  # noqa: E402

TINY = ModelShape(0, 64, 128, 2, 4, 2, 512)
SHAPES = {"tiny": TINY, "smollm2-135m": SMOLLM2_135M, "llama2-7b": LLAMA2_7B}
# The throughput table's model names (repro.cluster.throughput.model_key).
TABLE_MODEL = {"tiny": "tiny", "smollm2-135m": "smollm2-135m", "llama2-7b": "llama-2-7b"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense (no sparsity) peak FLOP/s of the GPUs the presets name, by dtype.
NOMINAL_PEAK = {
    "H200": {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12},
    "H100": {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_model(name: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[name]
    cfg = LlamaConfig(vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                      num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                      num_key_value_heads=s.num_key_value_heads, max_position_embeddings=4096,
                      tie_word_embeddings=name != "llama2-7b")
    torch.manual_seed(0)
    # Built on the device in its dtype: a 7B model never passes through fp32 host memory.
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model.eval()


def random_adapters(bank: AdapterBank, steps, seed: int) -> dict[int, dict]:
    """Adapter weights per checkpoint, B nonzero so every checkpoint differs from the base."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for step in steps:
        out[step] = {}
        for key, t in bank.targets.items():
            std = 0.02 if "lora_B" in key else 1 / t.shape[-1] ** 0.5
            out[step][key] = (torch.randn(t.shape, generator=g) * std).to(device=t.device, dtype=t.dtype)
    return out


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def bench_eval(args, dtype) -> dict:
    from peft import set_peft_model_state_dict

    bare = build_model(args.model, args.device, dtype)
    model = build_adapter_model(copy.deepcopy(bare), "rslora", args.rank[0], 16, 0.0, TARGETS).eval()
    bank = AdapterBank(model)
    steps = list(range(args.checkpoints))
    adapters = random_adapters(bank, steps, seed=1)
    for step, weights in adapters.items():
        bank.add(step, weights)
    # Where the default merges adapters into the weights (fp32), the peft-branch variant is timed too.
    unmerged = AdapterBank(model, merge=False) if bank.merge else None
    if unmerged is not None:
        for step, weights in adapters.items():
            unmerged.add(step, weights)
    vocab = SHAPES[args.model].vocab_size
    g = torch.Generator().manual_seed(2)
    n_seq = args.batches * args.batch_size
    rows = [{"input_ids": torch.randint(3, vocab, (args.seq_len,), generator=g).tolist()} for _ in range(n_seq)]
    pad = SimpleNamespace(pad_token_id=0)
    corpus = ReferenceCorpus("bench", rows, pad, args.batch_size)
    warm = ReferenceCorpus("warm", [{"input_ids": rows[0]["input_ids"][:16]}], pad, 1)
    tokens = corpus.n_positions()

    def one_pass(c):
        return forgetting_one_pass(model, [c], bank, steps, args.max_cache_gb)

    def one_pass_unmerged(c):
        return forgetting_one_pass(model, [c], unmerged, steps, args.max_cache_gb)

    def per_checkpoint(c):
        c.cache = None  # the case the one pass replaces: base distribution not cached
        out = {}
        for step in steps:
            set_peft_model_state_dict(model, adapters[step])
            out[step] = {c.name: c.evaluate(model)}
        return out

    def forward(c):
        # Repeated once per checkpoint so that every variant is timed over a similar span: a short
        # measurement on a shared machine is at the mercy of one burst of another process.
        with torch.inference_mode():
            for _ in steps:
                for ids, mask in c.batches(args.device):
                    bare(input_ids=ids, attention_mask=mask, use_cache=False)

    variants = {"one_pass": one_pass, "per_checkpoint": per_checkpoint, "forward": forward}
    if unmerged:
        variants["one_pass_unmerged"] = one_pass_unmerged
    for fn in variants.values():  # allocator, thread pools, kernels: outside the measurement
        fn(warm)
    seconds = {k: [] for k in variants}
    cpu = {k: 0.0 for k in variants}
    outputs = {}
    for rnd in range(args.rounds):
        order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
        for name in order:
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = variants[name](corpus)
            sync(args.device)
            seconds[name].append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - c0
        print(f"eval round {rnd + 1}/{args.rounds}: " + ", ".join(f"{k} {seconds[k][-1]:.2f} s" for k in variants),
              flush=True)
    # Same numbers from both paths, on the measured batches themselves.
    ref, new = outputs["per_checkpoint"], outputs["one_pass"]
    rel = max(abs(new[s]["bench"]["loss_forget"] / ref[s]["bench"]["loss_forget"] - 1) for s in steps)
    kl_abs = max(abs(new[s]["bench"]["kl_forget"] - ref[s]["bench"]["kl_forget"]) for s in steps)
    if unmerged:  # the peft-branch one pass computes exactly what the previous path computes
        same = outputs["one_pass_unmerged"]
        rel_unmerged = max(abs(same[s]["bench"]["loss_forget"] / ref[s]["bench"]["loss_forget"] - 1) for s in steps)
    work = {k: tokens * len(steps) for k in variants}
    tps = {k: work[k] * args.rounds / sum(seconds[k]) for k in variants}
    extra, bank_merge = {}, bank.merge
    if unmerged:
        extra = {"one_pass_unmerged_tok_s": tps["one_pass_unmerged"],
                 "max_rel_diff_loss_forget_unmerged": rel_unmerged}
    return {
        "one_pass_tok_s": tps["one_pass"],
        "per_checkpoint_tok_s": tps["per_checkpoint"],
        "forward_tok_s": tps["forward"],
        "ratio_vs_per_checkpoint": tps["one_pass"] / tps["per_checkpoint"],
        "ratio_vs_forward": tps["one_pass"] / tps["forward"],
        "median_round_ratio_vs_per_checkpoint": statistics.median(
            b / a for a, b in zip(seconds["one_pass"], seconds["per_checkpoint"])),
        "checkpoints": len(steps),
        "corpus_tokens": tokens,
        "max_rel_diff_loss_forget": rel,
        "max_abs_diff_kl_forget": kl_abs,
        "merged_adapters": bank_merge,
        **extra,
        # Process CPU seconds: on a shared machine, less at the mercy of other jobs than wall time.
        "cpu_seconds": cpu,
        "ratio_vs_per_checkpoint_cpu": cpu["per_checkpoint"] / cpu["one_pass"],
        "ratio_vs_forward_cpu": cpu["forward"] / cpu["one_pass"],
    }


def synthetic_examples(n: int, max_length: int, vocab: int, seed: int) -> list[Example]:
    """Chat-like examples: lengths spread over [max_length/4, max_length], the first ~half unsupervised."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(max_length // 4, max_length + 1, (1,), generator=g))
        prompt = int(torch.randint(length // 4, 3 * length // 4 + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def peak_flops(device: str, dtype_name: str, dtype) -> tuple[float, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for known, peaks in NOMINAL_PEAK.items():
            if known in name:
                return peaks[dtype_name], f"nominal dense {known} {dtype_name}"
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    reps = 3
    t = timed(lambda: [a @ a for _ in range(reps)], device)
    return 2 * n**3 * reps / t, f"measured {n}x{n} matmul, {dtype_name}"


def repro_options(args) -> StepOptions:
    """The step options repro's variant runs with: the CUDA presets' on cuda, the default's on cpu,
    each overridable by a flag."""
    return StepOptions(fast_loss=True, packing=args.packing, pad_to_multiple=args.pad_to_multiple,
                       autocast=args.autocast, fused_cross_entropy=True, fused_optimizer=True,
                       gradient_checkpointing=args.gradient_checkpointing, compile=args.repro_compile)


def _peak_memory_gb(dev: str) -> float:
    if dev == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _release(dev: str) -> None:
    import gc

    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


def bench_train(args, dtype, dtype_name: str, rank: int) -> dict:
    """repro's step against the plain loop. ``args.baseline``: ``alternate`` builds both models and
    alternates them round by round (fair on a busy CPU); ``sequential`` measures repro's step, frees its
    model, then builds the plain one (one model resident: a 7B pair would not fit beside its adapters
    and optimizer state); ``none`` measures repro's step alone (what --record needs)."""
    s = SHAPES[args.model]
    dev, pad = args.device, 0
    n_per_round = args.train_steps * args.train_batch_size
    examples = synthetic_examples(n_per_round * args.rounds, args.train_max_length, s.vocab_size, seed=3)
    pools = [examples[rnd * n_per_round : (rnd + 1) * n_per_round] for rnd in range(args.rounds)]
    supervised = sum(e.n_supervised for pool in pools for e in pool)
    inputs = sum(len(e.input_ids) for pool in pools for e in pool)
    options = repro_options(args)
    kept: dict = {}

    def repro_variants() -> dict:
        # Each variant builds its own model from the same seed: repro's options (compiled layers, adapter
        # input casting) change the model they run on, and the plain loop must run on an untouched one.
        repro_model = build_adapter_model(build_model(args.model, dev, dtype), "rslora", rank, 16, 0.0, TARGETS)
        repro_model.train()
        prepare_model(repro_model, options)
        params = [p for p in repro_model.parameters() if p.requires_grad]
        runner = StepRunner(repro_model, make_optimizer(params, 1e-5, device=dev, fused=options.fused_optimizer),
                            params, options, dev, row_capacity=args.train_max_length)
        kept["cross_entropy"] = runner.cross_entropy_name
        kept["tied"] = repro_model.get_base_model().config.tie_word_embeddings
        kept["matmul_params"] = sum(p.numel() for n, p in repro_model.named_parameters()
                                    if "lora_" not in n and "embed_tokens" not in n)

        def repro_round(batches):
            for b in batches:
                runner.run(runner.layout(b, pad))
            runner.flush()  # the round's one wait on the device, part of the measured cost

        return {"repro": (True, repro_round)}

    def plain_variants() -> dict:
        model = build_adapter_model(build_model(args.model, dev, dtype), "rslora", rank, 16, 0.0, TARGETS)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def plain_round(step):
            return lambda batches: [step(b) for b in batches]

        variants = {"plain": (False, plain_round(lambda b: plain_step(model, opt, b, pad, dev)))}
        if options.autocast:
            # The same bf16 matmuls in the plain loop (peft's default input cast kept): how much of the
            # ratio is the step's own and how much is bf16 compute.
            def plain_autocast_step(b):
                with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
                    plain_step(model, opt, b, pad, dev)

            variants["plain_autocast"] = (False, plain_round(plain_autocast_step))
        if args.compile:
            compiled = torch.compile(model, dynamic=True)
            variants["plain_compiled"] = (False, plain_round(lambda b: plain_step(compiled, opt, b, pad, dev)))
        return variants

    def measure(variants: dict) -> tuple[dict, dict, float]:
        for _grouped, run in variants.values():  # warm-up (and compilation) outside the measurement
            run([examples[: args.train_batch_size]])
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = {k: [] for k in variants}
        cpu = {k: 0.0 for k in variants}
        for rnd, pool in enumerate(pools):
            lengths = [len(e.input_ids) for e in pool]
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for name in order:
                grouped, run = variants[name]
                sched = batch_schedule(lengths, args.train_batch_size, seed=rnd, n_batches=args.train_steps,
                                       group_by_length=grouped)
                batches = [[pool[i] for i in b] for b in sched]
                c0 = time.process_time()
                seconds[name].append(timed(lambda run=run, batches=batches: run(batches), dev))
                cpu[name] += time.process_time() - c0
            print(f"train r={rank} round {rnd + 1}/{args.rounds}: "
                  + ", ".join(f"{k} {seconds[k][-1]:.2f} s" for k in variants), flush=True)
        return seconds, cpu, _peak_memory_gb(dev)

    if args.baseline == "alternate":
        seconds, cpu, peak_mem = measure({**plain_variants(), **repro_variants()})
        peak_plain = None
    else:
        seconds, cpu, peak_mem = measure(repro_variants())
        _release(dev)
        peak_plain = None
        if args.baseline == "sequential":
            plain_seconds, plain_cpu, peak_plain = measure(plain_variants())
            seconds, cpu = {**plain_seconds, **seconds}, {**plain_cpu, **cpu}
            _release(dev)
    tps = {k: supervised / sum(v) for k, v in seconds.items()}
    matmul_params = kept["matmul_params"] + (s.vocab_size * s.hidden_size if kept["tied"] else 0)  # a tied head is a matmul
    # Under autocast the matmuls run in bf16: that is the peak they are held to.
    peak, source = (peak_flops(dev, "bfloat16", torch.bfloat16) if options.autocast
                    else peak_flops(dev, dtype_name, dtype))
    input_tps = inputs / sum(seconds["repro"])
    resident = {"alternate": "both models resident", "sequential": "repro's model alone (the plain one measured after it)",
                "none": "repro's model alone"}[args.baseline]
    mem_source = (f"torch.cuda.max_memory_allocated during the training rounds ({resident})" if dev == "cuda"
                  else f"peak RSS of the benchmark process ({resident}; the evaluation part included)")
    has_plain = "plain" in tps
    return {
        "repro_tok_s": tps["repro"],
        "plain_tok_s": tps.get("plain"),
        "plain_compiled_tok_s": tps.get("plain_compiled"),
        "ratio": tps["repro"] / tps["plain"] if has_plain else None,
        "plain_autocast_tok_s": tps.get("plain_autocast"),
        "ratio_vs_plain_autocast": tps["repro"] / tps["plain_autocast"] if "plain_autocast" in tps else None,
        "mfu": input_tps * 4 * matmul_params / peak,
        "peak_mem_gb": peak_mem,
        "peak_mem_plain_gb": peak_plain,
        "baseline": args.baseline,
        "rank": rank,
        "tokens": "supervised",
        "repro_input_tok_s": input_tps,
        "repro_options": {**options.__dict__, "cross_entropy": kept["cross_entropy"],
                          "optimizer": "fused" if dev == "cuda" else "foreach"},
        "mfu_peak_flops": peak,
        "mfu_peak_source": source,
        "peak_mem_source": mem_source,
        "cpu_seconds": cpu,
        "ratio_cpu": cpu["plain"] / cpu["repro"] if has_plain else None,
    }


def record(args, dtype_name: str, trains: list[dict], table: Path) -> list[dict]:
    """Rows of the throughput table from the training measurements: input (non-padding) tokens per
    second of repro's step, the unit `repro forecast` divides a run's tokens by."""
    today = dt.date.today().isoformat()
    command = "python benchmarks/lm_speed.py " + " ".join(a for a in args.argv if a != "--record")
    rows = [{"model": TABLE_MODEL[args.model], "device": device_key(args.device), "dtype": dtype_name,
             "phase": "train", "rank": t["rank"], "batch_size": args.train_batch_size,
             "max_length": args.train_max_length, "threads": args.threads,
             "tokens_per_s": f"{t['repro_input_tok_s']:.1f}", "source": "measured", "measured": today,
             "command": command} for t in trains]
    replaced = record_rows(rows, table)
    print(f"recorded {len(rows)} rows in {table} (replacing {len(replaced)}: "
          + ", ".join(f"{r['source']} r={r['rank']}" for r in replaced) + ")")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, nargs="+", default=None,
                        help="LoRA rank(s); default 16, and 16 256 for llama2-7b (evaluation: the first)")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds of each part (variants alternate)")
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="evaluation batch (sequences)")
    parser.add_argument("--seq-len", type=int, default=128, help="forgetting-corpus sequence length")
    parser.add_argument("--batches", type=int, default=2, help="evaluation batches per round")
    parser.add_argument("--max-cache-gb", type=float, default=4.0, help="evaluate.max_cache_gb of the one pass")
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--train-max-length", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=3, help="steps per loop per round")
    parser.add_argument("--compile", action="store_true", help="also time the plain step on torch.compile(model)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    step = parser.add_argument_group("repro's training step (defaults: the CUDA presets' settings on cuda, "
                                     "the default config's on cpu)")
    step.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                      help="several examples per row (finetune.packing)")
    step.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                      help="bf16 autocast with fp32 adapters (finetune.autocast; default on for cuda)")
    step.add_argument("--repro-compile", action=argparse.BooleanOptionalAction, default=None,
                      help="compile repro's decoder layers (finetune.compile; default on for cuda)")
    step.add_argument("--pad-to-multiple", type=int, default=None,
                      help="length bucket (finetune.pad_to_multiple; default 64 on cuda, 1 on cpu)")
    step.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--baseline", choices=["alternate", "sequential", "none"], default=None,
                        help="how the plain loop is measured beside repro's step: alternating rounds with both "
                             "models resident (default on cpu), one model at a time (default on cuda), or not")
    parser.add_argument("--record", action="store_true",
                        help="write repro's measured training throughput into the throughput table")
    parser.add_argument("--table", type=Path, default=TABLE, help="the table --record writes (default: %(default)s)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    cuda = args.device == "cuda"
    # Unset: what the default config's finetune.autocast "auto" resolves to on this device.
    args.autocast = native_bf16(args.device) if args.autocast is None else args.autocast
    args.repro_compile = cuda if args.repro_compile is None else args.repro_compile
    args.pad_to_multiple = (64 if cuda else 1) if args.pad_to_multiple is None else args.pad_to_multiple
    args.rank = args.rank or ([16, 256] if args.model == "llama2-7b" else [16])
    args.baseline = args.baseline or ("sequential" if cuda else "alternate")
    if args.record and args.skip_train:
        parser.error("--record writes the training throughput: drop --skip-train")
    if args.record and args.model == "tiny" and args.table.resolve() == TABLE.resolve():
        parser.error("--record --model tiny: a test shape has no place in the forecast's table (give --table)")
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    torch.set_num_threads(args.threads)

    result = {"config": {**{k: str(v) for k, v in vars(args).items()}, "dtype": dtype_name,
                         "torch": torch.__version__,
                         "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}}
    if not args.skip_eval:
        result["eval"] = e = bench_eval(args, dtype)
        print(f"eval  {args.model} {dtype_name} on {args.device}, {e['checkpoints']} checkpoints x "
              f"{e['corpus_tokens']} tokens: one pass {e['one_pass_tok_s']:.1f} tok/s, per checkpoint "
              f"{e['per_checkpoint_tok_s']:.1f}, bare forward {e['forward_tok_s']:.1f}; ratio "
              f"{e['ratio_vs_per_checkpoint']:.2f}x vs per checkpoint, {e['ratio_vs_forward']:.2f}x vs forward "
              f"(L_f agrees to {e['max_rel_diff_loss_forget']:.1e} rel); in CPU time "
              f"{e['ratio_vs_per_checkpoint_cpu']:.2f}x and {e['ratio_vs_forward_cpu']:.2f}x")
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_train:
        trains = []
        for rank in args.rank:
            if args.device == "cuda":
                torch.cuda.empty_cache()
            trains.append(t := bench_train(args, dtype, dtype_name, rank))
            compiled = f", plain compiled {t['plain_compiled_tok_s']:.1f}" if t["plain_compiled_tok_s"] else ""
            if t["plain_autocast_tok_s"]:
                compiled += (f", plain under bf16 autocast {t['plain_autocast_tok_s']:.1f} "
                             f"({t['ratio_vs_plain_autocast']:.2f}x)")
            versus = (f"plain {t['plain_tok_s']:.1f}{compiled}; ratio {t['ratio']:.2f}x" if t["plain_tok_s"]
                      else "no baseline")
            print(f"train {args.model} r={rank}: repro {t['repro_tok_s']:.1f} supervised tok/s, {versus}, "
                  f"MFU {t['mfu']:.1%}, peak memory {t['peak_mem_gb']:.2f} GB ({t['baseline']} baseline)")
        # One rank: its figures; several: one entry per rank.
        result["train"] = trains[0] if len(trains) == 1 else {f"r={t['rank']}": t for t in trains}
        if args.record:
            result["recorded"] = record(args, dtype_name, trains, args.table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
