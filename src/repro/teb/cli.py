"""`repro teb ...`: the Transfer Entropy Bottleneck branch (data, training, evaluation, report)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from .runs import STOCHASTIC, VARIANTS, data_settings, parse_beta, task_specs


def _teb_config(path: Path) -> dict:
    return load_config(path)["teb"]


def _spec(teb: dict, task: str) -> dict:
    specs = task_specs(teb)
    if task not in specs:
        raise ConfigError(f"--task {task!r} is not an enabled teb task (enabled: {', '.join(specs) or 'none'})")
    return {**specs[task], "name": task}


def cmd_data(args) -> int:
    import torch

    from ..io import atomic_path, atomic_write_text
    from .tasks import describe, make_task, tensor_digest

    teb = _teb_config(args.configfile)
    spec = _spec(teb, args.task)
    splits, info = make_task(spec, teb["data_seed"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "data.pt") as tmp:
        torch.save(splits, tmp)
    # The generator's settings only: a task's betas or epochs do not change its data, and the
    # manifest is not rewritten when they change.
    manifest = {"task": args.task, "spec": data_settings(teb, args.task)["spec"], "info": info, "splits": describe(splits),
                "sha256": tensor_digest(splits)}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    sizes = ", ".join(f"{s} {len(d['target'])}" for s, d in splits.items())
    extra = f"; exact TE {info['exact_te']:.4f} nats" if "exact_te" in info else ""
    print(f"{args.task}: {sizes}{extra}")
    return 0


def cmd_train(args) -> int:
    from .train import load_data, train_run

    teb = _teb_config(args.configfile)
    if args.threads:
        teb["threads"] = args.threads
    if args.no_progress:
        teb["train"]["progress"] = False
    spec = _spec(teb, args.task)
    try:
        beta = parse_beta(args.beta)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.variant in STOCHASTIC and beta is None:
        raise ConfigError(f"--variant {args.variant} needs --beta")
    if args.variant == "teb" and args.target is None:
        raise ConfigError("--variant teb (TEB from context) needs --target, the trained target-only model directory")
    data = load_data(args.data)
    summary = train_run(teb, spec, data, args.variant, beta, args.seed, args.out, args.target)
    print(f"{args.task} {args.variant} beta={args.beta}: best epoch {summary['best_epoch']}/{summary['epochs']}, "
          f"val NLL {summary['best_val_nll']:.4f}, {summary['seconds']:.1f} s")
    return 0


def cmd_eval(args) -> int:
    import torch

    from .evaluate import evaluate_task
    from .train import load_data

    teb = _teb_config(args.configfile)
    torch.set_num_threads(teb["threads"])
    spec = _spec(teb, args.task)
    data = load_data(args.data)
    runs = {}
    for run in args.runs:
        meta = json.loads((Path(run) / "summary.json").read_text())
        runs[(meta["variant"], meta["beta"])] = Path(run)
    info = json.loads(Path(args.manifest).read_text())["info"]
    df = evaluate_task(args.task, spec["kind"], data, runs, args.target, teb["train"]["eval_samples"],
                       teb["train"]["prior_samples"], args.seed, spec=spec, info=info, bound=teb["bound"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    cols = ["variant", "beta", "exact_te", "te_lower", "te_lower_se", "log_k", "kl", "authors_gain",
            "gain_vs_target", "accuracy_switch", "accuracy_noswitch"]
    print(df[cols].to_string(index=False))
    return 0


def cmd_estimators(args) -> int:
    from .evaluate import reference_estimates
    from .train import load_data

    teb = _teb_config(args.configfile)
    spec = _spec(teb, args.task)
    if spec["kind"] != "ar":
        raise ConfigError(f"--task {args.task!r}: the reference estimators run on the AR tasks only")
    info = json.loads(Path(args.manifest).read_text())["info"]
    est = teb["estimators"]
    df = reference_estimates(args.task, load_data(args.data), info, est["ksg_k"], est["ksg_max_samples"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    return 0


def cmd_aggregate(args) -> int:
    from .aggregate import aggregate

    paths = aggregate(args.evals, args.estimators or [], args.manifests, args.out_dir)
    for name, p in paths.items():
        print(f"{name}: {p}")
    from ..io import read_table
    from .schemas import TE_SWEEP

    sweep = read_table(paths["te_sweep"], TE_SWEEP)
    if len(sweep):
        print(sweep.pivot_table(index=["c", "exact_te"], columns="estimator", values="te").to_string())
    return 0


def cmd_figures(args) -> int:
    from .figures import make_figures

    for p in make_figures(args.teb_dir, args.out):
        print(p)
    return 0


def cmd_tables(args) -> int:
    from .tables import make_tables

    for p in make_tables(args.teb_dir, args.out):
        print(p)
    return 0


def cmd_numbers(args) -> int:
    from .numbers import make_numbers

    print(make_numbers(args.teb_dir, args.out))
    return 0


def _lags(text: str) -> int | float:
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'inf', got {text!r}") from None


def cmd_exact_te(args) -> int:
    from .exact import exact_te

    try:
        te = exact_te(args.a, args.b, args.c, args.sigma_x, args.sigma_y, k=args.source_lags,
                      l=args.target_lags, H=args.horizon)
    except ValueError as exc:
        print(f"repro teb exact-te: error: {exc}", file=sys.stderr)
        return 2
    print(f"{te:.10g}")
    return 0


def register(sub) -> None:
    teb = sub.add_parser("teb", help="Transfer Entropy Bottleneck: tasks, models, TE estimates").add_subparsers(
        dest="action", required=True)

    def cfg(p):
        p.add_argument("--configfile", required=True, type=Path, help="pipeline config (YAML or resolved JSON)")

    p = teb.add_parser("data", help="generate one task (seeded) and its manifest")
    cfg(p)
    p.add_argument("--task", required=True, help="task name, e.g. ar-c0.3, sines, digits, needle")
    p.add_argument("--out", required=True, type=Path, help="directory for data.pt and manifest.json")
    p.set_defaults(func=cmd_data)

    p = teb.add_parser("train", help="train one model (target-only, TEB, TEB_0 or a baseline)")
    cfg(p)
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True, type=Path, help="the task's data.pt")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--beta", help="weight of the summed NLL against the KL term (teb, teb0); 'none' otherwise")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--target", type=Path, help="trained target-only model directory (needed by teb)")
    p.add_argument("--threads", type=int, help="override teb.threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, type=Path, help="run directory (model.pt, log.csv, summary.json)")
    p.set_defaults(func=cmd_train)

    p = teb.add_parser("eval", help="exact TE, contrastive lower bound, KL, the authors' gain and switch-event "
                       "quality of every model")
    cfg(p)
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path, help="the task's data manifest (its generator info)")
    p.add_argument("--target", required=True, type=Path, help="the target-only model directory")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, type=Path, help="CSV, one row per model")
    p.add_argument("runs", nargs="*", type=Path, help="run directories of the source models")
    p.set_defaults(func=cmd_eval)

    p = teb.add_parser("estimators", help="Gaussian and KSG TE estimates on an AR task's held-out windows")
    cfg(p)
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_estimators)

    p = teb.add_parser("aggregate", help="tidy tables: evals, estimators, TE sweep, information plane")
    p.add_argument("--evals", nargs="+", required=True, type=Path)
    p.add_argument("--estimators", nargs="*", type=Path)
    p.add_argument("--manifests", nargs="+", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.set_defaults(func=cmd_aggregate)

    for name, func, helptext in (("figures", cmd_figures, "TE vs exact, information plane, switch events"),
                                 ("tables", cmd_tables, "LaTeX tables (booktabs)")):
        p = teb.add_parser(name, help=helptext)
        p.add_argument("--teb-dir", required=True, type=Path, help="results/teb (the aggregate's tables)")
        p.add_argument("--out", required=True, type=Path, help="output directory")
        p.set_defaults(func=func)
    p = teb.add_parser("numbers", help="LaTeX macros of every quoted TEB number")
    p.add_argument("--teb-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="numbers.tex")
    p.set_defaults(func=cmd_numbers)

    p = teb.add_parser("exact-te", help="exact TE (nats) of the coupled AR(1) pair X -> Y")
    p.add_argument("--a", required=True, type=float, help="source autoregression (|a| < 1)")
    p.add_argument("--b", required=True, type=float, help="target autoregression (|b| < 1)")
    p.add_argument("--c", required=True, type=float, help="coupling X_{t-1} -> Y_t")
    p.add_argument("--sigma-x", required=True, type=float, help="source noise standard deviation (> 0)")
    p.add_argument("--sigma-y", required=True, type=float, help="target noise standard deviation (> 0)")
    p.add_argument("--source-lags", type=int, default=1, help="k (default 1)")
    p.add_argument("--target-lags", type=_lags, default=1, help="l, or 'inf' for the full target history (default 1)")
    p.add_argument("--horizon", type=int, default=1, help="H, future steps (default 1)")
    p.set_defaults(func=cmd_exact_te)
