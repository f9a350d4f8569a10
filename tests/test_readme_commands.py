"""README's commands run as printed, in a fresh clone, without activating anything.

Every command in a fenced shell block, and every inline command given with its arguments, is checked
statically: it starts with something a fresh clone has (`make <target>` of the Makefile, `.venv/bin/...`,
`sudo apt-get`, an environment assignment before one of those), it holds no placeholder (`...`, `…`,
`[--option]`, `<name>`), and every repository file it names exists. The fast ones are then run in a
copy of the checkout, and where README states their output (`# prints 97536`, `# 0.2402374646`) the
output must contain it. README cannot drift from the code without failing here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent

RUNNABLE_START = re.compile(
    r"^(?:[A-Z_]+=\S+ )*(?:make(?: |$)|\.venv/bin/|sudo apt-get |export [A-Z_]+=|python3 -m venv )"
)
# Words that start a command but would need an activated environment or a global install.
BARE = ("python", "python3", "repro", "snakemake", "pytest", "pip", "uv", "mlflow", "ruff")
PLACEHOLDER = re.compile(r"\.\.\.|…|\[--|<[a-z][a-z-]*>|\bFILE\b|\bFOLDER\b|\bDIR\b")
# Fast, local, and harmless in a copy of the checkout: run and checked.
RUN_PREFIXES = (
    ".venv/bin/repro compression count-maximum",
    ".venv/bin/repro compression exists",
    ".venv/bin/repro teb exact-te",
    ".venv/bin/repro laws fit-table",
    ".venv/bin/repro config check",
    ".venv/bin/repro config results-dir",
    ".venv/bin/python -m repro.envs check",
    ".venv/bin/snakemake -n --configfile presets/",
)


def fenced_commands(text: str) -> list[str]:
    """Shell lines of ```bash blocks, continuation lines joined, comments kept (they state outputs)."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return out


def inline_commands(text: str) -> list[str]:
    """Inline code spans that are shell invocations: a program and at least one argument. `repro <command>`
    in prose names a command of the CLI (its modes and options included) and is not an invocation; quotes of
    output ("repro finetune: out of disk space ...") are not either."""
    out = []
    for span in re.findall(r"`([^`\n]+)`", text):
        try:
            words = shlex.split(span)
        except ValueError:
            continue
        while words and re.match(r"^[A-Z_]+=", words[0]):  # an environment or make variable's value alone
            words = words[1:]
        if len(words) < 2 or re.match(r"^\S+:", span):
            continue
        if re.match(r"^(?:\.venv/bin/\S+|make|python3?|snakemake|pip|uv)$", words[0]):
            out.append(span)
    return out


def command_part(line: str) -> str:
    return line.split("  #")[0].split(" # ")[0].strip()


def all_commands() -> list[str]:
    text = README.read_text()
    return fenced_commands(text) + inline_commands(text)


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


def test_the_extraction_sees_the_commands_it_must_check():
    commands = all_commands()
    assert any(c.startswith("make run") for c in commands)
    assert any(c.startswith(".venv/bin/repro compression count-maximum") for c in commands)
    assert not inline_commands("`repro finetune --rank 4` and `snakemake` and `repro finetune: out of disk space`")
    assert inline_commands("`python benchmarks/x.py --json out.json` `snakemake -n`") == [
        "python benchmarks/x.py --json out.json", "snakemake -n"]


@pytest.mark.parametrize("line", all_commands())
def test_every_shown_command_is_runnable_as_printed(line):
    cmd = command_part(line)
    first = re.sub(r"^(?:[A-Z_]+=\S+ )+", "", cmd).split()[0]
    assert first not in BARE or cmd.startswith("python3 -m venv "), f"{cmd!r}: '{first}' is not on a fresh clone's PATH (write .venv/bin/{first})"
    assert RUNNABLE_START.match(cmd), f"{cmd!r}: starts with nothing a fresh clone has"
    bad = PLACEHOLDER.search(cmd)
    assert not bad, f"{cmd!r}: placeholder {bad.group(0)!r} cannot be run as printed"
    for part in re.split(r"&&|\|", cmd):
        words = shlex.split(part)
        if words and words[0] == "make":
            targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            missing = [t for t in targets if t not in make_targets()]
            assert not missing, f"{cmd!r}: no Makefile target {missing}"
        for word in words:
            value = word.split("=", 1)[-1]
            if re.match(r"^(presets|tests/data|benchmarks|examples|profiles|envs|docs)/", value):
                assert (REPO / value).exists(), f"{cmd!r}: {value} is not in the repository"


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory) -> Path:
    """The checkout's files as a clone has them (tracked and untracked-not-ignored), with the venv linked
    (the whole folder: its python finds pyvenv.cfg beside its bin/)."""
    dest = tmp_path_factory.mktemp("readme") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(VENV_BIN.parent)
    return dest


def stated_output(line: str) -> str | None:
    """The output README states in the command's comment: '# prints X' or a bare number."""
    if "#" not in line:
        return None
    comment = line.split("#", 1)[1].strip()
    m = re.match(r"^prints\s+(\S+)", comment) or re.match(r"^(-?\d[\d.]*)\b", comment)
    return m.group(1) if m else None


FAST = [c for c in all_commands() if command_part(c).startswith(RUN_PREFIXES)]


def test_the_fast_commands_include_each_kind():
    assert {p for p in RUN_PREFIXES if any(command_part(c).startswith(p) for c in FAST)} >= set(RUN_PREFIXES[:4])


@pytest.mark.parametrize("line", FAST)
def test_the_fast_commands_run_and_print_what_readme_says(line, checkout_copy):
    cmd = command_part(line)
    env = {**os.environ, "PATH": f"{checkout_copy / '.venv' / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, shell=True, cwd=checkout_copy, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    expected = stated_output(line)
    if expected:
        assert expected in proc.stdout, f"{cmd}: README says it prints {expected}; it printed {proc.stdout[-500:]!r}"
