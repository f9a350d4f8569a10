"""Tables of the compression branch: CSV for machines, LaTeX (booktabs, via pandas) for the paper.

- counts: #M(n, d) in total and up to the hyperoctahedral group, with cross-checks and wall times;
  also an n x d matrix "total (orbits)".
- schemes: per (n, d, kind) how many orbit representatives got a scheme from each construction and how
  many schemes the exhaustive verifier passed.
- named: per named class its properties and, per scheme kind, the sizes at which schemes exist.
- compactness: restriction / extension results along the chain of subdomains.
- timings: wall seconds of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from ..report.latex import to_latex

TABLES = ("counts", "counts_matrix", "schemes", "named", "existence", "compactness", "timings")


def _load(paths) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def _write(df: pd.DataFrame, out_dir: Path, name: str, caption: str) -> None:
    # Cells, headers and captions are plain text here (#, _, braces): the ground floor escapes them.
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False))
    to_latex(df, out_dir / f"{name}.tex", caption, f"tab:compression-{name}", escape=True, position="t")


def counts_table(enums: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    by_nd = {(e["n"], e["d"]): e for e in enums}
    for (n, d), e in sorted(by_nd.items()):
        dual = by_nd.get((n, n - d - 1))
        checks = e.get("checks", {})
        rows.append({
            "n": n, "d": d, "|C| = Phi_d(n)": e["sauer_shelah_bound"],
            "maximum classes": e["total"],
            "up to symmetry": e.get("orbits", ""),
            "brute force": "equal" if checks.get("brute_force_equal") else "-",
            "orbit sizes sum": "equal" if checks.get("orbit_sizes_sum_to_total") else "-",
            "dual #M(n,n-d-1)": ("equal" if dual["total"] == e["total"] else "DIFFERENT") if dual else "-",
            "seconds (count)": round(e["seconds_total"], 3),
            "seconds (orbits)": round(e.get("seconds_orbits", 0.0), 3),
        })
    df = pd.DataFrame(rows)
    matrix = {}
    for (n, d), e in sorted(by_nd.items()):
        cell = f"{e['total']}" + (f" ({e['orbits']})" if "orbits" in e else "")
        matrix.setdefault(n, {})[f"d={d}"] = cell
    mdf = pd.DataFrame.from_dict(matrix, orient="index").fillna("")
    mdf.insert(0, "n", mdf.index)
    return df, mdf.reset_index(drop=True)


def _verified_by_file(verifies: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for v in verifies:
        for path, per in v["files"].items():
            out[Path(path).name] = per
    return out


def schemes_table(summaries: list[dict], verified: dict[str, dict]) -> pd.DataFrame:
    """One row per (n, d): each construction as produced/attempted over the orbit representatives, and
    the number of stored schemes the exhaustive verifier passed (both kinds)."""
    by_nd: dict[tuple[int, int], dict[str, dict]] = {}
    for s in summaries:
        by_nd.setdefault((s["n"], s["d"]), {})[s["kind"]] = s
    rows = []
    for (n, d), kinds in sorted(by_nd.items()):
        cons: dict[str, dict] = {}
        for s in kinds.values():
            cons.update(s["constructions"])
        any_summary = next(iter(kinds.values()))
        classes = any_summary["classes"]
        st = any_summary["class_stats"]

        def frac(name, cons=cons):
            c = cons.get(name)
            return f"{c['produced']}/{c['attempted']}" if c else "-"

        total = ok = 0
        for kind in kinds:
            for row in verified.get(f"n{n}_d{d}_{kind}.jsonl.gz", {}).values():
                total += row["schemes"]
                ok += row["verified"]
        rows.append({
            "n": n, "d": d, "classes (orbits)": classes,
            "Floyd-Warmuth (labeled)": frac("floyd-warmuth"),
            "rep. map by SAT": frac("kw-sat"),
            "min-peeling": frac("min-peeling"),
            "min-peeling, random ties": frac("min-peeling-random"),
            "corner peeling": frac("corner-peeling"),
            "min degree = d": f"{st['min_degree_equals_d']}/{classes}",
            "has a corner": f"{st['has_corner']}/{classes}",
            "schemes verified": f"{ok}/{total}",
            "seconds": round(sum(s["seconds"] for s in kinds.values()), 2),
        })
    return pd.DataFrame(rows)


KIND_COLUMNS = [("labeled", True), ("labeled", False), ("unlabeled", True), ("unlabeled", False)]


def named_tables(nameds: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, exist_rows = [], []
    for r in nameds:
        row = {"class": r["class"], "n": r["n"], "|C|": r["concepts"], "VC": r["vc"],
               "maximum": r["maximum"], "ample": r["ample"], "maximal": r["maximal"]}
        for kind, proper in KIND_COLUMNS:
            key = f"{kind}-{'proper' if proper else 'improper'}"
            v = r["minimal_sizes"].get(key)
            row[f"min {key}"] = "-" if v is None else v
        row["rep. map of order VC"] = r["constructions"].get("representation_map_order_d", "-")
        row["seconds"] = round(r["seconds"], 2)
        rows.append(row)
        for kind, proper in KIND_COLUMNS:
            e = {"class": r["class"], "kind": f"{kind} {'proper' if proper else 'improper'}"}
            for x in r["existence"]:
                if x["kind"] == kind and x["proper"] == proper:
                    e[f"k={x['size']}"] = x["answer"]
            exist_rows.append(e)
    return pd.DataFrame(rows), pd.DataFrame(exist_rows).fillna("")


def compactness_table(comp: dict) -> pd.DataFrame:
    """One row per (class, point order, kind, proper); the inverse system (first order only)."""
    rows = []
    for c in comp["classes"]:
        inv = c.get("inverse_system")
        if inv and inv.get("complete"):
            levels = "/".join(str(l["maps"]) for l in inv["levels"])
            extendable = "all" if all(l["extendable"] == l["maps"] for l in inv["levels"]) else \
                "/".join(str(l["extendable"]) for l in inv["levels"])
            threads = "yes" if inv.get("threads_nonempty") and inv.get("bonding_maps_into_S_j") else "NO"
        elif inv:
            levels, extendable, threads = f"> {inv['max_maps']} at some level", "-", "-"
        else:
            levels = extendable = threads = "-"
        rmr = c.get("representation_map_restrictions")
        for k in c["chains"]:
            res = k.get("restrictions", {})
            first = k.get("order_seed") == c["chains"][0].get("order_seed")
            dead = k.get("dead_ends", [])
            rows.append({
                "class": c["class"], "n": c["n"], "d": c["d"], "|C|": c["concepts"],
                "order": " ".join(str(x) for x in k["order"]), "kind": k["kind"],
                "proper": "proper" if k["proper"] else "improper",
                "size": "-" if k.get("size") is None else k["size"],
                "restrictions verified": f"{res.get('restrictions_verified', 0)}/{res.get('subdomains', 0)}",
                "greedy dead ends at |X_j|": (",".join(map(str, dead)) or "none") if k.get("greedy_complete")
                else "incomplete",
                "chains verified": "yes" if k.get("top_down_chain_verified") and k.get("greedy_verified") else "NO",
                "rep. maps |S_j|": levels if first else "",
                "extendable": extendable if first else "",
                "threads": threads if first else "",
                "Cor. 2 restrictions": (f"{rmr['cor2_verified']}/{rmr['subdomains']}" if rmr else "-") if first else "",
            })
    return pd.DataFrame(rows)


def timings_table(enums, summaries, verifies, nameds, comp) -> pd.DataFrame:
    rows = []
    for e in sorted(enums, key=lambda e: (e["n"], e["d"])):
        rows.append({"stage": "enumerate", "item": f"M({e['n']},{e['d']})", "seconds": round(e["seconds"], 3)})
    for s in sorted(summaries, key=lambda s: (s["n"], s["d"], s["kind"])):
        rows.append({"stage": "schemes", "item": f"M({s['n']},{s['d']}) {s['kind']}", "seconds": round(s["seconds"], 3)})
    for v in verifies:
        rows.append({"stage": "verify", "item": ", ".join(Path(p).name for p in v["files"]),
                     "seconds": round(v["seconds"], 3)})
    for r in nameds:
        rows.append({"stage": "named", "item": r["class"], "seconds": round(r["seconds"], 3)})
    if comp:
        rows.append({"stage": "compactness", "item": f"{len(comp['classes'])} classes", "seconds": round(comp["seconds"], 3)})
    return pd.DataFrame(rows)


def make_tables(out_dir: Path, enumerate_files, scheme_summaries, verify_files, named_files,
                compactness_file) -> dict:
    out_dir = Path(out_dir)
    enums, summaries = _load(enumerate_files), _load(scheme_summaries)
    verifies, nameds = _load(verify_files), _load(named_files)
    comp = json.loads(Path(compactness_file).read_text()) if compactness_file else None
    bad = [v for v in verifies if not v["ok"]]
    if bad:
        raise AssertionError("some schemes failed verification; see the verify reports")
    counts, matrix = counts_table(enums)
    _write(counts, out_dir, "counts", "Maximum classes of VC dimension d on n points: total and up to "
           "coordinate permutations and bit flips, with cross-checks and wall time (s).")
    _write(matrix, out_dir, "counts_matrix", "Number of maximum classes #M(n, d) (orbits under the "
           "hyperoctahedral group in parentheses).")
    verified = _verified_by_file(verifies)
    _write(schemes_table(summaries, verified), out_dir, "schemes",
           "Schemes built on every orbit representative of M(n, d) (produced/attempted) and verified "
           "exhaustively on every sample.")
    named, existence = named_tables(nameds)
    _write(named, out_dir, "named", "Named classes: properties and the least size of each scheme kind.")
    _write(existence, out_dir, "existence", "Existence of schemes of size k on the named classes (SAT).")
    if comp:
        _write(compactness_table(comp), out_dir, "compactness",
               "Finite compactness skeleton: restrictions to every subdomain, level-by-level extension, "
               "and the inverse system of representation maps along the chain X_1 < ... < X_n.")
    _write(timings_table(enums, summaries, verifies, nameds, comp), out_dir, "timings",
           "Wall time of each stage (s, 2-core CPU).")
    summary = {
        "counts": {f"{e['n']},{e['d']}": {"total": e["total"], "orbits": e.get("orbits")} for e in enums},
        "schemes_verified": sum(v["schemes"] for v in verifies),
        "samples_checked": sum(v["samples"] for v in verifies),
        "named_minimal_sizes": {r["class"]: r["minimal_sizes"] for r in nameds},
        "min_peeling_random_failures": [f for s in summaries for f in s.get("min_peeling_random_failures", [])],
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
