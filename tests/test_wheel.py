"""The package works installed from a wheel, outside the repository (the `--use-conda` route installs
it non-editable in every environment): schemas, styles, task files and the throughput table ship in
it, and one config-reading command per branch runs from a folder that is not the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.schedule("long", 7)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment holding the wheel of this checkout, non-editable. Its third-party
    packages are this interpreter's (a path entry, not a second install of torch)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist"), str(REPO)], check=True, cwd=root)
    wheel = next((root / "dist").glob("repro-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The running interpreter's site-packages as a plain path entry: its editable finder for the
    # checkout is not activated, so `import repro` finds only the wheel's copy.
    (Path(purelib) / "third_party.pth").write_text("\n".join(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) + "\n")
    work = root / "elsewhere"
    work.mkdir()
    shutil.copy(REPO / "presets" / "test.yaml", work / "config.yaml")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    return venv, work, env


def _run(installed, *args, timeout=300):
    venv, work, env = installed
    res = subprocess.run([str(venv / "bin" / "repro"), *args], cwd=work, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"repro {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_the_wheel_is_what_runs_and_carries_its_data(installed):
    venv, work, env = installed
    code = ("import repro, repro.config as c, repro.report.style as s, repro.lm.evals as e, repro.cluster.throughput as t\n"
            "print(repro.__file__); assert c.SCHEMA_PATH.is_file(), c.SCHEMA_PATH\n"
            "assert len(list(c.SCHEMA_PATH.parent.glob('*.schema.yaml'))) >= 5\n"
            "assert s.STYLE.is_file(), s.STYLE\n"
            "assert list(e.TASK_DIR.glob('*.yaml')) and list(e.TASK_DIR.glob('*.jsonl')), e.TASK_DIR\n"
            "assert t.TABLE.is_file(), t.TABLE\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    location = Path(out.stdout.strip().splitlines()[0]).resolve()
    assert venv.resolve() in location.parents and REPO.resolve() not in location.parents


def test_config_check_and_the_paper_macros(installed):
    assert "valid" in _run(installed, "config", "check", "--configfile", "config.yaml")
    _run(installed, "paper", "setup-macros", "--configfile", "config.yaml", "--out", "setup.tex")
    assert r"\newcommand" in (installed[1] / "setup.tex").read_text()


def test_lm_branch_builds_its_model(installed):
    _run(installed, "model", "fetch", "--configfile", "config.yaml", "--out", "models/tiny")
    assert (installed[1] / "models" / "tiny" / "manifest.json").is_file()


def test_laws_branch_rank_stability(installed):
    _run(installed, "laws", "rank-stability", "--configfile", "config.yaml", "--out", "moments.csv",
         "--slopes-out", "slopes.csv")
    assert (installed[1] / "slopes.csv").stat().st_size > 0


def test_teb_branch_task_data(installed):
    _run(installed, "teb", "data", "--configfile", "config.yaml", "--task", "ar-c0.5", "--out", "teb")
    assert (installed[1] / "teb" / "manifest.json").is_file()


def test_compression_branch_counts(installed):
    _run(installed, "compression", "enumerate", "--configfile", "config.yaml", "--n", "3", "--d", "1",
         "--out", "m3_1.json", "--no-progress")
    assert (installed[1] / "m3_1.json").is_file()


def test_cluster_forecast_reads_the_shipped_throughput_table(installed):
    out = _run(installed, "forecast", "--configfile", "config.yaml", "--no-dag")
    assert "finetune" in out
