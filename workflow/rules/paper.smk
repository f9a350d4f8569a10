# The paper: setup macros from the resolved config, provenance of every job, then latexmk.
# Not part of `all`: `make paper` (or `snakemake paper`) builds it. Its inputs are the
# figures, tables and numbers of every branch this workflow includes, so a change in any of them
# (or in paper/) rebuilds the PDF and nothing else.
import glob
import os

from repro.paper.build import paper_locations

PAPER_PDF, PAPER_BUILD_DIR = paper_locations(RESULTS)
PAPER_SETUP = f"{RESULTS}/paper/setup.tex"
PROVENANCE = f"{RESULTS}/provenance.json"
PROVENANCE_MACROS = f"{RESULTS}/paper/provenance_macros.tex"
PROVENANCE_TABLE = f"{RESULTS}/paper/provenance_table.tex"

# What the branches registered (PAPER_INPUTS, see the Snakefile): the paper shows a visible note in
# place of a branch whose outputs are absent.
PAPER_RESULTS = [
    f for branch in PAPER_INPUTS.values() for kind in ("figures", "tables", "numbers") for f in branch[kind]
]
# TEB's section includes its figures and tables by name, from an inventory written by a rule.
TEB_INVENTORY = f"{RESULTS}/paper/teb_inventory.tex"
TEB_PAPER_FIGURES = PAPER_INPUTS.get("teb", {}).get("figures", [])
TEB_PAPER_TABLES = PAPER_INPUTS.get("teb", {}).get("tables", [])


PAPER_SOURCES = sorted(
    p
    for p in glob.glob("paper/**/*", recursive=True)
    if p.endswith((".tex", ".bib", ".sty", ".bst", ".cls")) and not p.startswith("paper/build")
)


rule paper_setup:
    output:
        PAPER_SETUP,
    log:
        f"{LOGS}/paper/setup.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        config=RESOLVED_CONFIG,
        source=", ".join(os.path.relpath(f) for f in map(str, workflow.overwrite_configfiles))
        or "config.yaml",
        # The macros print every key, so any change of the config rewrites them.
        identity=identity(config),
    shell:
        "repro paper setup-macros --configfile {params.config} --config-source '{params.source}' --out {output} > {log} 2>&1"


if TEB_PAPER_FIGURES or TEB_PAPER_TABLES:

    rule paper_teb_inventory:
        output:
            TEB_INVENTORY,
        log:
            f"{LOGS}/paper/teb_inventory.log",
        conda:
            "../../envs/report.yaml"
        resources:
            **resources_for("light"),
        params:
            # Each caption names the rule that made the figure.
            figures=" ".join(
                f"{f}={next((r.name for r in workflow.rules if r.is_producer(f)), '?')}"
                for f in TEB_PAPER_FIGURES
            ),
            tables=" ".join(TEB_PAPER_TABLES),
        shell:
            "repro paper inventory --out {output} --figures {params.figures} --tables {params.tables} > {log} 2>&1"


# Counts the jobs the paper's results derive from, not every manifest on disk (runs an earlier config
# left behind are not part of this paper).
rule provenance_collect:
    input:
        PAPER_RESULTS,
    output:
        json=PROVENANCE,
        macros=PROVENANCE_MACROS,
        table=PROVENANCE_TABLE,
    log:
        f"{LOGS}/paper/provenance.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        roots=[RESULTS, RESOURCES],
    shell:
        "repro provenance collect --out {output.json} --tex-macros {output.macros} --tex-table {output.table}"
        " {params.roots} --targets {input} > {log} 2>&1"


rule paper:
    input:
        results=PAPER_RESULTS,
        setup=PAPER_SETUP,
        inventories=[TEB_INVENTORY] if TEB_PAPER_FIGURES or TEB_PAPER_TABLES else [],
        provenance=[PROVENANCE_MACROS, PROVENANCE_TABLE],
        sources=PAPER_SOURCES,
    output:
        pdf=report(PAPER_PDF, caption="../report/paper.rst", category="Paper"),
        build=f"{RESULTS}/paper/build.json",
    log:
        f"{LOGS}/paper/latexmk.log",
    conda:
        "../../envs/latex.yaml"
    resources:
        **resources_for("light"),
    params:
        build_dir=PAPER_BUILD_DIR,
        # The results folder as the paper folder sees it: where build.json goes, one level up.
        results_dir=lambda w, output: os.path.join("..", os.path.dirname(os.path.dirname(output.build))),
    shell:
        "repro paper build --dir paper --build-dir {params.build_dir} --results-dir {params.results_dir}"
        " --out {output.pdf} --report {output.build} > {log} 2>&1"
