# Sample compression schemes: enumerate{n,d} -> schemes{n,d,kind} -> verify{file} -> tables;
# named{class} and compactness also feed verify and tables. Every rule only names files and runs
# `repro compression ...` (src/repro/compression/cli.py).
from repro.compression.runs import (
    compactness_settings,
    enumerate_settings,
    enumerate_shapes,
    named_settings,
    scheme_shapes,
    schemes_settings,
)

COMP = config["compression"]
COMP_DIR = f"{RESULTS}/compression"
COMP_KINDS = ["labeled", "unlabeled"]


COMP_ENUM = enumerate_shapes(COMP)
COMP_SCHEMES = scheme_shapes(COMP)
COMP_SCHEME_STEMS = [f"schemes/n{n}_d{d}_{kind}" for n, d in COMP_SCHEMES for kind in COMP_KINDS]
COMP_NAMED_STEMS = [f"named/{name}" for name in COMP["named"]["classes"]]
COMP_RECORD_STEMS = COMP_SCHEME_STEMS + COMP_NAMED_STEMS + ["compactness/compactness"]
COMP_TABLES = [
    f"{COMP_DIR}/tables/{table}.{ext}"
    for table in ("counts", "counts_matrix", "schemes", "named", "existence", "compactness", "timings")
    for ext in ("csv", "tex")
] + [f"{COMP_DIR}/tables/summary.json"]

COMP_NUMBERS = f"{COMP_DIR}/numbers.tex"

ALL_TARGETS.extend([*COMP_TABLES, COMP_NUMBERS])
REPORT_TABLES.update(
    {f: (f"compression_{Path(f).stem}", "Compression schemes") for f in COMP_TABLES if f.endswith(".csv")}
)
if COMP_SCHEMES:
    CLAIMS_INPUTS.update(schemes=f"{COMP_DIR}/tables/schemes.csv", named=f"{COMP_DIR}/tables/named.csv")
PAPER_INPUTS["compression"] = {
    "figures": [],
    "tables": [f for f in COMP_TABLES if f.endswith(".tex")],
    "numbers": [COMP_NUMBERS],
}


rule compression_enumerate:
    output:
        f"{COMP_DIR}/enumerate/n{{n}}_d{{d}}.json",
    log:
        f"{LOGS}/compression/enumerate/n{{n}}_d{{d}}.log",
    wildcard_constraints:
        n=r"\d+",
        d=r"\d+",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("compression_enumerate"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(lambda w: enumerate_settings(COMP, int(w.n))),
    shell:
        "repro compression enumerate --configfile {params.config} --n {wildcards.n} --d {wildcards.d}"
        " --out {output} > {log} 2>&1"


rule compression_schemes:
    input:
        f"{COMP_DIR}/enumerate/n{{n}}_d{{d}}.json",
    output:
        records=f"{COMP_DIR}/schemes/n{{n}}_d{{d}}_{{kind}}.jsonl.gz",
        summary=f"{COMP_DIR}/schemes/n{{n}}_d{{d}}_{{kind}}.json",
    log:
        f"{LOGS}/compression/schemes/n{{n}}_d{{d}}_{{kind}}.log",
    wildcard_constraints:
        n=r"\d+",
        d=r"\d+",
        kind=r"labeled|unlabeled",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("compression"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(schemes_settings(COMP)),
    shell:
        "repro compression schemes --configfile {params.config} --enumeration {input} --kind {wildcards.kind}"
        " --out {output.records} --summary {output.summary} > {log} 2>&1"


rule compression_named:
    output:
        report=f"{COMP_DIR}/named/{{name}}.json",
        records=f"{COMP_DIR}/named/{{name}}.jsonl.gz",
    log:
        f"{LOGS}/compression/named/{{name}}.log",
    wildcard_constraints:
        name=r"warmuth|kw-maximal|kw-table1|kw-table2|kw-maximum|cube[1-6]",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("compression"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(named_settings(COMP)),
    shell:
        "repro compression named --configfile {params.config} --name {wildcards.name}"
        " --out {output.report} --schemes-out {output.records} > {log} 2>&1"


rule compression_compactness:
    output:
        report=f"{COMP_DIR}/compactness/compactness.json",
        records=f"{COMP_DIR}/compactness/compactness.jsonl.gz",
    log:
        f"{LOGS}/compression/compactness.log",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("compression"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(compactness_settings(COMP)),
    shell:
        "repro compression compactness --configfile {params.config}"
        " --out {output.report} --schemes-out {output.records} > {log} 2>&1"


# Every scheme any stage produced is verified exhaustively; a failure stops the DAG (exit code 1).
rule compression_verify:
    input:
        f"{COMP_DIR}/{{stem}}.jsonl.gz",
    output:
        f"{COMP_DIR}/verify/{{stem}}.json",
    log:
        f"{LOGS}/compression/verify/{{stem}}.log",
    wildcard_constraints:
        stem=r"(schemes|named|compactness)/[A-Za-z0-9_.-]+",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("compression"),
    shell:
        "repro compression verify --out {output} {input} > {log} 2>&1"


rule compression_tables:
    input:
        enumerate=[f"{COMP_DIR}/enumerate/n{n}_d{d}.json" for n, d in COMP_ENUM],
        schemes=[f"{COMP_DIR}/{stem}.json" for stem in COMP_SCHEME_STEMS],
        verify=[f"{COMP_DIR}/verify/{stem}.json" for stem in COMP_RECORD_STEMS],
        named=[f"{COMP_DIR}/{stem}.json" for stem in COMP_NAMED_STEMS],
        compactness=f"{COMP_DIR}/compactness/compactness.json",
    output:
        COMP_TABLES,
    log:
        f"{LOGS}/compression/tables.log",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("light"),
    params:
        out_dir=lambda wildcards, output: str(Path(output[0]).parent),
    shell:
        "repro compression tables --out-dir {params.out_dir} --enumerate {input.enumerate}"
        " --schemes {input.schemes} --verify {input.verify} --named {input.named}"
        " --compactness {input.compactness} > {log} 2>&1"


rule compression_numbers:
    input:
        f"{COMP_DIR}/tables/summary.json",
    output:
        COMP_NUMBERS,
    log:
        f"{LOGS}/compression/numbers.log",
    conda:
        "../../envs/compression.yaml"
    resources:
        **resources_for("light"),
    shell:
        "repro compression numbers --summary {input} --out {output} > {log} 2>&1"
