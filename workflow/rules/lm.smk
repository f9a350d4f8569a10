# Language-model study: download -> data -> fine-tune -> evaluate -> aggregate.

ALL_TARGETS.append(f"{RESULTS}/lm/runs.csv")


rule download_model:
    output:
        manifest=f"{RESOURCES}/models/{{model}}/manifest.json",
    params:
        config=RESOLVED_CONFIG,
        out=lambda w: f"{RESOURCES}/models/{w.model}",
        fingerprint=fingerprint("model", "dtype"),
    log:
        f"logs/download_model/{{model}}.log",
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("download_model"),
    shell:
        "repro model fetch --configfile {params.config} --out {params.out}"
        " --downloads {RESOURCES}/downloads > {log} 2>&1"


rule prepare_data:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
    output:
        manifest=f"{RESULTS}/data/{{model}}/manifest.json",
    params:
        config=RESOLVED_CONFIG,
        out=lambda w: f"{RESULTS}/data/{w.model}",
        fingerprint=fingerprint("data", "seed", "dtype"),
    log:
        f"logs/prepare_data/{{model}}.log",
    threads: config["finetune"]["threads"]
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("prepare_data"),
    shell:
        "repro data build --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --out {params.out} > {log} 2>&1"


rule finetune:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
        data=f"{RESULTS}/data/{{model}}/manifest.json",
    output:
        summary=f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/summary.json",
        log=f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/train_log.csv",
    params:
        config=RESOLVED_CONFIG,
        out=lambda w, output: str(Path(output.summary).parent),
        fingerprint=fingerprint("finetune", "device", "dtype"),
    log:
        f"logs/finetune/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    threads: config["finetune"]["threads"]
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("finetune"),
    shell:
        "repro finetune --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --data-dir {RESULTS}/data/{wildcards.model} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --rank {wildcards.rank} --lr {wildcards.lr} --seed {wildcards.seed}"
        " --out {params.out} > {log} 2>&1"


rule evaluate:
    input:
        summary=f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/summary.json",
        data=f"{RESULTS}/data/{{model}}/manifest.json",
    output:
        f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/eval.csv",
    params:
        config=RESOLVED_CONFIG,
        fingerprint=fingerprint("evaluate", "device", "dtype", "data"),
    log:
        f"logs/evaluate/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    threads: config["finetune"]["threads"]
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("evaluate"),
    shell:
        "repro evaluate forgetting --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --data-dir {RESULTS}/data/{wildcards.model} --summary {input.summary} --out {output} > {log} 2>&1"


# Knowledge, reasoning and safety (evals:). Step 0 is the base model in every run (LoRA's B starts at
# zero), so it is evaluated once per model; each run then evaluates only its later selected checkpoints.
EVALS = config["evals"]["enabled"]
if EVALS:
    from repro.lm.evals import check_config as _check_evals, planned_steps as _planned_eval_steps

    try:
        _check_evals(config)
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    EVAL_BASE = 0 in _planned_eval_steps(config)
    EVAL_RUN_STEPS = [s for s in _planned_eval_steps(config) if s > 0]
else:
    EVAL_BASE, EVAL_RUN_STEPS = False, []


rule evaluate_tasks_base:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
    output:
        f"{RESULTS}/lm/evals/{{model}}/base.csv",
    params:
        config=RESOLVED_CONFIG,
        fingerprint=fingerprint("evals", "device", "dtype"),
    log:
        f"logs/evaluate_tasks/{{model}}/base.log",
    threads: config["finetune"]["threads"]
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("evaluate_tasks"),
    shell:
        "repro evaluate tasks --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --base --out {output} --no-progress > {log} 2>&1"


rule evaluate_tasks:
    input:
        summary=f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/summary.json",
    output:
        f"{RESULTS}/lm/runs/{{model}}/{{dataset}}/{{method}}/r{{rank}}/lr{{lr}}/seed{{seed}}/tasks.csv",
    params:
        config=RESOLVED_CONFIG,
        fingerprint=fingerprint("evals", "device", "dtype"),
    log:
        f"logs/evaluate_tasks/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    threads: config["finetune"]["threads"]
    conda:
        "../../envs/lm.yaml"
    resources:
        **resources_for("evaluate_tasks"),
    shell:
        "repro evaluate tasks --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --summary {input.summary} --out {output} --no-progress > {log} 2>&1"


def _evals_inputs():
    if not EVALS:
        return {}
    out = {"tasks": [f"{r}/tasks.csv" for r in all_runs()] if EVAL_RUN_STEPS else []}
    if EVAL_BASE:
        out["tasks_base"] = f"{RESULTS}/lm/evals/{MODEL}/base.csv"
    return out


def _evals_args(wildcards, input):
    if not EVALS:
        return ""
    args = " --with-tasks" if EVAL_RUN_STEPS else ""
    return args + (f" --tasks-base {input.tasks_base}" if EVAL_BASE else "")


rule aggregate:
    input:
        summaries=[f"{r}/summary.json" for r in all_runs()],
        evals=[f"{r}/eval.csv" for r in all_runs()],
        **_evals_inputs(),
    output:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
    params:
        evals=_evals_args,
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    shell:
        "repro aggregate --out {output.runs} --steps-out {output.steps}{params.evals} {input.summaries} > {log} 2>&1"
