"""``repro provenance collect`` and ``repro bundle pack|unpack``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_collect(args) -> int:
    from .collect import collect

    doc = collect(args.roots, args.out, args.tex_macros, args.tex_table, targets=args.targets)
    o = doc["summary"]["overall"]
    print(f"{args.out}: {o.get('jobs', 0)} manifests, {len(doc['summary']['by_command'])} commands, "
          f"commits {o.get('commits', [])}")
    return 0


def cmd_pack(args) -> int:
    from .bundle import BundleError, pack

    try:
        info = pack(args.root, args.out, args.format, args.max_file_mb, metadata=not args.no_metadata,
                    results=args.results)
    except BundleError as exc:
        print(f"repro: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


def cmd_unpack(args) -> int:
    from .bundle import BundleError, unpack

    try:
        info = unpack(args.file, args.dest, force=args.force, metadata=not args.no_metadata)
    except BundleError as exc:
        print(f"repro: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    print(f"restored {info['files']} files (config {info['config_hash']}); rebuild the paper without "
          f"training: make paper CONFIGFILE={info['results']}/config/resolved.json", file=sys.stderr)
    return 0


def register(sub) -> None:
    prov = sub.add_parser("provenance", help="provenance manifests").add_subparsers(dest="action", required=True)
    p = prov.add_parser("collect", help="gather every provenance manifest into one JSON (+ appendix TeX)")
    p.add_argument("--out", type=Path, default=Path("results/provenance.json"))
    p.add_argument("--tex-macros", type=Path, help="LaTeX macros summarising the run")
    p.add_argument("--tex-table", type=Path, help="LaTeX tables (per command; package versions)")
    p.add_argument("--targets", nargs="+", type=Path,
                   help="count only the jobs these files derive from (the workflow passes the paper's results)")
    p.add_argument("roots", nargs="*", type=Path, default=[Path("results"), Path("resources")],
                   help="folders searched for */provenance/*.json (default: results resources)")
    p.set_defaults(func=cmd_collect)

    bundle = sub.add_parser("bundle", help="restorable results bundles").add_subparsers(dest="action", required=True)
    p = bundle.add_parser("pack", help="write <results>/bundle-<confighash>.tar.zst (.tar.gz without zstandard)")
    p.add_argument("--root", type=Path, default=Path("."), help="workflow folder (default: .)")
    p.add_argument("--results", default="results",
                   help="the config's results folder (default: results, the embedded config's; "
                        "`repro results-dir --configfile F` prints another config's)")
    p.add_argument("--out", type=Path, help="bundle path (default: <results>/bundle-<confighash>.tar.<fmt>)")
    p.add_argument("--format", choices=["auto", "zst", "gz"], default="auto")
    p.add_argument("--max-file-mb", type=float, default=256.0, help="larger files are left out (listed)")
    p.add_argument("--no-metadata", action="store_true", help="leave Snakemake's metadata records out")
    p.set_defaults(func=cmd_pack)
    p = bundle.add_parser("unpack", help="restore a bundle so that Snakemake finds its outputs up to date")
    p.add_argument("file", type=Path)
    p.add_argument("--dest", type=Path, default=Path("."), help="workflow folder (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite files that differ from the bundle")
    p.add_argument("--no-metadata", action="store_true", help="do not restore Snakemake's metadata records")
    p.set_defaults(func=cmd_unpack)
