# The paper: setup macros from the resolved config, provenance of every job, then latexmk.
# Not part of `all`: `make paper` (or `snakemake paper/main.pdf`) builds it. Its inputs are the
# figures, tables and numbers of every branch this workflow includes, so a change in any of them
# (or in paper/) rebuilds the PDF and nothing else.
import glob
import os

PAPER_PDF = "paper/main.pdf"
PAPER_SETUP = f"{RESULTS}/paper/setup.tex"
PROVENANCE = f"{RESULTS}/provenance.json"
PROVENANCE_MACROS = f"{RESULTS}/paper/provenance_macros.tex"
PROVENANCE_TABLE = f"{RESULTS}/paper/provenance_table.tex"

# Branch lists, read only when the branch's rule file was included: the paper shows a visible note
# in place of a branch whose outputs are absent.
PAPER_RESULTS = [
    *[f for f in globals().get("LM_FIGURES", []) if f.endswith(".pdf")],
    *globals().get("LM_TABLES", []),
    *([f"{RESULTS}/numbers.tex"] if "LM_TABLES" in globals() else []),
    *[f for f in globals().get("TEB_FIGURES", []) if f.endswith(".pdf")],
    *globals().get("TEB_TABLES", []),
    *([globals().get("TEB_NUMBERS", f"{RESULTS}/teb/numbers.tex")] if "TEB_FIGURES" in globals() else []),
    *[f for f in globals().get("COMP_TABLES", []) if f.endswith(".tex")],
    *([globals()["COMP_NUMBERS"]] if "COMP_NUMBERS" in globals() else []),
]
# TEB's file names come from teb.smk (included before this file); its section includes them by name.
TEB_INVENTORY = f"{RESULTS}/paper/teb_inventory.tex"
TEB_PAPER_FIGURES = [f for f in globals().get("TEB_FIGURES", []) if f.endswith(".pdf")]
TEB_PAPER_TABLES = list(globals().get("TEB_TABLES", []))


PAPER_SOURCES = sorted(
    p
    for p in glob.glob("paper/**/*", recursive=True)
    if p.endswith((".tex", ".bib", ".sty", ".bst", ".cls")) and not p.startswith("paper/build/")
)


rule paper_setup:
    input:
        RESOLVED_CONFIG,
    output:
        PAPER_SETUP,
    log:
        "logs/paper/setup.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        source=", ".join(os.path.relpath(f) for f in map(str, workflow.overwrite_configfiles))
        or "config.yaml",
    shell:
        "repro paper setup-macros --configfile {input} --config-source '{params.source}' --out {output} > {log} 2>&1"


if TEB_PAPER_FIGURES or TEB_PAPER_TABLES:

    rule paper_teb_inventory:
        output:
            TEB_INVENTORY,
        log:
            "logs/paper/teb_inventory.log",
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


rule provenance_collect:
    input:
        PAPER_RESULTS,
    output:
        json=PROVENANCE,
        macros=PROVENANCE_MACROS,
        table=PROVENANCE_TABLE,
    log:
        "logs/paper/provenance.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        roots=[RESULTS, RESOURCES],
    shell:
        "repro provenance collect --out {output.json} --tex-macros {output.macros} --tex-table {output.table}"
        " {params.roots} > {log} 2>&1"


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
        "logs/paper/latexmk.log",
    conda:
        "../../envs/latex.yaml"
    resources:
        **resources_for("light"),
    shell:
        "repro paper build --dir paper --out {output.pdf} --report {output.build} > {log} 2>&1"
