"""GPU smoke test of the CUDA route: one prepared script, JSON out, about 10 minutes on one H100.

Whoever gets a GPU runs this first, from a checkout set up with `make setup DEVICE=cuda`:

    .venv/bin/python benchmarks/gpu_smoke.py --json gpu_smoke.json

Sections (each timed; a failing section is recorded in the JSON with its error and the next one runs):
  env         torch and its CUDA build, the device, liger-kernel and triton versions
  fused_ce    liger's fused output layer + cross-entropy against the plain path: loss and gradients
  step_smollm the gpu preset's training step (presets/gpu.yaml's finetune options) on SmolLM2-135M
              shapes, random weights, `--steps` steps over every width bucket up to max_length:
              host syncs per step (torch.cuda.set_sync_debug_mode), dynamo graphs and recompiles
              (repro.lm.step.CompileWatch), tokens/s with liger's cross-entropy and with the plain one
  memory_7b   Llama-2-7B shapes at r = 16, with and without gradient checkpointing: the allocator's peak
              against repro.cluster.memory's estimate for the same batch (an out-of-memory is a result)
  step_7b     the full 7B at r = 512 with the paper preset's step: seconds per step and input tokens/s,
              recorded into src/repro/cluster/throughput.csv as measured (with --record)
  eval_7b     the forgetting evaluation's forward at r = 512 with adapters in bf16 (repro.lm.adapters)
              against the bare bf16 forward and peft's fp32 adapters
  dag         a few steps of the test preset's DAG on CUDA (`--dag`): one fine-tuning job and its
              forgetting evaluation through Snakemake with device=cuda

`--device cpu --shapes tiny` runs every section on a tiny random Llama on the CPU (CUDA-only parts are
reported as skipped): the test suite runs it so the script cannot rot before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from lm_speed import SHAPES, build_model, synthetic_examples  # noqa: E402

from repro.config import load_config  # noqa: E402
from repro.lm.adapters import build_adapter_model  # noqa: E402
from repro.lm.finetune import RunSpec  # noqa: E402
from repro.lm.step import StepOptions, StepRunner, make_optimizer, prepare_model  # noqa: E402

SKIPPED = "skipped"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def preset_spec(preset: str, rank: int, **overrides) -> tuple[dict, RunSpec]:
    cfg = load_config(REPO / "presets" / preset)
    ft = cfg["finetune"]
    spec = RunSpec.from_config(cfg, ft["datasets"][0], "rslora", rank, ft["learning_rates"][0], 0)
    step = {k: overrides.pop(k) for k in list(overrides) if k in StepOptions.__dataclass_fields__}
    spec.step = replace(spec.step, **step)
    for key, value in overrides.items():
        setattr(spec, key, value)
    return cfg, spec


def section_env(args) -> dict:
    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, memory_gb=p.total_memory / 1e9, capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported())
    for name in ("liger_kernel", "triton", "peft", "transformers"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "installed")
        except Exception as exc:  # noqa: BLE001 - an import failure is what this section reports
            out[name] = f"not importable: {type(exc).__name__}: {exc}"
    if args.device == "cuda" and (torch.version.cuda is None or "+cpu" in torch.__version__):
        raise RuntimeError(f"torch {torch.__version__} is a CPU build: run `make setup DEVICE=cuda`")
    return out


def section_fused_ce(args) -> dict:
    from repro.lm.step import liger_available, liger_linear_cross_entropy, plain_linear_cross_entropy

    if args.device != "cuda" or not liger_available():
        return {"status": SKIPPED, "why": "liger's kernel needs CUDA and liger-kernel"}
    torch.manual_seed(0)
    n, hidden, vocab = 4096, 576, 49152
    h = torch.randn(n, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (n,), device="cuda")
    out = {}
    for name, fn in (("plain", plain_linear_cross_entropy), ("liger", liger_linear_cross_entropy)):
        h.grad = w.grad = None
        loss = fn(h, w, None, t) / n
        loss.backward()
        out[name] = (loss.detach().float(), h.grad.float().clone(), w.grad.float().clone())
    (lp, hp, wp), (ll, hl, wl) = out["plain"], out["liger"]
    res = {"loss_plain": float(lp), "loss_liger": float(ll), "loss_abs_diff": float((lp - ll).abs()),
           "grad_hidden_rel_diff": float((hp - hl).norm() / hp.norm()),
           "grad_weight_rel_diff": float((wp - wl).norm() / wp.norm())}
    res["ok"] = res["loss_abs_diff"] < 1e-2 and res["grad_hidden_rel_diff"] < 2e-2 and res["grad_weight_rel_diff"] < 2e-2
    return res


def _examples(rows: int, width: int, vocab: int, seed: int) -> list:
    """Chat-like examples whose longest has exactly ``width`` tokens, so the batch is that bucket."""
    from repro.lm.tokens import IGNORE, Example

    exs = synthetic_examples(rows, width, vocab, seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (width,), generator=g).tolist()
    exs[0] = Example(ids, [IGNORE] * (width // 2) + ids[width // 2:])
    return exs


def _run_steps(model_name: str, spec: RunSpec, device: str, steps: int, widths: list[int], rows: int,
               fused: bool | None = None, watch_compile: bool = True) -> dict:
    """``steps`` steps of repro's step on random weights, cycling over the width buckets."""
    from repro.lm.step import CompileWatch

    options = spec.step_options(device)
    if fused is not None:
        options = type(options)(**{**options.__dict__, "fused_cross_entropy": fused})
    dtype = getattr(torch, spec.dtype)
    model = build_adapter_model(build_model(model_name, device, dtype), spec.method, spec.rank, spec.alpha, 0.0,
                                spec.target_modules)
    model.train()
    watch = CompileWatch() if watch_compile and options.compile else None
    if watch:
        watch.__enter__()
    prepare_model(model, options)
    params = [p for p in model.parameters() if p.requires_grad]
    runner = StepRunner(model, make_optimizer(params, 1e-5, device=device, fused=options.fused_optimizer), params,
                        options, device, row_capacity=spec.max_length)
    vocab = SHAPES[model_name].vocab_size
    batches = [_examples(rows, widths[i % len(widths)], vocab, seed=i) for i in range(steps)]
    # Warm-up: every width once (compilation happens here), each step waited for.
    warm = min(len(widths), steps // 2)
    for exs in batches[:warm]:
        runner.run(runner.layout(exs, 0))
        _sync(device)
    runner.flush()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    layouts = [runner.layout(exs, 0) for exs in batches[warm:]]
    tokens = sum(b.n_tokens for b in layouts)
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            # Every host wait inside the measured steps becomes a warning (flush, the one intended
            # wait, comes after).
            torch.cuda.set_sync_debug_mode("warn")
        t0 = time.perf_counter()
        for i, batch in enumerate(layouts, start=warm):
            runner.run(batch, step=i)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    _sync(device)
    total = time.perf_counter() - t0
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    metrics = runner.flush()
    out = {"steps": steps, "widths": widths, "rows": rows, "options": options.__dict__,
           "cross_entropy": runner.cross_entropy_name, "measured_steps": steps - warm,
           "host_syncs_per_step": syncs / max(steps - warm, 1) if device == "cuda" else None,
           "input_tokens_per_s": tokens / total if total > 0 else None,
           "seconds_per_step": total / max(steps - warm, 1),
           "final_loss": metrics[-1]["loss"] if metrics else None,
           "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}
    if watch:
        watch.__exit__(None, None, None)
        out["compile"] = watch.summary()
    del runner, model, params
    _release(device)
    return out


def section_step_smollm(args) -> dict:
    cfg, spec = preset_spec("gpu.yaml", 16)
    model = "smollm2-135m" if args.shapes == "real" else "tiny"
    pad = spec.step.pad_to_multiple
    max_len = spec.max_length if args.shapes == "real" else 4 * pad
    widths = list(range(pad, max_len + 1, pad))
    if args.device == "cpu":
        spec.dtype = "float32"
    rows = spec.batch_size if args.shapes == "real" else 2
    out = {"liger": _run_steps(model, spec, args.device, args.steps, widths, rows, fused=True)}
    out["plain_cross_entropy"] = _run_steps(model, spec, args.device, args.steps, widths, rows, fused=False,
                                            watch_compile=False)
    a, b = out["liger"]["input_tokens_per_s"], out["plain_cross_entropy"]["input_tokens_per_s"]
    out["liger_speedup"] = a / b if a and b else None
    return out


def _llama_memory(args, gradient_checkpointing: bool, rank: int, batch_size: int) -> dict:
    from repro.cluster.memory import job_memory

    cfg, spec = preset_spec("paper.yaml", rank, gradient_checkpointing=gradient_checkpointing,
                            batch_size=batch_size, compile=False)
    model = "llama2-7b" if args.shapes == "real" else "tiny"
    if args.shapes != "real":
        spec.max_length = 128
        # The memory model is asked about the model that runs (lm_speed's tiny shape is the tiny source's).
        cfg["model"] = {"name": "tiny", "source": "tiny"}
    if args.device == "cpu":
        spec.dtype, spec.step = "float32", replace(spec.step, autocast=False)
        cfg.update(dtype="float32", device="cpu")
        cfg["finetune"]["autocast"] = False
    cfg["finetune"].update(gradient_checkpointing=gradient_checkpointing, batch_size=batch_size,
                           max_length=spec.max_length, compile=False)
    estimate = job_memory(cfg, rank)
    try:
        run = _run_steps(model, spec, args.device, 3, [spec.max_length], batch_size, watch_compile=False)
    except torch.OutOfMemoryError as exc:
        _release(args.device)
        run = {"out_of_memory": str(exc).splitlines()[0]}
    est = estimate.gigabytes()
    out = {"rank": rank, "batch_size": batch_size, "max_length": spec.max_length,
           "gradient_checkpointing": gradient_checkpointing, "estimate_gb": est, "run": run}
    if run.get("peak_memory_gb") is not None and "total_gpu" in est:
        out["measured_over_estimate"] = run["peak_memory_gb"] / est["total_gpu"]
    return out


def section_memory_7b(args) -> dict:
    batch = 4 if args.shapes == "real" else 2
    return {"with_checkpointing": _llama_memory(args, True, 16, batch),
            "without_checkpointing": _llama_memory(args, False, 16, batch)}


def section_step_7b(args) -> dict:
    from repro.cluster.throughput import record_rows

    cfg, spec = preset_spec("paper.yaml", 512)
    model = "llama2-7b" if args.shapes == "real" else "tiny"
    if args.shapes != "real":
        spec.max_length, spec.batch_size = 128, 2
    if args.device == "cpu":
        spec.dtype, spec.step = "float32", replace(spec.step, autocast=False, compile=False)
    run = _run_steps(model, spec, args.device, args.steps_7b, [spec.max_length], spec.batch_size)
    out = {"rank": 512, "batch_size": spec.batch_size, "max_length": spec.max_length, "run": run}
    if args.record and args.device == "cuda" and args.shapes == "real":
        name = torch.cuda.get_device_name()
        device = next((g for g in ("H200", "H100", "A100", "L40S") if g in name), name)
        row = {"model": "llama-2-7b", "device": device, "dtype": spec.dtype, "phase": "train", "rank": 512,
               "batch_size": spec.batch_size, "max_length": spec.max_length, "threads": "",
               "tokens_per_s": f"{run['input_tokens_per_s']:.1f}", "source": "measured",
               "measured": dt.date.today().isoformat(), "command": "python benchmarks/gpu_smoke.py --record"}
        record_rows([row])
        out["recorded"] = row
    return out


def section_eval_7b(args) -> dict:
    from eval_precision import bench_speed

    ns = argparse.Namespace(device=args.device, model="llama2-7b" if args.shapes == "real" else "tiny",
                            batch_size=4 if args.shapes == "real" else 2, seq_len=1024 if args.shapes == "real" else 64,
                            batches=2, rounds=2)
    return bench_speed(ns, 512 if args.shapes == "real" else 8)


def section_dag(args) -> dict:
    if not args.dag:
        return {"status": SKIPPED, "why": "run with --dag"}
    snakemake = Path(sys.executable).with_name("snakemake")
    target = "results-test-cuda/lm/runs.csv"
    cmd = [str(snakemake), "--cores", "4", target, "--configfile", "presets/test.yaml",
           "--config", f"device={args.device}", "results=results-test-cuda", "evals={enabled: false}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.dag_timeout)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "tail": (proc.stdout + proc.stderr)[-3000:], "ok": proc.returncode == 0}


SECTIONS = {"env": section_env, "fused_ce": section_fused_ce, "step_smollm": section_step_smollm,
            "memory_7b": section_memory_7b, "step_7b": section_step_7b, "eval_7b": section_eval_7b,
            "dag": section_dag}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shapes", choices=["real", "tiny"], default=None,
                        help="real: SmolLM2-135M and Llama-2-7B shapes (default on cuda); tiny: a test model")
    parser.add_argument("--steps", type=int, default=40, help="steps of the SmolLM2 step section")
    parser.add_argument("--steps-7b", type=int, default=8, help="steps of the 7B r = 512 section")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--record", action="store_true", help="write the 7B r = 512 step rate into throughput.csv")
    parser.add_argument("--dag", action="store_true", help="also run the test preset's DAG on the device")
    parser.add_argument("--dag-timeout", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.shapes = args.shapes or ("real" if args.device == "cuda" else "tiny")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    result: dict = {"started": dt.datetime.now().isoformat(timespec="seconds"), "device": args.device,
                    "shapes": args.shapes, "sections": {}}
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            out = SECTIONS[name](args)
            status = out.get("status", "ok") if isinstance(out, dict) else "ok"
        except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others' results
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            status = "error"
            _release(args.device)
        result["sections"][name] = {"status": status, "seconds": time.perf_counter() - t0, **out}
        print(f"{name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if args.json:  # written after every section: a killed run keeps what it measured
            args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
