"""``repro paper setup-macros`` and ``repro paper build``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_setup_macros(args) -> int:
    from .setup import write_setup_macros

    print(write_setup_macros(args.configfile, args.out, args.config_source))
    return 0


def cmd_inventory(args) -> int:
    from .inventory import write_inventory

    print(write_inventory(args.out, args.figures, args.tables, args.prefix))
    return 0


def cmd_build(args) -> int:
    from .build import PaperError, build

    try:
        info = build(args.dir, args.out, args.main, args.build_dir, args.report, args.allow_undefined,
                     results_dir=args.results_dir)
    except PaperError as exc:
        print(f"repro: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    if info["missing_parts"]:
        print(f"note: {len(info['missing_parts'])} parts shown as missing (their results are absent): "
              + "; ".join(info["missing_parts"]), file=sys.stderr)
    return 0


def register(sub) -> None:
    paper = sub.add_parser("paper", help="the generated paper").add_subparsers(dest="action", required=True)
    p = paper.add_parser("setup-macros", help="LaTeX macros of the setup as run (from the resolved config)")
    p.add_argument("--configfile", required=True, type=Path, help="resolved config (JSON) or a YAML config")
    p.add_argument("--config-source", help="the config file the run was started with (quoted in captions)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_setup_macros)
    p = paper.add_parser("inventory", help="a LaTeX file including every figure and table of a study")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--figures", nargs="*", default=[], help="PATH=RULE for each figure (PDF)")
    p.add_argument("--tables", nargs="*", default=[], help="LaTeX table files")
    p.add_argument("--prefix", default="../", help="path from the paper folder to the workflow folder")
    p.set_defaults(func=cmd_inventory)
    p = paper.add_parser("build", help="latexmk (pdflatex, bibtex); fails on undefined references")
    p.add_argument("--dir", type=Path, default=Path("paper"), help="folder holding the main .tex")
    p.add_argument("--main", default="main.tex")
    p.add_argument("--build-dir", default="build", help="latexmk -outdir, relative to --dir")
    p.add_argument("--results-dir", default="../results",
                   help="the config's results folder as seen from --dir (the paper's \\resultsdir)")
    p.add_argument("--out", required=True, type=Path, help="where the PDF is copied")
    p.add_argument("--report", type=Path, help="JSON: pages, undefined references, missing parts")
    p.add_argument("--allow-undefined", action="store_true")
    p.set_defaults(func=cmd_build)
