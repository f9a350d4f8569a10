"""Dynamo graphs of the compiled training step before and after the fixes in repro.lm.step, and the step
time of eager against compiled decoder layers, measured side by side.

    .venv/bin/python benchmarks/compile_graphs.py                    # CPU, a few minutes
    .venv/bin/python benchmarks/compile_graphs.py --device cuda      # a GPU: all 30 layers, rows 1 and 16

Models: "tiny", a random Llama whose head size is 64 (the bucket size, so the width-64 bucket meets
the head size), and "smollm2-135m", SmolLM2-135M's shapes (hidden 576, intermediate 1536, 30 layers,
9 heads, 3 key/value heads, vocabulary 49152) with random weights: nothing is downloaded. On a CPU the
SmolLM2 shapes keep 2 of their 30 layers and batches of at most 2 rows (the tiny model 4): 16 rows
of 512 tokens through 30 layers take about a minute a step on two cores. All the layers share one
code object and so one dynamo cache, so the graph counts depend neither on the number of layers
beyond two (layer 0 and the rest) nor on the number of rows beyond two (1 and more).

Counts, per model, for each layout the pipeline produces (a fresh dynamo cache each):
  padded-R   R rows (one run's batch size) over widths 64..512 in steps of 64, each width with padding,
             the first and last also without (every example as long as the bucket)
  packed     batches of R examples packed into rows of at most 512 tokens, some fitting in one row
"before" compiles the layers as the step used to (``layer.compile(dynamic=True)`` and nothing else,
transformers' own masks, packed batches in as few rows as fit); "after" is ``prepare_model`` and
``StepRunner`` as the pipeline runs them. Graphs and recompiles are per layer code: the layers share
it. "fell back" counts compilations refused at dynamo's recompile limit, after which the old step ran
the layers eagerly without a word (the new one raises). Counting uses the ``eager`` backend on a CPU
(dynamo's guards and graphs in a second each; tests/test_compile_graphs.py checks aot_eager too) and
inductor on CUDA.

Timing: the "after" step with eager layers and with compiled ones (``--time-backend``, inductor by
default), alternating step by step on the same batches, the median of ``--repeats`` per width.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from repro.lm.adapters import build_adapter_model  # noqa: E402
from repro.lm.step import (  # noqa: E402
    CompileWatch,
    StepOptions,
    StepRunner,
    make_optimizer,
    prepare_model,
)
from repro.lm.tokens import IGNORE, Example  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAPES = {
    "tiny": dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3),
}
PAD = 0
CAPACITY = 512


def build(name: str, layers: int | None, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPES[name])
    if layers:
        shape["num_hidden_layers"] = min(layers, shape["num_hidden_layers"])
    cfg = LlamaConfig(max_position_embeddings=1024, pad_token_id=PAD, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model = build_adapter_model(base, "rslora", 16, 16, 0.0, TARGETS)
    model.train()
    return model


def example(n: int, vocab: int, g: torch.Generator) -> Example:
    ids = torch.randint(3, vocab, (n,), generator=g).tolist()
    return Example(ids, [IGNORE] * (n // 2) + ids[n // 2:])


def padded_batches(rows: int, widths: list[int], vocab: int) -> list[list[Example]]:
    """Per width, a batch whose longest example fills the bucket and the others are shorter (padding);
    at the first and last width also one without padding."""
    g = torch.Generator().manual_seed(rows)
    out = []
    for w in widths:
        lengths = [w - 7 if rows == 1 else w] + [max(2, w * (k + 1) // (rows + 1)) for k in range(rows - 1)]
        out.append([example(n, vocab, g) for n in lengths])
        if w in (widths[0], widths[-1]):
            out.append([example(w, vocab, g) for _ in range(rows)])
    return out


def packed_batches(rows: int, widths: list[int], vocab: int) -> list[list[Example]]:
    """Batches of ``rows`` examples: short ones that fit in one row of CAPACITY tokens, and longer ones."""
    g = torch.Generator().manual_seed(100 + rows)
    out = []
    for w in widths:
        if w * 2 <= CAPACITY:  # a batch that fits in one row: rows examples of w // rows tokens (at least 2)
            out.append([example(max(2, w // rows), vocab, g) for _ in range(rows)])
        out.append([example(max(2, w - 5 * k), vocab, g) for k in range(rows)])
    return out


def runner_for(model, options: StepOptions, device: str, before: bool) -> StepRunner:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, 1e-5, device=device, fused=options.fused_optimizer)
    if not before:
        prepare_model(model, options)
        return StepRunner(model, optimizer, params, options, device, row_capacity=CAPACITY)
    # The compiled step as it was: the layers compiled, nothing else; transformers' masks, packed rows
    # as few as fit.
    prepare_model(model, replace(options, compile=False))
    for layer in (model.get_base_model().get_decoder().layers):
        layer.compile(dynamic=True, backend=options.compile_backend)
    runner = StepRunner(model, optimizer, params, replace(options, compile=False), device,
                        row_capacity=CAPACITY)
    runner.attention_inputs = lambda batch: (batch.attention_mask, batch.position_ids)
    return runner


def cause(guard: str) -> str:
    """A short name for a failed guard."""
    if "requires_grad" in guard:
        return "input requires_grad (layer 0)"
    if "NoneType" in guard or "to be a tensor type" in guard:
        return "mask None vs tensor"
    if "2 <= " in guard or ("index 0" in guard and ("expected 1," in guard or "actual 1" in guard)):
        return "batch dim of 1"
    if "size mismatch at index" in guard:
        return "width specialised (duck sizing)"
    return guard.strip()[:100]


def count(model_name: str, layers, layout: str, rows: int, widths: list[int], device: str, dtype, options,
          before: bool) -> dict:
    torch._dynamo.reset()
    model = build(model_name, layers, device, dtype)
    packing = layout == "packed"
    options = replace(options, packing=packing)
    runner = runner_for(model, options, device, before)
    vocab = SHAPES[model_name]["vocab_size"]
    examples = (packed_batches if packing else padded_batches)(rows, widths, vocab)
    shapes = []
    t0 = time.perf_counter()
    with CompileWatch() as watch:
        for i, exs in enumerate(examples):
            batch = runner.layout(exs, PAD)
            shapes.append(tuple(batch.input_ids.shape))
            runner.run(batch, step=i)
        runner.flush()
    # Each recompilation tries every cached graph: the causes are those of all the guards that failed.
    causes: dict[str, int] = {}
    for r in watch.failed_guards:
        for part in r.split("; "):
            causes[cause(part)] = causes.get(cause(part), 0) + 1
    per_code = list(watch.compiles_per_code.values())
    out = {"model": model_name, "layout": f"{layout}-{rows}" if not packing else f"packed-{rows}",
           "mode": "before" if before else "after", "graphs": watch.graphs,
           "graphs_per_layer_code": per_code[0] if len(per_code) == 1 else per_code,
           "recompiles": watch.recompiles, "fell_back": watch.failed, "graph_breaks": watch.graph_breaks,
           "batches": len(shapes), "distinct_shapes": len(set(shapes)), "causes": causes,
           "seconds": time.perf_counter() - t0}
    del runner, model
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timing(model_name: str, layers, rows: int, widths: list[int], device: str, dtype, options, backend: str,
           repeats: int) -> dict:
    torch._dynamo.reset()
    vocab = SHAPES[model_name]["vocab_size"]
    runners = {"eager": runner_for(build(model_name, layers, device, dtype), replace(options, compile=False),
                                   device, False),
               "compiled": runner_for(build(model_name, layers, device, dtype),
                                      replace(options, compile=True, compile_backend=backend), device, False)}
    # One batch per width, the one with padding (the first of each width).
    batches = {}
    for exs in padded_batches(rows, widths, vocab):
        batch = runners["eager"].layout(exs, PAD)
        batches.setdefault(batch.input_ids.shape[1], batch)
    t0 = time.perf_counter()
    with CompileWatch() as watch:
        for runner in runners.values():  # warm-up: compiles every bucket once
            for batch in batches.values():
                runner.run(batch)
            runner.flush()
            sync(device)
    warm = time.perf_counter() - t0
    seconds: dict = {name: {w: [] for w in batches} for name in runners}
    for _ in range(repeats):
        for w, batch in batches.items():
            for name, runner in runners.items():  # side by side: the same batch, one after the other
                sync(device)
                t = time.perf_counter()
                runner.run(batch)
                sync(device)
                seconds[name][w].append(time.perf_counter() - t)
    for runner in runners.values():
        runner.flush()
    per_width = {}
    for w in batches:
        e, c = statistics.median(seconds["eager"][w]), statistics.median(seconds["compiled"][w])
        per_width[w] = {"eager_s": e, "compiled_s": c, "eager_over_compiled": e / c}
    total_e = sum(v["eager_s"] for v in per_width.values())
    total_c = sum(v["compiled_s"] for v in per_width.values())
    return {"model": model_name, "rows": rows, "backend": backend, "warmup_and_compile_s": warm,
            "graphs": watch.graphs, "recompiles": watch.recompiles, "per_width": per_width,
            "eager_over_compiled": total_e / total_c}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=["tiny", "smollm2-135m"])
    parser.add_argument("--layers", type=int,
                        help="decoder layers kept (default: 2 of SmolLM2's 30 on cpu, all on cuda)")
    parser.add_argument("--rows", type=int, nargs="+",
                        help="batch sizes (default: 1 16 on cuda; on cpu 1 4 for tiny, 1 2 for smollm2-135m)")
    parser.add_argument("--widths", type=int, nargs="+", default=list(range(64, 513, 64)))
    parser.add_argument("--count-backend",
                        help="backend of the graph counts (default: eager on cpu, inductor on cuda)")
    parser.add_argument("--time-backend", default="inductor")
    parser.add_argument("--time-widths", type=int, nargs="+",
                        help="widths timed (default: 128 256 512 on cpu, all on cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    # peft's deprecation notice at every model built, twice per row of the table.
    warnings.filterwarnings("ignore", category=FutureWarning)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)

    def rows_for(name: str) -> list[int]:
        return args.rows or ([1, 16] if cuda else [1, 4] if name == "tiny" else [1, 2])

    count_backend = args.count_backend or ("inductor" if cuda else "eager")
    time_widths = args.time_widths or (args.widths if cuda else [w for w in (128, 256, 512)
                                                                 if w in args.widths])
    dtype = torch.bfloat16 if cuda else torch.float32
    # The gpu preset's step (presets/gpu.yaml); bf16 autocast on CUDA only (a CPU without bf16 hardware
    # emulates it).
    options = StepOptions(pad_to_multiple=64, autocast=cuda, compile=True, compile_backend=count_backend)
    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                     "rows": {name: rows_for(name) for name in args.models}, "widths": args.widths, "count_backend": count_backend, "counts": [],
                     "timing": []}

    print(f"{'model':14} {'layout':10} {'mode':6} {'graphs':>6} {'per code':>8} {'recomp':>6} {'fell back':>9} "
          f"{'shapes':>6} {'s':>6}  causes of recompilation")
    for name in args.models:
        layers = args.layers or (None if cuda or name == "tiny" else 2)
        rows = rows_for(name)
        for layout, r in [("padded", r) for r in rows] + [("packed", max(rows))]:
            for before in (True, False):
                res = count(name, layers, layout, r, args.widths, args.device, dtype, options, before)
                results["counts"].append(res)
                causes = ", ".join(sorted(res["causes"])) or "-"
                print(f"{name:14} {res['layout']:10} {res['mode']:6} {res['graphs']:6} "
                      f"{str(res['graphs_per_layer_code']):>8} {res['recompiles']:6} {res['fell_back']:9} "
                      f"{res['distinct_shapes']:6} {res['seconds']:6.1f}  {causes}", flush=True)
    if not args.no_timing:
        print(f"\nstep seconds, eager vs compiled layers ({args.time_backend}), median of {args.repeats}, "
              f"side by side:")
        for name in args.models:
            layers = args.layers or (None if cuda or name == "tiny" else 2)
            r = max(rows_for(name))
            res = timing(name, layers, r, time_widths, args.device, dtype, options, args.time_backend,
                         args.repeats)
            results["timing"].append(res)
            print(f"{name} ({r} rows, {'all' if layers is None else layers} layers): warm-up incl. compile "
                  f"{res['warmup_and_compile_s']:.1f} s, {res['graphs']} graph(s), "
                  f"{res['recompiles']} recompiles")
            for w, v in res["per_width"].items():
                print(f"  width {w:4}: eager {v['eager_s']:.4f} s  compiled {v['compiled_s']:.4f} s  "
                      f"eager/compiled {v['eager_over_compiled']:.2f}")
            print(f"  all widths: eager/compiled {res['eager_over_compiled']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
