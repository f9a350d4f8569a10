"""End to end: the compression rules of the Snakemake DAG on the test preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from repro.compression.enumeration import brute_force_maximum_classes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_test_preset_builds_the_compression_tables(test_preset_run):
    # The shared end-to-end run of the whole test preset (its compression branch included).
    ws = test_preset_run
    tables = ws / "results-test/compression/tables"
    for name in ("counts", "counts_matrix", "schemes", "named", "existence", "compactness", "timings"):
        assert (tables / f"{name}.csv").exists() and (tables / f"{name}.tex").read_text().count("\\toprule") == 1
    counts = pd.read_csv(tables / "counts.csv")
    assert len(counts) == sum(n + 1 for n in range(1, 5))
    for n in range(1, 5):
        brute = brute_force_maximum_classes(n)
        got = counts[counts["n"] == n].set_index("d")["maximum classes"].to_dict()
        assert got == {d: len(brute[d]) for d in range(n + 1)}
    verify = [json.loads(p.read_text()) for p in (ws / "results-test/compression/verify").rglob("*.json")
              if "provenance" not in p.parts]
    assert verify and all(v["ok"] for v in verify) and sum(v["schemes"] for v in verify) > 50
    named = pd.read_csv(tables / "named.csv").set_index("class")
    assert set(named.index) == {"kw-maximal", "cube2"}
    again = _snakemake(ws, "-n", "--configfile", "presets/test.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
