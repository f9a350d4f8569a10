"""Prerequisites checked once when a workflow run starts, before any job runs or any output is removed.

Each of these would otherwise fail every job that needs it, one by one, each after Snakemake has
removed the job's old outputs, and each with a long traceback: a CUDA config on a machine without CUDA,
a SLURM cluster that does not answer or refuses the submission, a tracking server that does not answer,
a hub model without network or token. The Snakefile calls ``check_run`` with the rules the run will
execute; each check runs only when a rule that needs the prerequisite is among them, and says in one
line what is missing and how to proceed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from urllib.parse import urlparse

# Rules that compute on the config's device.
LM_DEVICE_RULES = {"prepare_data", "finetune", "evaluate", "evaluate_tasks", "evaluate_tasks_base"}
TEB_DEVICE_RULES = {"teb_target", "teb_train", "teb_eval"}
HUB = "huggingface.co"


class PreflightError(RuntimeError):
    """A prerequisite of the run is missing; the message says which and what to do."""


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens within ``timeout`` seconds, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_cuda(cfg: dict, rules: set[str]) -> None:
    keys = [k for k, used in (("device", cfg["device"] == "cuda" and rules & LM_DEVICE_RULES),
                              ("teb.device", cfg["teb"]["device"] == "cuda" and rules & TEB_DEVICE_RULES)) if used]
    if not keys:
        return
    import torch

    if not torch.cuda.is_available():
        raise PreflightError(
            f"{' and '.join(keys)}: 'cuda', but torch {torch.__version__} sees no CUDA device on this machine: "
            "run on a GPU node (or through the SLURM profile), or use a CPU config (config.yaml, presets/test.yaml)")


def check_slurm(account: str | None, partition: str | None, timeout: float = 15) -> None:
    """The controller answers, and accepts a test submission with the profile's account and partition."""
    if not shutil.which("sbatch"):
        raise PreflightError("the SLURM profile is in use, but sbatch is not installed on this machine: submit "
                             "from a login node of the cluster")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"SLURM: scontrol ping did not answer ({type(exc).__name__}); is slurmctld "
                             "running and reachable from this machine?") from None
    if ping.returncode != 0 or " UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        raise PreflightError(f"SLURM: the controller is not reachable ({said[-1] if said else 'no answer'}); "
                             "start slurmctld or submit from a machine that reaches it")
    cmd = ["sbatch", "--test-only", "--wrap", "true", "--time", "1", "--mem", "100"]
    cmd += ["--account", account] if account else []
    cmd += ["--partition", partition] if partition else []
    try:
        test = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"SLURM: sbatch --test-only did not answer ({type(exc).__name__})") from None
    if test.returncode != 0:
        said = test.stderr.strip().splitlines()
        raise PreflightError(
            f"SLURM refuses a test submission ({said[-1] if said else f'exit {test.returncode}'}) with account "
            f"{account or '(none: REPRO_SLURM_ACCOUNT unset)'} and partition {partition or '(default)'}; set "
            "REPRO_SLURM_ACCOUNT and REPRO_SLURM_PARTITION (profiles/slurm/config.yaml)")


def check_tracking(uri: str, timeout: float = 5) -> None:
    """An http(s) tracking server answers within ``timeout`` seconds (a local store needs no check)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    why = _reachable(parsed.hostname or "", port, timeout)
    if why:
        shown = parsed._replace(netloc=f"{parsed.hostname}:{port}").geturl()
        raise PreflightError(
            f"tracking server {shown} does not answer within {timeout:g} s ({why}): start it, point "
            "MLFLOW_TRACKING_URI or tracking.uri elsewhere, or set tracking.enabled: false; nothing was run")


def check_hub_model(model: dict, timeout: float = 5) -> None:
    """A hub model that is not fetched yet: the hub reachable, and a token for a gated repository."""
    if model["source"] != "hf" or os.path.isdir(model.get("hf_repo", "")):
        return
    repo = model["hf_repo"]
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PreflightError(f"model {repo!r} is not fetched yet and HF_HUB_OFFLINE=1: unset it on a machine with "
                             "network, or point model.hf_repo at a local copy")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or f"https://{HUB}")
    why = _reachable(endpoint.hostname or HUB, endpoint.port or 443, timeout)
    if why:
        raise PreflightError(f"model {repo!r} must be downloaded from {endpoint.hostname}, which does not answer "
                             f"({why}): run where the hub is reachable, or point model.hf_repo at a local copy")
    if repo.startswith("meta-llama/") and not (os.environ.get("HF_TOKEN") or _cached_token()):
        raise PreflightError(f"model {repo!r} is gated: set HF_TOKEN to a token of an account that accepted its "
                             "licence (or log in with `hf auth login`)")


def _cached_token() -> bool:
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.isfile(os.path.join(home, "token"))


def check_run(cfg: dict, rules: set[str], executor: str, tracking_uri: str | None) -> None:
    """Every check whose prerequisite one of ``rules`` (the rules this run executes) needs."""
    if not rules:
        return
    if executor == "slurm":  # the GPUs are on the nodes, not here
        check_slurm(os.environ.get("REPRO_SLURM_ACCOUNT"), os.environ.get("REPRO_SLURM_PARTITION"))
    elif executor == "local":
        check_cuda(cfg, rules)
    if "track_runs" in rules and tracking_uri:
        check_tracking(tracking_uri)
    if "download_model" in rules:
        check_hub_model(cfg["model"])
