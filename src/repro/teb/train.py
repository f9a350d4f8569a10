"""Training of the TEB models: the target-only model first, then every source model.

Each run keeps the parameters of its best validation epoch (the variant's own objective), saves them
with what is needed to rebuild the network, and logs one row per epoch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..faults import kill_point
from ..io import InputError, atomic_path, atomic_write_text
from .models import TEBNet
from .runs import STOCHASTIC, task_batch_size, task_epochs
from .tasks import as_float


def load_data(path: Path) -> dict:
    """A task's tensors (data.pt), refused naming the file when it is damaged or differs from the
    digest that ``repro teb data`` recorded beside it (manifest.json)."""
    from .tasks import tensor_digest

    path = Path(path)
    advice = "delete it and rerun (teb_data regenerates it from its seed)"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task tensor file not found (run 'repro teb data')")
    try:
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict of splits, got {type(data).__name__}")
    except Exception as exc:  # noqa: BLE001 - torch's zip reader names no file
        raise InputError(f"{path}: damaged task tensor file ({type(exc).__name__}: {exc}); {advice}") from exc
    manifest = path.with_name("manifest.json")
    if manifest.is_file():
        expected = json.loads(manifest.read_text()).get("sha256")
        if expected and tensor_digest(data) != expected:
            raise InputError(f"{path}: its tensors do not match the SHA-256 in {manifest}; {advice}")
    return data


def batch(split: dict, idx, device) -> tuple[torch.Tensor, ...]:
    return tuple(as_float(split[k][idx]).to(device) for k in ("y", "x", "target"))


def n_classes(data: dict) -> int:
    x = data["train"]["x"]
    return int(x.max()) + 1 if x.dtype == torch.long else 10


def setup_torch(threads: int, seed: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def build(variant: str, data: dict, mcfg: dict, target: TEBNet | None = None) -> TEBNet:
    tr = data["train"]
    ex = [as_float(tr[k][:2]) for k in ("y", "x", "target")]
    if variant == "teb":
        if target is None:
            raise ValueError("TEB from context needs the trained target-only model")
        return TEBNet.from_target(target, "teb", *ex, mcfg, n_classes(data))
    return TEBNet(variant, *ex, mcfg, n_classes(data))


@torch.no_grad()
def evaluate_objective(net: TEBNet, split: dict, beta, batch_size: int, device) -> dict:
    net.eval()
    n = len(split["target"])
    tot = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size)
        loss, parts = net.loss(*batch(split, idx, device), beta)
        m = min(batch_size, n - start)
        tot["loss"] += loss.item() * m
        tot["nll"] += parts["nll"] * m
        tot["kl"] += (parts["kl"] if math.isfinite(parts["kl"]) else 0.0) * m
    return {k: v / n for k, v in tot.items()}


def fit(net: TEBNet, data: dict, tcfg: dict, epochs: int, beta, seed: int, device="cpu", desc: str = "") -> tuple[TEBNet, pd.DataFrame]:
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    # Not fused=True: it saves about a second per job, but its rounding (2e-6 in the weights after 60 steps)
    # moved single-seed results of the nonlinear tasks (sinusoid TEB at beta = 100: KL 10.4 -> 0.002 nats,
    # a collapsed posterior), so the default optimiser keeps the reported numbers.
    opt = torch.optim.Adam(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    train = data["train"]
    n = len(train["target"])
    gen = torch.Generator().manual_seed(seed)
    best, best_state, rows = math.inf, copy.deepcopy(net.state_dict()), []
    start = time.time()
    for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not tcfg["progress"], mininterval=2):
        net.train()
        perm = torch.randperm(n, generator=gen)
        run = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
        for s in range(0, n, tcfg["batch_size"]):
            idx = perm[s:s + tcfg["batch_size"]]
            loss, parts = net.loss(*batch(train, idx, device), beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run["loss"] += loss.item() * len(idx)
            run["nll"] += parts["nll"] * len(idx)
            run["kl"] += (parts["kl"] if math.isfinite(parts["kl"]) else 0.0) * len(idx)
        val = evaluate_objective(net, data["val"], beta, max(tcfg["batch_size"], 1024), device)
        rows.append({"epoch": epoch, **{f"train_{k}": v / n for k, v in run.items()},
                     **{f"val_{k}": v for k, v in val.items()}, "seconds": time.time() - start})
        if not math.isfinite(val["loss"]):
            raise FloatingPointError(f"{desc}: validation loss is {val['loss']} at epoch {epoch}")
        if val["loss"] < best:
            best, best_state = val["loss"], copy.deepcopy(net.state_dict())
        if epoch == 1:
            kill_point("teb_train:after-epoch-1")
    net.load_state_dict(best_state)
    net.eval()
    return net, pd.DataFrame(rows)


def save_model(net: TEBNet, out: Path, meta: dict, log: pd.DataFrame) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp)
    atomic_write_text(out / "log.csv", log.to_csv(index=False))
    best = log.loc[log["val_loss"].idxmin()]
    summary = {**meta, "best_epoch": int(best["epoch"]), "best_val_loss": float(best["val_loss"]),
               "best_val_nll": float(best["val_nll"]), "best_val_kl": float(best["val_kl"]) if meta["variant"] in STOCHASTIC else None,
               "seconds": float(log["seconds"].iloc[-1]),
               "trainable_params": int(sum(p.numel() for p in net.parameters() if p.requires_grad))}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def load_model(path: Path, data: dict, mcfg: dict | None = None, target: TEBNet | None = None) -> TEBNet:
    # weights_only: the file holds tensors and plain metadata, so nothing in it is ever unpickled as code.
    file = Path(path) / "model.pt"
    try:
        blob = torch.load(file, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise InputError(f"{file}: damaged model file ({type(exc).__name__}: {exc}); delete it and rerun") from exc
    meta = blob["meta"]
    mcfg = meta["model"] if mcfg is None else mcfg
    if meta["variant"] == "teb":
        # The architecture only; every parameter is overwritten from the checkpoint below.
        target = target or TEBNet("target", *(as_float(data["train"][k][:2]) for k in ("y", "x", "target")), mcfg, n_classes(data))
    net = build(meta["variant"], data, mcfg, target)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net


def train_run(teb: dict, spec: dict, data: dict, variant: str, beta, seed: int, out: Path,
              target_dir: Path | None = None) -> dict:
    """Train one model and save it under ``out``."""
    device = teb["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("teb.device is 'cuda' but torch sees no CUDA device")
    setup_torch(teb["threads"], seed)
    mcfg = teb["model"]
    target = None
    if variant == "teb":
        if target_dir is None:
            raise ValueError("--target is required for variant teb")
        target = load_model(target_dir, data)
    net = build(variant, data, mcfg, target)
    if variant != "teb":  # TEB from context starts from the trained target model's decoder
        net.start_output_variance(as_float(data["train"]["target"]))
    epochs = task_epochs(teb, spec, "target_epochs" if variant == "target" else "epochs")
    desc = f"{spec.get('name', spec['kind'])} {variant}" + (f" beta={beta:g}" if beta is not None else "")
    tcfg = {**teb["train"], "batch_size": task_batch_size(teb, spec)}
    net, log = fit(net, data, tcfg, epochs, beta, seed, device, desc)
    meta = {"variant": variant, "beta": beta, "seed": seed, "task": spec.get("name", spec["kind"]), "epochs": epochs,
            "model": mcfg, "device": device}
    return save_model(net.cpu(), out, meta, log)
