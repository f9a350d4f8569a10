# Helpers shared by the rule files: run coordinates and per-stage config fingerprints.
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


from repro.cluster.resources import job_resources


def resources_for(family):
    """Cluster requests (mem_mb, runtime, cpus_per_task, gpu, partition) of a rule family, from the config."""
    return job_resources(family, config)
