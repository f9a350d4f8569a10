"""Run coordinates of the TEB branch, shared by the CLI and the workflow rules (one source of truth).

Pure functions of the config: the workflow imports this module while it is parsed, so it imports no torch.
"""

from __future__ import annotations

NO_BETA = "none"


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


def task_runs(teb: dict, task: str) -> list[tuple[str, str]]:
    """(variant, beta string) of every source model trained on ``task`` (target-only excluded)."""
    specs = task_specs(teb)
    if task not in specs:
        raise ValueError(f"unknown TEB task {task!r} (enabled: {', '.join(specs) or 'none'})")
    runs: list[tuple[str, str]] = []
    for variant in teb["variants"]:
        if variant in ("teb", "teb0"):
            runs += [(variant, format_beta(b)) for b in specs[task]["betas"]]
        else:
            runs.append((variant, NO_BETA))
    sweep = teb["beta_sweep"]
    if task in sweep["tasks"]:
        runs += [(v, format_beta(b)) for v in sweep["variants"] for b in sweep["betas"]]
    return list(dict.fromkeys(runs))


def check_sweep_tasks(teb: dict) -> None:
    known = set(task_specs(teb))
    bad = [t for t in teb["beta_sweep"]["tasks"] if t not in known]
    if bad:
        raise ValueError(f"key 'teb.beta_sweep.tasks': {bad} are not enabled tasks (enabled: {', '.join(sorted(known))})")
