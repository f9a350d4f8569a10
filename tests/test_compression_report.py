"""The compression study's tables and numbers, run through their commands for n <= 3.

Every check compares an output with what it is made from (brute-force counts, the tables' summary), so a
table that drops a row or a macro with a stale value fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from report_helpers import read_macros, run_cli, tex_table

from repro.report.numbers import macro_name

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def compression_run(tmp_path_factory) -> Path:
    """The compression rules' commands for n <= 3 (presets/test.yaml; its compactness check), in-process."""
    root = tmp_path_factory.mktemp("compression")
    config = REPO / "presets/test.yaml"
    shapes = [(n, d) for n in range(1, 4) for d in range(n + 1)]
    records = []
    for n, d in shapes:
        enum = root / f"enumerate/n{n}_d{d}.json"
        run_cli("compression", "enumerate", "--configfile", config, "--n", n, "--d", d, "--out", enum, "--no-progress")
        for kind in ("labeled", "unlabeled"):
            stem = f"schemes/n{n}_d{d}_{kind}"
            run_cli("compression", "schemes", "--configfile", config, "--enumeration", enum, "--kind", kind,
                    "--out", root / f"{stem}.jsonl.gz", "--summary", root / f"{stem}.json", "--no-progress")
            records.append(stem)
    for name in ("kw-maximal", "cube2"):
        run_cli("compression", "named", "--configfile", config, "--name", name, "--out", root / f"named/{name}.json",
                "--schemes-out", root / f"named/{name}.jsonl.gz")
        records.append(f"named/{name}")
    run_cli("compression", "compactness", "--configfile", config, "--out", root / "compactness/compactness.json",
            "--schemes-out", root / "compactness/compactness.jsonl.gz", "--no-progress")
    records.append("compactness/compactness")
    # One verify report for every record file (the rule writes one per file; the tables merge them by name).
    run_cli("compression", "verify", "--out", root / "verify/all.json", *[root / f"{s}.jsonl.gz" for s in records],
            "--no-progress")
    run_cli("compression", "tables", "--out-dir", root / "tables",
            "--enumerate", *[root / f"enumerate/n{n}_d{d}.json" for n, d in shapes],
            "--schemes", *[root / f"{s}.json" for s in records if s.startswith("schemes/")],
            "--verify", root / "verify/all.json",
            "--named", root / "named/kw-maximal.json", root / "named/cube2.json",
            "--compactness", root / "compactness/compactness.json")
    run_cli("compression", "numbers", "--summary", root / "tables/summary.json", "--out", root / "numbers.tex")
    return root


def test_compression_tables_written_and_counts_match_brute_force(compression_run):
    from repro.compression.enumeration import brute_force_maximum_classes

    tables = compression_run / "tables"
    for name in ("counts", "counts_matrix", "schemes", "named", "existence", "compactness", "timings"):
        assert (tables / f"{name}.csv").stat().st_size > 0
        tex_table(tables / f"{name}.tex")
    counts = pd.read_csv(tables / "counts.csv")
    brute = {n: brute_force_maximum_classes(n) for n in range(1, 4)}
    assert {(r["n"], r["d"]): r["maximum classes"] for _, r in counts.iterrows()} == {
        (n, d): len(brute[n][d]) for n in range(1, 4) for d in range(n + 1)}
    assert set(counts["brute force"]) == {"equal"}
    head, rows = tex_table(tables / "counts.tex")
    col = head.index("maximum classes")
    assert [int(r[col]) for r in rows] == list(counts["maximum classes"])
    schemes = pd.read_csv(tables / "schemes.csv")
    for v in schemes["schemes verified"]:
        ok, total = map(int, v.split("/"))
        assert ok == total > 0


def test_compression_latex_cells_are_escaped(compression_run):
    tables = compression_run / "tables"
    head, _ = tex_table(tables / "counts.tex")
    assert r"\textbar{}C\textbar{} = Phi\_d(n)" in head and r"dual \#M(n,n-d-1)" in head
    assert r"\caption{Number of maximum classes \#M(n, d)" in (tables / "counts_matrix.tex").read_text()
    head, _ = tex_table(tables / "compactness.tex")
    assert r"greedy dead ends at \textbar{}X\_j\textbar{}" in head and r"X\_1 < ... < X\_n" in (tables / "compactness.tex").read_text()
    for tex in tables.glob("*.tex"):
        body = "\n".join(line for line in tex.read_text().splitlines() if not line.startswith("\\label"))
        assert not re.search(r"(?<!\\)[#_%&]", body.replace(" & ", " ")), tex


def test_compression_numbers(compression_run):
    from repro.compression.enumeration import brute_force_maximum_classes

    m = read_macros(compression_run / "numbers.tex")
    summary = json.loads((compression_run / "tables/summary.json").read_text())
    assert m["CompNMax"] == "3" and m["CompShapes"] == str(sum(n + 1 for n in range(1, 4)))
    for n in range(1, 4):
        brute = brute_force_maximum_classes(n)
        for d in range(n + 1):
            assert m[macro_name("CompCount", str(n), str(d))] == str(len(brute[d]))
    largest = max(v["total"] for v in summary["counts"].values())
    assert m["CompLargestCount"] == str(largest)
    assert m["CompSchemesVerified"] == str(summary["schemes_verified"]) != "0"
    assert m["CompNamedClasses"] == "2" and macro_name("CompNamed", "kw-maximal", "labeled-proper") in m
