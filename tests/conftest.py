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



# Under pytest-xdist (make test) a module's tests run on one worker, modules in the order below, set by
# each module's `pytestmark = pytest.mark.schedule(group, rank)` (so renaming a file reorders nothing).
# Group "first", in rank order: the longest chain goes first (the SLURM test builds the shared test-preset
# run and then waits on its cluster jobs, while the other worker takes the long CPU-bound modules). Group
# "long": modules of 20-40 s in a fresh clone on two cores (pytest --durations), longest first (rank 0),
# so that the suite ends on short modules and neither worker waits long for the other. Modules that read
# the shared run (the test_preset_run fixture) come after the others, when it is ready. Run alone, the
# order changes nothing.
SCHEDULE_GROUPS = ("first", "long")


def pytest_configure(config):
    config.addinivalue_line("markers", "schedule(group, rank): where a module runs under pytest-xdist "
                                       "(group 'first' or 'long', rank 0 first; see tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    reads_shared_run = {item.path for item in items if "test_preset_run" in getattr(item, "fixturenames", ())}

    def rank(item):
        mark = item.get_closest_marker("schedule")
        group, position = mark.args if mark else ("", 0)
        if group not in ("", *SCHEDULE_GROUPS):
            raise pytest.UsageError(f"{item.path.name}: schedule group {group!r} is not one of {SCHEDULE_GROUPS}")
        if group == "first":
            return (0, position)
        return (1 + (item.path in reads_shared_run), 0 if group == "long" else 1, position)

    items.sort(key=rank)  # stable: the order inside a module and within a rank is kept
