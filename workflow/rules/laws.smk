# Forgetting laws and rsLoRA: fits on the tidy tables, then figures, tables and numbers.
from repro.laws.runs import fit_settings, rank_stability_settings

LAWS = f"{RESULTS}/laws"
FIGURES = f"{RESULTS}/figures"
TABLES = f"{RESULTS}/tables"
LM_DATASETS = config["finetune"]["datasets"]
LM_FIGURES = [
    f"{FIGURES}/{name}_{MODEL}_{d}.{ext}"
    for name in ("forgetting_vs_finetune", "losses_vs_steps", "rslora_learning_curves", "rslora_grad_norms")
    for d in LM_DATASETS
    for ext in ("pdf", "png")
] + [
    f"{FIGURES}/rank_stability_{o}.{ext}"
    for o in config["laws"]["rank_stability"]["optimizers"]
    for ext in ("pdf", "png")
]
if config["evals"]["enabled"]:
    # Benchmark scores against L_f and refusal rate against N, from the evaluation columns of runs.csv.
    _eval_figures = (["task_scores_vs_forgetting"] if config["evals"]["tasks"] else []) + (
        ["refusal_vs_steps"] if config["evals"]["safety"]["enabled"] else []
    )
    LM_FIGURES += [
        f"{FIGURES}/{name}_{MODEL}_{d}.{ext}"
        for name in _eval_figures
        for d in LM_DATASETS
        for ext in ("pdf", "png")
    ]
LM_TABLES = [f"{TABLES}/{t}.tex" for t in ("linear_law", "power_laws", "gradient_norms", "early_stopping")]

ALL_TARGETS.extend([*LM_FIGURES, *LM_TABLES, f"{RESULTS}/numbers.tex"])
REPORT_TABLES.update(
    {
        f"{LAWS}/fits.csv": ("laws_fits", "Forgetting laws"),
        f"{LAWS}/early_stopping.csv": ("early_stopping", "Forgetting laws"),
        f"{LAWS}/gradnorm_spread.csv": ("gradnorm_spread", "rsLoRA"),
        f"{LAWS}/rank_stability_slopes.csv": ("rank_stability_slopes", "rsLoRA"),
    }
)
CLAIMS_INPUTS.update(
    runs=f"{RESULTS}/lm/runs.csv",
    steps=f"{RESULTS}/lm/steps.csv",
    fits=f"{LAWS}/fits.csv",
    matched=f"{LAWS}/early_stopping.csv",
    slopes=f"{LAWS}/rank_stability_slopes.csv",
    # each run's summary says what precision it trained in (autocast "auto" resolves per machine)
    summaries=[f"{r}/summary.json" for r in all_runs()],
)
PAPER_INPUTS["laws"] = {
    "figures": [f for f in LM_FIGURES if f.endswith(".pdf")],
    "tables": LM_TABLES,
    "numbers": [f"{RESULTS}/numbers.tex"],
}

# HTML report (`snakemake --report`): the PNG figures by study (tables: workflow/rules/report.smk).
LM_REPORT_CATEGORIES = {
    "forgetting_vs_finetune": "Forgetting laws",
    "losses_vs_steps": "Forgetting laws",
    "rslora_learning_curves": "rsLoRA",
    "rslora_grad_norms": "rsLoRA",
    "rank_stability": "rsLoRA",
    "task_scores_vs_forgetting": "Forgetting laws",
    "refusal_vs_steps": "Forgetting laws",
}


rule fit_laws:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
    output:
        fits=f"{LAWS}/fits.csv",
        # One JSON per fitted law (the full fit: curves' parameters, bootstrap draws); the figures,
        # tables and numbers read them, so they are declared on both sides.
        fit_details=directory(f"{LAWS}/fits"),
        early=f"{LAWS}/early_stopping.csv",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
        gradnorm_by_rank=f"{LAWS}/gradnorm_by_rank.csv",
        curves=f"{LAWS}/curves.csv",
    log:
        f"{LOGS}/laws/fit_laws.log",
    priority: 100
    conda:
        "../../envs/laws.yaml"
    # The bootstraps are independent: two workers halve the wall time at the end of the DAG.
    threads: 2
    resources:
        **resources_for("laws"),
    params:
        laws=folder("output", "fits"),
        config=RESOLVED_CONFIG,
        identity=identity(fit_settings(config)),
    shell:
        "repro laws fit --configfile {params.config} --runs {input.runs} --steps {input.steps}"
        " --out {params.laws} --jobs {threads} > {log} 2>&1"


rule rank_stability:
    output:
        moments=f"{LAWS}/rank_stability.csv",
        slopes=f"{LAWS}/rank_stability_slopes.csv",
    log:
        f"{LOGS}/laws/rank_stability.log",
    conda:
        "../../envs/laws.yaml"
    resources:
        **resources_for("laws"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(rank_stability_settings(config)),
    shell:
        "repro laws rank-stability --configfile {params.config} --out {output.moments}"
        " --slopes-out {output.slopes} > {log} 2>&1"


rule figures:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
        fits=f"{LAWS}/fits.csv",
        fit_details=f"{LAWS}/fits",
        curves=f"{LAWS}/curves.csv",
        stability=f"{LAWS}/rank_stability.csv",
    output:
        [lm_report(f, LM_REPORT_CATEGORIES) for f in LM_FIGURES],
    log:
        f"{LOGS}/laws/figures.log",
    priority: 100
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        laws=folder("input", "fits"),
        figures=folder("output", 0),
    shell:
        "repro laws figures --runs {input.runs} --steps {input.steps} --laws-dir {params.laws}"
        " --rank-stability {input.stability} --out {params.figures} > {log} 2>&1"


rule tables:
    input:
        fits=f"{LAWS}/fits.csv",
        fit_details=f"{LAWS}/fits",
        early=f"{LAWS}/early_stopping.csv",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
    output:
        LM_TABLES,
    log:
        f"{LOGS}/laws/tables.log",
    priority: 100
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        laws=folder("input", "fits"),
        tables=folder("output", 0),
    shell:
        "repro laws tables --laws-dir {params.laws} --out {params.tables} > {log} 2>&1"


rule numbers:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        fits=f"{LAWS}/fits.csv",
        fit_details=f"{LAWS}/fits",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
        slopes=f"{LAWS}/rank_stability_slopes.csv",
    output:
        f"{RESULTS}/numbers.tex",
    log:
        f"{LOGS}/laws/numbers.log",
    priority: 100
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        laws=folder("input", "fits"),
    shell:
        "repro laws numbers --runs {input.runs} --laws-dir {params.laws}"
        " --rank-stability-slopes {input.slopes} --out {output} > {log} 2>&1"
