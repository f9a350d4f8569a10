"""Per-command provenance manifests, written by ``repro``'s main() after a command succeeds.

A manifest is a small JSON file next to the command's outputs:

- output directory ``D`` (``--out D``/``--out-dir D`` naming a directory): ``D/provenance/<command>.json``;
- output file ``D/F``: ``D/provenance/<command>--F.json``.

It lives in a ``provenance/`` sub-folder that no rule declares, so Snakemake neither tracks nor deletes
it, and a rerun of the job overwrites it. Recording costs about 0.1 s: versions are read from
package metadata (nothing is imported), and the accelerator is described only when the command itself
imported torch. The dependency lock (``requirements-lock.txt``) is recorded by its SHA-256, with whether
the installed distributions are exactly the locked ones.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ..config import config_hash, load_config
from ..io import atomic_write_text

SCHEMA = "repro-provenance/1"
MANIFEST_DIR = "provenance"

# Distributions whose versions change numbers; the ones not installed are recorded as null.
PACKAGES = (
    "repro", "torch", "transformers", "peft", "lm-eval", "accelerate", "tokenizers", "safetensors",
    "numpy", "scipy", "pandas", "statsmodels", "matplotlib", "python-sat", "snakemake",
)

# Commands that write no study result (or that gather the manifests themselves).
SKIP_COMMANDS = {"config", "provenance", "bundle", "paper-build", "track"}

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION",
              "SLURM_CLUSTER_NAME")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_name(args) -> str:
    parts = [getattr(args, "command", None), getattr(args, "action", None)]
    return "-".join(str(p) for p in parts if p)


def _git(cwd: Path, *argv: str) -> str | None:
    try:
        proc = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(path: Path) -> dict | None:
    """Commit and dirty flag of the git work tree holding ``path``; None outside a work tree."""
    path = Path(path)
    top = _git(path, "rev-parse", "--show-toplevel")
    if not top:
        return None
    commit = _git(path, "rev-parse", "HEAD")
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return {"root": top, "commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info(config_device: str | None) -> dict:
    info = {"config": config_device, "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")  # never imported here: a compression job must not pay for it
    if torch is not None:
        try:
            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                info["cuda_version"] = torch.version.cuda
        except Exception as exc:  # a broken driver must not fail a finished job
            info["cuda_error"] = str(exc)
    return info


def output_target(args) -> Path | None:
    for attr in ("out_dir", "out"):
        value = getattr(args, attr, None)
        if value:
            return Path(value)
    return None


def manifest_path(target: Path, command: str) -> Path:
    if target.is_dir():
        return target / MANIFEST_DIR / f"{command}.json"
    return target.parent / MANIFEST_DIR / f"{command}--{target.name}.json"


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def lock_info(cwd: Path) -> dict | None:
    """The dependency lock beside the workflow (else beside the package's checkout): its SHA-256, and
    whether the running environment holds exactly its versions. None without a lock."""
    from ..envs import LockError, compare_installed, read_lock, sha256, venv_lock

    for root in (Path(cwd), _package_root().parents[1]):
        try:
            path = venv_lock(root)  # the CPU or the CUDA lock, whichever this venv was installed from
        except LockError as exc:
            return {"path": str(root), "error": str(exc)}
        if not path.is_file():
            continue
        info = {"path": str(path), "sha256": sha256(path)}
        try:
            diff = compare_installed(read_lock(path))
        except LockError as exc:
            return {**info, "error": str(exc)}
        info["installed_matches"] = not (diff["missing"] or diff["differ"] or diff["extraneous"])
        if not info["installed_matches"]:
            info["installed_differences"] = {
                "missing": diff["missing"][:20], "extraneous": diff["extraneous"][:20],
                "differ": [f"{n} {locked} (installed {have})" for n, locked, have in diff["differ"][:20]]}
        return info
    return None


def build_manifest(args, argv: list[str], started: str, ended: str, wall_s: float) -> dict:
    cfg, chash, seed = None, None, None
    configfile = getattr(args, "configfile", None)
    if configfile:
        try:
            cfg = load_config(configfile)
            chash = config_hash(cfg)
            seed = cfg.get("seed")
        except Exception:  # the command already validated it; a race with a rewrite is not fatal
            cfg = None
    if getattr(args, "seed", None) is not None:
        seed = args.seed
    cwd = Path.cwd()
    workflow_git = git_state(cwd)
    code_git = git_state(_package_root())
    return {
        "schema": SCHEMA,
        "command": command_name(args),
        "argv": list(argv),
        "cwd": str(cwd),
        "output": str(output_target(args)),
        "configfile": str(configfile) if configfile else None,
        "config_hash": chash,
        "seed": seed,
        "git": workflow_git,
        # The installed repro package may come from another checkout than the workflow (pip install).
        "code_git": code_git if code_git != workflow_git else None,
        "packages": package_versions(),
        "lock": lock_info(cwd),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device_info(cfg.get("device") if cfg else None),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ} or None,
        "start": started,
        "end": ended,
        "wall_s": round(wall_s, 3),
    }


def write_manifest(args, argv: list[str], started: str, wall_s: float) -> Path | None:
    """Write the manifest of a successful command; returns its path (None when nothing was written)."""
    command = command_name(args)
    if not command or command in SKIP_COMMANDS or command.split("-")[0] in SKIP_COMMANDS:
        return None
    target = output_target(args)
    if target is None or not (target.exists() or target.parent.is_dir()):
        return None
    manifest = build_manifest(args, argv, started, utc_now(), wall_s)
    path = manifest_path(target, command)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path
