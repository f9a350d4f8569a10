"""The language-model run plan: which runs a config asks for, where each lives, which steps it saves,
which of those are evaluated on the task benchmarks, and each job's identity.

A job's identity is the settings its output depends on, minus what its path already names (a run's
coordinates): the rules fingerprint exactly that, so a config edit reruns the jobs it changes and no
others, and adding a rank, seed, learning rate or dataset only schedules the new runs.

Pure functions of the config, importing no torch: the workflow reads them while it is parsed, and the
trainer, the evaluations, the cluster requests and the paper's macros read the same ones, so a run's
directory or checkpoint grid has one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

# A run's name (its coordinates), and its folder under the results root.
RUN_KEY_TEMPLATE = "{model}/{dataset}/{method}/r{rank}/lr{lr}/seed{seed}"
RUN_DIR_TEMPLATE = "{results}/lm/runs/" + RUN_KEY_TEMPLATE
COORDINATES = ("dataset", "method", "rank", "lr", "seed")
# The finetune keys that list a sweep axis: each value is a coordinate in a run's folder name.
SWEEP_AXES = ("datasets", "methods", "ranks", "learning_rates", "seeds")
# Settings that decide when state is saved or metrics are read back, never what is computed (a resume
# replays exactly, and metrics are read once per step whatever the interval): tests/test_finetune.py
# checks the same numbers under other values.
TIMING_ONLY = {"finetune": ("resume_every", "sync_every"), "evaluate": ("max_cache_gb",)}
# How long a run trains and where it saves. A run of S steps is exactly the first S steps of a longer
# one (constant learning rate; each batch a function of (seed, step)), so these may grow without
# retraining: the saved state of the shorter run is continued.
LENGTH_KEYS = ("max_steps", "checkpoints")
# lm-eval tasks shipped with the package (repro/lm/tasks/).
LOCAL_TASKS = ("repro_knowledge", "repro_arithmetic", "repro_heldout_text")


def format_lr(lr: float) -> str:
    """The learning rate as it appears in paths: short, exact, and stable (5e-04 -> 0.0005)."""
    return repr(float(lr)).removesuffix(".0")


@dataclass(frozen=True)
class Run:
    model: str
    dataset: str
    method: str
    rank: int
    lr: str  # formatted as in the run's folder name (format_lr)
    seed: int

    @property
    def key(self) -> str:
        """The run's coordinates as one name (the folder below ``<results>/lm/runs/``)."""
        return RUN_KEY_TEMPLATE.format(model=self.model, dataset=self.dataset, method=self.method,
                                       rank=self.rank, lr=self.lr, seed=self.seed)

    def directory(self, results: str = "results") -> str:
        return run_dir(results, self.model, self.dataset, self.method, self.rank, self.lr, self.seed)


def run_dir(results: str, model: str, dataset: str, method: str, rank, lr, seed) -> str:
    return RUN_DIR_TEMPLATE.format(results=results, model=model, dataset=dataset, method=method, rank=rank,
                                   lr=lr, seed=seed)


def run_dir_pattern(results: str) -> str:
    """The run folder with Snakemake wildcards in place of the coordinates."""
    return RUN_DIR_TEMPLATE.format(results=results, **{k: "{" + k + "}" for k in ("model", *COORDINATES)})


def planned_runs(cfg: dict) -> list[Run]:
    """Every run of the sweep, in the config's order (datasets, methods, ranks, learning rates, seeds)."""
    ft = cfg["finetune"]
    model = cfg["model"]["name"]
    return [
        Run(model, d, m, int(r), format_lr(lr), int(s))
        for d in ft["datasets"]
        for m in ft["methods"]
        for r in ft["ranks"]
        for lr in ft["learning_rates"]
        for s in ft["seeds"]
    ]


def checkpoint_grid(max_steps: int, spec: object = "log2") -> list[int]:
    """Steps at which adapters are saved: always 0 and max_steps, log-spaced in between."""
    if spec == "log2":
        steps = {0, max_steps} | {2**k for k in range(int(math.log2(max_steps)) + 1)}
    elif isinstance(spec, int) and not isinstance(spec, bool):
        steps = {0, max_steps} | {int(round(x)) for x in np.geomspace(1, max_steps, spec - 1)}
    elif isinstance(spec, (list, tuple)):
        steps = {0, max_steps} | {int(s) for s in spec}
    else:
        raise ConfigError(f"key 'finetune.checkpoints': cannot build a checkpoint grid from {spec!r}")
    return sorted(s for s in steps if 0 <= s <= max_steps)


def run_checkpoints(cfg: dict) -> list[int]:
    ft = cfg["finetune"]
    return checkpoint_grid(ft["max_steps"], ft["checkpoints"])


def select_steps(grid: list[int], spec: list, key: str = "evals.checkpoints") -> list[int]:
    """The checkpoint steps named by ``spec`` (first/middle/last/all or explicit steps) within ``grid``.

    ``middle`` is the median entry of the (log-spaced) checkpoint grid, so it sits halfway in log N.
    """
    grid = sorted(int(s) for s in grid)
    if not grid:
        raise ValueError("select_steps: empty checkpoint grid")
    chosen: set[int] = set()
    for i, item in enumerate(spec):
        if item == "first":
            chosen.add(grid[0])
        elif item == "last":
            chosen.add(grid[-1])
        elif item == "middle":
            chosen.add(grid[len(grid) // 2])
        elif item == "all":
            chosen.update(grid)
        elif isinstance(item, int) and not isinstance(item, bool):
            if item not in grid:
                raise ConfigError(f"key '{key}[{i}]': step {item} is not a checkpoint (checkpoints: {grid})")
            chosen.add(item)
        else:
            raise ConfigError(f"key '{key}[{i}]': {item!r} is not first, middle, last, all or a step")
    return sorted(chosen)


def planned_eval_steps(cfg: dict) -> list[int]:
    """Steps of every run evaluated on the task benchmarks (step 0 is the base model, evaluated once)."""
    return select_steps(run_checkpoints(cfg), cfg["evals"]["checkpoints"])


def check_evals_plan(cfg: dict) -> None:
    """Errors of the evals section the schema cannot express, each naming its key (run in validation)."""
    ev = cfg.get("evals") or {}
    if not ev.get("enabled"):
        return
    planned_eval_steps(cfg)
    if not ev["tasks"] and not ev["safety"]["enabled"]:
        raise ConfigError("key 'evals.tasks': empty while evals.safety.enabled is false: nothing to evaluate")
    if not ev["local_tasks"]:
        local = [t for t in ev["tasks"] if t in LOCAL_TASKS]
        if local:
            raise ConfigError(f"key 'evals.local_tasks': false, but evals.tasks names local tasks {local}")
    for i, path in enumerate(ev["include_paths"]):
        if not Path(path).is_dir():
            raise ConfigError(f"key 'evals.include_paths[{i}]': {path!r} is not a directory")
    kw = ev["safety"].get("keywords")
    if ev["safety"]["enabled"] and kw and not Path(kw).exists():
        raise ConfigError(f"key 'evals.safety.keywords': file {kw!r} not found")


# --------------------------------------------------------------------------------------------------
# Job identities (the settings each job's output depends on; the rules fingerprint these)


def _without(section: dict, keys) -> dict:
    return {k: v for k, v in section.items() if k not in keys}


def model_settings(cfg: dict) -> dict:
    """download_model{model}: the model section (its name is the path) and the dtype it is saved in.
    ``model.shape`` only sizes cluster requests and the GPU check: stating it changes no weights."""
    return {"model": _without(cfg["model"], ("name", "shape")), "dtype": cfg["dtype"]}


def data_settings(cfg: dict) -> dict:
    """prepare_data{model}: every dataset and corpus definition (all are built, whether swept or not),
    the seed, and where and in which dtype the base model samples its own corpus."""
    return {"data": cfg["data"], "seed": cfg["seed"], "device": cfg["device"], "dtype": cfg["dtype"]}


def finetune_settings(cfg: dict) -> dict:
    """finetune{run}: the finetune section without its sweep axes and timing-only keys, plus device and
    dtype. ``LENGTH_KEYS`` are in it (the run's outputs list its checkpoints), but the saved state the
    trainer resumes is keyed without them (see ``repro.lm.finetune.trajectory_identity``)."""
    ft = _without(cfg["finetune"], SWEEP_AXES + TIMING_ONLY["finetune"])
    return {**ft, "device": cfg["device"], "dtype": cfg["dtype"]}


def evaluate_settings(cfg: dict) -> dict:
    """evaluate{run}: how the forgetting and held-out losses are computed (their data come as inputs)."""
    return {"evaluate": _without(cfg["evaluate"], TIMING_ONLY["evaluate"]), "device": cfg["device"],
            "dtype": cfg["dtype"], "threads": cfg["finetune"]["threads"],
            "corpora": list(cfg["data"]["forgetting"])}


def evals_settings(cfg: dict, base: bool = False) -> dict:
    """evaluate_tasks{run} (or the base model's, ``base``): the evaluation settings and, for a run, the
    checkpoint steps they select."""
    out = {"evals": _without(cfg["evals"], ("enabled", "checkpoints")), "device": cfg["device"],
           "dtype": cfg["dtype"], "threads": cfg["finetune"]["threads"]}
    if not base:
        out["steps"] = [s for s in planned_eval_steps(cfg) if s > 0]
    return out


def check(cfg: dict) -> list[str]:
    """The language-model study's cross-key errors, each naming its key (registered with repro.config)."""
    errors = []
    ft = cfg.get("finetune", {})
    data = cfg.get("data", {})
    known = set(data.get("finetune", {}))
    for i, name in enumerate(ft.get("datasets", [])):
        if name not in known:
            errors.append(
                f"key 'finetune.datasets[{i}]': {name!r} is not a data.finetune entry "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
    for name, spec in data.get("finetune", {}).items():
        if spec.get("kind") in ("model-samples", "pydoc-topics"):
            errors.append(
                f"key 'data.finetune.{name}.kind': {spec['kind']!r} is a forgetting corpus, "
                "not a fine-tuning dataset"
            )
    for name, spec in data.get("forgetting", {}).items():
        if spec.get("kind") in ("stdlib-docstrings", "hf-instruct"):
            errors.append(
                f"key 'data.forgetting.{name}.kind': {spec['kind']!r} is instruction data; "
                "a forgetting corpus is plain text"
            )
    steps = ft.get("checkpoints")
    max_steps = ft.get("max_steps")
    if isinstance(steps, list) and isinstance(max_steps, int):
        bad = [s for s in steps if s > max_steps]
        if bad:
            errors.append(f"key 'finetune.checkpoints': steps {bad} exceed finetune.max_steps={max_steps}")
    tiny = cfg.get("model", {}).get("tiny") or {}
    if cfg.get("model", {}).get("source") == "tiny" and tiny:
        h, nh, nkv = tiny.get("hidden_size"), tiny.get("num_attention_heads"), tiny.get("num_key_value_heads")
        if h and nh and h % nh:
            errors.append(f"key 'model.tiny.hidden_size': {h} is not divisible by num_attention_heads={nh}")
        if nh and nkv and nh % nkv:
            errors.append(
                f"key 'model.tiny.num_key_value_heads': {nkv} does not divide num_attention_heads={nh}"
            )
    if (cfg.get("evals") or {}).get("enabled"):
        try:
            check_evals_plan(cfg)
        except ConfigError as exc:
            errors.append(str(exc))
    return errors
