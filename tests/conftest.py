"""Shared fixtures: a tiny random Llama (built in-process) and small instruction data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Nothing in the test suite may reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 400,
    "max_position_embeddings": 256,
    "seed": 0,
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from repro.lm.models import fetch_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    fetch_model({"name": "tiny", "source": "tiny", "tiny": TINY}, out, out.parent / "downloads")
    return out


@pytest.fixture(scope="session")
def instruct_rows() -> dict[str, list[dict]]:
    from repro.lm.data import build_stdlib_instruct

    spec = {"max_train": 48, "max_heldout": 6, "heldout_percent": 10, "max_answer_chars": 200}
    return build_stdlib_instruct(spec, seed=0)


def _run_test_preset(ws: Path) -> Path:
    from workflow_helpers import make_workspace, snakemake

    make_workspace(ws)
    proc = snakemake(ws, "--cores", "2", "--configfile", "presets/test.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ws


@pytest.fixture(scope="session")
def test_preset_run(tmp_path_factory, worker_id) -> Path:
    """One run of the whole DAG on the test preset, shared by every end-to-end check (read-only).

    Under pytest-xdist the workers share one run: the first to need it builds it under a file lock
    in the session's common temporary folder, the others wait for it and read the same folder."""
    if worker_id == "master":
        return _run_test_preset(tmp_path_factory.mktemp("test-preset"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # one folder per session, above each worker's
    ws, done = shared / "test-preset", shared / "test-preset.done"
    with FileLock(str(shared / "test-preset.lock")):
        if not done.exists():
            if ws.exists():  # a worker that failed half-way: start clean rather than reuse its state
                shutil.rmtree(ws)
            _run_test_preset(ws)
            done.touch()
    return ws


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A loopback SLURM cluster (slurmctld + slurmd + munge) for the session; skipped without Debian's slurm.
    Stopping it must leave none of its daemons running."""
    from slurm_cluster import SlurmCluster, missing_requirements

    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    pids = cluster.pids()
    cluster.stop()
    for pid in pids.values():
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)



# Under pytest-xdist (make test) a module's tests run on one worker, modules in this order. The longest
# chain goes first: the SLURM test builds the shared test-preset run and then waits on its cluster jobs,
# while the other worker takes the long CPU-bound modules; modules that read the shared run come last,
# when it is ready. Within those two groups the long modules go first (longest processing time first),
# so that the suite ends on short modules and neither worker waits long for the other at the end. Run
# alone, the order changes nothing.
FIRST_MODULES = ("test_slurm.py", "test_laws_fitter.py", "test_compression_enumeration.py",
                 "test_compression_sat.py", "test_step.py")
# 20-40 s each in a fresh clone on two cores (pytest --durations), longest first. A worker is sent its next
# module while two tests of its current one are left, so test_paper (two tests) brings test_workflow along
# on its worker, while the other runs test_tracking and then the short modules: about 60 s against 50 s.
LONG_MODULES = ("test_tracking.py", "test_paper.py", "test_workflow.py", "test_default_model.py", "test_data.py",
                "test_envs.py", "test_report.py", "test_wheel.py", "test_teb.py")


def pytest_collection_modifyitems(config, items):
    reads_shared_run = {item.path.name for item in items if "test_preset_run" in getattr(item, "fixturenames", ())}

    def rank(item):
        name = item.path.name
        if name in FIRST_MODULES:
            return (FIRST_MODULES.index(name),)
        long_first = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
        return (len(FIRST_MODULES) + (name in reads_shared_run), long_first)

    items.sort(key=rank)  # stable: the order inside a module and within a rank is kept
