"""What each Snakemake rule of the compression branch runs (through ``repro compression ...``).

Stages: enumerate{n,d} -> schemes{n,d,kind} -> verify{file} -> tables; named{class} and compactness
feed verify and tables too. Every stage writes JSON (and gzipped JSON lines for schemes) and records its
wall time.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..faults import kill_point
from ..io import atomic_path, atomic_write_text
from . import CompressionInputError
from .classes import (
    ConceptClass,
    concept_to_string,
    incident_dimensions,
    is_ample,
    is_maximal,
    is_maximum,
    phi,
    popcount,
    shattered_sets,
    strongly_shattered_sets,
    vc_dimension,
)
from .compactness import compactness_report
from .enumeration import as_class, enumerate_job, maximum_orbits, sample_maximum_classes
from .named import describe, kw_fig2_printed_map, named_class
from .sat import find_representation_map, scheme_exists
from .schemes import (
    ConstructionError,
    RepresentationScheme,
    Scheme,
    corner_peeling,
    corners,
    floyd_warmuth,
    incident_sets_ok,
    is_representation_map,
    min_peeling,
    scheme_from_record,
)
from .verify import verify_scheme


# --- configuration ------------------------------------------------------------------------------------
def compression_config(configfile: str | Path | None = None) -> dict:
    """The validated ``compression:`` section of a pipeline config, or its defaults without one."""
    from ..config import load_config, section_defaults

    if configfile is not None:
        return load_config(configfile)["compression"]
    return section_defaults("compression")


def log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Gzipped JSON lines, written beside ``path`` and renamed at the end (a kill leaves no partial file)."""
    count = 0
    # No file name and a zero time in the gzip header: the same records give the same bytes.
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            count += 1
            if count == 1:
                kill_point("compression:after-first-record")
    return count


def read_records(path: str | Path):
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# --- enumerate ----------------------------------------------------------------------------------------
def run_enumerate(cfg: dict, n: int, d: int, out: Path, progress: bool = True,
                  log: Callable[[str], None] = log_to_stderr) -> dict:
    ecfg = cfg["enumerate"]
    result = enumerate_job(n, d, orbits=ecfg["orbits"], brute_force_max_n=ecfg["brute_force_n_max"],
                           direct_check_max_n=ecfg["stream_check_n_max"], progress=progress, log=log)
    kill_point("compression_enumerate:before-write")
    write_json(out, result)
    return result


# --- schemes on maximum classes -----------------------------------------------------------------------
def _class_stats(C: ConceptClass, d: int) -> dict:
    inc = incident_dimensions(C)
    degrees = [popcount(v) for v in inc.values()]
    return {"min_degree": min(degrees), "has_corner": bool(corners(set(C.concepts), C.n)),
            "edges": sum(degrees) // 2, "edges_expected": C.n * phi(d - 1, C.n - 1)}


def _rep_checks(C: ConceptClass, rep: dict[int, int], d: int) -> dict:
    return {"sum_sizes_ok": sum(popcount(A) for A in rep.values()) == C.n * phi(d - 1, C.n - 1),
            "inside_incident": incident_sets_ok(C, rep)}


def run_schemes(cfg: dict, enumeration: Path, kind: str, out: Path, summary_out: Path,
                progress: bool = True, log: Callable[[str], None] = log_to_stderr) -> dict:
    """Build the schemes of ``kind`` on every orbit representative of one enumeration file."""
    enum = json.loads(Path(enumeration).read_text())
    n, d = enum["n"], enum["d"]
    scfg, satcfg = cfg["schemes"], cfg["sat"]
    reps = [int(h, 16) for h in enum.get("orbit_representatives", [])]
    sizes = enum.get("orbit_sizes", [])
    if not reps:
        reps = list(maximum_orbits(n, d))
        sizes = list(maximum_orbits(n, d).values())
    if scfg["max_classes"]:
        reps, sizes = reps[:scfg["max_classes"]], sizes[:scfg["max_classes"]]
    rng = np.random.default_rng([scfg["seed"], n, d])
    counts: dict[str, dict[str, int]] = {}
    stats = {"min_degree_equals_d": 0, "has_corner": 0, "edges_match_kw": 0, "rep_sum_sizes_ok": 0,
             "rep_inside_incident": 0, "rep_maps_checked": 0}
    failures: list[dict] = []
    t0 = time.perf_counter()

    def tally(construction: str, outcome: str) -> None:
        counts.setdefault(construction, {"attempted": 0, "produced": 0, "failed": 0})
        counts[construction]["attempted"] += 1
        counts[construction][outcome] += 1

    def records():
        iterator = list(zip(reps, sizes))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=f"schemes M({n},{d}) {kind}", leave=False, mininterval=1.0)
        for index, (cmask, orbit_size) in enumerate(iterator):
            C = as_class(n, cmask)
            meta = {"class": f"{cmask:x}", "index": index, "orbit_size": orbit_size}
            st = _class_stats(C, d)
            stats["min_degree_equals_d"] += st["min_degree"] == d
            stats["has_corner"] += st["has_corner"]
            stats["edges_match_kw"] += st["edges"] == st["edges_expected"]
            if kind == "labeled":
                try:
                    fw = floyd_warmuth(C)
                    fw.meta = meta
                    yield fw.to_record()
                    tally("floyd-warmuth", "produced")
                except ConstructionError as exc:
                    log(f"floyd-warmuth failed on class {cmask:x}: {exc}")
                    tally("floyd-warmuth", "failed")
                continue
            found = find_representation_map(C, d, solver=satcfg["solver"], time_limit=satcfg["time_limit_s"])
            candidates = [("kw-sat", found.scheme if found.status == "yes" else None)]
            candidates.append(("min-peeling", min_peeling(C)))
            try:
                candidates.append(("corner-peeling", corner_peeling(C)))
            except ConstructionError as exc:
                log(f"corner peeling failed on class {cmask:x}: {exc}")
                candidates.append(("corner-peeling", None))
            seen = set()
            for run in range(scfg["min_peeling_random"]):
                rep = min_peeling(C, rng)
                key = tuple(sorted(rep.items()))
                ok, why = is_representation_map(C, rep, d)
                tally("min-peeling-random", "produced" if ok else "failed")
                if not ok:
                    # Keep the class and the peeling order (the dict's insertion order) to reproduce it.
                    failures.append({"class": C.to_strings(), "run": run, "reason": why,
                                     "peeling_order": [[concept_to_string(c, n), A] for c, A in rep.items()]})
                    log(f"min-peeling with random ties failed on class {cmask:x} (run {run}): {why}")
                if ok and key not in seen:
                    seen.add(key)
                    candidates.append(("min-peeling-random-distinct", rep))
            for name, rep in candidates:
                ok = rep is not None and is_representation_map(C, rep, d)[0]
                if name != "min-peeling-random-distinct":
                    tally(name, "produced" if ok else "failed")
                if not ok:
                    if name != "min-peeling-random-distinct":
                        log(f"{name}: no valid representation map for class {cmask:x}")
                    continue
                checks = _rep_checks(C, rep, d)
                stats["rep_maps_checked"] += 1
                stats["rep_sum_sizes_ok"] += checks["sum_sizes_ok"]
                stats["rep_inside_incident"] += checks["inside_incident"]
                yield RepresentationScheme(C, rep, d, construction=name, meta=meta).to_record()

    written = write_records(out, records())
    summary = {"n": n, "d": d, "kind": kind, "classes": len(reps), "classes_total": enum.get("orbits"),
               "schemes_written": written, "constructions": counts, "class_stats": stats,
               "min_peeling_random_failures": failures,
               "seconds": time.perf_counter() - t0}
    write_json(summary_out, summary)
    log(f"M({n},{d}) {kind}: {len(reps)} classes, {written} schemes written ({summary['seconds']:.1f} s)")
    return summary


# --- verification -------------------------------------------------------------------------------------
def run_verify(files: list[Path], out: Path, progress: bool = True,
               log: Callable[[str], None] = log_to_stderr) -> dict:
    """Exhaustively verify every scheme record in ``files``; summary per file and construction."""
    t0 = time.perf_counter()
    result = {"files": {}, "schemes": 0, "failed": 0, "samples": 0}
    for path in files:
        per: dict[str, dict] = {}
        recs = read_records(path)
        if progress:
            from tqdm import tqdm

            recs = tqdm(recs, desc=f"verify {Path(path).name}", leave=False, mininterval=1.0)
        for rec in recs:
            scheme = scheme_from_record(rec)
            v = verify_scheme(scheme)
            row = per.setdefault(scheme.construction, {"schemes": 0, "verified": 0, "failed": 0, "samples": 0,
                                                       "failures": []})
            row["schemes"] += 1
            row["samples"] += v.samples
            result["samples"] += v.samples
            result["schemes"] += 1
            if v.ok:
                row["verified"] += 1
            else:
                row["failed"] += 1
                result["failed"] += 1
                if len(row["failures"]) < 5:
                    row["failures"].append({"meta": rec.get("meta"), "first": v.first_failures})
                log(f"FAILED: {path} {scheme.construction} {rec.get('meta')}: {v.first_failures[:2]}")
        result["files"][str(path)] = per
    result["ok"] = result["failed"] == 0
    result["seconds"] = time.perf_counter() - t0
    write_json(out, result)
    log(f"verified {result['schemes']} schemes over {result['samples']} samples: "
        f"{result['failed']} failed ({result['seconds']:.1f} s)")
    return result


# --- named classes ------------------------------------------------------------------------------------
def class_properties(C: ConceptClass) -> dict:
    return {"n": C.n, "concepts": len(C), "vc": vc_dimension(C), "maximum": is_maximum(C),
            "ample": is_ample(C), "maximal": is_maximal(C), "shattered_sets": len(shattered_sets(C)),
            "strongly_shattered_sets": len(strongly_shattered_sets(C)),
            "sauer_shelah_bound": phi(vc_dimension(C), C.n)}


def decide(C: ConceptClass, kind: str, k: int, proper: bool, satcfg: dict) -> tuple[dict, Scheme | None]:
    """One existence question, with the SAT answer re-decided by a second solver when it is 'no'."""
    out = scheme_exists(C, kind, k, proper, solver=satcfg["solver"], time_limit=satcfg["time_limit_s"])
    row = {"kind": kind, "proper": proper, "size": k, "answer": out.status, "reason": out.reason,
           "seconds": out.seconds, "variables": out.variables, "clauses": out.clauses}
    if out.status == "no" and out.reason == "UNSAT" and satcfg.get("cross_check_solver"):
        again = scheme_exists(C, kind, k, proper, solver=satcfg["cross_check_solver"],
                              time_limit=satcfg["time_limit_s"], precheck=False)
        row["cross_check"] = again.status
        if again.status == "yes":
            raise AssertionError(f"solvers disagree on {kind} size {k} proper={proper}")
    return row, out.scheme


def run_named(cfg: dict, name: str, out: Path, schemes_out: Path,
              log: Callable[[str], None] = log_to_stderr) -> dict:
    """Which scheme kinds exist at which sizes for one named class (plus the classical constructions)."""
    t0 = time.perf_counter()
    C = named_class(name)
    satcfg = cfg["sat"]
    props = class_properties(C)
    d = props["vc"]
    result = {"class": name, "description": describe(name), "concepts_list": C.to_strings(), **props,
              "existence": [], "constructions": {}}
    produced: list[Scheme] = []
    max_k = min(C.n, cfg["named"]["max_size"])
    for kind in ("labeled", "unlabeled"):
        for proper in (True, False):
            for k in range(0, max_k + 1):
                row, scheme = decide(C, kind, k, proper, satcfg)
                result["existence"].append(row)
                log(f"{name}: {kind} {'proper' if proper else 'improper'} size {k}: {row['answer']} "
                    f"({row['reason']}, {row['seconds']:.2f} s)")
                if scheme is not None:
                    scheme.meta = {"class": name}
                    produced.append(scheme)
    # Monotonicity in k is a consequence of the definition ("at most k"): check it on the answers.
    mono = True
    for kind in ("labeled", "unlabeled"):
        for proper in (True, False):
            answers = [r["answer"] for r in result["existence"] if r["kind"] == kind and r["proper"] == proper]
            seen_yes = False
            for a in answers:
                mono &= not (seen_yes and a == "no")
                seen_yes |= a == "yes"
    result["monotone_in_size"] = mono
    # Representation maps of order d (injective, non-clashing, every sample covered).
    rm = find_representation_map(C, d, solver=satcfg["solver"], time_limit=satcfg["time_limit_s"])
    result["constructions"]["representation_map_order_d"] = rm.status
    if rm.status == "yes":
        produced.append(RepresentationScheme(C, rm.scheme, d, construction="kw-sat", meta={"class": name}))
    if props["maximum"]:
        produced.append(floyd_warmuth(C))
        produced[-1].meta = {"class": name}
        result["constructions"]["floyd_warmuth"] = "built"
        for label, builder in (("min-peeling", min_peeling), ("corner-peeling", corner_peeling)):
            try:
                rep = builder(C)
                ok, why = is_representation_map(C, rep, d)
            except ConstructionError as exc:
                ok, why, rep = False, str(exc), None
            result["constructions"][label] = "valid" if ok else f"invalid: {why}"
            if ok:
                produced.append(RepresentationScheme(C, rep, d, construction=label, meta={"class": name}))
    if name == "kw-maximum":
        printed = kw_fig2_printed_map()
        ok, why = is_representation_map(C, printed, d)
        result["constructions"]["kw07_fig2_printed_map"] = "valid" if ok else f"invalid: {why}"
        if ok:
            produced.append(RepresentationScheme(C, printed, d, construction="kw07-printed", meta={"class": name}))
    result["minimal_sizes"] = {}
    for kind in ("labeled", "unlabeled"):
        for proper in (True, False):
            ks = [r["size"] for r in result["existence"]
                  if r["kind"] == kind and r["proper"] == proper and r["answer"] == "yes"]
            result["minimal_sizes"][f"{kind}-{'proper' if proper else 'improper'}"] = min(ks) if ks else None
    result["seconds"] = time.perf_counter() - t0
    write_records(schemes_out, (s.to_record() for s in produced))
    write_json(out, result)
    return result


# --- compactness --------------------------------------------------------------------------------------
def run_compactness(cfg: dict, out: Path, schemes_out: Path, progress: bool = True,
                    log: Callable[[str], None] = log_to_stderr) -> dict:
    ccfg, satcfg = cfg["compactness"], cfg["sat"]
    t0 = time.perf_counter()
    targets: list[tuple[str, ConceptClass]] = [(name, named_class(name)) for name in ccfg["classes"]]
    rnd = ccfg["random_maximum"]
    rng = np.random.default_rng(rnd["seed"])
    for n, d in rnd["shapes"]:
        if d > n:
            raise CompressionInputError(f"compactness.random_maximum.shapes: [{n}, {d}] has d > n")
        for i, cmask in enumerate(sample_maximum_classes(n, d, rnd["count"], rng)):
            targets.append((f"random-M({n},{d})-{i}-{cmask:x}", as_class(n, cmask)))
    reports, produced = [], []
    for name, C in targets:
        seeds = [ccfg["order_seed"] + i for i in range(ccfg["orders"])]
        rep, schemes = compactness_report(name, C, ccfg["kinds"], propers=tuple(ccfg["proper"]),
                                          max_maps=ccfg["max_maps"], time_limit=satcfg["time_limit_s"],
                                          order_seeds=seeds)
        log(f"compactness {name}: {rep['seconds']:.2f} s")
        reports.append(rep)
        produced.extend(schemes)
    result = {"classes": reports, "seconds": time.perf_counter() - t0}
    write_records(schemes_out, (s.to_record() for s in produced))
    write_json(out, result)
    return result
