# Transfer Entropy Bottleneck: teb_data{task} -> teb_target{task,seed} -> teb_train{task,variant,beta,seed}
# -> teb_eval{task,seed} (+ teb_estimators{task} on the AR tasks) -> teb_aggregate -> figures, tables,
# numbers. Every rule only names files and runs `repro teb ...` (src/repro/teb/cli.py).
from repro.teb.runs import (
    ar_task_names,
    data_settings,
    estimators_settings,
    eval_settings,
    task_names,
    task_runs,
    train_settings,
)

TEB = config["teb"]
TEB_DIR = f"{RESULTS}/teb"
TEB_TASKS = task_names(TEB)
TEB_AR_TASKS = ar_task_names(TEB)
TEB_SEEDS = TEB["seeds"]
TEB_FIGURES = [
    f"{RESULTS}/figures/teb_{name}.{ext}"
    for name in ("te_vs_exact", "beta_sweep", "switch")
    for ext in ("pdf", "png")
]
TEB_TABLES = [f"{RESULTS}/tables/teb_{name}.tex" for name in ("tasks", "te_sweep")]

# With every task disabled the branch has nothing to aggregate: it registers no targets, and the paper
# shows its note in place of the TEB section.
if TEB_TASKS:
    ALL_TARGETS.extend([*TEB_FIGURES, *TEB_TABLES, f"{TEB_DIR}/numbers.tex"])
    REPORT_TABLES.update(
        {
            f"{TEB_DIR}/evals.csv": ("teb_evals", "TEB"),
            f"{TEB_DIR}/summary.csv": ("teb_summary", "TEB"),
            f"{TEB_DIR}/te_sweep.csv": ("teb_te_sweep", "TEB"),
            f"{TEB_DIR}/info_plane.csv": ("teb_info_plane_table", "TEB"),
            f"{TEB_DIR}/estimators.csv": ("teb_estimators", "TEB"),
        }
    )
    CLAIMS_INPUTS.update(teb_summary=f"{TEB_DIR}/summary.csv", teb_evals=f"{TEB_DIR}/evals.csv")
    PAPER_INPUTS["teb"] = {
        "figures": [f for f in TEB_FIGURES if f.endswith(".pdf")],
        "tables": TEB_TABLES,
        "numbers": [f"{TEB_DIR}/numbers.tex"],
    }


rule teb_data:
    output:
        data=f"{TEB_DIR}/data/{{task}}/data.pt",
        manifest=f"{TEB_DIR}/data/{{task}}/manifest.json",
    log:
        f"{LOGS}/teb/data/{{task}}.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("teb"),
    params:
        out=folder("output", "manifest"),
        config=RESOLVED_CONFIG,
        identity=identity(lambda w: data_settings(TEB, w.task)),
    shell:
        "repro teb data --configfile {params.config} --task {wildcards.task}"
        " --out {params.out} > {log} 2>&1"


rule teb_target:
    input:
        f"{TEB_DIR}/data/{{task}}/data.pt",
    output:
        model=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}/model.pt",
        summary=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}/summary.json",
        epochs=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}/log.csv",
    log:
        f"{LOGS}/teb/target/{{task}}_seed{{seed}}.log",
    conda:
        "../../envs/teb.yaml"
    threads: TEB["threads"]
    resources:
        **resources_for("teb"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(lambda w: train_settings(TEB, w.task, "target")),
        out=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}",
    shell:
        "repro teb train --configfile {params.config} --task {wildcards.task} --data {input}"
        " --variant target --seed {wildcards.seed} --no-progress --out {params.out} > {log} 2>&1"


rule teb_train:
    input:
        data=f"{TEB_DIR}/data/{{task}}/data.pt",
        target=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}/summary.json",
    output:
        model=f"{TEB_DIR}/models/{{task}}/{{variant}}/beta{{beta}}/seed{{seed}}/model.pt",
        summary=f"{TEB_DIR}/models/{{task}}/{{variant}}/beta{{beta}}/seed{{seed}}/summary.json",
        epochs=f"{TEB_DIR}/models/{{task}}/{{variant}}/beta{{beta}}/seed{{seed}}/log.csv",
    log:
        f"{LOGS}/teb/train/{{task}}_{{variant}}_beta{{beta}}_seed{{seed}}.log",
    wildcard_constraints:
        task=r"[A-Za-z0-9][A-Za-z0-9._-]*",
        variant=r"teb|teb0|deterministic|joint",
        beta=r"none|[0-9.e+-]+",
    conda:
        "../../envs/teb.yaml"
    threads: TEB["threads"]
    resources:
        **resources_for("teb"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(lambda w: train_settings(TEB, w.task, w.variant)),
        out=f"{TEB_DIR}/models/{{task}}/{{variant}}/beta{{beta}}/seed{{seed}}",
        target=lambda wildcards, input: str(Path(input.target).parent),
    shell:
        "repro teb train --configfile {params.config} --task {wildcards.task} --data {input.data}"
        " --variant {wildcards.variant} --beta {wildcards.beta} --seed {wildcards.seed}"
        " --target {params.target} --no-progress --out {params.out} > {log} 2>&1"


rule teb_eval:
    input:
        data=f"{TEB_DIR}/data/{{task}}/data.pt",
        manifest=f"{TEB_DIR}/data/{{task}}/manifest.json",
        target=f"{TEB_DIR}/models/{{task}}/target/seed{{seed}}/summary.json",
        runs=teb_task_runs(TEB, TEB_DIR),
    output:
        f"{TEB_DIR}/evals/{{task}}/seed{{seed}}.csv",
    log:
        f"{LOGS}/teb/eval/{{task}}_seed{{seed}}.log",
    conda:
        "../../envs/teb.yaml"
    threads: TEB["threads"]
    resources:
        **resources_for("teb"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(eval_settings(TEB)),
        target=lambda wildcards, input: str(Path(input.target).parent),
        runs=lambda wc, input: " ".join(str(Path(p).parent) for p in input.runs),
    shell:
        "repro teb eval --configfile {params.config} --task {wildcards.task} --data {input.data} --manifest {input.manifest}"
        " --target {params.target} --seed {wildcards.seed} --out {output} {params.runs} > {log} 2>&1"


rule teb_estimators:
    input:
        data=f"{TEB_DIR}/data/{{task}}/data.pt",
        manifest=f"{TEB_DIR}/data/{{task}}/manifest.json",
    output:
        f"{TEB_DIR}/estimators/{{task}}.csv",
    log:
        f"{LOGS}/teb/estimators/{{task}}.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("teb"),
    params:
        config=RESOLVED_CONFIG,
        identity=identity(estimators_settings(TEB)),
    shell:
        "repro teb estimators --configfile {params.config} --task {wildcards.task} --data {input.data}"
        " --manifest {input.manifest} --out {output} > {log} 2>&1"


rule teb_aggregate:
    input:
        evals=[f"{TEB_DIR}/evals/{t}/seed{s}.csv" for t in TEB_TASKS for s in TEB_SEEDS],
        estimators=[f"{TEB_DIR}/estimators/{t}.csv" for t in TEB_AR_TASKS],
        manifests=[f"{TEB_DIR}/data/{t}/manifest.json" for t in TEB_TASKS],
    output:
        evals=f"{TEB_DIR}/evals.csv",
        estimators=f"{TEB_DIR}/estimators.csv",
        sweep=f"{TEB_DIR}/te_sweep.csv",
        plane=f"{TEB_DIR}/info_plane.csv",
        summary=f"{TEB_DIR}/summary.csv",
    log:
        f"{LOGS}/teb/aggregate.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("light"),
    params:
        teb_dir=folder("output", "evals"),
    shell:
        "repro teb aggregate --evals {input.evals} --estimators {input.estimators}"
        " --manifests {input.manifests} --out-dir {params.teb_dir} > {log} 2>&1"


rule teb_figures:
    input:
        f"{TEB_DIR}/evals.csv",
        f"{TEB_DIR}/summary.csv",
        f"{TEB_DIR}/te_sweep.csv",
        f"{TEB_DIR}/info_plane.csv",
    output:
        f"{RESULTS}/figures/teb_te_vs_exact.pdf",
        f"{RESULTS}/figures/teb_beta_sweep.pdf",
        f"{RESULTS}/figures/teb_switch.pdf",
        # The HTML report shows the PNGs inline (like the language-model figures).
        report(
            f"{RESULTS}/figures/teb_te_vs_exact.png", caption="../report/teb_te_vs_exact.rst", category="TEB"
        ),
        report(
            f"{RESULTS}/figures/teb_beta_sweep.png", caption="../report/teb_beta_sweep.rst", category="TEB"
        ),
        report(f"{RESULTS}/figures/teb_switch.png", caption="../report/teb_switch.rst", category="TEB"),
    log:
        f"{LOGS}/teb/figures.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("light"),
    params:
        figures=folder("output", 0),
        teb_dir=folder("input", 0),
    shell:
        "repro teb figures --teb-dir {params.teb_dir} --out {params.figures} > {log} 2>&1"


rule teb_tables:
    input:
        f"{TEB_DIR}/evals.csv",
        f"{TEB_DIR}/summary.csv",
        f"{TEB_DIR}/te_sweep.csv",
    output:
        TEB_TABLES,
    log:
        f"{LOGS}/teb/tables.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("light"),
    params:
        tables=folder("output", 0),
        teb_dir=folder("input", 0),
    shell:
        "repro teb tables --teb-dir {params.teb_dir} --out {params.tables} > {log} 2>&1"


rule teb_numbers:
    input:
        f"{TEB_DIR}/evals.csv",
        f"{TEB_DIR}/summary.csv",
        f"{TEB_DIR}/te_sweep.csv",
        f"{TEB_DIR}/info_plane.csv",
    output:
        f"{TEB_DIR}/numbers.tex",
    log:
        f"{LOGS}/teb/numbers.log",
    conda:
        "../../envs/teb.yaml"
    resources:
        **resources_for("light"),
    params:
        teb_dir=folder("input", 0),
    shell:
        "repro teb numbers --teb-dir {params.teb_dir} --out {output} > {log} 2>&1"
