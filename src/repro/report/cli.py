"""`repro report html-tables`: the study tables as HTML pages for Snakemake's report.

The study commands that draw figures and write LaTeX live with their study (`repro laws figures`,
`repro teb figures`, `repro compression tables`); this ground-floor command knows only CSV and HTML.
"""

from __future__ import annotations

from pathlib import Path


def cmd_html_tables(args) -> int:
    from .html import write_tables

    for p in write_tables(args.csvs, args.out_dir):
        print(p)
    return 0


def register(sub) -> None:
    report = sub.add_parser("report", help="HTML pages of the study tables (snakemake --report)").add_subparsers(
        dest="action", required=True)
    p = report.add_parser("html-tables", help="an HTML page per CSV table, for snakemake --report")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("csvs", nargs="+", type=Path, help="CSV tables; each becomes <out-dir>/<stem>.html")
    p.set_defaults(func=cmd_html_tables)
