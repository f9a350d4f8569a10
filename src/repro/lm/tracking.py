"""Experiment tracking with MLflow, logged after the fact from each fine-tuning run's own files.

Training writes no tracking calls: rule ``track_runs`` (``repro track``) runs after aggregation and,
for every run, logs to any MLflow tracking URI

- params: model, dataset, method, rank, lr, seed, scaling and the other scalar settings of
  ``summary.json``;
- per-step metrics ``train/<column>`` (loss, adapter gradient norm, tokens/s, ...) from
  ``train_log.csv`` at their step numbers (optimizer steps only, not the final gradient probe);
- evaluation metrics ``eval/<column>`` per checkpoint (L_ft, L_f, KL, base entropy, task scores and
  refusal rate where evaluated) from ``runs.csv``, at the checkpoint's step;
- tags: the run's key (``repro.run_key``), git commit and dirty flag, config hash and lock hash from
  the run's provenance manifest, and a hash of everything logged (``repro.content_hash``).

Rerunning is idempotent: a run whose key and content hash are already in the experiment is left alone;
one whose content changed (retrained, re-evaluated) replaces the old record, which is deleted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .runs import Run, format_lr

SCHEMA = "repro-tracking/1"
TAG_KEY = "repro.run_key"
TAG_CONTENT = "repro.content_hash"

# Run coordinates and settings that are params, not metrics, wherever they appear in runs.csv.
RUN_PARAMS = ("model", "dataset", "method", "rank", "lr", "seed")
OPTIONAL_PARAMS = ("alpha", "dropout", "max_steps", "batch_size", "max_length", "weight_decay", "max_grad_norm",
                   "trainable_params", "dtype", "device", "group_by_length", "fast_loss")
NOT_METRICS = set(RUN_PARAMS) | set(OPTIONAL_PARAMS) | {"step", "scaling", "run_dir"}
STEP_REQUIRED = ("step", "loss", "grad_norm", "tokens_per_s")
STEP_NOT_METRICS = {"step", "updated", "lr"}

# MLflow's limits per log_batch request.
MAX_PARAMS, MAX_ENTRIES = 100, 1000


class TrackingError(ValueError):
    """A run's files cannot be logged; the message names the file and what is wrong."""


def default_uri(results: str = "results") -> str:
    """The local SQLite store inside the config's results folder."""
    return f"sqlite:///{results}/mlruns/mlflow.db"


def resolve_uri(config_uri: str | None, results: str = "results", environ=os.environ) -> str:
    """tracking.uri from the config, else MLFLOW_TRACKING_URI, else the local SQLite store."""
    return config_uri or environ.get("MLFLOW_TRACKING_URI") or default_uri(results)


def experiment_name(config: dict) -> str:
    return (config.get("tracking") or {}).get("experiment") or f"repro-{config['model']['name']}"


def public_uri(uri: str) -> str:
    """The URI without a password, for files and logs."""
    parts = urlsplit(uri)
    if parts.password:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def metric_key(prefix: str, column: str) -> str:
    # MLflow allows letters, digits, _ - . / and spaces in metric names.
    return f"{prefix}/{re.sub(r'[^A-Za-z0-9_./ -]', '_', column)}"


def _param_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_param_value(v) for v in value)
    return str(value)


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    return int(_dt.datetime.fromisoformat(iso).timestamp() * 1000)


@dataclass
class RunRecord:
    key: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[tuple[str, float, int]]  # (key, value, step)
    start_ms: int | None = None
    end_ms: int | None = None
    content_hash: str = field(init=False)

    def __post_init__(self):
        blob = json.dumps({"schema": SCHEMA, "params": self.params, "tags": self.tags, "metrics": self.metrics,
                           "start": self.start_ms, "end": self.end_ms}, sort_keys=True)
        self.content_hash = hashlib.sha256(blob.encode()).hexdigest()


def _run_rows(runs, summary: dict, runs_csv: Path, run_dir: Path):
    import pandas as pd

    mask = pd.Series(True, index=runs.index)
    for key in RUN_PARAMS:
        if key not in runs:
            raise TrackingError(f"{runs_csv}: no column {key!r} (expected the table of repro aggregate)")
        col = runs[key]
        mask &= (col.astype(float) == float(summary[key])) if key in ("rank", "lr", "seed") else (
            col.astype(str) == str(summary[key]))
    rows = runs[mask]
    if rows.empty:
        raise TrackingError(f"{runs_csv}: no row for the run in {run_dir} (aggregate it first)")
    return rows.sort_values("step")


def _provenance(run_dir: Path) -> dict:
    path = run_dir / "provenance" / "finetune.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def build_record(summary_path: Path, runs, runs_csv: Path = Path("runs.csv")) -> RunRecord:
    """Everything MLflow gets for one run, read from its summary.json, train_log.csv and runs.csv rows."""
    import pandas as pd

    summary_path = Path(summary_path)
    run_dir = summary_path.parent
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        raise TrackingError(f"{summary_path}: missing (run repro finetune first)") from None
    except json.JSONDecodeError as exc:
        raise TrackingError(f"{summary_path}: not valid JSON: {exc}") from None
    missing = [k for k in RUN_PARAMS + ("scaling",) if k not in summary]
    if missing:
        raise TrackingError(f"{summary_path}: keys {missing} missing")

    params = {k: _param_value(summary[k]) for k in RUN_PARAMS}
    params["lr"] = format_lr(summary["lr"])
    params["scaling"] = _param_value(summary["scaling"][0] if len(summary["scaling"]) == 1 else summary["scaling"])
    params.update({k: _param_value(summary[k]) for k in OPTIONAL_PARAMS if k in summary})

    log_csv = run_dir / "train_log.csv"
    if not log_csv.is_file():
        raise TrackingError(f"{log_csv}: missing (run repro finetune first)")
    from ..io import InputError, read_table
    from .aggregate import TRAIN_LOG

    try:
        log = read_table(log_csv, TRAIN_LOG)
    except InputError as exc:
        raise TrackingError(str(exc)) from None
    absent = [c for c in STEP_REQUIRED if c not in log]
    if absent:
        raise TrackingError(f"{log_csv}: columns {absent} missing")
    if "updated" in log:
        # The last row probes the gradient at the final checkpoint without an update.
        log = log[log["updated"] == 1]
    metrics: list[tuple[str, float, int]] = []
    for col in log.columns:
        if col in STEP_NOT_METRICS or not pd.api.types.is_numeric_dtype(log[col]):
            continue
        key = metric_key("train", col)
        metrics += [(key, float(v), int(s)) for s, v in zip(log["step"], log[col]) if math.isfinite(v)]

    rows = _run_rows(runs, summary, runs_csv, run_dir)
    for col in rows.columns:
        if col in NOT_METRICS or not pd.api.types.is_numeric_dtype(rows[col]):
            continue
        key = metric_key("eval", col)
        metrics += [(key, float(v), int(s)) for s, v in zip(rows["step"], rows[col]) if math.isfinite(v)]

    key = Run(summary["model"], summary["dataset"], summary["method"], int(summary["rank"]),
              format_lr(summary["lr"]), int(summary["seed"])).key
    prov = _provenance(run_dir)
    git = prov.get("git") or prov.get("code_git") or {}
    tags = {TAG_KEY: key, "repro.run_dir": str(run_dir)}
    if git.get("commit"):
        tags.update({"repro.git_commit": git["commit"], "mlflow.source.git.commit": git["commit"],
                     "repro.git_dirty": str(bool(git.get("dirty"))).lower()})
    if prov.get("config_hash"):
        tags["repro.config_hash"] = prov["config_hash"]
    if (prov.get("lock") or {}).get("sha256"):
        tags["repro.lock_sha256"] = prov["lock"]["sha256"]
    name = f"{summary['method']}-r{summary['rank']}-lr{format_lr(summary['lr'])}-seed{summary['seed']}"
    return RunRecord(key=key, name=name, params=params, tags=tags, metrics=metrics,
                     start_ms=_ms(prov.get("start")), end_ms=_ms(prov.get("end")))


def _batches(params: list, metrics: list):
    """(params, metrics) per log_batch request, within MLflow's limits: a run's usual few dozen params
    and few hundred metric points go in one request."""
    params, metrics = list(params), list(metrics)
    while params or metrics:
        p_batch, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        room = MAX_ENTRIES - len(p_batch)
        m_batch, metrics = metrics[:room], metrics[room:]
        yield p_batch, m_batch


def log_records(records: list[RunRecord], uri: str, experiment: str) -> dict:
    """Log every record to ``experiment`` at ``uri``; returns what was done per run."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    artifacts = None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        # Otherwise MLflow would put artifacts under ./mlruns of whatever directory this runs in.
        artifacts = (db.parent / "artifacts").resolve().as_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)

    done = []
    for rec in records:
        found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_KEY}` = '{rec.key}'", max_results=1000)
        same = [r for r in found if r.data.tags.get(TAG_CONTENT) == rec.content_hash and r.info.status == "FINISHED"]
        keep = same[0] if same else None
        for r in found:
            if keep is None or r.info.run_id != keep.info.run_id:
                client.delete_run(r.info.run_id)
        if keep is not None:
            done.append({"key": rec.key, "run_id": keep.info.run_id, "action": "unchanged",
                         "deleted": len(found) - 1})
            continue
        run = client.create_run(exp_id, start_time=rec.start_ms, tags=rec.tags, run_name=rec.name)
        run_id = run.info.run_id
        stamp = rec.end_ms or int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000)
        params = [Param(k, v) for k, v in sorted(rec.params.items())]
        metrics = [Metric(k, v, stamp, s) for k, v, s in rec.metrics]
        for p_batch, m_batch in _batches(params, metrics):
            client.log_batch(run_id, metrics=m_batch, params=p_batch)
        # Written last: a run interrupted while logging has no content hash and is replaced next time.
        client.set_tag(run_id, TAG_CONTENT, rec.content_hash)
        client.set_terminated(run_id, "FINISHED", end_time=rec.end_ms)
        done.append({"key": rec.key, "run_id": run_id, "action": "replaced" if found else "created",
                     "deleted": len(found)})
    return {"experiment_id": exp_id, "runs": done}


def track(summaries: list[Path], runs_csv: Path, uri: str, experiment: str, out: Path | None = None) -> dict:
    """Build every run's record, log them, and write the summary file ``out`` (the rule's output)."""
    if not summaries:
        raise TrackingError("repro track: no run summaries given")
    runs_csv = Path(runs_csv)
    if not runs_csv.is_file():
        raise TrackingError(f"{runs_csv}: missing (run repro aggregate first)")
    from ..io import InputError, read_table
    from .aggregate import RUNS_TABLE

    try:
        runs = read_table(runs_csv, RUNS_TABLE)
    except InputError as exc:
        raise TrackingError(str(exc)) from None
    records = [build_record(Path(s), runs, runs_csv) for s in summaries]
    keys = [r.key for r in records]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise TrackingError(f"repro track: the same run given twice: {dupes}")
    result = log_records(records, uri, experiment)
    by_key = {r.key: r for r in records}
    for entry in result["runs"]:
        rec = by_key[entry["key"]]
        entry.update(name=rec.name, content_hash=rec.content_hash, params=len(rec.params),
                     metrics=len(rec.metrics), tags={k: v for k, v in rec.tags.items() if k.startswith("repro.")})
    doc = {"schema": SCHEMA, "tracking_uri": public_uri(uri), "experiment": experiment, **result,
           "counts": {a: sum(e["action"] == a for e in result["runs"]) for a in ("created", "replaced", "unchanged")}}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out)
    return doc
