"""What a run checks before its first job: the results folder is its own, and the prerequisites of the
rules it will run are there (repro.locks, repro.preflight). The workflow-level drills are in test_drills."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repro import locks
from repro.preflight import (
    PreflightError,
    check_cuda,
    check_hub_model,
    check_run,
    check_slurm,
    check_tracking,
)


@pytest.fixture
def released():
    yield
    while locks._held:
        locks._held.pop().close()


def test_a_second_run_in_the_folder_is_refused_until_the_first_ends(tmp_path, released):
    locks.claim_results_folder(tmp_path, "presets/test.yaml")
    with pytest.raises(locks.FolderBusyError, match=rf"{tmp_path}: another run is using .*config presets/test.yaml"):
        locks.claim_results_folder(tmp_path, "config.yaml")
    locks._held.pop().close()  # the first run's process ends
    locks.claim_results_folder(tmp_path, "config.yaml")


def test_a_run_is_refused_while_jobs_of_a_killed_run_hold_the_folder(tmp_path, released):
    code = "from repro.locks import hold_jobs_lock; import sys, time; hold_jobs_lock(); print('held', flush=True); time.sleep(60)"
    env = {**os.environ, locks.JOBS_LOCK_ENV: str(tmp_path / locks.JOBS_LOCK)}
    job = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "held"
        assert locks.lock_holders(tmp_path / locks.JOBS_LOCK) == [job.pid]
        with pytest.raises(locks.FolderBusyError, match=rf"jobs of an earlier run are still running \(pids {job.pid}\)"):
            locks.claim_results_folder(tmp_path, "config.yaml")
    finally:
        job.kill()
        job.wait()
    locks.claim_results_folder(tmp_path, "config.yaml")


def test_jobs_outside_a_workflow_take_no_lock(monkeypatch):
    monkeypatch.delenv(locks.JOBS_LOCK_ENV, raising=False)
    before = len(locks._held)
    locks.hold_jobs_lock()
    assert len(locks._held) == before


def test_tracking_server_must_answer():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_tracking(f"http://127.0.0.1:{listening.getsockname()[1]}")
        port = listening.getsockname()[1]
    with pytest.raises(PreflightError, match=rf"tracking server http://127.0.0.1:{port} does not answer within 1 s"):
        check_tracking(f"http://127.0.0.1:{port}", timeout=1)
    check_tracking("sqlite:///results/mlruns/mlflow.db")  # a local store: nothing to reach


def test_cuda_is_checked_only_for_rules_that_compute_on_the_device():
    import torch

    cfg = {"device": "cuda", "teb": {"device": "cpu"}}
    check_cuda(cfg, {"download_model", "compression_enumerate", "teb_train"})
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PreflightError, match="device: 'cuda', but torch .* sees no CUDA device"):
        check_cuda(cfg, {"finetune"})
    with pytest.raises(PreflightError, match="teb.device: 'cuda'"):
        check_cuda({"device": "cpu", "teb": {"device": "cuda"}}, {"teb_train"})


def test_hub_model_needs_the_hub_and_a_token_for_a_gated_repository(tmp_path, monkeypatch):
    from repro import preflight

    gated = {"source": "hf", "hf_repo": "meta-llama/Llama-2-7b-chat-hf"}
    check_hub_model({"source": "pypi-gguf"})
    check_hub_model({"source": "hf", "hf_repo": str(tmp_path)})  # a local copy
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreflightError, match="is not fetched yet and HF_HUB_OFFLINE=1"):
        check_hub_model(gated)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(preflight, "_reachable", lambda *a: "gaierror: no such host")
    with pytest.raises(PreflightError, match="huggingface.co, which does not answer"):
        check_hub_model(gated)
    monkeypatch.setattr(preflight, "_reachable", lambda *a: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(PreflightError, match="is gated: set HF_TOKEN"):
        check_hub_model(gated)
    check_hub_model({"source": "hf", "hf_repo": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    check_hub_model(gated)


def _fake_slurm(bin_dir: Path, ping: str, test_only_exit: int, test_only_err: str = "") -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho '{ping}'\n")
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" > "{bin_dir}/sbatch.args"
        echo '{test_only_err}' >&2
        exit {test_only_exit}
        """))
    for tool in ("scontrol", "sbatch"):
        (bin_dir / tool).chmod(0o755)


def test_slurm_controller_and_a_test_submission(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(PreflightError, match="sbatch is not installed"):
        check_slurm(None, None)
    _fake_slurm(bin_dir, "Slurmctld(primary) at ctl is DOWN", 0)
    with pytest.raises(PreflightError, match=r"controller is not reachable \(Slurmctld\(primary\) at ctl is DOWN\)"):
        check_slurm(None, None)
    _fake_slurm(bin_dir, "Slurmctld(primary) at ctl is UP", 1, "sbatch: error: Invalid account or account/partition")
    with pytest.raises(PreflightError, match="refuses a test submission .*Invalid account.*REPRO_SLURM_ACCOUNT"):
        check_slurm(None, "gpu")
    _fake_slurm(bin_dir, "Slurmctld(primary) at ctl is UP", 0)
    check_slurm("lab", "gpu")
    assert "--test-only" in (bin_dir / "sbatch.args").read_text() and "--account lab" in (bin_dir / "sbatch.args").read_text()


def test_a_run_with_nothing_to_do_checks_nothing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    check_run({"device": "cuda", "teb": {"device": "cuda"}, "model": {"source": "hf", "hf_repo": "x/y"}}, set(),
              executor="slurm", tracking_uri="http://127.0.0.1:9")
