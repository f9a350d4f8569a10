"""How small can a TEB task's training set and schedule be before its numbers move?

For each task, trains the target-only model, TEB (from context) and TEB_0 at the task's configured beta
under several (n_train, epochs) settings, each for several seeds, and evaluates them exactly as
`repro teb eval` does (test split and bound unchanged). Printed per task and setting: the mean and seed SD
of te_lower, KL and switch accuracy, the shift of the te_lower mean against the configured size in units
of its seed standard error, and the CPU seconds as a ratio to the configured size, all measured in this
run. The data seed is the config's, so a smaller n_train is a prefix-sized draw of the same generator.

    .venv/bin/python benchmarks/teb_task_size.py                          # sines, digits, needle; 2 seeds
    .venv/bin/python benchmarks/teb_task_size.py --tasks digits --seeds 0 1 2 --jobs 2

One thread per training, `--jobs` trainings side by side (the pipeline's own setting on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"configured": (1.0, 1.0), "half n_train": (0.5, 1.0), "half epochs": (1.0, 0.5),
            "quarter n_train, double epochs": (0.25, 2.0)}


def measure(args: tuple) -> dict:
    task, label, n_factor, epoch_factor, seed, configfile = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from repro.config import load_config
    from repro.teb.evaluate import evaluate_task
    from repro.teb.runs import task_specs
    from repro.teb.tasks import make_task
    from repro.teb.train import train_run

    teb = copy.deepcopy(load_config(configfile)["teb"])
    teb["threads"] = 1
    teb["train"]["progress"] = False
    spec = {**task_specs(teb)[task], "name": task}
    spec["n_train"] = max(64, int(round(spec["n_train"] * n_factor)))
    base_epochs = spec.get("epochs") or teb["train"]["epochs"]
    spec["epochs"] = max(1, int(round(base_epochs * epoch_factor)))
    splits, info = make_task(spec, teb["data_seed"])
    beta = spec["betas"][0]
    start = time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        train_run(teb, spec, splits, "target", None, seed, scratch / "target")
        runs = {}
        for variant in ("teb", "teb0"):
            train_run(teb, spec, splits, variant, beta, seed, scratch / variant, scratch / "target")
            runs[(variant, beta)] = scratch / variant
        df = evaluate_task(task, spec["kind"], splits, runs, scratch / "target", teb["train"]["eval_samples"],
                           teb["train"]["prior_samples"], seed, spec=spec, info=info, bound=teb["bound"])
    cpu = time.process_time() - start
    rows = df[df.variant != "target"].set_index("variant")
    return {"task": task, "setting": label, "seed": seed, "n_train": spec["n_train"], "epochs": spec["epochs"],
            "cpu_s": cpu, **{f"{v}_{m}": float(rows.loc[v, m]) for v in ("teb", "teb0")
                             for m in ("te_lower", "kl", "accuracy_switch")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default=str(REPO / "config.yaml"))
    parser.add_argument("--tasks", nargs="+", default=["sines", "digits", "needle"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    import pandas as pd

    work = [(t, s, *SETTINGS[s], seed, args.configfile)
            for t, s, seed in itertools.product(args.tasks, args.settings, args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        df = pd.DataFrame(list(pool.map(measure, work)))
    pd.set_option("display.width", 250)
    out = []
    for (task, setting), g in df.groupby(["task", "setting"], sort=False):
        ref = df[(df.task == task) & (df.setting == "configured")]
        row = {"task": task, "setting": setting, "n_train": int(g.n_train.iloc[0]), "epochs": int(g.epochs.iloc[0]),
               "cpu_ratio": g.cpu_s.mean() / ref.cpu_s.mean() if len(ref) else math.nan}
        for v in ("teb", "teb0"):
            m, sd = g[f"{v}_te_lower"].mean(), g[f"{v}_te_lower"].std(ddof=1)
            row[f"{v}_te_lower"] = f"{m:.3f}±{sd:.3f}"
            if len(ref) and setting != "configured":
                se = math.sqrt(g[f"{v}_te_lower"].var(ddof=1) / len(g) + ref[f"{v}_te_lower"].var(ddof=1) / len(ref))
                row[f"{v}_shift_se"] = (m - ref[f"{v}_te_lower"].mean()) / se if se > 0 else math.nan
            row[f"{v}_kl"] = f"{g[f'{v}_kl'].mean():.2f}"
            row[f"{v}_acc_switch"] = f"{g[f'{v}_accuracy_switch'].mean():.3f}"
        out.append(row)
    print(pd.DataFrame(out).to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
