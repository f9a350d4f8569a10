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
    shell:
        "repro evaluate --configfile {params.config} --model-dir {RESOURCES}/models/{wildcards.model}"
        " --data-dir {RESULTS}/data/{wildcards.model} --summary {input.summary} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        summaries=[f"{r}/summary.json" for r in all_runs()],
        evals=[f"{r}/eval.csv" for r in all_runs()],
    output:
        runs=f"{RESULTS}/lm/runs.csv",
        steps=f"{RESULTS}/lm/steps.csv",
    log:
        "logs/aggregate.log",
    shell:
        "repro aggregate --out {output.runs} --steps-out {output.steps} {input.summaries} > {log} 2>&1"
