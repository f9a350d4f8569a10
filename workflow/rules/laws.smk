# Forgetting laws and rsLoRA: fits on the tidy tables, then figures, tables and numbers.

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
LM_TABLES = [
    f"{TABLES}/{t}.tex" for t in ("linear_law", "power_laws", "gradient_norms", "early_stopping")
]

ALL_TARGETS.extend([*LM_FIGURES, *LM_TABLES, f"{RESULTS}/numbers.tex"])


rule fit_laws:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
    output:
        fits=f"{LAWS}/fits.csv",
        early=f"{LAWS}/early_stopping.csv",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
        gradnorm_by_rank=f"{LAWS}/gradnorm_by_rank.csv",
    params:
        config=RESOLVED_CONFIG,
        fingerprint=fingerprint("laws"),
    log:
        "logs/laws/fit_laws.log",
    shell:
        "repro laws fit --configfile {params.config} --runs {input.runs} --steps {input.steps}"
        " --out {LAWS} > {log} 2>&1"


rule rank_stability:
    output:
        moments=f"{LAWS}/rank_stability.csv",
        slopes=f"{LAWS}/rank_stability_slopes.csv",
    params:
        config=RESOLVED_CONFIG,
        fingerprint=fingerprint(config["laws"]["rank_stability"]),
    log:
        "logs/laws/rank_stability.log",
    shell:
        "repro laws rank-stability --configfile {params.config} --out {output.moments}"
        " --slopes-out {output.slopes} > {log} 2>&1"


rule figures:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
        fits=f"{LAWS}/fits.csv",
        stability=f"{LAWS}/rank_stability.csv",
    output:
        LM_FIGURES,
    log:
        "logs/report/figures.log",
    shell:
        "repro report figures --runs {input.runs} --steps {input.steps} --laws-dir {LAWS}"
        " --rank-stability {input.stability} --out {FIGURES} > {log} 2>&1"


rule tables:
    input:
        fits=f"{LAWS}/fits.csv",
        early=f"{LAWS}/early_stopping.csv",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
    output:
        LM_TABLES,
    log:
        "logs/report/tables.log",
    shell:
        "repro report tables --laws-dir {LAWS} --out {TABLES} > {log} 2>&1"


rule numbers:
    input:
        runs=f"{RESULTS}/lm/runs.csv",
        fits=f"{LAWS}/fits.csv",
        gradnorm=f"{LAWS}/gradnorm_spread.csv",
        slopes=f"{LAWS}/rank_stability_slopes.csv",
    output:
        f"{RESULTS}/numbers.tex",
    log:
        "logs/report/numbers.log",
    shell:
        "repro report numbers --runs {input.runs} --laws-dir {LAWS}"
        " --rank-stability-slopes {input.slopes} --out {output} > {log} 2>&1"
