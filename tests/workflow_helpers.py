"""Helpers for tests that run the real Snakemake DAG in a scratch copy of the workflow."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What a workflow run needs from the repository besides the installed `repro` package.
WORKFLOW_FILES = ("Snakefile", "config.yaml")
WORKFLOW_DIRS = ("workflow", "presets", "profiles", "envs", "paper")


def make_workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for item in WORKFLOW_FILES:
        shutil.copy2(REPO / item, path / item)
    for folder in WORKFLOW_DIRS:
        if (REPO / folder).is_dir():
            shutil.copytree(REPO / folder, path / folder,
                            ignore=shutil.ignore_patterns("*.pdf", "*.aux", "*.log", "*.fls", "*.fdb_latexmk", "build"))
    return path


def _env(extra_env: dict) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env}


def snakemake(cwd: Path, *args: str, timeout: int = 1800, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=_env(extra_env), capture_output=True, text=True,
        timeout=timeout,
    )


def tiny_run_spec(**overrides):
    """A fine-tuning run of the tiny test model: 8 steps of 2 examples, resume state every 3 steps."""
    from dataclasses import fields

    from repro.lm.finetune import RunSpec
    from repro.lm.step import StepOptions

    base = dict(model="tiny", dataset="d", method="rslora", rank=4, lr=1e-3, seed=0, max_steps=8,
                batch_size=2, max_length=96, resume_every=3, threads=1)
    # Overrides name config keys; those of how a step is computed go to the spec's StepOptions.
    step = {f.name: overrides.pop(f.name) for f in fields(StepOptions) if f.name in overrides}
    return RunSpec(**{**base, **overrides}, step=StepOptions(**step))


def repro_in_process(*args) -> subprocess.CompletedProcess:
    """`repro ARGS` through the CLI's own entry point in this process (parsing, error reporting, exit
    status as the interpreter would give it); a subprocess per call would spend seconds importing again
    what the test module has imported already."""
    from repro.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):  # sys.exit("message"): the message on stderr, status 1
            print(code, file=sys.stderr)
            code = 1
    return subprocess.CompletedProcess(["repro", *map(str, args)], code, out.getvalue(), err.getvalue())
