"""The generated paper: built from the test preset's results, from no results at all (every study
replaced by a visible note), the HTML report, and a results bundle restored into a fresh workspace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import REPO, snakemake

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 1)

needs_tex = pytest.mark.skipif(not all(shutil.which(t) for t in ("latexmk", "pdflatex", "bibtex")),
                               reason="TeX not installed (apt-get install texlive-latex-recommended latexmk)")

UNDEFINED = re.compile(r"(Citation|Reference) `[^']+' (on page \d+ )?undefined|There were undefined (references|citations)")
STUDY_SECTIONS = ("forgetting", "rslora", "teb", "compression")
TRAINING_RULES = {"download_model", "prepare_data", "finetune", "evaluate", "aggregate", "fit_laws",
                  "rank_stability", "figures", "tables", "numbers"}


def _pages(pdf: Path, build: Path | None = None) -> int:
    """Pages of a pdflatex PDF: pdfinfo when installed, else pdflatex's own count in the build log
    (the page objects sit in compressed object streams, so the raw bytes do not show them)."""
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=60).stdout
        return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))
    log = ((build or pdf.parent / "build") / f"{pdf.stem}.log").read_text(errors="replace")
    return int(re.findall(r"Output written on .*?\((\d+) pages?", log)[-1])


def _planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run (empty when nothing is to be done)."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


def _fresh_workflow_copy(ran: Path, dest: Path) -> Path:
    """The workflow files of the workspace that ran (a clone of the same commit), without its results."""
    from workflow_helpers import WORKFLOW_DIRS, WORKFLOW_FILES

    dest.mkdir(parents=True)
    for item in WORKFLOW_FILES:
        shutil.copy2(ran / item, dest / item)
    for folder in WORKFLOW_DIRS:
        if (ran / folder).is_dir():
            shutil.copytree(ran / folder, dest / folder, ignore=shutil.ignore_patterns("build", "main.pdf"))
    return dest


def _copy_workspace(src: Path, dest: Path) -> Path:
    # copytree keeps modification times (copy2), so Snakemake sees the same up-to-date state.
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dest


@needs_tex
def test_paper_without_any_results_shows_notes(tmp_path):
    paper = tmp_path / "paper"
    shutil.copytree(REPO / "paper", paper, ignore=shutil.ignore_patterns("build", "main.pdf"))
    proc = subprocess.run([str(Path(sys.executable).parent / "repro"), "paper", "build", "--dir", str(paper),
                           "--out", str(paper / "main.pdf"), "--report", str(tmp_path / "build.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "build.json").read_text())
    assert info["undefined"] == []
    missing = " ".join(info["missing_parts"])
    for part in ("../results/numbers.tex", "../results/compression/numbers.tex", "../results/teb/numbers.tex",
                 "linear_law.tex", "forgetting_vs_finetune_no-setup-macros.pdf"):
        assert part in missing, part
    assert _pages(paper / "main.pdf") >= len(STUDY_SECTIONS)


@pytest.mark.slow
@needs_tex
def test_paper_report_and_bundle_from_the_test_preset(test_preset_run, tmp_path):
    ws = _copy_workspace(test_preset_run, tmp_path / "ws")

    # The paper needs no training job: only the paper's own rules are planned.
    plan = snakemake(ws, "-n", "paper", "--configfile", "presets/test.yaml")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert set(_planned_jobs(plan)) <= {"paper_setup", "provenance_collect", "paper", "paper_teb_inventory"}

    built = snakemake(ws, "paper", "--cores", "2", "--configfile", "presets/test.yaml")
    assert built.returncode == 0, built.stderr[-4000:] + (ws / "results-test/logs/paper/latexmk.log").read_text()[-4000:]
    # The test preset's paper goes into its own results folder, built in its own LaTeX folder.
    pdf, log = ws / "results-test/paper/main.pdf", (ws / "paper/build-results-test/main.log").read_text(errors="replace")
    assert not (ws / "paper/main.pdf").exists() and not (ws / "paper/build").exists()
    main_tex = (ws / "paper/main.tex").read_text()
    present = [s for s in STUDY_SECTIONS if f"\\input{{sections/{s}.tex}}" in main_tex]
    assert len(present) == len(STUDY_SECTIONS)
    build = ws / "paper/build-results-test"
    assert _pages(pdf, build) >= len(present)
    assert json.loads((ws / "results-test/paper/build.json").read_text())["pages"] == _pages(pdf, build)
    assert not UNDEFINED.search(log), UNDEFINED.search(log).group(0)
    # Every graphic pdflatex read exists, and every figure of the forgetting/rsLoRA studies was read.
    fls = (ws / "paper/build-results-test/main.fls").read_text()
    graphics = {l.split(" ", 1)[1] for l in fls.splitlines() if l.startswith("INPUT ") and "/figures/" in l}
    assert graphics and all((ws / "paper" / g).resolve().is_file() for g in graphics)
    read = {Path(g).name for g in graphics}
    for fig in (ws / "results-test/figures").glob("*.pdf"):
        if fig.name.startswith(("forgetting_vs_finetune", "losses_vs_steps", "rslora_", "rank_stability_")):
            assert fig.name in read, fig.name
    prov = json.loads((ws / "results-test/provenance.json").read_text())
    commands = set(prov["summary"]["by_command"])
    assert {"finetune", "aggregate", "laws-fit", "laws-figures", "compression-tables"} <= commands
    assert any(c.startswith("evaluate") for c in commands)
    for m in prov["manifests"]:
        assert m["config_hash"] is None or len(m["config_hash"]) == 12
    # Nothing left to do: the paper is up to date.
    again = snakemake(ws, "-n", "paper", "--configfile", "presets/test.yaml")
    assert _planned_jobs(again) == {}, again.stdout[-2000:]

    # HTML report with one category per study.
    report = snakemake(ws, "--report", "results-test/report.html", "--configfile", "presets/test.yaml")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (ws / "results-test/report.html").read_text(errors="replace")
    for category in ("Forgetting laws", "rsLoRA", "Compression schemes"):
        assert category in html

    # Pack, restore into a fresh copy of the workflow, and rebuild the paper without training.
    repro = str(Path(sys.executable).parent / "repro")
    packed = subprocess.run([repro, "bundle", "pack", "--results", "results-test"], cwd=ws, capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    bundle = Path(ws / json.loads(packed.stdout)["bundle"])
    restored = _fresh_workflow_copy(ws, tmp_path / "restored")
    unpacked = subprocess.run([repro, "bundle", "unpack", str(bundle)], cwd=restored, capture_output=True,
                              text=True, timeout=300)
    assert unpacked.returncode == 0, unpacked.stderr
    from repro.io import sha256_file
    from repro.provenance.bundle import read_index, verify_tree

    index = read_index(bundle)
    assert verify_tree(ws, index) == [] and verify_tree(restored, index) == []
    assert not list(restored.rglob("*.safetensors"))
    for e in index["files"]:
        assert sha256_file(restored / e["path"]) == sha256_file(ws / e["path"])
    for args in (("--configfile", "presets/test.yaml"), ("--configfile", "results-test/config/resolved.json")):
        plan = snakemake(restored, "-n", "paper", *args)
        assert plan.returncode == 0, plan.stderr[-3000:]
        jobs = _planned_jobs(plan)
        assert not set(jobs) & TRAINING_RULES, jobs
        assert set(jobs) <= {"paper", "paper_setup"}, jobs
    rebuilt = snakemake(restored, "paper", "--cores", "2", "--configfile", "presets/test.yaml")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (_pages(restored / "results-test/paper/main.pdf", restored / "paper/build-results-test")
            == _pages(pdf, build))


def test_each_config_builds_its_paper_in_its_own_place():
    from repro.paper.build import paper_locations

    assert paper_locations("results") == ("paper/main.pdf", "build")
    assert paper_locations("results-test") == ("results-test/paper/main.pdf", "build-results-test")
