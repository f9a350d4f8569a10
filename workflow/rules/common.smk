# Helpers of every rule file, kept here because Snakemake's linter wants functions apart from rules.
# Run coordinates, job identities, cluster requests, report() captions and the input functions of the
# branches. They read only the Snakefile's globals (config, RESULTS, MODEL); what a branch knows (its
# task list, its report categories) it passes in as arguments.
from repro.cluster.resources import job_resources
from repro.io import identity_hash
from repro.lm.runs import planned_runs


def identity(settings):
    """A rule's `identity` param: the hash of the settings its output depends on (defined per job kind
    in the branch's run plan, minus what the job's path names). Snakemake reruns a job whose params
    changed, so a config edit reruns exactly the jobs it changes. ``settings`` may be a function of the
    job's wildcards."""
    if callable(settings):
        return lambda wildcards: identity_hash(settings(wildcards))
    return identity_hash(settings)


def all_runs():
    """Folder of every run of the sweep (the run plan: repro.lm.runs)."""
    return [run.directory(RESULTS) for run in planned_runs(config)]


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


def resources_for(family):
    """Cluster requests (mem_mb, runtime, cpus_per_task, gpu, partition) of a rule family, from the config."""
    return job_resources(family, config)


# laws branch
def lm_report(path, categories):
    """PNG figures go into the HTML report, captioned by their name's stem (``categories``: stem -> category)."""
    name = Path(path).name
    if not name.endswith(".png"):
        return path
    for stem, category in categories.items():
        if name.startswith(stem):
            return report(path, caption=f"../report/{stem}.rst", category=category)
    return report(path, caption="../report/lm_figure.rst", category="Forgetting laws")


# report tables
def report_table(csv, out_dir):
    """The HTML page of a study's CSV table under ``out_dir``, registered for the report with its caption."""
    caption, category = REPORT_TABLES[csv]
    return report(
        f"{out_dir}/{Path(csv).stem}.html",
        caption=f"../report/{caption}.rst",
        category=category,
    )


# lm branch
def evals_inputs(run_steps, base):
    """Inputs of `aggregate` from the task evaluations: per-run steps ``run_steps``, the base model if ``base``."""
    out = {"tasks": [f"{r}/tasks.csv" for r in all_runs()] if run_steps else []}
    if base:
        out["tasks_base"] = f"{RESULTS}/lm/evals/{MODEL}/base.csv"
    return out


# lm branch
def evals_args(run_steps, base):
    def args(wildcards, input):
        text = " --with-tasks" if run_steps else ""
        return text + (f" --tasks-base {input.tasks_base}" if base else "")

    return args


# teb branch
def teb_task_runs(teb, teb_dir):
    """Input function: the summaries of every source model trained on the job's task and seed."""
    from repro.teb.runs import task_runs

    def inputs(wildcards):
        return [
            f"{teb_dir}/models/{wildcards.task}/{v}/beta{b}/seed{wildcards.seed}/summary.json"
            for v, b in task_runs(teb, wildcards.task)
        ]

    return inputs
