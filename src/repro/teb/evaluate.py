"""Held-out evaluation: the model's TE estimate, its KL term, and prediction quality on switch events.

TE estimate = mean over held-out windows of log p_model(y'|y, x) - log p_target(y'|y), in nats, where
the target-only model is the one every source model of the task is compared to. Its standard error
is over windows (AR windows overlap, so it is a lower bound on the real uncertainty).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .estimators import gaussian_te, ksg_te
from .models import STOCHASTIC
from .tasks import BALL_COLOURS, as_float
from .train import load_model


@torch.no_grad()
def predict(net, split: dict, samples: int, batch_size: int = 2048) -> dict[str, torch.Tensor]:
    outs = {"loglik": [], "point_mean": [], "kl": []}
    n = len(split["target"])
    for s in range(0, n, batch_size):
        idx = slice(s, s + batch_size)
        y, x, t = (as_float(split[k][idx]) for k in ("y", "x", "target"))
        o = net.predictive_loglik(y, x, t, samples)
        outs["loglik"].append(o["loglik"])
        outs["point_mean"].append(o["point_mean"])
        outs["kl"].append(o.get("kl", torch.full((len(t),), float("nan"))))
    return {k: torch.cat(v) for k, v in outs.items()}


def digit_templates(train: dict) -> torch.Tensor:
    """Mean training target frame per (digit, angle): the reference a predicted frame is classified by."""
    t = as_float(train["target"]).flatten(1)
    n_angles = int(train["angle"].max()) + 1
    tmpl = torch.zeros(10, n_angles, t.shape[1])
    count = torch.zeros(10, n_angles, 1)
    tmpl.index_put_((train["label"], train["angle"]), t, accumulate=True)
    count.index_put_((train["label"], train["angle"]), torch.ones(len(t), 1), accumulate=True)
    return tmpl / count.clamp(min=1)


def digit_accuracy_hits(pred: torch.Tensor, split: dict, templates: torch.Tensor) -> np.ndarray:
    cand = templates[:, split["angle"]].permute(1, 0, 2)  # [n, 10, pixels]
    dist = ((cand - pred.flatten(1)[:, None]) ** 2).sum(-1)
    return (dist.argmin(1) == split["label"]).numpy()


def frame_colours(frames: torch.Tensor) -> torch.Tensor:
    """Colour index of a (predicted) ball frame [n, 1, 3, S, S]: intensity-weighted RGB, nearest palette entry."""
    f = frames.clamp(0, 1).flatten(-2)[:, -1]  # [n, 3, pixels]
    w = f.max(dim=1).values  # intensity, since every palette colour has a maximum component of 1
    rgb = (f * w[:, None]).sum(-1) / (w**2).sum(-1).clamp(min=1e-8)[:, None]
    palette = torch.tensor(BALL_COLOURS, dtype=rgb.dtype)
    return ((rgb[:, None] - palette[None]) ** 2).sum(-1).argmin(1)


def accuracy_hits(task_kind: str, pred: torch.Tensor, split: dict, data: dict) -> np.ndarray | None:
    if task_kind == "digits":
        return digit_accuracy_hits(pred, split, digit_templates(data["train"]))
    if task_kind == "needle":
        return (frame_colours(pred) == split["colour"]).numpy()
    return None


def _mean(a, mask=None):
    a = np.asarray(a, dtype=float)
    if mask is not None:
        a = a[mask]
    return float(a.mean()) if len(a) else float("nan")


def evaluate_task(task: str, kind: str, data: dict, model_dirs: dict[tuple, Path], target_dir: Path,
                  samples: int, seed: int) -> pd.DataFrame:
    """One row per model (target-only included) on the test split."""
    torch.manual_seed(seed)
    test = data["test"]
    target_net = load_model(target_dir, data)
    base = predict(target_net, test, samples)
    t = as_float(test["target"])
    switch = test["switch"].numpy()
    rows = []
    runs = {("target", None): target_dir, **model_dirs}
    for (variant, beta), path in runs.items():
        out = base if variant == "target" else predict(load_model(path, data, target=target_net), test, samples)
        gain = (out["loglik"] - base["loglik"]).numpy()
        sq = ((out["point_mean"] - t) ** 2).flatten(1).mean(1).numpy()
        hits = accuracy_hits(kind, out["point_mean"], test, data)
        summary = json.loads((Path(path) / "summary.json").read_text())
        row = {
            "task": task, "kind": kind, "variant": variant, "beta": beta, "seed": seed, "n_test": len(gain),
            "te_estimate": _mean(gain), "te_estimate_se": float(gain.std(ddof=1) / math.sqrt(len(gain))),
            "kl": _mean(out["kl"].numpy()) if variant in STOCHASTIC else float("nan"),
            "loglik": _mean(out["loglik"].numpy()), "loglik_target": _mean(base["loglik"].numpy()),
            "mse": _mean(sq),
            "switch_fraction": _mean(switch),
            "best_epoch": summary["best_epoch"], "train_seconds": summary["seconds"],
        }
        for name, mask in (("switch", switch), ("noswitch", ~switch)):
            row[f"te_estimate_{name}"] = _mean(gain, mask)
            row[f"mse_{name}"] = _mean(sq, mask)
            row[f"accuracy_{name}"] = _mean(hits, mask) if hits is not None else float("nan")
        row["accuracy"] = _mean(hits) if hits is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def reference_estimates(task: str, data: dict, info: dict, ksg_k: int, ksg_max: int) -> pd.DataFrame:
    """Gaussian and KSG estimates on the held-out windows, next to the exact TE."""
    test = data["test"]
    x, y, t = (test[k].numpy() for k in ("x", "y", "target"))
    rows = [{"task": task, "estimator": "gaussian", "te": gaussian_te(x, y, t), "n": len(t)}]
    m = min(ksg_max, len(t))
    rows.append({"task": task, "estimator": "ksg", "te": ksg_te(x[:m], y[:m], t[:m], k=ksg_k), "n": m})
    for r in rows:
        r.update(exact_te=info["exact_te"], c=info["c"])
    return pd.DataFrame(rows)
