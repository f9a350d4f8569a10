"""`repro model|data|finetune|evaluate|aggregate|track ...`: the language-model study's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, load_config


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", required=True, type=Path, help="pipeline config (YAML), validated first")


def cmd_model_fetch(args) -> int:
    from .models import fetch_model

    cfg = load_config(args.configfile)
    manifest = fetch_model(cfg["model"], args.out, args.downloads, dtype=cfg["dtype"])
    print(json.dumps({k: manifest[k] for k in ("name", "source", "weights")}, indent=2))
    return 0


def cmd_data_build(args) -> int:
    from .data import build_all

    cfg = load_config(args.configfile)
    manifest = build_all(cfg, args.model_dir, args.out)
    for rel, info in manifest["files"].items():
        print(f"{rel}: {info['rows']} rows, sha256 {info['sha256'][:12]}")
    return 0


def cmd_finetune(args) -> int:
    from .data import check_data_files, finetune_paths, read_jsonl
    from .finetune import RunSpec, train_run

    cfg = load_config(args.configfile)
    if args.dataset not in cfg["data"]["finetune"]:
        raise ConfigError(f"--dataset {args.dataset!r} is not a data.finetune entry of {args.configfile}")
    spec = RunSpec.from_config(cfg, args.dataset, args.method, args.rank, args.lr, args.seed)
    train = finetune_paths(args.data_dir, args.dataset)["train"]
    check_data_files(args.data_dir, [train])
    rows = read_jsonl(train)
    summary = train_run(spec, args.model_dir, rows, args.out, progress=not args.no_progress,
                        restart_stale=args.restart_stale)
    print(f"trained {summary['steps_done']} steps; {len(summary['checkpoints'])} checkpoints; "
          f"trainable params {summary['trainable_params']}; scaling {summary['scaling']}")
    return 0


def cmd_evaluate_forgetting(args) -> int:
    from .data import check_data_files, finetune_paths, forgetting_path, read_jsonl
    from .forgetting import evaluate_run

    cfg = load_config(args.configfile)
    summary = json.loads(Path(args.summary).read_text())
    heldout_path = finetune_paths(args.data_dir, summary["dataset"])["heldout"]
    corpora = {name: forgetting_path(args.data_dir, name) for name in cfg["data"]["forgetting"]}
    check_data_files(args.data_dir, [heldout_path, *corpora.values()])
    heldout = read_jsonl(heldout_path)
    forgetting = {name: read_jsonl(path) for name, path in corpora.items()}
    rows = evaluate_run(
        args.summary, args.model_dir, heldout, forgetting, args.out,
        batch_size=cfg["evaluate"]["batch_size"], max_cache_gb=cfg["evaluate"]["max_cache_gb"],
        device=cfg["device"], dtype=cfg["dtype"], threads=cfg["finetune"]["threads"],
        progress=not args.no_progress,
    )
    last = rows[-1]
    print(f"step {last['step']}: L_ft={last['loss_ft']:.4f} L_f={last['loss_forget']:.4f} KL={last['kl_forget']:.4f}")
    return 0


def cmd_evaluate_tasks(args) -> int:
    from .evals import evaluate_checkpoints

    cfg = load_config(args.configfile)  # validation includes the evals plan's cross-key checks
    if not cfg["evals"]["enabled"]:
        raise ConfigError(f"key 'evals.enabled': false in {args.configfile}; nothing to evaluate")
    if (args.summary is None) == (not args.base):
        raise ConfigError("repro evaluate tasks: give exactly one of --summary (a run) or --base (the base model)")
    rows = evaluate_checkpoints(cfg, args.model_dir, args.out, summary_path=args.summary, steps=args.steps,
                                progress=not args.no_progress)
    for row in rows:
        shown = {k: round(v, 4) for k, v in row.items() if k != "step" and not k.endswith(("_stderr", "_n"))}
        print(f"step {row['step']}: {shown}")
    return 0


def cmd_aggregate(args) -> int:
    from .aggregate import aggregate

    table = aggregate(args.summaries, args.out, steps_csv=args.steps_out, with_tasks=args.with_tasks,
                      tasks_base=args.tasks_base)
    print(f"{args.out}: {len(table)} rows from {table.groupby(['dataset', 'method', 'rank', 'lr', 'seed']).ngroups} runs")
    return 0


def cmd_track(args) -> int:
    import os

    from .tracking import TrackingError, experiment_name, public_uri, resolve_uri, track

    # MLflow's client retries an unanswered server for minutes; one short retry, then a clear error.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

    cfg = load_config(args.configfile)
    uri = args.tracking_uri or resolve_uri(cfg["tracking"]["uri"], cfg.get("results") or "results")
    experiment = args.experiment or experiment_name(cfg)
    from mlflow.exceptions import MlflowException

    try:
        doc = track(args.summaries, args.runs, uri, experiment, out=args.out)
    except TrackingError as exc:
        print(f"repro track: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"repro track: tracking server {public_uri(uri)}: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {action}" for action, n in doc["counts"].items())
    print(f"{public_uri(uri)}, experiment {experiment!r} ({doc['experiment_id']}): {counts}")
    return 0


def register(sub) -> None:
    model = sub.add_parser("model", help="base models").add_subparsers(dest="action", required=True)
    p = model.add_parser("fetch", help="download/convert the configured model to safetensors")
    _add_config(p)
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--downloads", type=Path, default=Path("resources/downloads"), help="download cache")
    p.set_defaults(func=cmd_model_fetch)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    p = data.add_parser("build", help="build fine-tuning data and forgetting corpora")
    _add_config(p)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_data_build)

    p = sub.add_parser("finetune", help="one LoRA/rsLoRA run with log-spaced checkpoints (resumable)")
    _add_config(p)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", required=True, choices=["lora", "rslora"])
    p.add_argument("--rank", required=True, type=int)
    p.add_argument("--lr", required=True, type=float)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--restart-stale", action="store_true",
                   help="state in --out saved under other settings is moved to <out>/superseded/ and the run "
                   "starts from step 0 (the workflow passes this); without it such state is refused")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)

    evaluate = sub.add_parser("evaluate", help="evaluations of a run's checkpoints").add_subparsers(
        dest="action", required=True)
    p = evaluate.add_parser("forgetting", help="L_ft and forgetting L_f at every checkpoint of a run")
    _add_config(p)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--summary", required=True, type=Path, help="the run's summary.json")
    p.add_argument("--out", required=True, type=Path, help="eval.csv to write")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate_forgetting)
    p = evaluate.add_parser("tasks", help="lm-eval benchmarks and refusal rate at selected checkpoints (evals:)")
    _add_config(p)
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--summary", type=Path, help="the run's summary.json (steps from evals.checkpoints, step 0 excluded)")
    p.add_argument("--base", action="store_true", help="evaluate the base model (step 0 of every run) instead")
    p.add_argument("--steps", type=int, nargs="+", help="evaluate exactly these checkpoint steps of --summary")
    p.add_argument("--out", required=True, type=Path, help="tasks.csv to write")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate_tasks)

    p = sub.add_parser("aggregate", help="tidy table of every run x checkpoint")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps-out", type=Path, help="also write the per-step training logs as one table")
    p.add_argument("--with-tasks", action="store_true", help="join each run's tasks.csv (repro evaluate tasks)")
    p.add_argument("--tasks-base", type=Path, help="base-model tasks.csv, joined to every run's step-0 row")
    p.add_argument("summaries", nargs="+", type=Path, help="summary.json of each run")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("track", help="log every fine-tuning run to MLflow from its files (idempotent)")
    _add_config(p)
    p.add_argument("--runs", required=True, type=Path, help="runs.csv of repro aggregate (evaluation metrics)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri, MLFLOW_TRACKING_URI, "
                   "else sqlite:///<results folder>/mlruns/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment, else repro-<model>)")
    p.add_argument("--out", type=Path, help="JSON summary to write: MLflow run id and action per run")
    p.add_argument("summaries", nargs="+", type=Path, help="summary.json of each run")
    p.set_defaults(func=cmd_track)
