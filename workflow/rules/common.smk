# Helpers of every rule file, kept here because Snakemake's linter wants functions apart from rules.
# Run coordinates, per-stage config fingerprints, cluster requests, report() captions and the input
# functions of the branches; branch globals they read are defined by the branch's own file.
import hashlib


def fingerprint(*sections):
    """Hash of the config sections a job depends on; a change reruns exactly the affected jobs."""
    blob = json.dumps([config.get(s) if isinstance(s, str) else s for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_dir(dataset, method, rank, lr, seed):
    return f"{RESULTS}/lm/runs/{MODEL}/{dataset}/{method}/r{rank}/lr{lr}/seed{seed}"


def all_runs():
    ft = config["finetune"]
    return [
        run_dir(d, m, r, format_lr(lr), s)
        for d in ft["datasets"]
        for m in ft["methods"]
        for r in ft["ranks"]
        for lr in ft["learning_rates"]
        for s in ft["seeds"]
    ]


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    dataset=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    method=r"lora|rslora",
    rank=r"\d+",
    lr=r"[0-9.e+-]+",
    seed=r"\d+",


def folder(files, key, up=1):
    """Params function: the folder `up` levels above the job's input or output file `key`.

    Folder arguments derived from the job's own files follow them wherever a storage plugin or a
    remote node puts them; a hardcoded prefix would not.
    """

    def locate(wildcards, input, output):
        named = input if files == "input" else output
        path = named[key] if isinstance(key, int) else getattr(named, key)
        return str(Path(path).parents[up - 1])

    return locate


from repro.cluster.resources import job_resources


def resources_for(family):
    """Cluster requests (mem_mb, runtime, cpus_per_task, gpu, partition) of a rule family, from the config."""
    return job_resources(family, config)


# laws branch
def lm_report(path):
    name = Path(path).name
    if not name.endswith(".png"):
        return path
    for stem, category in LM_REPORT_CATEGORIES.items():
        if name.startswith(stem):
            return report(path, caption=f"../report/{stem}.rst", category=category)
    return report(path, caption="../report/lm_figure.rst", category="Forgetting laws")


# compression branch
def compression_shapes(n_max):
    return [(n, d) for n in range(1, n_max + 1) for d in range(0, n + 1)]


# report tables
def report_table(csv):
    """The HTML page of a study's CSV table, registered for the report with its caption."""
    caption, category = REPORT_TABLES[csv]
    return report(
        f"{REPORT_TABLES_DIR}/{Path(csv).stem}.html",
        caption=f"../report/{caption}.rst",
        category=category,
    )


# lm branch
def _evals_inputs():
    if not EVALS:
        return {}
    out = {"tasks": [f"{r}/tasks.csv" for r in all_runs()] if EVAL_RUN_STEPS else []}
    if EVAL_BASE:
        out["tasks_base"] = f"{RESULTS}/lm/evals/{MODEL}/base.csv"
    return out


# lm branch
def _evals_args(wildcards, input):
    if not EVALS:
        return ""
    args = " --with-tasks" if EVAL_RUN_STEPS else ""
    return args + (f" --tasks-base {input.tasks_base}" if EVAL_BASE else "")


# teb branch
def teb_run_dir(task, variant, beta, seed):
    return f"{TEB_DIR}/models/{task}/{variant}/beta{beta}/seed{seed}"


# teb branch
def teb_task_runs(wildcards):
    return [
        f"{teb_run_dir(wildcards.task, v, b, wildcards.seed)}/summary.json"
        for v, b in task_runs(TEB, wildcards.task)
    ]
