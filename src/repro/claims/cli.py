"""`repro claims ...`: the claims ledger (results/claims.csv) and its "Claims at a glance" tables."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..io import atomic_write_text


def cmd_build(args) -> int:
    from .build import build

    cfg = load_config(args.configfile)
    table = build(args.results, cfg, args.compare or [], resamples=cfg["claims"]["resamples"])
    atomic_write_text(args.out, table.to_csv(index=False))
    counts = table["verdict"].value_counts()
    print(f"{len(table)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    for r in table.to_dict("records"):
        print(f"  {r['verdict']:29s} {r['id']:34s} {r['measure'][:70]}")
    return 0


def cmd_table(args) -> int:
    from ..io import read_table
    from .build import CLAIMS_TABLE
    from .render import latex, markdown

    claims = read_table(args.claims, CLAIMS_TABLE)
    atomic_write_text(args.out, latex(claims) if args.format == "latex" else markdown(claims))
    return 0


def register(sub) -> None:
    claims = sub.add_parser("claims", help="the claims ledger").add_subparsers(dest="action", required=True)
    p = claims.add_parser("build", help="measure and judge every claim from a results folder")
    p.add_argument("--configfile", required=True, type=Path)
    p.add_argument("--results", required=True, type=Path, help="the results folder (results/)")
    p.add_argument("--compare", nargs="*", type=Path,
                   help="ledgers of the same claims run at another precision: a verdict that differs is marked not robust")
    p.add_argument("--out", required=True, type=Path, help="results/claims.csv")
    p.set_defaults(func=cmd_build)
    p = claims.add_parser("table", help="the ledger as a LaTeX or Markdown table")
    p.add_argument("--claims", required=True, type=Path)
    p.add_argument("--format", choices=["latex", "markdown"], default="latex")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_table)
