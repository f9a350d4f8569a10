# The claims ledger: every claim of the four sources measured from the results and judged by the criterion
# fixed in repro/claims/ (rule claims -> results/claims.csv), and its "Claims at a glance" tables. Its inputs
# are the tables the branches registered in CLAIMS_INPUTS (see the Snakefile).
CLAIMS_CSV = f"{RESULTS}/claims.csv"
CLAIMS_TABLES = [f"{RESULTS}/tables/claims.tex", f"{RESULTS}/tables/claims.md"]
# Ledgers of the same claims at another precision, compared when they exist (claims.compare).
CLAIMS_COMPARE = [
    f"{other}/claims.csv" for other in config["claims"]["compare"] if Path(f"{other}/claims.csv").exists()
]

ALL_TARGETS.extend([CLAIMS_CSV, *CLAIMS_TABLES])
REPORT_TABLES[CLAIMS_CSV] = ("claims", "Claims at a glance")
PAPER_INPUTS["claims"] = {"figures": [], "tables": [CLAIMS_TABLES[0]], "numbers": []}


rule claims:
    input:
        **CLAIMS_INPUTS,
        compare=CLAIMS_COMPARE,
    output:
        CLAIMS_CSV,
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../envs/laws.yaml"
    resources:
        **resources_for("light"),
    params:
        config=RESOLVED_CONFIG,
        results=folder("output", 0),
        compare=lambda wc, input: " ".join(input.compare),
        # what the verdicts read besides the tables: the resamples and each TEB task's default beta
        identity=identity({"claims": config["claims"], "teb_tasks": config["teb"]["tasks"]}),
    shell:
        "repro claims build --configfile {params.config} --results {params.results} --compare {params.compare}"
        " --out {output} > {log} 2>&1"


rule claims_tables:
    input:
        CLAIMS_CSV,
    output:
        latex=CLAIMS_TABLES[0],
        markdown=CLAIMS_TABLES[1],
    log:
        f"{LOGS}/claims_tables.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    shell:
        "(repro claims table --claims {input} --format latex --out {output.latex}"
        " && repro claims table --claims {input} --format markdown --out {output.markdown}) > {log} 2>&1"
