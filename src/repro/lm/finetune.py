"""LoRA / rsLoRA fine-tuning with log-spaced adapter checkpoints, resumable after a kill.

One run = (model, dataset, method, rank, lr, seed). The batch at every step is a pure function of
(seed, step), and the resumable state (adapter weights, AdamW state, RNG) is written atomically, so a
run resumed from its last saved state ends with the same numbers as an uninterrupted one.

Saved state is keyed by the run's trajectory identity (``trajectory_identity``): every setting the
weights depend on, the base model's content, the training data's SHA-256 and the numerical libraries'
versions, but not how long the run trains. State of another identity is never resumed: it is refused,
or (``restart_stale``, as the workflow runs it) moved to ``superseded/`` and the run starts from step 0.
State of the same identity is resumed after a kill, and continued when ``max_steps`` grows: with a
constant learning rate and batches that depend on (seed, step) only, a run of S steps is exactly the
first S steps of a longer one, so only the new steps are trained.

Layout of a run directory::

    summary.json        written last: run metadata, checkpoint list and hashes (the rule's output)
    train_log.csv       one row per step (the rule's output; copied from state/ at the end)
    checkpoints/step-000000/ ...   adapter checkpoints on the log-spaced grid (kept on failure)
    state/              identity.json, resumable state and the growing log (kept on failure)
    superseded/         the last state moved aside because the settings changed (one generation)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..io import (
    InputError,
    atomic_dir,
    atomic_open,
    atomic_write_text,
    identity_hash,
    rows_sha256,
    settings_diff,
    sha256_file,
)
from .adapters import (
    adapter_scalings,
    adapter_state_dict,
    build_adapter_model,
    count_trainable,
    peft_version,
    set_adapter_state_dict,
)
from .runs import LENGTH_KEYS, TIMING_ONLY, checkpoint_grid
from .step import (  # noqa: F401  (causal_lm_loss and compile_decoder_layers are this module's API too)
    StepOptions,
    StepRunner,
    causal_lm_loss,
    compile_decoder_layers,
    make_optimizer,
    prepare_model,
    resolve_autocast,
)
from .tokens import Example, encode_rows

LOG_FIELDS = [
    "step", "updated", "loss", "grad_norm", "grad_norm_global", "lr",
    "tokens", "supervised_tokens", "seconds", "tokens_per_s",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; checkpoints written so far are kept."""


class StaleStateError(InputError):
    """A run folder holds training state made under other settings than the ones asked for."""


IDENTITY_FILE = "identity.json"
SUPERSEDED = "superseded"
ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class RunSpec:
    model: str
    dataset: str
    method: str
    rank: int
    lr: float
    seed: int
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    max_steps: int = 64
    batch_size: int = 4
    max_length: int = 128
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = None
    checkpoints: object = "log2"
    resume_every: int = 50
    group_by_length: bool = True
    threads: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    sync_every: int = 32
    # How each step is computed, as configured: autocast may be "auto" (on where the device computes
    # bf16 in hardware), resolved on the machine that trains (``step_options``).
    step: StepOptions = field(default_factory=StepOptions)

    def step_options(self, device: str | None = None) -> StepOptions:
        return replace(self.step, autocast=resolve_autocast(self.step.autocast, device or self.device))

    def settings(self) -> dict:
        """Every setting under its finetune key, the step's options among the others: the flat record
        summary.json and the run's identity keep, so grouping the options changes neither."""
        flat = {k: v for k, v in self.__dict__.items() if k != "step"}
        return {**flat, **self.step.__dict__}

    @classmethod
    def from_config(cls, config: dict, dataset: str, method: str, rank: int, lr: float, seed: int) -> RunSpec:
        ft = config["finetune"]
        return cls(
            model=config["model"]["name"], dataset=dataset, method=method, rank=int(rank), lr=float(lr),
            seed=int(seed), alpha=ft["alpha"], dropout=ft["dropout"], target_modules=tuple(ft["target_modules"]),
            max_steps=ft["max_steps"], batch_size=ft["batch_size"], max_length=ft["max_length"],
            weight_decay=ft["weight_decay"], adam_betas=tuple(ft["adam_betas"]), max_grad_norm=ft["max_grad_norm"],
            checkpoints=ft["checkpoints"], resume_every=ft["resume_every"], group_by_length=ft["group_by_length"],
            threads=ft["threads"], device=config["device"], dtype=config["dtype"], sync_every=ft["sync_every"],
            step=StepOptions(**{f.name: ft[f.name] for f in fields(StepOptions)}),
        )


def trajectory_identity(spec: RunSpec, model_dir: Path, train_sha256: str, device: str) -> dict:
    """What a run's saved state was trained under, so that state is resumed or continued only under the
    same: every RunSpec setting except when state is saved (``TIMING_ONLY``) and how long the run trains
    and where it saves (``LENGTH_KEYS``), with the device and bf16 autocast as resolved on this machine
    ("auto" differs between CPUs), the base model's content, the training file's SHA-256, and the versions
    of the libraries that compute the step."""
    import torch
    import transformers

    from .models import model_fingerprint

    skip = set(TIMING_ONLY["finetune"]) | set(LENGTH_KEYS)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.settings().items() if k not in skip}
    settings.update(device=device, autocast=resolve_autocast(spec.step.autocast, device),
                    model_content=model_fingerprint(model_dir), train_sha256=train_sha256,
                    libraries={"torch": torch.__version__, "transformers": transformers.__version__,
                               "peft": peft_version()})
    return settings


def _checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:06d}"


def _saved_step(state_dir: Path) -> tuple[int, str | None]:
    """The step of the resumable state and the identity hash it records (0, None without one)."""
    meta = state_dir / "resume" / "meta.json"
    if not meta.exists():
        return 0, None
    try:
        doc = json.loads(meta.read_text())
        return int(doc["step"]), doc.get("identity")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta}: damaged resume state ({type(exc).__name__}: {exc}); delete "
                         f"{state_dir / 'resume'} to restart this run from step 0") from exc


def _stale_reasons(run_dir: Path, identity: dict, grid: list[int], max_steps: int) -> list[str]:
    """Why the run folder's saved state cannot be resumed or continued under ``identity`` (empty: it can)."""
    ckpt_dir, state_dir = run_dir / "checkpoints", run_dir / "state"
    saved_file = state_dir / IDENTITY_FILE
    has_state = any(p.exists() and any(p.iterdir()) for p in (ckpt_dir, state_dir))
    if not saved_file.exists():
        return ["its state records no identity (saved by an older version of the pipeline)"] if has_state else []
    try:
        saved = json.loads(saved_file.read_text())
        saved_identity, saved_hash = saved["identity"], saved["hash"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{saved_file} is damaged ({type(exc).__name__})"]
    if saved_hash != identity_hash(identity):
        return settings_diff(saved_identity, identity) or ["its identity hash differs"]
    step, state_hash = _saved_step(state_dir)
    if state_hash is not None and state_hash != saved_hash:
        return [f"its resume state was saved under identity {state_hash}, not the {saved_hash} its folder records"]
    if step > max_steps:
        return [f"its saved state is at step {step}, beyond max_steps {max_steps}"]
    # A run without resumable state starts at step 0 and saves every checkpoint itself.
    missing = [s for s in grid if 0 < step and s <= step and not (_checkpoint_path(ckpt_dir, s) / ADAPTER_FILE).exists()]
    if missing:
        return [f"the checkpoint grid asks for steps {missing} at or before its saved step {step}, "
                "which it did not save"]
    return []


def reconcile_saved_state(run_dir: Path, identity: dict, grid: list[int], max_steps: int,
                          restart_stale: bool) -> None:
    """Make the run folder's saved state one that may be resumed under ``identity``: keep it when it can
    be, otherwise refuse (naming every setting that differs) or, with ``restart_stale``, move it to
    ``superseded/`` (replacing an older one there) so the run starts from step 0, and say why in one line.
    Then record ``identity`` as the folder's."""
    run_dir = Path(run_dir)
    ckpt_dir, state_dir = run_dir / "checkpoints", run_dir / "state"
    reasons = _stale_reasons(run_dir, identity, grid, max_steps)
    if reasons:
        why = "; ".join(reasons)
        if not restart_stale:
            raise StaleStateError(
                f"{run_dir}: its saved training state cannot be resumed under these settings ({why}). "
                f"Pass --restart-stale to move it to {run_dir / SUPERSEDED} and train from step 0 (the "
                f"workflow does), or delete {state_dir} and {ckpt_dir}")
        superseded = run_dir / SUPERSEDED
        if superseded.exists():
            shutil.rmtree(superseded)
        superseded.mkdir()
        for part in (state_dir, ckpt_dir):
            if part.exists():
                part.rename(superseded / part.name)
        print(f"restarting {run_dir} from step 0: {why}; its old state is in {superseded}", flush=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"hash": identity_hash(identity), "identity": identity}, indent=2, sort_keys=True)
    if not (state_dir / IDENTITY_FILE).exists() or reasons:
        atomic_write_text(state_dir / IDENTITY_FILE, record)


def batch_schedule(lengths: list[int], batch_size: int, seed: int, n_batches: int, group_by_length: bool) -> list[list[int]]:
    """Example indices of each batch, a pure function of the arguments (so resuming replays it).

    With group_by_length, each epoch's permutation is cut into mega-batches of 32 batches whose
    examples are sorted by length before being split, and batch order is shuffled again: padding
    shrinks while every example is still seen once per epoch.
    """
    n = len(lengths)
    if n < batch_size:
        raise ValueError(f"finetune.batch_size: {batch_size} exceeds the {n} training examples")
    per_epoch = n // batch_size
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < n_batches:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n)[: per_epoch * batch_size]
        if group_by_length:
            mega = batch_size * 32
            chunks = []
            for lo in range(0, len(perm), mega):
                block = sorted(perm[lo : lo + mega].tolist(), key=lambda i: (-lengths[i], i))
                chunks += [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
            order = rng.permutation(len(chunks))
            epoch_batches = [chunks[i] for i in order]
        else:
            epoch_batches = [perm[j : j + batch_size].tolist() for j in range(0, len(perm), batch_size)]
        batches += epoch_batches
        epoch += 1
    return batches[:n_batches]


def _save_resume_state(state_dir: Path, model, optimizer, step: int, identity: str) -> None:
    import torch
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
        save_file(weights, tmp / "adapter.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "identity": identity}))

    atomic_dir(state_dir / "resume", write)


def _load_resume_state(state_dir: Path, model, optimizer) -> int:
    """The step saved in ``state_dir/resume`` (0 without one), its adapter, optimizer state and RNG loaded.

    The state is written atomically, so a damaged one means the disk or a hand went wrong: it is refused,
    naming the file, rather than half-loaded or silently replaced by a restart from step 0.
    """
    import torch

    from .models import load_safetensors

    resume = state_dir / "resume"
    if not resume.exists():
        return 0
    advice = f"delete {resume} to restart this run from step 0 (its checkpoints come out the same)"
    meta = resume / "meta.json"
    try:
        step = int(json.loads(meta.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta}: damaged resume state ({type(exc).__name__}: {exc}); {advice}") from exc
    device = next(model.parameters()).device
    try:
        weights = load_safetensors(resume / "adapter.safetensors", device=str(device), what="resume state adapter")
    except InputError as exc:
        raise InputError(f"{exc}; {advice}") from exc
    set_adapter_state_dict(model, weights)
    try:
        bundle = torch.load(resume / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(bundle["optimizer"])
        torch.set_rng_state(bundle["torch_rng"].cpu())
    except Exception as exc:  # noqa: BLE001 - torch's zip reader raises RuntimeError; re-raised naming the file
        raise InputError(f"{resume / 'optimizer.pt'}: damaged resume state ({type(exc).__name__}: {exc}); "
                         f"{advice}") from exc
    return step


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["step"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def train_run(
    spec: RunSpec,
    model_dir: Path,
    train_rows: list[dict],
    run_dir: Path,
    on_step=None,
    progress: bool = True,
    restart_stale: bool = False,
) -> dict:
    """Fine-tune one run to spec.max_steps, resuming or continuing from run_dir/state when that state was
    trained under the same identity (see ``reconcile_saved_state``; ``restart_stale`` moves other state
    aside instead of refusing it).

    ``on_step(step)`` is called after each completed optimizer step (tests use it to interrupt).
    """
    import torch
    from tqdm.auto import tqdm

    from .models import load_model, resolve_device

    torch.set_num_threads(spec.threads)
    run_dir = Path(run_dir)
    ckpt_dir, state_dir = run_dir / "checkpoints", run_dir / "state"
    device = resolve_device(spec.device)
    grid = checkpoint_grid(spec.max_steps, spec.checkpoints)
    train_sha256 = rows_sha256(train_rows)
    identity = trajectory_identity(spec, model_dir, train_sha256, device)
    identity_key = identity_hash(identity)
    reconcile_saved_state(run_dir, identity, grid, spec.max_steps, restart_stale)

    torch.manual_seed(spec.seed)
    base, tokenizer = load_model(model_dir, dtype=spec.dtype, device=device)
    model = build_adapter_model(base, spec.method, spec.rank, spec.alpha, spec.dropout, spec.target_modules)
    model.train()
    options = spec.step_options(device)
    prepare_model(model, options)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, spec.lr, spec.adam_betas, spec.weight_decay, device, options.fused_optimizer)
    # The loss is looked up at each call, so a test can substitute this module's causal_lm_loss.
    runner = StepRunner(model, optimizer, params, options, device, spec.max_grad_norm,
                        loss_fn=lambda *a, **k: causal_lm_loss(*a, **k), row_capacity=spec.max_length)

    examples: list[Example] = encode_rows(train_rows, tokenizer, spec.max_length, what=f"dataset {spec.dataset}")
    # One extra batch: the gradient at the last checkpoint is probed without an update.
    schedule = batch_schedule(
        [len(e.input_ids) for e in examples], spec.batch_size, spec.seed, spec.max_steps + 1, spec.group_by_length
    )
    pad_id = tokenizer.pad_token_id

    # Fault injection for the end-to-end resume test: a real SIGKILL (no cleanup) after this step.
    kill_after = int(os.environ.get("REPRO_KILL_AFTER_STEP", "0")) or None
    start = _load_resume_state(state_dir, model, optimizer)
    log_path = state_dir / "train_log.csv"
    log_rows = _read_log(log_path, start)
    if start == 0:
        _save_checkpoint(model, ckpt_dir, 0)
    t_run = time.time()
    last_step_done = start
    bar = tqdm(
        range(start + 1, spec.max_steps + 2),
        initial=start, total=spec.max_steps + 1, disable=not progress,
        desc=f"{spec.method} r={spec.rank} lr={spec.lr:g} seed={spec.seed}",
    )
    host_part: dict[int, dict] = {}  # what the host knows of each step not yet flushed

    def flush() -> None:
        """Bring the device's metrics of the pending steps to the log; stop at a non-finite loss
        before anything computed after it is saved."""
        for m in runner.flush():
            row = host_part.pop(m["step"])
            if not math.isfinite(m["loss"]):
                _write_log(log_path, log_rows)
                saved = sorted(p.name for p in ckpt_dir.glob("step-*"))
                raise TrainingDivergedError(
                    f"loss is {m['loss']} at step {m['step']} of run {spec.method} r={spec.rank} lr={spec.lr:g} "
                    f"seed={spec.seed}; checkpoints kept in {ckpt_dir}: {', '.join(saved)}"
                )
            log_rows.append({
                "step": m["step"], "updated": row["updated"], "loss": m["loss"], "grad_norm": m["grad_norm"],
                "grad_norm_global": m["grad_norm_global"], "lr": spec.lr, "tokens": row["tokens"],
                "supervised_tokens": row["supervised_tokens"], "seconds": m["seconds"],
                "tokens_per_s": row["tokens"] / m["seconds"],
            })
            bar.set_postfix(loss=f"{m['loss']:.3f}", gnorm=f"{m['grad_norm']:.2e}")

    for step in bar:
        probe = step == spec.max_steps + 1
        batch = runner.layout([examples[i] for i in schedule[step - 1]], pad_id)
        host_part[step] = {"updated": int(not probe), "tokens": batch.n_tokens,
                           "supervised_tokens": batch.n_supervised}
        runner.run(batch, step, update=not probe)
        if probe:
            break
        last_step_done = step
        save = step in grid or step % spec.resume_every == 0
        if save or step % spec.sync_every == 0:
            flush()
        if step in grid:
            _save_checkpoint(model, ckpt_dir, step)
        if save:
            _write_log(log_path, log_rows)
            _save_resume_state(state_dir, model, optimizer, step, identity_key)
        if on_step is not None:
            on_step(step)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    flush()
    bar.close()
    _write_log(log_path, log_rows)
    shutil.copyfile(log_path, run_dir / "train_log.csv")
    # A run grown from a grid that had other steps (log2 of 12 steps saves 12, of 24 does not): the folder
    # keeps exactly the checkpoints its summary lists.
    for path in ckpt_dir.glob("step-*"):
        if path.name[5:].isdigit() and int(path.name[5:]) not in grid:
            shutil.rmtree(path)
    summary = {
        **{k: v for k, v in spec.settings().items() if k not in ("target_modules", "adam_betas")},
        "target_modules": list(spec.target_modules),
        "adam_betas": list(spec.adam_betas),
        "model_dir": str(model_dir),
        "scaling": sorted(adapter_scalings(model)),
        "trainable_params": count_trainable(model),
        "checkpoints": {str(s): str(_checkpoint_path(ckpt_dir, s).relative_to(run_dir)) for s in grid},
        # What evaluation checks each checkpoint against, and keys its cached results by.
        "checkpoint_sha256": {str(s): sha256_file(_checkpoint_path(ckpt_dir, s) / ADAPTER_FILE) for s in grid},
        "identity": identity_key,
        "train_sha256": train_sha256,
        "resumed_from": start,
        "steps_done": last_step_done,
        "seconds_this_session": time.time() - t_run,
        "n_train_examples": len(examples),
        "device": device,
        "cross_entropy": runner.cross_entropy_name,
        "bf16_autocast": options.autocast,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _save_checkpoint(model, ckpt_dir: Path, step: int) -> None:
    atomic_dir(_checkpoint_path(ckpt_dir, step), lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
