"""`snakemake --report`: one self-contained HTML file with every figure and table of the four studies."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import snakemake as _snakemake

# The data behind the tables of each study (the paper's .tex tables are typeset from these).
TABLES = {
    "Forgetting laws": ["results-test/laws/fits.csv", "results-test/laws/early_stopping.csv"],
    "rsLoRA": ["results-test/laws/gradnorm_spread.csv", "results-test/laws/rank_stability_slopes.csv"],
    "TEB": ["results-test/teb/evals.csv", "results-test/teb/te_sweep.csv", "results-test/teb/info_plane.csv",
            "results-test/teb/estimators.csv"],
}
GENERIC_CAPTION = "A figure of the language-model studies"


def _script_json(html: str, name: str):
    m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    assert m, f"no {name} in the report"
    return json.loads(m.group(1))


def _decoded(data_uri: str) -> bytes:
    assert data_uri.startswith("data:") and ";base64," in data_uri
    return base64.b64decode(data_uri.split(";base64,", 1)[1])


@pytest.mark.slow
def test_report_embeds_every_figure_and_table_with_its_caption(test_preset_run, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(test_preset_run, ws, symlinks=True)  # the shared run stays read-only
    proc = _snakemake(ws, "--configfile", "presets/test.yaml", "--report", "results-test/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (ws / "results-test/report.html").read_text()
    results = _script_json(html, "results")
    categories = _script_json(html, "categories")
    in_category = {cat: {p for paths in subcats.values() for p in paths} for cat, subcats in categories.items()}
    assert {"Forgetting laws", "rsLoRA", "TEB", "Compression schemes"} <= set(in_category)

    figures = sorted(p.relative_to(ws).as_posix() for p in (ws / "results-test/figures").glob("*.png"))
    assert len(figures) >= 10 and any("teb_" in f for f in figures) and any("rslora_" in f for f in figures)
    for path in figures:
        entry = results.get(path)
        assert entry, f"{path} is not in the report"
        # Embedded, byte for byte: the HTML file is all a reader needs.
        assert entry["mime_type"] == "image/png" and _decoded(entry["data_uri"]) == (ws / path).read_bytes()
        _check_caption(path, entry)
        name = Path(path).name
        study = ("TEB" if name.startswith("teb_") else "rsLoRA" if name.startswith(("rslora_", "rank_stability"))
                 else "Forgetting laws")
        assert path in in_category[study], (path, study)

    # Tables: every CSV behind a study's tables as an HTML page shown inline, with all its rows.
    tables = dict(TABLES)
    tables["Compression schemes"] = sorted(p.relative_to(ws).as_posix()
                                           for p in (ws / "results-test/compression/tables").glob("*.csv"))
    assert len(tables["Compression schemes"]) == 7
    for study, csvs in tables.items():
        for csv in csvs:
            page = f"results-test/report/tables/{Path(csv).stem}.html"
            entry = results.get(page)
            assert entry and page in in_category[study], (csv, study)
            assert entry["mime_type"] == "text/html"
            text = _decoded(entry["data_uri"]).decode()
            rows = len(pd.read_csv(ws / csv))
            assert text.count("<tr") == rows + 1 and f"{csv}: {rows} rows" in text, csv
            _check_caption(page, entry)


def _check_caption(path: str, entry: dict) -> None:
    caption = re.sub(r"<[^>]+>", "", entry["caption"]).strip()
    assert len(caption) > 40 and GENERIC_CAPTION not in caption, (path, caption)


def test_html_tables_hold_every_row_escaped_and_refuse_two_tables_of_one_name(tmp_path):
    from repro.report.html import write_tables

    csv = tmp_path / "a" / "fits.csv"
    csv.parent.mkdir()
    pd.DataFrame({"family": ["<joint>", "shifted"], "alpha": [0.123456789, float("nan")]}).to_csv(csv, index=False)
    (page,) = write_tables([csv], tmp_path / "out")
    text = page.read_text()
    assert page.name == "fits.html" and text.count("<tr") == 3
    assert "&lt;joint&gt;" in text and "<joint>" not in text and "0.123457" in text
    other = tmp_path / "b" / "fits.csv"
    other.parent.mkdir()
    other.write_text("x\n1\n")
    with pytest.raises(ValueError, match="two tables named 'fits'"):
        write_tables([csv, other], tmp_path / "out")
