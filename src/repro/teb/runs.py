"""Run coordinates of the TEB branch and each job's identity, shared by the CLI and the workflow rules
(one source of truth).

Pure functions of the config: the workflow imports this module while it is parsed, so it imports no torch.
A job's identity is the settings its output depends on, minus what its path names (task, variant, beta,
seed): the rules fingerprint it, so one more beta or seed trains only the new models.
"""

from __future__ import annotations

import math

NO_BETA = "none"
# Variants with a stochastic bottleneck, trained at a beta (the others have none).
STOCHASTIC = ("teb", "teb0")
# Every model that reads the source stream: all but the target-only model.
READS_SOURCE = (*STOCHASTIC, "deterministic", "joint")
# The target-only model comes first: it is always trained, and the others' gains are measured against it.
VARIANTS = ("target", *READS_SOURCE)
# Keys of a task's section that set how its models train, not what its data are.
TASK_TRAINING_KEYS = ("enabled", "betas", "epochs", "target_epochs", "batch_size")
# teb.train keys that only the evaluation reads, or that only change what is shown.
TRAIN_KEYS_NOT_IN_TRAINING = ("eval_samples", "prior_samples", "progress")


def format_coupling(c: float) -> str:
    return f"{float(c):g}"


def task_specs(teb: dict) -> dict[str, dict]:
    """Every enabled task, by name (AR tasks one per coupling: ``ar-c0.3``)."""
    tasks = teb["tasks"]
    specs: dict[str, dict] = {}
    ar = tasks["ar"]
    if ar["enabled"]:
        for c in ar["couplings"]:
            specs[f"ar-c{format_coupling(c)}"] = {"kind": "ar", "c": float(c), **{k: v for k, v in ar.items() if k != "couplings"}}
    for kind in ("sines", "digits", "needle"):
        if tasks[kind]["enabled"]:
            specs[kind] = {"kind": kind, **tasks[kind]}
    return specs


def ar_task_name(c: float) -> str:
    return f"ar-c{format_coupling(c)}"


def format_beta(beta) -> str:
    return NO_BETA if beta is None else f"{float(beta):g}"


def parse_beta(text: str | None):
    if text is None or text == NO_BETA:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--beta must be a positive number or {NO_BETA!r}, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--beta must be > 0, got {text!r}")
    return value


def task_names(teb: dict) -> list[str]:
    return list(task_specs(teb))


def ar_task_names(teb: dict) -> list[str]:
    return [n for n, s in task_specs(teb).items() if s["kind"] == "ar"]


def task_models(teb: dict, task: str) -> list[tuple[str, float | None]]:
    """(variant, beta) of every source model trained on ``task``, in the order ``teb eval`` writes them:
    each variant of teb.variants (the bottleneck ones at each of the task's betas), then the beta sweep."""
    specs = task_specs(teb)
    if task not in specs:
        raise ValueError(f"unknown TEB task {task!r} (enabled: {', '.join(specs) or 'none'})")
    models: list[tuple[str, float | None]] = []
    for variant in teb["variants"]:
        if variant in STOCHASTIC:
            models += [(variant, b) for b in specs[task]["betas"]]
        else:
            models.append((variant, None))
    sweep = teb["beta_sweep"]
    if task in sweep["tasks"]:
        models += [(v, b) for v in sweep["variants"] for b in sweep["betas"]]
    return models


def task_runs(teb: dict, task: str) -> list[tuple[str, str]]:
    """(variant, beta string) of every source model trained on ``task`` (target-only excluded), each once."""
    return list(dict.fromkeys((variant, format_beta(beta)) for variant, beta in task_models(teb, task)))


def first_bottleneck_beta(models) -> float | None:
    """A task's default beta, where its tables compare the models: the beta of its first bottleneck model
    in evaluation order, from (variant, beta) pairs in that order (a beta of None or NaN is skipped)."""
    for variant, beta in models:
        if variant in STOCHASTIC and beta is not None and not math.isnan(float(beta)):
            return float(beta)
    return None


def default_beta(teb: dict, task: str) -> float | None:
    """The default beta of ``task``: its ``betas[0]``, or the sweep's first beta when teb.variants trains no
    bottleneck model; None when no bottleneck model trains on it. The aggregate is not given the config:
    it finds this beta (as the run's folder name rounds it) by ``first_bottleneck_beta`` over the rows of
    the evaluations, which ``teb eval`` writes in ``task_models`` order."""
    return first_bottleneck_beta(task_models(teb, task))


def task_epochs(teb: dict, spec: dict, which: str) -> int:
    """Epochs of the task's TEB stage (``epochs``) or target-only model (``target_epochs``, default: the same)."""
    if which == "target_epochs":
        return spec.get(which) or teb["train"].get(which) or task_epochs(teb, spec, "epochs")
    return spec.get(which) or teb["train"][which]


def task_batch_size(teb: dict, spec: dict) -> int:
    return spec.get("batch_size") or teb["train"]["batch_size"]


# --------------------------------------------------------------------------------------------------
# Job identities (the rules fingerprint these)


def data_settings(teb: dict, task: str) -> dict:
    """teb_data{task}: the generator's settings of this task (not how its models train) and the data seed."""
    spec = {k: v for k, v in task_specs(teb)[task].items() if k not in TASK_TRAINING_KEYS}
    return {"spec": spec, "data_seed": teb["data_seed"]}


def train_settings(teb: dict, task: str, variant: str) -> dict:
    """teb_target / teb_train{task,variant,beta,seed}: the network, the optimiser, the epochs and batch size
    this model trains with (task overrides resolved), device and threads."""
    spec = task_specs(teb)[task]
    which = "target_epochs" if variant == "target" else "epochs"
    train = {k: v for k, v in teb["train"].items()
             if k not in TRAIN_KEYS_NOT_IN_TRAINING + ("epochs", "target_epochs", "batch_size")}
    return {"model": teb["model"], "train": train, "epochs": task_epochs(teb, spec, which),
            "batch_size": task_batch_size(teb, spec), "device": teb["device"], "threads": teb["threads"]}


def eval_settings(teb: dict) -> dict:
    """teb_eval{task,seed}: the Monte Carlo sizes of the estimates (the models and data come as inputs)."""
    return {"eval_samples": teb["train"]["eval_samples"], "prior_samples": teb["train"]["prior_samples"],
            "bound": teb["bound"], "device": teb["device"], "threads": teb["threads"]}


def estimators_settings(teb: dict) -> dict:
    """teb_estimators{task}: the reference estimators' settings."""
    return {"estimators": teb["estimators"]}


def check(cfg: dict) -> list[str]:
    """The TEB study's cross-key errors, each naming its key (registered with repro.config)."""
    teb = cfg.get("teb") or {}
    if not teb:
        return []
    known = set(task_specs(teb))
    return [f"key 'teb.beta_sweep.tasks[{i}]': {task!r} is not an enabled task "
            f"(enabled: {', '.join(sorted(known)) or 'none'})"
            for i, task in enumerate(teb.get("beta_sweep", {}).get("tasks", [])) if task not in known]
