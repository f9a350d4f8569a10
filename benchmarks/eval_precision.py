"""What evaluating adapters in the base model's dtype costs and changes (repro.lm.adapters).

speed: one bf16 base with LoRA on the seven Llama projections, random weights of the real
  architecture, the same token batches side by side in alternating rounds:
  - bare             the base model's forward without adapters (the floor);
  - adapters_fp32    peft's default on a bf16 base: fp32 LoRA weights, each adapter input cast to fp32;
  - adapters_native  repro's evaluation: LoRA weights in the base dtype (bf16 matmuls).
  Printed: tokens/s of each and the ratios adapters_fp32 / bare, adapters_native / bare (forward
  time relative to the bare forward) and adapters_fp32 / adapters_native (the speed-up).

accuracy (--run): one real run's checkpoints evaluated three ways by repro.lm.forgetting.evaluate_run
  on the first --sequences sequences of each forgetting corpus and of the held-out set: fp32 base and
  adapters (the reference), bf16 base with fp32 adapters (peft's default), bf16 base with bf16 adapters
  (repro's). Printed: the largest |difference| in L_f, KL and L_ft over checkpoints, against the
  reference and between the two bf16 variants (what the adapters' precision alone changes).

    .venv/bin/python benchmarks/eval_precision.py --ranks 16 512
    .venv/bin/python benchmarks/eval_precision.py --skip-speed --run \\
        results/lm/runs/smollm2-135m-instruct/stdlib-instruct/lora/r64/lr0.0005/seed0/summary.json
    .venv/bin/python benchmarks/eval_precision.py --device cuda --model llama2-7b --ranks 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from finetune_cpu import TARGETS  # noqa: E402
from lm_speed import SHAPES, build_model  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def save_random_adapter(bare, rank: int, folder: Path) -> None:
    """A random rank-r LoRA (B nonzero) on ``bare``, saved as training saves a checkpoint; ``bare`` is
    left without adapters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    trained = get_peft_model(bare, LoraConfig(r=rank, lora_alpha=16, target_modules=list(TARGETS),
                                              init_lora_weights=False))
    trained.save_pretrained(folder)
    trained.unload()


def load_variant(bare, folder: Path, name: str):
    """The model a variant evaluates: the bare base, or the saved adapter loaded onto it as repro's
    evaluation loads it (adapters_native) or with peft's default fp32 adapters (adapters_fp32)."""
    from peft import PeftModel

    from repro.lm.adapters import load_for_evaluation

    if name == "bare":
        return bare
    if name == "adapters_native":
        return load_for_evaluation(bare, folder)
    return PeftModel.from_pretrained(bare, folder, is_trainable=False).eval()


def bench_speed(args, rank: int) -> dict:
    """Rounds alternate the variants' order; each variant's adapter is loaded onto the one base and
    unloaded again, so a single copy of the weights is ever resident (a 7B pair would not fit)."""
    dev = args.device
    vocab = SHAPES[args.model].vocab_size
    batches = [torch.randint(0, vocab, (args.batch_size, args.seq_len), device=dev) for _ in range(args.batches)]
    bare = build_model(args.model, dev, torch.bfloat16)
    names = ("bare", "adapters_fp32", "adapters_native")
    seconds: dict[str, list[float]] = {k: [] for k in names}
    dtypes = {}

    def run(model) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        _sync(dev)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        save_random_adapter(bare, rank, Path(tmp))
        for rnd in range(args.rounds + 1):  # round 0 warms every variant up and is not counted
            for name in names if rnd % 2 == 0 else reversed(names):
                model = load_variant(bare, Path(tmp), name)
                dtypes[name] = sorted({str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()
                                       if "lora_" in n})
                elapsed = run(model)
                if rnd:
                    seconds[name].append(elapsed)
                if name != "bare":
                    bare = model.unload()
    tokens = args.batches * args.batch_size * args.seq_len
    tps = {k: tokens / statistics.median(v) for k, v in seconds.items()}
    out = {"rank": rank, "tokens_per_s": tps, "lora_dtypes": dtypes,
           "fp32_vs_bare": tps["bare"] / tps["adapters_fp32"],
           "native_vs_bare": tps["bare"] / tps["adapters_native"],
           "speedup_native_vs_fp32": tps["adapters_native"] / tps["adapters_fp32"]}
    print(f"speed r={rank}: bare {tps['bare']:.0f} tok/s, fp32 adapters {tps['adapters_fp32']:.0f} "
          f"({out['fp32_vs_bare']:.2f}x the bare forward's time), bf16 adapters {tps['adapters_native']:.0f} "
          f"({out['native_vs_bare']:.2f}x); bf16 adapters {out['speedup_native_vs_fp32']:.2f}x faster", flush=True)
    return out


def bench_accuracy(args) -> dict:
    from peft import PeftModel

    from repro.lm import adapters
    from repro.lm.data import finetune_paths, forgetting_path, read_jsonl
    from repro.lm.forgetting import evaluate_run

    summary_path = args.run.resolve()
    summary = json.loads(summary_path.read_text())
    model_dir = args.model_dir or REPO / "resources" / "models" / summary["model"]
    data_dir = args.data_dir or REPO / "results" / "data" / summary["model"]
    heldout = read_jsonl(finetune_paths(data_dir, summary["dataset"])["heldout"])[: args.sequences]
    forgetting = {p.stem: read_jsonl(p)[: args.sequences]
                  for p in sorted(forgetting_path(data_dir, "x").parent.glob("*.jsonl"))}
    if not forgetting:
        raise SystemExit(f"{data_dir}: no forgetting corpora found")

    def peft_default(base, checkpoint_dir):
        return PeftModel.from_pretrained(base, checkpoint_dir, is_trainable=False).eval()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype, patch in (("fp32", "float32", None), ("bf16_base_fp32_adapters", "bfloat16", peft_default),
                                   ("bf16", "bfloat16", None)):
            ctx = mock.patch.object(adapters, "load_for_evaluation", patch) if patch else mock.MagicMock()
            t0 = time.perf_counter()
            with ctx:
                rows = evaluate_run(summary_path, model_dir, heldout, forgetting, Path(tmp) / f"{name}.csv",
                                    batch_size=4, device=args.device, dtype=dtype, threads=args.threads,
                                    progress=False, cache=False)
            results[name] = {"rows": rows, "seconds": time.perf_counter() - t0}
            print(f"  {name}: {results[name]['seconds']:.1f} s", flush=True)

    def max_diff(a: str, b: str, key: str) -> float:
        return max(abs(x[key] - y[key]) for x, y in zip(results[a]["rows"], results[b]["rows"]))

    keys = ("loss_forget", "kl_forget", "loss_ft")
    out = {"run": str(args.run), "checkpoints": [r["step"] for r in results["fp32"]["rows"]],
           "sequences": args.sequences, "seconds": {k: v["seconds"] for k, v in results.items()},
           "fp32_range": {k: [min(r[k] for r in results["fp32"]["rows"]), max(r[k] for r in results["fp32"]["rows"])]
                          for k in keys}}
    for a, b in (("bf16", "fp32"), ("bf16_base_fp32_adapters", "fp32"), ("bf16", "bf16_base_fp32_adapters")):
        out[f"{a}_vs_{b}"] = {k: max_diff(a, b, k) for k in keys}
        print(f"accuracy {a} vs {b}: max |diff| " + ", ".join(f"{k} {v:.2e}" for k, v in out[f"{a}_vs_{b}"].items()))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="smollm2-135m", choices=["tiny", "smollm2-135m", "llama2-7b"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--run", type=Path, help="a run's summary.json: also measure what the precision changes")
    parser.add_argument("--model-dir", type=Path, help="the fetched base model (default resources/models/<model>)")
    parser.add_argument("--data-dir", type=Path, help="prepared data (default results/data/<model>)")
    parser.add_argument("--sequences", type=int, default=16, help="sequences per corpus in the accuracy part")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    out = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "model": args.model}
    if not args.skip_speed:
        out["speed"] = [bench_speed(args, r) for r in args.ranks]
    if args.run:
        out["accuracy"] = bench_accuracy(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
