"""`repro forecast`: device-hours and job counts of a preset before anyone submits it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..config import load_config


def snakemake_job_counts(configfile: Path, workdir: Path) -> dict[str, int] | None:
    """Jobs per rule in the DAG as Snakemake plans it (None when no Snakefile or snakemake is at hand)."""
    exe = shutil.which("snakemake")
    if exe is None or not (workdir / "Snakefile").is_file():
        return None
    proc = subprocess.run([exe, "-n", "--quiet", "rules", "--configfile", str(configfile)], cwd=workdir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n --configfile {configfile} failed:\n{proc.stderr[-2000:]}")
    counts = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def _print_memory(cfg: dict, args, site_model: str | None) -> int:
    import pandas as pd

    from .memory import FIT_MARGIN, GPU_MEMORY_GB, memory_table

    table = pd.DataFrame(memory_table(cfg, site_model))
    if args.format == "json":
        print(json.dumps({"rows": table.to_dict("records"), "unit": "GB (1e9 bytes)",
                          "gpu_memory_gb": GPU_MEMORY_GB, "fit_margin": FIT_MARGIN}, indent=2, default=str))
        return 0
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
        return 0
    shown = table.assign(adapter_params=table["adapter_params"].map("{:,}".format),
                         gpu=table["gpu"].map(lambda g: "-" if pd.isna(g) else g))
    gb_columns = [c for c in table.columns if c not in ("rank", "adapter_params", "gpu")]
    shown[gb_columns] = table[gb_columns].map("{:.2f}".format)
    where = "GPU" if cfg["device"] == "cuda" else f"{cfg['device']} (host)"
    print(f"{where} memory of each fine-tuning job of {args.configfile} ({cfg['model']['name']}, {cfg['dtype']}), "
          "GB; host_checkpoint is the host memory one checkpoint save takes:")
    print(shown.to_string(index=False))
    if cfg["device"] == "cuda":
        print("a job runs on a GPU holding its total_gpu with " + f"{FIT_MARGIN:.0%} kept free ("
              + ", ".join(f"{g} {GPU_MEMORY_GB[g]}" for g in cfg["cluster"]["gpus"]) + " GB; cluster.gpus)")
    return 0


def cmd_forecast(args) -> int:
    import pandas as pd

    from .throughput import forecast

    cfg = load_config(args.configfile)
    site_model = os.environ.get("REPRO_SLURM_GPU_MODEL") or None
    if args.memory:
        return _print_memory(cfg, args, site_model)
    rows = forecast(cfg, gpu=args.gpu, site_gpu_model=site_model)
    table = pd.DataFrame(rows).astype({"rank": "Int64"})
    total_hours = table["device_hours"].sum()
    device = table["device"].iloc[0]
    counts = None if args.no_dag else snakemake_job_counts(args.configfile.resolve(), Path.cwd())
    if args.format == "json":
        # The rows as forecast gives them: a value a row does not have is null, never NaN.
        print(json.dumps({"rows": rows, "device_hours": total_hours, "dag_jobs": counts}, indent=2, default=str))
        return 0
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
        return 0
    shown = table.assign(tokens_per_s=table["tokens_per_s"].map("{:,.0f}".format),
                         hours_per_job=table["hours_per_job"].map("{:.3g}".format),
                         device_hours=table["device_hours"].map("{:.3g}".format),
                         gpu_memory_gb=table["gpu_memory_gb"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
                         gpu=table["gpu"].map(lambda g: "-" if pd.isna(g) else g))
    print(f"Forecast for {args.configfile} on {device} ({cfg['model']['name']}, {cfg['dtype']}):")
    print(shown.to_string(index=False))
    print(f"total: {int(table['jobs'].sum())} {device} jobs, {total_hours:,.1f} {device}-hours"
          + (f" (~{total_hours / 24:,.1f} {device}-days)" if total_hours > 48 else ""))
    sized = table[table["gpu_memory_gb"].notna()]
    if not sized.empty:
        peak = sized.loc[sized["gpu_memory_gb"].astype(float).idxmax()]
        print(f"largest fine-tuning job: ~{peak['gpu_memory_gb']:.0f} GB of GPU memory (rank {peak['rank']}, on "
              f"{peak['gpu']}); each job's breakdown: repro forecast --memory")
        elsewhere = sized[sized["gpu"] != device].groupby("gpu")["jobs"].sum()
        if not elsewhere.empty:
            print("fine-tuning jobs too large for the " + device + ": "
                  + ", ".join(f"{n} on {g}" for g, n in elsewhere.items())
                  + f" (their hours above are the {device}'s)")
    if counts is not None:
        print(f"whole DAG (snakemake -n): {counts.get('total', sum(counts.values()))} jobs; "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "total"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("forecast", help="device-hours and job counts of a config before submitting it")
    p.add_argument("--configfile", required=True, type=Path, help="pipeline config (YAML), validated first")
    p.add_argument("--gpu", default=None, help="GPU the throughput refers to (default H100; ignored on cpu)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--no-dag", action="store_true", help="skip counting every job with snakemake -n")
    p.add_argument("--memory", action="store_true",
                   help="print each fine-tuning job's GPU memory estimate by component instead (GB)")
    p.set_defaults(func=cmd_forecast)
