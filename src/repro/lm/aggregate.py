"""Collect every run's checkpoints into one tidy table: results/lm/runs.csv."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..io import TableSpec, atomic_write_text, read_table

REQUIRED_COLUMNS = [
    "model", "dataset", "method", "rank", "lr", "seed", "step", "trainable_params",
    "loss_ft", "loss_forget", "kl_forget", "base_entropy", "grad_norm",
]
RUN_KEYS = ["model", "dataset", "method", "rank", "lr", "seed", "alpha", "max_steps", "batch_size", "max_length"]
# What the law fits and the gradient-norm tables read from steps.csv.
STEP_COLUMNS = ["model", "dataset", "method", "rank", "lr", "seed", "step", "grad_norm"]


RUNS_TABLE = TableSpec("repro aggregate's table of every run x checkpoint", tuple(REQUIRED_COLUMNS),
                       text=("model", "dataset", "method", "run_dir"),
                       integers=("rank", "seed", "step", "trainable_params"), complete=tuple(REQUIRED_COLUMNS))
STEPS_TABLE = TableSpec("repro aggregate's per-step training log of every run", tuple(STEP_COLUMNS),
                        text=("model", "dataset", "method"), integers=("rank", "seed", "step"),
                        complete=tuple(STEP_COLUMNS))
TRAIN_LOG = TableSpec("a run's training log (repro finetune)", ("step", "updated", "loss", "grad_norm", "grad_norm_global"),
                      integers=("step", "updated"), complete=("step", "updated", "loss", "grad_norm", "grad_norm_global"),
                      rebuild="delete the run folder and rerun to retrain it")
EVAL_TABLE = TableSpec("a run's forgetting evaluation (repro evaluate forgetting)",
                       ("step", "loss_ft", "loss_forget", "kl_forget", "base_entropy"), integers=("step",),
                       complete=("step", "loss_ft", "loss_forget", "kl_forget", "base_entropy"))
TASKS_TABLE = TableSpec("task scores per checkpoint (repro evaluate tasks)", ("step",), integers=("step",),
                        complete=("step",))


def run_table(summary_path: Path, with_tasks: bool = False) -> pd.DataFrame:
    """One row per checkpoint of one run: run metadata, evaluation and training statistics."""
    summary_path = Path(summary_path)
    run_dir = summary_path.parent
    summary = json.loads(summary_path.read_text())
    eval_csv, log_csv = run_dir / "eval.csv", run_dir / "train_log.csv"
    for path in (eval_csv, log_csv):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (run 'repro evaluate' / 'repro finetune' for {run_dir})")
    ev = read_table(eval_csv, EVAL_TABLE)
    log = read_table(log_csv, TRAIN_LOG).set_index("step")
    # Log row s holds the loss and gradient at the parameters *before* update s, i.e. of checkpoint
    # s-1; the run ends with a probe row (no update) for the last checkpoint.
    probe = log.reindex(ev["step"] + 1)
    ev["grad_norm"] = probe["grad_norm"].to_numpy()
    ev["grad_norm_global"] = probe["grad_norm_global"].to_numpy()
    ev["train_loss"] = probe["loss"].to_numpy()
    for key in RUN_KEYS:
        ev[key] = summary[key]
    ev["trainable_params"] = summary["trainable_params"]
    scalings = summary["scaling"]
    ev["scaling"] = scalings[0] if len(scalings) == 1 else math.nan
    ev["run_dir"] = str(run_dir)
    if with_tasks:
        tasks_csv = run_dir / "tasks.csv"
        if not tasks_csv.exists():
            raise FileNotFoundError(f"{tasks_csv}: missing (run 'repro evaluate tasks' for {run_dir})")
        tasks = read_table(tasks_csv, TASKS_TABLE)
        unknown = sorted(set(tasks["step"]) - set(ev["step"]))
        if unknown:
            raise ValueError(f"{tasks_csv}: steps {unknown} are not checkpoints of {run_dir}")
        # Checkpoints that were not evaluated keep NaN in the task columns.
        ev = ev.merge(tasks, on="step", how="left")
    return ev


def join_base_tasks(table: pd.DataFrame, base_csv: Path) -> pd.DataFrame:
    """Put the base model's scores on every run's step-0 row (the adapter is zero there)."""
    base = read_table(base_csv, TASKS_TABLE)
    if list(base["step"]) != [0]:
        raise ValueError(f"{base_csv}: expected one row for step 0, got steps {list(base['step'])}")
    table = table.copy()
    at0 = table["step"] == 0
    for col in base.columns.drop("step"):
        if col not in table:
            table[col] = float("nan")
        table.loc[at0, col] = base[col].iloc[0]
    return table


def step_table(summary_path: Path) -> pd.DataFrame:
    """The per-step training log of one run with its run coordinates (probe row excluded)."""
    summary_path = Path(summary_path)
    summary = json.loads(summary_path.read_text())
    log = read_table(summary_path.parent / "train_log.csv", TRAIN_LOG)
    log = log[log["updated"] == 1].copy()
    for key in RUN_KEYS:
        log[key] = summary[key]
    log["trainable_params"] = summary["trainable_params"]
    first = ["model", "dataset", "method", "rank", "lr", "seed", "step"]
    return log[first + [c for c in log.columns if c not in first]]


def _write_csv(table: pd.DataFrame, out_csv: Path) -> None:
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_csv, table.to_csv(index=False))


def aggregate(summaries: list[Path], out_csv: Path, steps_csv: Path | None = None, with_tasks: bool = False,
              tasks_base: Path | None = None) -> pd.DataFrame:
    """Write runs.csv (one row per run x checkpoint) and optionally steps.csv (one row per step)."""
    if not summaries:
        raise ValueError("aggregate: no run summaries given")
    if steps_csv is not None:
        steps = pd.concat([step_table(Path(s)) for s in summaries], ignore_index=True)
        _write_csv(steps.sort_values(["model", "dataset", "method", "rank", "lr", "seed", "step"]), steps_csv)
    table = pd.concat([run_table(Path(s), with_tasks=with_tasks) for s in summaries], ignore_index=True)
    if tasks_base is not None:
        table = join_base_tasks(table, tasks_base)
    # Wall times of the evaluation jobs stay in their own tables: the tidy table holds only results,
    # so the same seed gives the same table on any machine or scheduler.
    table = table.drop(columns=[c for c in table.columns if c.startswith("evals_seconds")])
    first = REQUIRED_COLUMNS + [c for c in ("train_loss", "grad_norm_global", "scaling", "alpha") if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    table = table.sort_values(["model", "dataset", "method", "rank", "lr", "seed", "step"]).reset_index(drop=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"aggregate: columns missing from the tidy table: {missing}")
    _write_csv(table, out_csv)
    return table
