"""`repro report ...`: figures, LaTeX tables, the numbers macro file and HTML tables for the report."""

from __future__ import annotations

from pathlib import Path


def cmd_figures(args) -> int:
    from .figures import make_all

    paths = make_all(args.runs, args.steps, args.laws_dir / "fits", args.out)
    if args.rank_stability:
        import pandas as pd

        from ..laws.rank_stability import plot_rank_stability

        moments = pd.read_csv(args.rank_stability)
        for optimizer, grp in moments.groupby("optimizer"):
            paths += plot_rank_stability(grp, args.out / f"rank_stability_{optimizer}")
    for p in paths:
        print(p)
    return 0


def cmd_tables(args) -> int:
    from .tables import make_all

    for p in make_all(args.laws_dir / "fits", args.laws_dir / "gradnorm_spread.csv",
                      args.laws_dir / "early_stopping.csv", args.out):
        print(p)
    return 0


def cmd_numbers(args) -> int:
    from .numbers import make_numbers

    print(make_numbers(args.runs, args.laws_dir / "fits", args.laws_dir / "gradnorm_spread.csv",
                       args.rank_stability_slopes, args.out))
    return 0


def cmd_html_tables(args) -> int:
    from .html import write_tables

    for p in write_tables(args.csvs, args.out_dir):
        print(p)
    return 0


def register(sub) -> None:
    report = sub.add_parser("report", help="figures, tables and numbers").add_subparsers(dest="action", required=True)
    p = report.add_parser("figures", help="PDF + PNG figures")
    p.add_argument("--runs", required=True, type=Path)
    p.add_argument("--steps", required=True, type=Path)
    p.add_argument("--laws-dir", required=True, type=Path)
    p.add_argument("--rank-stability", type=Path, help="moments CSV of `repro laws rank-stability`")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_figures)
    p = report.add_parser("tables", help="LaTeX (booktabs) tables")
    p.add_argument("--laws-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_tables)
    p = report.add_parser("numbers", help="results/numbers.tex macros")
    p.add_argument("--runs", required=True, type=Path)
    p.add_argument("--laws-dir", required=True, type=Path)
    p.add_argument("--rank-stability-slopes", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_numbers)
    p = report.add_parser("html-tables", help="an HTML page per CSV table, for snakemake --report")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("csvs", nargs="+", type=Path, help="CSV tables; each becomes <out-dir>/<stem>.html")
    p.set_defaults(func=cmd_html_tables)
