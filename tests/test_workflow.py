"""End to end: the real Snakemake DAG on the test preset, bad configs stopping it, the paper plan."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import make_workspace as _workspace
from workflow_helpers import snakemake as _snakemake

from repro.lm.aggregate import REQUIRED_COLUMNS

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 2)


def _check_latex_fragment(text: str) -> None:
    """Compile with pdflatex when a TeX engine is present; otherwise check the structure parses."""
    assert text.count("{") == text.count("}") and "\\toprule" in text and "\\bottomrule" in text
    # the claims table is a longtable (it breaks across pages); every other table one float around a tabular
    for env in ("longtable",) if "\\begin{longtable}" in text else ("table", "tabular"):
        assert text.count(f"\\begin{{{env}}}") == text.count(f"\\end{{{env}}}") == 1
    if shutil.which("pdflatex"):
        with tempfile.TemporaryDirectory() as d:
            preamble = ("\\documentclass{article}\\usepackage{booktabs,array,longtable,xcolor}"
                        "\\providecommand{\\condref}[2]{#2}")  # \condref: the paper's macros (repro-macros.tex)
            doc = preamble + "\\begin{document}" + text + "\\end{document}"
            Path(d, "t.tex").write_text(doc)
            proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=d,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.slow
def test_test_preset_runs_the_whole_dag(test_preset_run):
    ws = test_preset_run
    runs = pd.read_csv(ws / "results-test/lm/runs.csv")
    assert set(REQUIRED_COLUMNS) <= set(runs.columns)
    # 2 methods x 2 ranks, each with checkpoints 0, 1, 2, 4, 8.
    assert len(runs) == 4 * 5
    assert runs.groupby(["method", "rank"])["step"].apply(list).map(lambda s: s == [0, 1, 2, 4, 8]).all()
    numeric = runs[REQUIRED_COLUMNS].select_dtypes("number")
    assert numeric.map(math.isfinite).all().all()
    assert (runs["loss_forget"] >= runs["base_entropy"] - 1e-6).all()
    step0 = runs[runs["step"] == 0]
    assert (step0["kl_forget"].abs() < 1e-6).all()
    assert ((runs["trainable_params"] > 0) & (runs["grad_norm"] > 0)).all()
    # rsLoRA at rank 4 scales by alpha/2, LoRA by alpha/4.
    r4 = runs[(runs["rank"] == 4) & (runs["step"] == 0)].set_index("method")["scaling"]
    assert r4["rslora"] == pytest.approx(2 * r4["lora"])

    # Figures, tables and numbers of the forgetting and rsLoRA studies come out of the same run.
    figures = sorted((ws / "results-test/figures").glob("*.pdf"))
    names = {p.name.split("_tiny")[0].removesuffix(".pdf") for p in figures}
    assert {"forgetting_vs_finetune", "losses_vs_steps", "rslora_learning_curves", "rslora_grad_norms",
            "rank_stability_sgd", "rank_stability_adam"} <= names
    for pdf in figures:
        assert pdf.read_bytes().count(b"/Type /Page") >= 1 and pdf.with_suffix(".png").stat().st_size > 1000
    tables = sorted((ws / "results-test/tables").glob("*.tex"))
    assert {"linear_law", "power_laws", "gradient_norms", "early_stopping"} <= {t.stem for t in tables}
    for table in tables:
        _check_latex_fragment(table.read_text())
    numbers = (ws / "results-test/numbers.tex").read_text()
    assert "\\newcommand{\\LinLoraSlope}" in numbers or "\\newcommand{\\LinLoraStatus}" in numbers
    assert "\\newcommand{\\GradNormRatioRslora}" in numbers

    # The law-fit contract: every power law by Huber on log residuals from >= 8 starts, with convergence,
    # bound and both extrapolation errors reported; the linear law with run-clustered errors.
    fits = pd.read_csv(ws / "results-test/laws/fits.csv")
    for col in ("fit_loss", "n_starts", "converged", "at_bound", "extrap_rmse_steps", "extrap_rmse_rank", "se_kind"):
        assert col in fits.columns, col
    power = fits[(fits["family"] != "linear") & (fits["status"] == "ok")]
    assert len(power) and (power["fit_loss"] == "huber-log").all() and (power["n_starts"] >= 8).all()
    assert power["converged"].astype(bool).all() and power["extrap_rmse_steps"].notna().all()
    linear = fits[(fits["family"] == "linear") & (fits["status"] == "ok")]
    assert len(linear) and (linear["se_kind"] == "cluster-run").all()

    # A second invocation has nothing to do: outputs are up to date.
    again = _snakemake(ws, "-n", "--configfile", "presets/test.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "override, key",
    [
        ("finetune.ranks=[4,0]", "finetune.ranks[1]"),
        ("finetune.methods=[dora]", "finetune.methods[0]"),
        ("finetune.rnaks=[4]", "finetune.rnaks"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, override, key):
    ws = _workspace(tmp_path)
    cfg = (ws / "presets/test.yaml").read_text()
    section, rest = override.split(".", 1)
    name, value = rest.split("=", 1)
    cfg = cfg.replace(f"\n{section}:\n", f"\n{section}:\n  {name}: {value}\n", 1)
    # A duplicate key would be ambiguous YAML; drop the original line if it exists.
    lines, seen = [], False
    for line in cfg.splitlines():
        if line.strip().startswith(f"{name}:"):
            if seen:
                continue
            seen = True
        lines.append(line)
    (ws / "bad.yaml").write_text("\n".join(lines) + "\n")
    proc = _snakemake(ws, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout
    assert not list(ws.glob("results*"))


def test_paper_preset_plans(tmp_path):
    ws = _workspace(tmp_path)
    proc = _snakemake(ws, "-n", "--configfile", "presets/paper.yaml")
    # Planning writes nothing: the resolved config is written when a run starts, not while parsing.
    assert not list(ws.glob("results*"))
    assert "results-paper/lm/runs.csv" in proc.stdout  # the preset's own folder
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    # 2 methods x 9 ranks on OpenOrca, Llama-2-7b-chat from the hub.
    assert "llama-2-7b-chat" in out
    for rule, count in (("finetune", 18), ("evaluate", 18), ("download_model", 1), ("aggregate", 1),
                        ("evaluate_tasks", 18), ("evaluate_tasks_base", 1)):
        assert any(line.split()[:2] == [rule, str(count)] for line in out.splitlines()), (rule, out[-3000:])


@pytest.mark.slow
def test_readme_snakemake_command_runs_without_the_venv_on_path(tmp_path):
    """README's `.venv/bin/snakemake ...` as written: no activated venv, `repro` not on PATH."""
    import os
    import sys

    ws = _workspace(tmp_path / "ws")
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    proc = subprocess.run([str(Path(bin_dir) / "snakemake"), "--cores", "1", "results-test/laws/rank_stability.csv",
                           "--configfile", "presets/test.yaml"], cwd=ws, env={**env, "PATH": path},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ws / "results-test/laws/rank_stability_slopes.csv").stat().st_size > 0
