"""The run plan (repro.lm.runs) and the parse-time imports of the workflow: pure, torch-free, one definition."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from repro.config import ConfigError, load_config
from repro.lm.runs import (
    Run,
    checkpoint_grid,
    planned_runs,
    run_dir,
    run_dir_pattern,
    select_steps,
)

REPO = Path(__file__).resolve().parents[1]


def test_checkpoint_grid_log2_includes_zero_and_last():
    assert checkpoint_grid(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert checkpoint_grid(100) == [0, 1, 2, 4, 8, 16, 32, 64, 100]
    assert checkpoint_grid(1) == [0, 1]


def test_checkpoint_grid_geometric_and_explicit():
    grid = checkpoint_grid(1000, 5)
    assert grid[0] == 0 and grid[-1] == 1000 and len(grid) == 5
    ratios = [b / a for a, b in zip(grid[1:-1], grid[2:])]
    assert max(ratios) / min(ratios) < 1.2  # log-spaced: constant ratio up to rounding
    assert checkpoint_grid(10, [3, 7]) == [0, 3, 7, 10]
    with pytest.raises(ConfigError, match="finetune.checkpoints"):
        checkpoint_grid(10, "log3")


def test_select_steps_first_middle_last():
    grid = [0, 1, 2, 4, 8, 16, 32, 64]
    assert select_steps(grid, ["first", "middle", "last"]) == [0, 8, 64]
    assert select_steps(grid, ["last", 4]) == [4, 64]
    assert select_steps(grid, ["all"]) == grid
    with pytest.raises(ConfigError, match=r"evals.checkpoints\[1\]"):
        select_steps(grid, ["first", 3])


def test_planned_runs_cover_the_sweep_in_config_order():
    cfg = load_config(REPO / "config.yaml")
    runs = planned_runs(cfg)
    ft = cfg["finetune"]
    assert len(runs) == len(ft["datasets"]) * len(ft["methods"]) * len(ft["ranks"]) * len(ft["learning_rates"]) * len(ft["seeds"])
    assert len(set(runs)) == len(runs)
    assert runs[0] == Run(cfg["model"]["name"], ft["datasets"][0], ft["methods"][0], ft["ranks"][0], "0.0005", 0)
    assert runs[0].key == f"{cfg['model']['name']}/{ft['datasets'][0]}/lora/r1/lr0.0005/seed0"
    assert runs[0].directory("res") == f"res/lm/runs/{runs[0].key}"


def test_run_dir_pattern_is_the_run_dir_with_wildcards():
    pattern = run_dir_pattern("results")
    assert pattern == run_dir("results", "{model}", "{dataset}", "{method}", "{rank}", "{lr}", "{seed}")
    # The pattern filled in by Snakemake gives the folder the trainer writes to.
    run = Run("m", "d", "rslora", 16, "0.001", 2)
    assert pattern.format(model="m", dataset="d", method="rslora", rank=16, lr="0.001", seed=2) == run.directory()


def test_rule_files_spell_no_run_folder_by_hand():
    """The run folder has one definition: no rule file writes its template out."""
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        text = smk.read_text()
        assert "/r{{rank}}/lr{{lr}}/seed{{seed}}" not in text, smk.name
        assert "/r{rank}/lr{lr}/seed{seed}" not in text, smk.name


def _parse_time_modules() -> list[str]:
    """The repro modules the Snakefile and the rule files import while the workflow is parsed."""
    found = set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for line in smk.read_text().splitlines():
            m = re.match(r"\s*(?:from|import)\s+(repro[\w.]*)", line)
            if m:
                found.add(m.group(1))
    return sorted(found)


def test_parsing_the_workflow_imports_no_torch():
    modules = _parse_time_modules()
    assert "repro.config" in modules and "repro.teb.runs" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'peft'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [], f"parse-time imports pull in heavy modules: {out}"
