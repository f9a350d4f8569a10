"""The package's import graph: no cycles, and the ground floors import no study.

Walked statically (every `import` and `from ... import` in every module, inside functions too: a lazy
import is still a dependency, it only hides a cycle until the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "repro"
STUDIES = ("repro.lm", "repro.laws", "repro.teb", "repro.compression")
# Modules every part may use and that may use no part: configuration, file writing, rendering.
GROUND = ("repro.errors", "repro.config", "repro.io", "repro.report")
# The studies' run plans: pure functions of the config (plans, job identities, cross-key checks), one
# layer above the ground. The validator runs their checks by registration (repro.studies), not by import.
PLANS = ("repro.lm.runs", "repro.teb.runs", "repro.laws.runs", "repro.compression.runs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``repro.a.b.func`` -> ``repro.a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the submodule pkg.mod when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                if target.startswith("repro"):
                    resolved = _resolve(target, known)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_walker_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    assert "repro.lm.runs" in graph["repro.lm.finetune"]  # from .runs import ... at module level
    assert "repro.laws.figures" in graph["repro.laws.cli"]  # inside a function
    assert "repro.compression" in graph["repro.compression.pipeline"]  # from . import name (the package)
    assert "repro.cluster.shapes" in graph["repro.cluster.resources"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


@pytest.mark.parametrize("floor", GROUND)
def test_ground_floors_import_no_study(floor):
    graph = import_graph()
    upward = {m: sorted(d for d in deps if _in(d, STUDIES)
                        or _in(d, ("repro.cluster", "repro.paper", "repro.provenance", "repro.cli")))
              for m, deps in graph.items() if _in(m, (floor,))}
    assert {m: d for m, d in upward.items() if d} == {}


def test_every_study_registers_its_check_with_the_validator():
    """config.py imports no study (above), yet validate_config runs each study's check: every study's
    runs.check is an entry point of the group the validator reads (pyproject.toml)."""
    import tomllib

    from repro import config
    from repro.compression.runs import check as compression
    from repro.laws.runs import check as laws
    from repro.lm.runs import check as lm
    from repro.teb.runs import check as teb

    assert {lm, laws, teb, compression} <= set(config.registered_checks())
    declared = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]["entry-points"][config.CHECKS_GROUP]
    assert {f"{study.removeprefix('repro.')}" for study in STUDIES} <= set(declared)
    assert all(target.split(":")[0].endswith((".runs", ".memory")) for target in declared.values())


def test_cluster_shapes_are_its_bottom():
    graph = import_graph()
    assert not {d for d in graph["repro.cluster.shapes"] if _in(d, ("repro.cluster",))}
    assert "repro.cluster.resources" not in graph["repro.cluster.throughput"]


def test_run_plans_import_no_torch_module_of_their_study():
    """The run plans are read while the workflow is parsed: they may import config and nothing heavy."""
    graph = import_graph()
    for plan in PLANS:
        assert graph[plan] <= {"repro.errors"}, (plan, graph[plan])


def test_rule_files_read_no_other_rule_files_globals():
    """A branch's rule file reads the Snakefile's globals (config, RESULTS, ALL_TARGETS, PAPER_INPUTS...)
    and its own; another branch's names reach it only through what that branch registers."""
    import re

    rules = sorted((SRC.parent / "workflow" / "rules").glob("*.smk"))
    code = {p: "\n".join(line.split("#", 1)[0] for line in p.read_text().splitlines()) for p in rules}
    defined = {p: set(re.findall(r"^([A-Z][A-Z0-9_]+)\s*(?:\+?=)", text, flags=re.M)) for p, text in code.items()}
    assert {"RUN_DIR"} <= defined[SRC.parent / "workflow/rules/lm.smk"]
    crossing = sorted(
        f"{name} ({p.name} -> {q.name})"
        for p in rules for name in defined[p] for q in rules
        if q != p and re.search(rf"\b{name}\b", code[q])
    )
    assert crossing == []
