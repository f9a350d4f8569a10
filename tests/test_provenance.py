"""Provenance manifests written by `repro`'s main(), their collection, results bundles, paper macros."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from repro.cli import main
from repro.envs import LOCK_NAME, sha256
from repro.provenance import bundle as B
from repro.provenance.collect import collect, render_tex, summarise
from repro.provenance.manifest import manifest_path

SUMMARY = {
    "counts": {"3,1": {"total": 32, "orbits": 2}, "6,2": {"total": 123456789, "orbits": 1000}},
    "schemes_verified": 87,
    "samples_checked": 2511,
    "named_minimal_sizes": {"kw-maximal": {"labeled-proper": 2, "unlabeled-proper": None}},
    "min_peeling_random_failures": [],
}


def _numbers(tmp_path: Path, out: Path) -> int:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(SUMMARY))
    return main(["compression", "numbers", "--summary", str(summary), "--out", str(out)])


def test_main_writes_a_manifest_next_to_the_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git work tree: recorded as null, not an error
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    out = tmp_path / "results" / "compression" / "numbers.tex"
    assert _numbers(tmp_path, out) == 0
    text = out.read_text()
    assert "\\newcommand{\\CompCountSixTwo}{123456789}" in text  # exact, not 1.23e+08
    assert "\\newcommand{\\CompNamedKwMaximalUnlabeledProper}{none}" in text
    path = manifest_path(out, "compression-numbers")
    assert path == out.parent / "provenance" / "compression-numbers--numbers.tex.json"
    m = json.loads(path.read_text())
    assert m["command"] == "compression-numbers" and m["argv"][:2] == ["compression", "numbers"]
    assert m["git"] is None
    assert m["slurm"] == {"SLURM_JOB_ID": "4242"}
    assert m["packages"]["snakemake"] and "torch" in m["packages"]
    assert m["start"] <= m["end"] and m["wall_s"] >= 0
    assert m["host"] and m["device"]["cpu_count"] >= 1
    # No lock in the working directory: the package checkout's lock, by its hash.
    lock = Path(__file__).resolve().parents[1] / LOCK_NAME
    assert m["lock"]["sha256"] == sha256(lock) and isinstance(m["lock"]["installed_matches"], bool)


def test_failed_command_writes_no_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "numbers.tex"
    code = main(["compression", "numbers", "--summary", str(tmp_path / "absent.json"), "--out", str(out)])
    assert code != 0
    assert not (tmp_path / "provenance").exists()


def test_collect_summarises_manifests_for_the_appendix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        assert _numbers(tmp_path, tmp_path / "results" / name / "numbers.tex") == 0
    doc = collect([tmp_path / "results"], tmp_path / "results/provenance.json",
                  tmp_path / "macros.tex", tmp_path / "table.tex")
    assert doc["summary"]["overall"]["jobs"] == 2
    assert doc["summary"]["by_command"]["compression-numbers"]["commits"] == ["none"]
    assert json.loads((tmp_path / "results/provenance.json").read_text())["summary"]["overall"]["jobs"] == 2
    macros = (tmp_path / "macros.tex").read_text()
    assert "\\newcommand{\\ProvJobs}{2}" in macros and "\\newcommand{\\ProvDirty}{no}" in macros
    digest = sha256(Path(__file__).resolve().parents[1] / LOCK_NAME)
    assert doc["summary"]["lock"]["sha256"] == [digest]
    assert f"\\newcommand{{\\ProvLockSha}}{{{digest[:16]}\\allowbreak{{}}{digest[16:32]}" in macros
    table = (tmp_path / "table.tex").read_text()
    assert table.count("\\begin{table}") == table.count("\\end{table}") == 2
    assert "compression-numbers" in table
    empty_macros, empty_table = render_tex(summarise([]))
    assert "\\newcommand{\\ProvJobs}{0}" in empty_macros and "no manifests found" in empty_table


@pytest.mark.parametrize("path, kept", [
    ("results/lm/runs.csv", True),
    ("results/lm/runs/m/d/lora/r4/lr0.001/seed0/eval.csv", True),
    ("results/lm/runs/m/d/lora/r4/lr0.001/seed0/checkpoints/step-000004/adapter_config.json", True),
    ("results/lm/runs/m/d/lora/r4/lr0.001/seed0/checkpoints/step-000004/adapter_model.safetensors", False),
    ("results/lm/runs/m/d/lora/r4/lr0.001/seed0/state/resume/meta.json", False),
    ("results/lm/runs/m/d/lora/r4/lr0.001/seed0/provenance/finetune.json", True),
    ("results/data/m/manifest.json", True),
    ("results/data/m/provenance/data-build.json", True),
    ("results/data/m/finetune/train.jsonl", False),
    ("results/bundle-abc.tar.zst", False),
    ("results/.run.json", False),
    ("results/.jobs.lock", False),
    ("results/paper/build/main.aux", False),
    ("results/teb/checkpoints/model.pt", False),
    ("resources/models/m/manifest.json", True),
    ("resources/models/m/provenance/model-fetch.json", True),
    ("resources/models/m/model.safetensors", False),
    ("resources/models/m/config.json", False),
    ("resources/downloads/x.whl", False),
    ("results/logs/finetune/m/d/lora_r4.log", True),
    ("logs/finetune/m/d/lora_r4.log", False),  # outside every config's folder
    ("results-test/lm/runs.csv", False),  # another config's folder
])
def test_bundle_selection(path, kept):
    assert (B.selection_reason(PurePosixPath(path)) is None) == kept


def test_bundle_of_another_config_takes_its_own_folder_only():
    assert B.selection_reason(PurePosixPath("results-test/lm/runs.csv"), "results-test") is None
    assert B.selection_reason(PurePosixPath("results-test/logs/aggregate.log"), "results-test") is None
    assert B.selection_reason(PurePosixPath("results/lm/runs.csv"), "results-test") is not None
    assert B.selection_reason(PurePosixPath("results-test/bundle-x.tar.gz"), "results-test") == "a bundle"
    for bad in ("../results", "results/x", "resources", ""):
        with pytest.raises(B.BundleError, match="results folder"):
            B.check_results_name(bad)


def _tree(root: Path) -> None:
    files = {
        "results/config/resolved.json": json.dumps({"seed": 0}),
        "results/lm/runs.csv": "a,b\n1,2\n",
        "results/lm/runs/x/checkpoints/step-000001/adapter_model.safetensors": "weights",
        "results/lm/runs/x/state/resume/meta.json": "{}",
        "results/lm/runs/x/eval.csv": "step\n0\n",
        "resources/models/m/manifest.json": "{}",
        "resources/models/m/model.safetensors": "weights",
        "results/logs/aggregate.log": "ok\n",
        "results-test/lm/runs.csv": "c\n3\n",
    }
    for i, (rel, text) in enumerate(files.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.utime(p, (1_700_000_000.25 + i, 1_700_000_000.25 + i))  # sub-second mtimes must survive
    record = B._record_path(root / ".snakemake/metadata", "results/lm/runs.csv")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"rule": "aggregate", "record_format_version": 6, "params": []}))
    marker = B._record_path(root / ".snakemake/metadata", "results/config/resolved.json")
    marker.write_text(json.dumps({"rule": None}))


@pytest.mark.parametrize("fmt", ["zst", "gz"])
def test_bundle_round_trip(tmp_path, fmt):
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    info = B.pack(src, fmt=fmt)
    bundle = Path(info["bundle"])
    assert bundle.name == f"bundle-{info['config_hash']}.tar.{fmt}"
    index = B.read_index(bundle)
    paths = {e["path"] for e in index["files"]}
    assert paths == {"results/config/resolved.json", "results/lm/runs.csv", "results/lm/runs/x/eval.csv",
                     "resources/models/m/manifest.json", "results/logs/aggregate.log"}
    assert {o["reason"] for o in index["omitted"]} >= {"model weights or tensors", "resumable training state"}

    dest.mkdir()
    (dest / ".snakemake/incomplete").mkdir(parents=True)
    stale = B._record_path(dest / ".snakemake/incomplete", "results/lm/runs.csv")
    stale.write_text("{}")
    out = B.unpack(bundle, dest)
    assert out["files"] == len(paths) and out["metadata_records"] == 2
    assert B.verify_tree(dest, index) == []
    for rel in paths:
        assert (dest / rel).stat().st_mtime == pytest.approx((src / rel).stat().st_mtime, abs=1e-6)
    restored = B._record_path(dest / ".snakemake/metadata", "results/lm/runs.csv")
    assert json.loads(restored.read_text())["rule"] == "aggregate"
    assert not stale.exists()
    assert not (dest / "resources/models/m/model.safetensors").exists()

    # A second pack of the restored tree lists the same files with the same hashes.
    again = B.read_index(Path(B.pack(dest, out=tmp_path / f"again.tar.{fmt}", fmt=fmt)["bundle"]))
    assert {(e["path"], e["sha256"]) for e in again["files"]} == {(e["path"], e["sha256"]) for e in index["files"]}


def test_unpack_refuses_to_overwrite_different_files(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    bundle = Path(B.pack(src, fmt="gz")["bundle"])
    (dest / "results/lm").mkdir(parents=True)
    (dest / "results/lm/runs.csv").write_text("local result\n")
    with pytest.raises(B.BundleError, match="differ from the bundle"):
        B.unpack(bundle, dest)
    assert (dest / "results/lm/runs.csv").read_text() == "local result\n"
    B.unpack(bundle, dest, force=True)
    assert (dest / "results/lm/runs.csv").read_text() == "a,b\n1,2\n"


def test_unpack_detects_a_damaged_bundle(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    bundle = Path(B.pack(src, fmt="gz")["bundle"])
    # Rewrite the archive with one file's content changed but the index kept.
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bundle, "r:gz") as tin, tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name == "results/lm/runs.csv":
                data = b"a,b\n9,9\n"
                m.size = len(data)
            tout.addfile(m, None if data is None else __import__("io").BytesIO(data))
    with pytest.raises(B.BundleError, match="wrong SHA-256"):
        B.unpack(bad, tmp_path / "dest")


def test_bundle_cli(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    _tree(src)
    monkeypatch.chdir(src)
    assert main(["bundle", "pack", "--format", "gz"]) == 0
    bundle = next((src / "results").glob("bundle-*.tar.gz"))
    assert main(["bundle", "unpack", str(bundle), "--dest", str(tmp_path / "dest")]) == 0
    assert (tmp_path / "dest/results/lm/runs.csv").exists()
    assert not list((src / "results").rglob("provenance"))  # bundle commands write no manifest


def test_setup_macros_from_the_resolved_config(tmp_path):
    from repro.paper.setup import render

    cfg = {"seed": 0, "model": {"name": "tiny_llama"}, "finetune": {
        "datasets": ["stdlib-instruct"], "methods": ["lora", "rslora"], "ranks": [1, 4], "learning_rates": [5e-05],
        "seeds": [0], "max_steps": 8, "checkpoints": "log2", "target_modules": ["q_proj"]},
        "data": {"finetune": {"stdlib-instruct": {"kind": "stdlib-docstrings", "max_train": 64}},
                 "forgetting": {"model-samples": {"kind": "model-samples", "num_sequences": 4, "length": 32}}},
        "compression": {"compactness": {"random_maximum": {"shapes": [[4, 2], [5, 2]]}}}}
    text = render(cfg, "presets/test.yaml")
    for line in ("\\newcommand{\\CfgFinetuneMaxSteps}{8}", "\\newcommand{\\CfgFinetuneRanks}{1, 4}",
                 "\\newcommand{\\CfgFinetuneRanksCount}{2}", "\\newcommand{\\CfgFinetuneLearningRates}{5e-05}",
                 "\\newcommand{\\CfgModelName}{tiny\\_llama}", "\\newcommand{\\CfgFinetuneTargetModules}{q\\_proj}",
                 "\\newcommand{\\CfgNumRuns}{4}", "\\newcommand{\\CfgCheckpointSteps}{0, 1, 2, 4, 8}",
                 "\\newcommand{\\CfgFigTag}{\\detokenize{tiny_llama_stdlib-instruct}}",
                 "\\newcommand{\\CfgForgettingCorpusLength}{32}",
                 "\\newcommand{\\CfgCompressionCompactnessRandomMaximumShapes}{(4, 2), (5, 2)}"):
        assert line in text, line
    names = [l.split("}")[0] for l in text.splitlines() if l.startswith("\\newcommand")]
    assert len(names) == len(set(names))


def test_latex_log_analysis():
    from repro.paper.build import analyse_log

    log = ("LaTeX Warning: Citation `foo' on page 2 undefined on input line 5.\n"
           "LaTeX Warning: Reference `fig:x' on page 3 undefined on input line 9.\n"
           "repro-missing: ../results/teb/numbers.tex\n"
           "Output written on build/main.pdf (7 pages, 1234 bytes).\n")
    info = analyse_log(log)
    assert info["pages"] == 7
    assert info["undefined"] == ["citation:foo", "reference:fig:x"]
    assert info["missing_parts"] == ["../results/teb/numbers.tex"]


def test_inventory_names_each_figure_and_its_rule(tmp_path):
    from repro.paper.inventory import write_inventory

    out = write_inventory(tmp_path / "inv.tex", ["results/figures/teb_te_vs_exact.pdf=teb_figures"],
                          ["results/tables/teb_summary.tex"])
    text = out.read_text()
    assert ("\\resultfig{../results/figures/teb_te_vs_exact.pdf}{0.85\\linewidth}{\\texttt{teb te vs exact}.}"
            "{fig:teb-te-vs-exact}{teb\\_figures}") in text
    assert "\\inputif{../results/tables/teb_summary.tex}{table teb summary}" in text


def test_collect_counts_only_the_jobs_the_targets_derive_from(tmp_path, monkeypatch):
    """Runs an earlier config left on disk (here run B, after `methods: [lora]`) are not counted; a run's
    evaluations (written into its folder, read through its summary) are. The manifests were written in
    another folder: a workspace copied or restored keeps its lineage (paths are the workflow root's)."""
    from repro.provenance.collect import collect
    from repro.provenance.manifest import SCHEMA

    def manifest(command, output, *argv):
        out = tmp_path / output
        where = out / "provenance" / f"{command}.json" if not out.suffix else \
            out.parent / "provenance" / f"{command}--{out.name}.json"
        where.parent.mkdir(parents=True, exist_ok=True)
        doc = {"schema": SCHEMA, "command": command, "output": output, "cwd": "/elsewhere/ws", "argv": list(argv),
               "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:01+00:00", "wall_s": 1.0}
        where.write_text(json.dumps(doc))

    for run in ("A", "B"):
        (tmp_path / f"results/lm/runs/{run}").mkdir(parents=True)
        manifest("finetune", f"results/lm/runs/{run}", "--model-dir", "resources/models/m")
        manifest("evaluate-forgetting", f"results/lm/runs/{run}/eval.csv", "--summary",
                 f"results/lm/runs/{run}/summary.json")
    (tmp_path / "resources/models/m").mkdir(parents=True)
    manifest("model-fetch", "resources/models/m")
    manifest("aggregate", "results/lm/runs.csv", "--out", "results/lm/runs.csv", "results/lm/runs/A/summary.json")
    (tmp_path / "results/figures").mkdir(parents=True)
    manifest("laws-figures", "results/figures", "--runs", "results/lm/runs.csv")
    monkeypatch.chdir(tmp_path)  # the rules run in the workflow root
    roots = [Path("results"), Path("resources")]
    everything = collect(roots, tmp_path / "all.json")
    assert everything["summary"]["overall"]["jobs"] == 7
    doc = collect(roots, tmp_path / "current.json", targets=[Path("results/figures/x.pdf")])
    kept = sorted((m["command"], m["output"]) for m in doc["manifests"])
    assert kept == [("aggregate", "results/lm/runs.csv"), ("evaluate-forgetting", "results/lm/runs/A/eval.csv"),
                    ("finetune", "results/lm/runs/A"), ("laws-figures", "results/figures"),
                    ("model-fetch", "resources/models/m")]
    assert doc["summary"]["overall"]["jobs"] == 5
