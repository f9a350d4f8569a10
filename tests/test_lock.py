"""The dependency lock: it satisfies pyproject.toml, pins torch's CPU build, and envs/*.yaml are generated from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from repro import envs as E

REPO = Path(__file__).resolve().parents[1]


def _copy_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("pyproject.toml", E.LOCK_NAME):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "envs", root / "envs")
    return root


def test_lock_pyproject_and_envs_agree():
    assert E.check(REPO) == []


def test_lock_pins_every_package_exactly_with_hashes_and_torch_cpu():
    pins = E.read_lock(E.lock_path(REPO))
    assert len(pins) > 50
    assert all(p.hashes and all(h.startswith("sha256:") for h in p.hashes) for p in pins.values())
    # The CPU build of the version pyproject.toml pins, not PyPI's CUDA build and its nvidia-* wheels.
    assert pins["torch"].version == "2.13.0+cpu"
    assert not [n for n in pins if n.startswith(("nvidia-", "triton"))]
    for name in ("mlflow-skinny", "mlflow", "uv", "pytest", "snakemake", "transformers", "peft", "lm-eval"):
        assert name in pins, name
    # torch's own dependencies are in the lock because torch needs them.
    assert "torch" in pins["sympy"].via and pins["torch"].direct


def test_env_closure_follows_the_lock_annotations():
    pins = E.read_lock(E.lock_path(REPO))
    lm = set(E.closure(pins, E.ENVS["lm"].packages))
    compression = set(E.closure(pins, E.ENVS["compression"].packages))
    assert {"torch", "sympy", "networkx", "transformers", "tokenizers", "safetensors"} <= lm
    assert "torch" not in compression and "python-sat" in compression
    with pytest.raises(E.LockError, match="not in the lock: no-such-package"):
        E.closure(pins, ["no-such-package"])


def test_every_env_pins_the_locks_versions_and_the_lock_python():
    pins = E.read_lock(E.lock_path(REPO))
    for name in E.ENVS:
        path = REPO / "envs" / f"{name}.yaml"
        env_pins = E.env_pins(path)
        assert env_pins and all(pins[p].version == v for p, v in env_pins.items()), name
        deps = yaml.safe_load(path.read_text())["dependencies"]
        assert f"python={E.LOCK_PYTHON}" in deps
        pip = next(d["pip"] for d in deps if isinstance(d, dict))
        # torch's CPU build is only on the PyTorch index.
        assert (f"--extra-index-url {E.TORCH_CPU_INDEX}" in pip) == ("torch" in env_pins), name


def test_check_names_what_drifted(tmp_path):
    root = _copy_root(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"numpy>=1.26,<3"', '"numpy>=99"')
                         .replace('"pyyaml>=6,<7"', '"pyyaml>=6,<7",\n    "left-pad>=1"'))
    env = root / "envs" / "report.yaml"
    pins = E.read_lock(E.lock_path(root))
    env.write_text(env.read_text().replace(f'"pandas=={pins["pandas"].version}"', '"pandas==0.1"'))
    problems = "\n".join(E.check(root))
    assert "numpy>=99 but the lock pins numpy==" in problems
    assert "requires left-pad>=1 but the lock has no left-pad" in problems
    assert "envs/report.yaml: pandas==0.1 but the lock pins" in problems
    assert "envs/report.yaml: differs from what the lock generates" in problems
    # Regenerating the envs repairs them; the pyproject drift needs a new lock.
    E.write_envs(root / "envs", pins)
    assert not [p for p in E.check(root) if p.startswith("envs/")]


def test_a_malformed_lock_is_refused_with_its_line(tmp_path):
    lock = tmp_path / E.LOCK_NAME
    lock.write_text("# header\nnumpy>=1.26 \\\n    --hash=sha256:00\n")
    with pytest.raises(E.LockError, match=r":2: not an exact pin"):
        E.read_lock(lock)


def test_compare_installed_lists_missing_different_and_extraneous():
    pins = {"numpy": E.Pin("numpy", "2.0.0"), "pandas": E.Pin("pandas", "3.0.0"), "pip": E.Pin("pip", "25.0")}
    diff = E.compare_installed(pins, {"numpy": "2.0.1", "left-pad": "1.0", "repro": "0.1.0", "pip": "26.0"})
    assert diff == {"missing": ["pandas"], "differ": [("numpy", "2.0.0", "2.0.1"), ("pip", "25.0", "26.0")],
                    "extraneous": ["left-pad"]}


def test_installed_versions_from_folder_names_equal_importlib_metadata():
    from importlib import metadata

    from packaging.utils import canonicalize_name

    expected: dict[str, str] = {}
    for dist in metadata.distributions():
        expected.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    assert E.installed_versions() == expected
