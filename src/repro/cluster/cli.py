"""`repro forecast`: device-hours and job counts of a preset before anyone submits it."""

from __future__ import annotations

import json
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


def cmd_forecast(args) -> int:
    import pandas as pd

    from .throughput import forecast

    cfg = load_config(args.configfile)
    table = pd.DataFrame(forecast(cfg, gpu=args.gpu)).astype({"rank": "Int64"})
    total_hours = table["device_hours"].sum()
    device = table["device"].iloc[0]
    counts = None if args.no_dag else snakemake_job_counts(args.configfile.resolve(), Path.cwd())
    if args.format == "json":
        print(json.dumps({"rows": table.to_dict("records"), "device_hours": total_hours,
                          "dag_jobs": counts}, indent=2, default=str))
        return 0
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
        return 0
    shown = table.assign(tokens_per_s=table["tokens_per_s"].map("{:,.0f}".format),
                         hours_per_job=table["hours_per_job"].map("{:.3g}".format),
                         device_hours=table["device_hours"].map("{:.3g}".format))
    print(f"Forecast for {args.configfile} on {device} ({cfg['model']['name']}, {cfg['dtype']}):")
    print(shown.to_string(index=False))
    print(f"total: {int(table['jobs'].sum())} {device} jobs, {total_hours:,.1f} {device}-hours"
          + (f" (~{total_hours / 24:,.1f} {device}-days)" if total_hours > 48 else ""))
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
    p.set_defaults(func=cmd_forecast)
