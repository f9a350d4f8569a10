"""HTML versions of the result tables for ``snakemake --report``.

The report shows HTML inline but offers a CSV only as a download, so every table a study reports is
also written as a small self-contained HTML page (same rows and columns as its CSV).
"""

from __future__ import annotations

import html
from pathlib import Path

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 0.5em; }
p.source { color: #555; }
table { border-collapse: collapse; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
"""


def table_html(csv_path: Path, title: str | None = None) -> str:
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    body = table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.6g}", border=0)
    title = html.escape(title or csv_path.stem)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n"
            f"<p class=\"source\">{html.escape(csv_path.as_posix())}: {len(table)} rows</p>\n{body}\n</body></html>\n")


def write_tables(csvs: list[Path], out_dir: Path) -> list[Path]:
    """``<out_dir>/<stem>.html`` for every CSV; two CSVs with one stem are refused."""
    stems: dict[str, Path] = {}
    for csv in map(Path, csvs):
        if csv.stem in stems:
            raise ValueError(f"two tables named {csv.stem!r}: {stems[csv.stem]} and {csv}")
        stems[csv.stem] = csv
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, csv in stems.items():
        if not csv.is_file():
            raise FileNotFoundError(f"{csv}: missing")
        path = out_dir / f"{stem}.html"
        path.write_text(table_html(csv))
        out.append(path)
    return out
