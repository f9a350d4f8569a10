"""``results/provenance.json``: every manifest of the run gathered, summarised per command, and the
paper appendix's table and macros (so the appendix quotes no number by hand)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..report.latex import tex_escape
from .manifest import MANIFEST_DIR, SCHEMA, utc_now


def find_manifests(roots) -> list[Path]:
    found = []
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found += [p for p in root.rglob("*.json") if p.parent.name == MANIFEST_DIR]
    return sorted(found)


def load_manifests(roots, base: Path = Path(".")) -> list[dict]:
    out = []
    for path in find_manifests(roots):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if m.get("schema") != SCHEMA:
            continue
        try:
            m["manifest"] = str(path.relative_to(base))
        except ValueError:
            m["manifest"] = str(path)
        out.append(m)
    return out


def _norm(path: str, cwd: str | None) -> str:
    """A path as the workflow root sees it: relative paths stay relative (a workspace copied, moved or
    restored from a bundle keeps its lineage), absolute ones inside the job's working folder become
    relative to it."""
    import os

    if os.path.isabs(path) and cwd and os.path.normpath(path).startswith(os.path.normpath(cwd) + os.sep):
        path = os.path.relpath(path, cwd)
    return os.path.normpath(path)


def lineage(manifests: list[dict], targets) -> list[dict]:
    """The manifests of the jobs that ``targets`` derive from, and only those.

    A job's inputs are the paths on its command line (the rules pass every file a command reads, or the
    folder holding it). Starting from the jobs that wrote the targets, each job's inputs lead to the jobs
    that wrote them: the job whose output is the path, or the folder-writing job (a fine-tuning run, a
    model) whose folder holds it, with the other jobs that wrote into that folder (a run's evaluations).
    What an earlier config left behind (runs, models, shapes no longer in the plan) is not reached.
    """
    import os

    by_output: dict[str, list[dict]] = {}
    in_folder: dict[str, list[dict]] = {}
    for m in manifests:
        out = _norm(m.get("output") or "", m.get("cwd"))
        by_output.setdefault(out, []).append(m)
        in_folder.setdefault(os.path.dirname(out), []).append(m)

    def producers(path: str) -> list[dict]:
        here = path
        while True:
            if here in by_output:
                found = list(by_output[here])
                if here != path or os.path.isdir(here):  # a folder output: its co-writers too
                    found += in_folder.get(here, [])
                return found
            parent = os.path.dirname(here)
            if parent == here:
                return []
            here = parent

    seen: dict[int, dict] = {}
    stack = [m for t in targets for m in producers(_norm(str(t), os.getcwd()))]
    # Relative paths are read from the current folder: the workflow root, where the rules run.
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen[id(m)] = m
        for token in m.get("argv") or []:
            if token.startswith("-") or "/" not in token and not os.path.exists(_norm(token, m.get("cwd"))):
                continue
            stack += producers(_norm(token, m.get("cwd")))
    return [m for m in manifests if id(m) in seen]


def _device_label(m: dict) -> str:
    dev = m.get("device") or {}
    if dev.get("cuda"):
        return ", ".join(sorted(set(dev["cuda"])))
    return dev.get("config") or "cpu"


def summarise(manifests: list[dict]) -> dict:
    by_cmd: dict[str, list[dict]] = defaultdict(list)
    for m in manifests:
        by_cmd[m["command"]].append(m)

    def group(ms: list[dict]) -> dict:
        commits = sorted({(m.get("git") or {}).get("commit") or "none" for m in ms})
        return {
            "jobs": len(ms),
            "wall_s": round(sum(m.get("wall_s") or 0.0 for m in ms), 3),
            "first_start": min(m["start"] for m in ms),
            "last_end": max(m["end"] for m in ms),
            "commits": commits,
            "dirty": any((m.get("git") or {}).get("dirty") for m in ms),
            "config_hashes": sorted({m.get("config_hash") for m in ms if m.get("config_hash")}),
            "devices": sorted({_device_label(m) for m in ms}),
            "hosts": sorted({m.get("host") or "?" for m in ms}),
            "slurm_jobs": sorted({m["slurm"]["SLURM_JOB_ID"] for m in ms
                                  if (m.get("slurm") or {}).get("SLURM_JOB_ID")}),
            "seeds": sorted({m["seed"] for m in ms if m.get("seed") is not None}),
        }

    versions: dict[str, set] = defaultdict(set)
    for m in manifests:
        for pkg, v in (m.get("packages") or {}).items():
            if v:
                versions[pkg].add(v)
    locks = [m.get("lock") or {} for m in manifests]
    return {
        "overall": group(manifests) if manifests else {"jobs": 0},
        # SHA-256 of the dependency lock each job's environment came from, and whether the installed
        # distributions were exactly the locked ones (true, false, or absent for jobs without a lock).
        "lock": {"sha256": sorted({lk["sha256"] for lk in locks if lk.get("sha256")}),
                 "installed_matches": sorted({lk["installed_matches"] for lk in locks if "installed_matches" in lk}),
                 "jobs_without_lock": sum(not lk.get("sha256") for lk in locks)},
        "by_command": {cmd: group(ms) for cmd, ms in sorted(by_cmd.items())},
        "packages": {pkg: sorted(v) for pkg, v in sorted(versions.items())},
        "python": sorted({m.get("python") for m in manifests if m.get("python")}),
    }


def _short(commits: list[str]) -> str:
    return ", ".join(c[:10] for c in commits) if commits else "none"


def render_tex(summary: dict) -> tuple[str, str]:
    """(macros, table) for the appendix."""
    o = summary["overall"]
    macros = {
        "ProvJobs": o.get("jobs", 0),
        "ProvCommands": len(summary["by_command"]),
        "ProvCommits": tex_escape(_short(o.get("commits", []))),
        "ProvDirty": "yes" if o.get("dirty") else "no",
        "ProvConfigHashes": tex_escape(", ".join(o.get("config_hashes", [])) or "none"),
        "ProvHosts": len(o.get("hosts", [])),
        "ProvDevices": tex_escape(", ".join(o.get("devices", [])) or "none"),
        "ProvSlurmJobs": len(o.get("slurm_jobs", [])),
        "ProvFirstStart": tex_escape(o.get("first_start", "n/a")),
        "ProvLastEnd": tex_escape(o.get("last_end", "n/a")),
        "ProvWallHours": f"{o.get('wall_s', 0.0) / 3600:.3g}",
        "ProvPython": tex_escape(", ".join(summary.get("python", [])) or "n/a"),
    }
    lock = summary.get("lock") or {}
    # The full SHA-256, breakable every 16 characters so it fits the line.
    macros["ProvLockSha"] = ", ".join(
        r"\allowbreak{}".join(h[i:i + 16] for i in range(0, len(h), 16)) for h in lock.get("sha256", [])
    ) or "none"
    matches = lock.get("installed_matches", [])
    macros["ProvLockMatches"] = ("yes" if matches == [True] else "no" if matches == [False]
                                 else "not in every job" if matches else "unknown")
    for pkg in ("torch", "transformers", "peft", "lm-eval", "snakemake", "numpy"):
        name = "ProvVersion" + "".join(w.capitalize() for w in pkg.replace("-", " ").split())
        macros[name] = tex_escape(", ".join(summary["packages"].get(pkg, [])) or "not installed")
    lines = ["% Generated by `repro provenance collect`; do not edit by hand."]
    lines += [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in macros.items()]
    macro_text = "\n".join(lines) + "\n"

    rows = []
    for cmd, g in summary["by_command"].items():
        rows.append(" & ".join([
            f"\\texttt{{{tex_escape(cmd)}}}", str(g["jobs"]), f"{g['wall_s']:.1f}", tex_escape(", ".join(g["devices"])),
            f"\\texttt{{{tex_escape(_short(g['commits']))}}}" + ("$^*$" if g["dirty"] else ""),
            str(len(g["slurm_jobs"])),
        ]) + r" \\")
    pkgs = [f"\\texttt{{{tex_escape(p)}}} & {tex_escape(', '.join(v))} \\\\" for p, v in summary["packages"].items()]
    table = "\n".join([
        "% Generated by `repro provenance collect`; do not edit by hand.",
        r"\begin{table}[htbp]", r"\centering", r"\small",
        r"\caption{Provenance of every job of the run, from the manifests each \texttt{repro} command wrote "
        r"(results/provenance.json). Commit marked $^*$: the work tree had uncommitted changes.}",
        r"\label{tab:provenance}",
        r"\begin{tabular}{lrrllr}", r"\toprule",
        r"command & jobs & wall s & device & commit & SLURM jobs \\", r"\midrule",
        *(rows or [r"\multicolumn{6}{l}{no manifests found} \\"]),
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
        r"\begin{table}[htbp]", r"\centering", r"\small",
        r"\caption{Package versions recorded in the manifests (several values: jobs ran with different versions).}",
        r"\label{tab:versions}",
        r"\begin{tabular}{ll}", r"\toprule", r"package & version \\", r"\midrule",
        *(pkgs or [r"\multicolumn{2}{l}{none} \\"]),
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]) + "\n"
    return macro_text, table


def collect(roots, out: Path, tex_macros: Path | None = None, tex_table: Path | None = None,
            targets=None) -> dict:
    """Gather the manifests under ``roots``; with ``targets``, only those of the jobs the targets derive
    from (``lineage``), so runs an earlier config left on disk are not counted."""
    manifests = load_manifests(roots)
    if targets is not None:
        manifests = lineage(manifests, targets)
    summary = summarise(manifests)
    doc = {"schema": "repro-provenance-collection/1", "generated": utc_now(), "summary": summary,
           "manifests": manifests}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if tex_macros or tex_table:
        macros, table = render_tex(summary)
        for path, text in ((tex_macros, macros), (tex_table, table)):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(text)
    return doc
