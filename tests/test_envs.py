"""Every rule's conda environment holds what its command imports (the `--use-conda` route).

For each rule, the command in its `shell:` is resolved to the function the CLI runs; a fresh
interpreter imports that function's module, the modules the function imports lazily, and, to a fixed
point, every import written anywhere in the repro modules so loaded (lazy ones included: a function
called later imports them then). The project's declared dependencies found in `sys.modules` must all
be listed by the rule's `envs/*.yaml`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 5)

REPO = Path(__file__).resolve().parents[1]

PROBE = r'''
import argparse, ast, importlib, importlib.metadata as md, inspect, json, sys
from repro.cli import build_parser, tune_collector

tune_collector()  # as in a job: this process only imports

importlib.import_module("repro.provenance.manifest")  # every command writes its provenance
parser = build_parser()
baseline = set(sys.modules)  # the CLI modules of every branch; only the command's own function is followed


def command_function(words):
    p = parser
    while words:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or words[0] not in sub.choices:
            break
        p, words = sub.choices[words[0]], words[1:]
    func = p.get_default("func")
    assert func is not None, f"no command for {words}"
    return func


def imports_in(tree, package):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                yield f"{base}.{a.name}"
            yield base


def load(name):
    while name:
        try:
            importlib.import_module(name)
            return
        except ImportError:
            name = name.rpartition(".")[0]


seen = set(baseline)
for words in json.loads(sys.argv[1]):
    func = command_function(words)
    for name in imports_in(ast.parse(inspect.getsource(func)), sys.modules[func.__module__].__package__):
        load(name)
    # Modules the command brought in: every import they write, lazy ones too, to a fixed point.
    while todo := [m for m in list(sys.modules) if m.split(".")[0] == "repro" and m not in seen]:
        for m in todo:
            seen.add(m)
            path = getattr(sys.modules[m], "__file__", None) or ""
            if path.endswith(".py"):
                package = m if path.endswith("__init__.py") else m.rpartition(".")[0]
                for name in imports_in(ast.parse(open(path).read()), package):
                    load(name)
dists = md.packages_distributions()
print(json.dumps(sorted({d for t in {m.split(".")[0] for m in sys.modules} for d in dists.get(t, [])})))
'''


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0])


def declared() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    return {_requirement_name(s) for s in re.findall(r'"([^"]+)"', block)}


def env_packages(env_file: Path) -> set[str]:
    env = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_requirement_name(s) for s in dep.get("pip", [])}
        else:
            names.add(_requirement_name(dep.split("=")[0]))
    return names


def rule_commands() -> dict[str, tuple[str, tuple[str, ...]]]:
    """rule name -> (env file, the words naming its `repro` command)."""
    out = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=\s*rule \w+:)", text):
            m = re.match(r"\s*rule (\w+):", block)
            env = re.search(r'conda:\s*\n\s*(?:"\.\./\.\./(envs/[\w.-]+\.yaml)"|(LM_CONDA_ENV))', block)
            shell = re.search(r'shell:\s*\n\s*"repro ((?:[a-z][a-z-]* ?)+)', block)
            if m and env and shell:
                # LM_CONDA_ENV (lm.smk) is envs/lm.yaml on CPU configs; envs/lm-cuda.yaml adds to it.
                out[m.group(1)] = (env.group(1) or "envs/lm.yaml", tuple(shell.group(1).split()))
    return out


def _probe(commands: list[tuple[str, ...]]) -> set[str]:
    """Declared-or-not distributions in sys.modules after loading every command of ``commands``."""
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return {_norm(d) for d in json.loads(res.stdout)}


def test_rule_parser_finds_every_rule_with_a_command():
    rules = rule_commands()
    assert {"finetune", "evaluate", "fit_laws", "figures", "teb_train", "compression_tables", "paper_setup"} <= set(rules)
    assert rules["finetune"] == ("envs/lm.yaml", ("finetune",))
    assert rules["fit_laws"][1] == ("laws", "fit")
    assert "torch" in env_packages(REPO / "envs/lm.yaml")


@pytest.mark.slow
def test_every_rule_env_lists_the_distributions_its_command_imports():
    rules = rule_commands()
    project = declared()
    # One interpreter per environment, loading the commands of all its rules: the environment must
    # hold their union (one process per command would cost a torch import each).
    by_env: dict[str, list] = {}
    for env, words in rules.values():
        by_env.setdefault(env, []).append(words)
    envs = sorted(by_env)
    with ThreadPoolExecutor(max_workers=2) as pool:
        imported = dict(zip(envs, pool.map(lambda e: _probe(sorted(set(by_env[e]))), envs)))
    # A probe that saw nothing would pass vacuously: the fine-tuning environment must need torch and peft.
    assert {"torch", "peft", "transformers", "lm-eval"} <= imported["envs/lm.yaml"]
    # ... and one that saw everything would too: the compression commands need no torch.
    assert "torch" not in imported["envs/compression.yaml"]
    missing = {env: sorted((imported[env] & project) - env_packages(REPO / env)) for env in envs}
    assert {env: lacking for env, lacking in missing.items() if lacking} == {}


def test_uv_gets_pips_sources_with_pips_precedence():
    from repro.envs import pip_sources, uv_options

    listing = "\n".join([
        "global.cert='/etc/ssl/certs/ca.crt'",
        "global.index-url='https://mirror.example/simple'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/global-wheels'",
        "install.find-links='/opt/install-wheels'",
        ":env:.extra-index-url='https://env.example/simple'",
    ])
    assert pip_sources(listing) == {"index-url": ["https://mirror.example/simple"],
                                    "extra-index-url": ["https://env.example/simple"],  # the environment wins
                                    "find-links": ["/opt/install-wheels"]}  # [install] over [global]
    args = uv_options(pip_sources(listing))
    assert args[args.index("--index-url") + 1] == "https://mirror.example/simple"
    assert args.count("--extra-index-url") == 1 and args.count("--find-links") == 1
    assert args[-2:] == ["--index-strategy", "unsafe-best-match"]
    assert uv_options(pip_sources("global.cert='/x'")) == ["--index-strategy", "unsafe-best-match"]


def test_setup_pin_is_the_locks_requirement_with_all_its_hashes():
    from repro.envs import LockError, pin_requirement, read_lock

    lock = REPO / "requirements-lock.txt"
    line = pin_requirement(read_lock(lock), "uv")
    text = lock.read_text()
    block = text[text.index("\nuv==") + 1:]
    block = block[: block.index("    #")]
    version = re.match(r"uv==(\S+) ", block).group(1)
    assert line.startswith(f"uv=={version} --hash=sha256:") and line.endswith("\n") and "\\" not in line
    assert line.split()[1:] == re.findall(r"--hash=sha256:[0-9a-f]{64}", block) != []
    with pytest.raises(LockError, match="no pin for not-a-package"):
        pin_requirement(read_lock(lock), "not-a-package")


def test_setup_helpers_run_before_anything_is_installed(tmp_path):
    # make setup calls `pin` and `uv-sources` in a venv that has nothing yet: only the standard library.
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(python), "-m", "repro.envs", "pin", "uv"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.startswith("uv=="), res.stderr[-2000:]
    res = subprocess.run([str(python), "-c", "import sys, repro.envs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('packaging', 'yaml')))"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr[-2000:]


def test_local_name_normalisation_is_packagings_on_every_name_we_read():
    # repro.envs normalises names without packaging (it runs before anything is installed); it must agree
    # with packaging on the lock's names, the installed distributions' and odd spellings of them.
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name as packagings

    from repro.envs import canonicalize_name, read_lock

    pins = read_lock(REPO / "requirements-lock.txt")
    names = [p.name for p in pins.values()] + [d.metadata["Name"] for d in distributions()]
    names += ["Foo.Bar", "foo__bar", "FOO-._bar", "zope.interface", "ruamel.yaml.clib"]
    assert len(names) > 100
    assert {n: canonicalize_name(n) for n in names} == {n: packagings(n) for n in names}
