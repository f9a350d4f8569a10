"""The CUDA lock: PyPI's CUDA build of torch with liger-kernel and triton, every shared package at the CPU
lock's version, its conda env, and a venv's recorded route (make setup DEVICE=cuda) that later setups keep."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro import envs as E

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The CUDA build's own packages: what the CUDA lock may list beyond the CPU lock.
CUDA_ONLY = re.compile(r"^(nvidia-.+|cuda-.+|triton|liger-kernel)$")


@pytest.fixture(scope="module")
def cpu():
    return E.read_lock(E.lock_path(REPO))


@pytest.fixture(scope="module")
def cuda():
    return E.read_lock(E.lock_path(REPO, "cuda"))


def _sha256s(pin: E.Pin) -> bool:
    return bool(pin.hashes) and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes)


def test_cuda_lock_pins_pypis_cuda_torch_with_hashes(cpu, cuda):
    assert E.lock_path(REPO, "cuda").name == E.CUDA_LOCK_NAME == "requirements-cuda-lock.txt"
    assert len(cuda) > len(cpu) > 50
    assert all(_sha256s(p) for p in cuda.values()), [p.name for p in cuda.values() if not _sha256s(p)]
    torch = cuda["torch"]
    # The release pyproject.toml pins, as PyPI publishes it (no local tag such as +cpu).
    assert torch.version == "2.13.0" and "+" not in torch.version
    assert torch.version == E.public_version(cpu["torch"].version) and cpu["torch"].version.endswith("+cpu")
    assert torch.direct and "liger-kernel" in torch.via
    # The CPU build's single wheel is not among PyPI's.
    assert not set(cpu["torch"].hashes) & set(torch.hashes)


def test_cuda_lock_lists_liger_triton_and_the_cuda_runtime_with_hashes(cuda):
    assert cuda["liger-kernel"].direct and _sha256s(cuda["liger-kernel"])
    assert re.match(r"0\.8\.", cuda["liger-kernel"].version)
    assert {"torch", "liger-kernel"} <= set(cuda["triton"].via) and _sha256s(cuda["triton"])
    nvidia = {n: p for n, p in cuda.items() if n.startswith("nvidia-")}
    for name in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"):
        assert name in nvidia, name
    assert all(_sha256s(p) and p.via for p in nvidia.values())


def test_both_locks_pin_the_same_versions_apart_from_the_cuda_stack(cpu, cuda):
    assert set(cpu) <= set(cuda), sorted(set(cpu) - set(cuda))
    differ = {n: (cpu[n].version, cuda[n].version) for n in cpu if cpu[n].version != cuda[n].version}
    assert differ == {"torch": ("2.13.0+cpu", "2.13.0")}
    extra = sorted(set(cuda) - set(cpu))
    assert extra and all(CUDA_ONLY.match(n) for n in extra), extra


def test_cuda_lock_holds_every_requirement_of_pyproject_and_its_test_and_cuda_extras(cuda):
    from packaging.version import Version

    reqs = E.pyproject_requirements(REPO / "pyproject.toml", ("test", "cuda"))
    names = {E.canonicalize_name(r.name) for r in reqs}
    assert {"torch", "snakemake", "pytest", "uv", "liger-kernel"} <= names
    for req in reqs:
        pin = cuda[E.canonicalize_name(req.name)]
        assert req.specifier.contains(Version(pin.version), prereleases=True), (str(req), pin.version)
        assert pin.direct, pin.name
    # ... and nothing pyproject.toml does not lead to: every other pin is required by a locked package.
    assert all(p.direct or set(p.via) & set(cuda) for p in cuda.values())


def test_check_covers_the_cuda_lock(tmp_path):
    assert E.check(REPO) == []
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("pyproject.toml", E.LOCK_NAME):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "envs", root / "envs")
    assert any(E.CUDA_LOCK_NAME in p and "not found" in p for p in E.check(root))
    text = (REPO / E.CUDA_LOCK_NAME).read_text()
    numpy = E.read_lock(REPO / E.CUDA_LOCK_NAME)["numpy"].version
    drifted = text.replace(f"\nnumpy=={numpy} ", "\nnumpy==1.0.0 ").replace("\ntorch==2.13.0 ", "\ntorch==2.13.0+cpu ")
    assert drifted.count("==1.0.0 ") == 1 and drifted.count("torch==2.13.0+cpu") == 1
    (root / E.CUDA_LOCK_NAME).write_text(drifted)
    problems = "\n".join(E.check(root))
    assert f"{E.CUDA_LOCK_NAME}: numpy==1.0.0 but {E.LOCK_NAME} pins {numpy}" in problems
    assert f"{E.CUDA_LOCK_NAME}: torch==2.13.0+cpu is a local build" in problems
    assert "envs/lm-cuda.yaml: numpy==" in problems and f"but {E.CUDA_LOCK_NAME} pins 1.0.0" in problems
    assert not [p for p in problems.splitlines() if p.startswith(("envs/lm.yaml", "envs/laws.yaml"))]


def test_the_cuda_conda_env_has_cuda_torch_and_liger_at_the_locks_versions(cpu, cuda):
    path = REPO / "envs" / "lm-cuda.yaml"
    pins = E.env_pins(path)
    assert pins["torch"] == "2.13.0" and pins["liger-kernel"] == cuda["liger-kernel"].version
    assert {"triton", "nvidia-cuda-runtime", "nvidia-cublas"} <= set(pins)
    assert all(cuda[n].version == v for n, v in pins.items())
    # The CPU env's packages, the same versions but torch's build; generated, not written by hand.
    lm = E.env_pins(REPO / "envs" / "lm.yaml")
    assert {n: E.public_version(v) for n, v in lm.items()} == {n: pins[n] for n in lm}
    assert path.read_text() == E.render_env("lm-cuda", E.CUDA_ENVS["lm-cuda"], cuda, lock_name=E.CUDA_LOCK_NAME)
    text = path.read_text()
    assert f"Generated from {E.CUDA_LOCK_NAME}" in text and E.TORCH_CPU_INDEX not in text
    deps = yaml.safe_load(text)["dependencies"]
    assert f"python={E.LOCK_PYTHON}" in deps and "pip" in deps
    assert yaml.safe_load(text)["name"] == "repro-lm-cuda"
    assert "lm-cuda" not in E.ENVS  # the CPU envs and their check stay the CPU lock's


def _installed(pins: dict[str, E.Pin]) -> dict[str, str]:
    """What `make setup` leaves in a venv from ``pins``: the lock, pip and the package itself."""
    return {**{n: p.version for n, p in pins.items()}, "pip": "25.0", "repro": "0.1.0"}


def test_extraneous_is_computed_against_the_lock_of_the_venvs_route(tmp_path, cpu, cuda):
    venv = tmp_path / "venv"
    venv.mkdir()
    assert E.venv_device(venv) == "cpu" and E.venv_lock(REPO, venv).name == E.LOCK_NAME  # venvs before the route
    (venv / E.DEVICE_FILE).write_text("cuda\n")
    assert E.venv_lock(REPO, venv).name == E.CUDA_LOCK_NAME
    on_cuda = _installed(cuda)
    assert E.extraneous(E.read_lock(E.venv_lock(REPO, venv)), on_cuda) == []
    # The CPU lock would strip the CUDA stack: what make setup did before routes were recorded.
    stripped = E.extraneous(cpu, on_cuda)
    assert {"liger-kernel", "triton", "nvidia-cuda-runtime", "nvidia-cublas"} <= set(stripped)
    assert all(CUDA_ONLY.match(n) for n in stripped)
    (venv / E.DEVICE_FILE).write_text("cpu\n")
    assert E.extraneous(E.read_lock(E.venv_lock(REPO, venv)), on_cuda) == stripped
    (venv / E.DEVICE_FILE).write_text("gpu\n")
    with pytest.raises(E.LockError, match="unknown route 'gpu'"):
        E.venv_lock(REPO, venv)


def test_cli_extraneous_and_pin_read_the_running_venvs_route(tmp_path, monkeypatch, capsys, cuda):
    (tmp_path / E.DEVICE_FILE).write_text("cuda\n")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(E, "installed_versions", lambda: {**_installed(cuda), "left-pad": "1.0"})
    assert E.main(["extraneous"]) == 0
    assert capsys.readouterr().out.split() == ["left-pad"]
    assert E.main(["extraneous", "--device", "cpu"]) == 0
    assert "liger-kernel" in capsys.readouterr().out.split()
    assert E.main(["pin", "torch"]) == 0
    assert capsys.readouterr().out.startswith("torch==2.13.0 --hash=sha256:")
    assert E.main(["pin", "torch", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("torch==2.13.0+cpu --hash=sha256:")


def test_a_route_switch_reinstalls_torchs_other_build(cpu, cuda):
    # uv takes 2.13.0+cpu as satisfying ==2.13.0; anything else differing is uv's to replace anyway.
    on_cpu = {**_installed(cpu), "numpy": "1.0.0"}
    assert E.other_builds(cuda, on_cpu) == ["torch"]
    assert E.other_builds(cpu, _installed(cuda)) == ["torch"]
    assert E.other_builds(cpu, on_cpu) == [] and E.other_builds(cuda, _installed(cuda)) == []


def test_constraints_are_the_cpu_locks_versions_without_local_tags(cpu):
    lines = E.constraints(cpu).splitlines()
    assert len(lines) == len(cpu) and "torch==2.13.0" in lines and f"numpy=={cpu['numpy'].version}" in lines
    assert not [line for line in lines if "+" in line or not re.fullmatch(r"[a-z0-9-]+==\S+", line)]


def _make_plan(tmp_path: Path, *args: str, device: str | None = None, stamp: bool = False,
               env: dict | None = None) -> str:
    """`make -n ARGS` in a copy of what the setup rule reads, with a venv recording ``device``."""
    root = tmp_path / "repo"
    if not root.exists():
        root.mkdir()
        for name in ("Makefile", "pyproject.toml", E.LOCK_NAME, E.CUDA_LOCK_NAME):
            shutil.copy2(REPO / name, root / name)
    venv = root / ".venv"
    shutil.rmtree(venv, ignore_errors=True)
    venv.mkdir()
    if device is not None:
        (venv / ".device").write_text(device + "\n")
    if stamp:
        (venv / ".installed").touch()
    res = subprocess.run(["make", "-n", *args], cwd=root, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MAKEFLAGS": "", **(env or {})})
    assert res.returncode == 0, res.stderr
    return res.stdout


def _installs(plan: str) -> set[str]:
    return set(re.findall(r"uv pip install .*--require-hashes -r (\S+)", plan))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_setup_keeps_the_recorded_route_and_switches_on_request(tmp_path):
    assert _installs(_make_plan(tmp_path, "setup")) == {E.LOCK_NAME}  # a fresh clone: the CPU route
    cuda_plan = _make_plan(tmp_path, "setup", "DEVICE=cuda")
    assert _installs(cuda_plan) == {E.CUDA_LOCK_NAME}
    assert "echo cuda > .venv/.device" in cuda_plan and "extraneous --device cuda" in cuda_plan
    assert "torch's CUDA build not installable" in cuda_plan and "--index-url https://pypi.org/simple" in cuda_plan
    assert _installs(_make_plan(tmp_path, "setup-cuda")) == {E.CUDA_LOCK_NAME}
    # A venv set up for CUDA: plain setup (and what depends on it) keeps the CUDA lock ...
    assert _installs(_make_plan(tmp_path, "setup", device="cuda")) == {E.CUDA_LOCK_NAME}
    assert "extraneous --device cuda" in _make_plan(tmp_path, "setup", device="cuda")
    # ... and once installed, has nothing to do; an explicit DEVICE=cpu switches back.
    assert _installs(_make_plan(tmp_path, "setup", device="cuda", stamp=True)) == set()
    assert _installs(_make_plan(tmp_path, "setup", "DEVICE=cpu", device="cuda", stamp=True)) == {E.LOCK_NAME}
    assert _installs(_make_plan(tmp_path, "setup", "DEVICE=cuda", device="cpu", stamp=True)) == {E.CUDA_LOCK_NAME}
    # An exported DEVICE is not a request to switch.
    assert _installs(_make_plan(tmp_path, "setup", device="cpu", stamp=True, env={"DEVICE": "cuda"})) == set()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cuda_lock_is_what_uv_resolves_from_pypi(tmp_path, cuda):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable")
    # `make lock`'s command; the committed lock as the output file makes its pins uv's preferences, so a
    # later release elsewhere on PyPI does not count as drift.
    out = tmp_path / E.CUDA_LOCK_NAME
    shutil.copy2(REPO / E.CUDA_LOCK_NAME, out)
    res = subprocess.run(
        [str(BIN / "uv"), "pip", "compile", "pyproject.toml", "--extra", "test", "--extra", "cuda", "--generate-hashes",
         "--python-version", E.LOCK_PYTHON, "--python-platform", "x86_64-manylinux_2_28", "--index-url",
         "https://pypi.org/simple", "--constraints", "-", "--custom-compile-command", "make lock", "--quiet",
         "--output-file", str(out)],
        input=E.constraints(E.read_lock(E.lock_path(REPO))), cwd=REPO, capture_output=True, text=True, timeout=90,
        env={k: v for k, v in os.environ.items() if not k.startswith("UV_")})
    assert res.returncode == 0, res.stderr[-3000:]
    fresh = E.read_lock(out)
    assert {n: p.version for n, p in fresh.items()} == {n: p.version for n, p in cuda.items()}
    # PyPI may add wheels to a release, never change one: every locked file is still what it serves.
    assert all(set(p.hashes) <= set(fresh[n].hashes) for n, p in cuda.items())
