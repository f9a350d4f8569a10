# Language-model study: download -> data -> fine-tune -> evaluate -> aggregate. Run folders, checkpoint
# grids and evaluated steps come from the run plan (repro.lm.runs), as they do for the trainer and the cluster.
from repro.lm.runs import (
    data_settings,
    evals_settings,
    evaluate_settings,
    finetune_settings,
    model_settings,
    planned_eval_steps,
    run_dir_pattern,
)

RUN_DIR = run_dir_pattern(RESULTS)
# --use-conda: the jobs that hold the model get the CUDA build of torch (and liger-kernel) on a cuda
# config, the CPU build otherwise; both envs are written from their locks by `make lock`.
LM_CONDA_ENV = "../../envs/lm-cuda.yaml" if config["device"] == "cuda" else "../../envs/lm.yaml"

ALL_TARGETS.append(f"{RESULTS}/lm/runs.csv")


rule download_model:
    output:
        manifest=f"{RESOURCES}/models/{{model}}/manifest.json",
    log:
        f"{LOGS}/download_model/{{model}}.log",
    priority: 100  # the language-model chain is the critical path: it starts first, short jobs fill the gaps
    conda:
        LM_CONDA_ENV
    resources:
        **resources_for("download_model"),
    params:
        resources=folder("output", "manifest", 3),
        config=RESOLVED_CONFIG,
        out=lambda w: f"{RESOURCES}/models/{w.model}",
        identity=identity(model_settings(config)),
    shell:
        "repro model fetch --configfile {params.config} --out {params.out}"
        " --downloads {params.resources}/downloads > {log} 2>&1"


rule prepare_data:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
    output:
        manifest=f"{RESULTS}/data/{{model}}/manifest.json",
    log:
        f"{LOGS}/prepare_data/{{model}}.log",
    priority: 100
    conda:
        LM_CONDA_ENV
    threads: config["finetune"]["threads"]
    resources:
        **resources_for("prepare_data"),
    params:
        model_dir=folder("input", "model"),
        config=RESOLVED_CONFIG,
        out=lambda w: f"{RESULTS}/data/{w.model}",
        identity=identity(data_settings(config)),
    shell:
        "repro data build --configfile {params.config} --model-dir {params.model_dir}"
        " --out {params.out} > {log} 2>&1"


rule finetune:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
        data=f"{RESULTS}/data/{{model}}/manifest.json",
    output:
        summary=f"{RUN_DIR}/summary.json",
        log=f"{RUN_DIR}/train_log.csv",
    log:
        f"{LOGS}/finetune/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    priority: 100
    conda:
        LM_CONDA_ENV
    threads: config["finetune"]["threads"]
    resources:
        **resources_for("finetune"),
    params:
        model_dir=folder("input", "model"),
        data_dir=folder("input", "data"),
        config=RESOLVED_CONFIG,
        out=lambda w, output: str(Path(output.summary).parent),
        identity=identity(finetune_settings(config)),
    shell:
        "repro finetune --configfile {params.config} --model-dir {params.model_dir}"
        " --data-dir {params.data_dir} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --rank {wildcards.rank} --lr {wildcards.lr} --seed {wildcards.seed}"
        " --out {params.out} --restart-stale > {log} 2>&1"


rule evaluate:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
        summary=f"{RUN_DIR}/summary.json",
        data=f"{RESULTS}/data/{{model}}/manifest.json",
    output:
        f"{RUN_DIR}/eval.csv",
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    priority: 100
    conda:
        LM_CONDA_ENV
    threads: config["finetune"]["threads"]
    resources:
        **resources_for("evaluate"),
    params:
        model_dir=folder("input", "model"),
        data_dir=folder("input", "data"),
        config=RESOLVED_CONFIG,
        identity=identity(evaluate_settings(config)),
    shell:
        "repro evaluate forgetting --configfile {params.config} --model-dir {params.model_dir}"
        " --data-dir {params.data_dir} --summary {input.summary} --out {output} > {log} 2>&1"


# Knowledge, reasoning and safety (evals:). Step 0 is the base model in every run (LoRA's B starts at
# zero), so it is evaluated once per model; each run then evaluates only its later selected checkpoints.
EVALS = config["evals"]["enabled"]
if EVALS:
    # The plan's cross-key checks ran in the Snakefile's validation.
    EVAL_BASE = 0 in planned_eval_steps(config)
    EVAL_RUN_STEPS = [s for s in planned_eval_steps(config) if s > 0]
else:
    EVAL_BASE, EVAL_RUN_STEPS = False, []


rule evaluate_tasks_base:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
    output:
        scores=f"{RESULTS}/lm/evals/{{model}}/base.csv",
        replies=f"{RESULTS}/lm/evals/{{model}}/base.responses.jsonl",
    log:
        f"{LOGS}/evaluate_tasks/{{model}}/base.log",
    priority: 100
    conda:
        LM_CONDA_ENV
    threads: config["finetune"]["threads"]
    resources:
        **resources_for("evaluate_tasks"),
    params:
        model_dir=folder("input", "model"),
        config=RESOLVED_CONFIG,
        identity=identity(evals_settings(config, base=True)),
    shell:
        "repro evaluate tasks --configfile {params.config} --model-dir {params.model_dir}"
        " --base --out {output.scores} --no-progress > {log} 2>&1"


rule evaluate_tasks:
    input:
        model=f"{RESOURCES}/models/{{model}}/manifest.json",
        summary=f"{RUN_DIR}/summary.json",
    output:
        scores=f"{RUN_DIR}/tasks.csv",
        replies=f"{RUN_DIR}/tasks.responses.jsonl",
    log:
        f"{LOGS}/evaluate_tasks/{{model}}/{{dataset}}/{{method}}_r{{rank}}_lr{{lr}}_seed{{seed}}.log",
    priority: 100
    conda:
        LM_CONDA_ENV
    threads: config["finetune"]["threads"]
    resources:
        **resources_for("evaluate_tasks"),
    params:
        model_dir=folder("input", "model"),
        config=RESOLVED_CONFIG,
        identity=identity(evals_settings(config)),
    shell:
        "repro evaluate tasks --configfile {params.config} --model-dir {params.model_dir}"
        " --summary {input.summary} --out {output.scores} --no-progress > {log} 2>&1"


rule aggregate:
    input:
        **evals_inputs(EVAL_RUN_STEPS, EVAL_BASE),
        summaries=[f"{r}/summary.json" for r in all_runs()],
        evals=[f"{r}/eval.csv" for r in all_runs()],
    output:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
    log:
        f"{LOGS}/aggregate.log",
    priority: 100
    conda:
        "../../envs/report.yaml"
    resources:
        **resources_for("light"),
    params:
        evals=evals_args(EVAL_RUN_STEPS, EVAL_BASE),
    shell:
        "repro aggregate --out {output.runs} --steps-out {output.steps}{params.evals} {input.summaries} > {log} 2>&1"
