"""Sample compression claims, checked by exhaustive construction and verification on every orbit
representative of the d-maximum classes the run enumerated, and on the named classes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..io import TableSpec
from .ledger import Claim, Measurement, value_at_least

FW = "Floyd & Warmuth 1995"
KW = "Kuzmin & Warmuth 2007"
THESIS = "Kalajdzievski 2012 (thesis)"

LABELED = Claim("compression-labeled-maximum", "compression", "Every d-maximum class has a labeled compression scheme "
                "of size d.", f"{FW}, Sec. 4", "every enumerated orbit representative gets a verified scheme (share = 1)",
                value_at_least(1.0), "tab:compression-schemes", needs_interval=False)
UNLABELED = Claim("compression-unlabeled-maximum", "compression", "Every d-maximum class has an unlabeled compression "
                  "scheme of size d (a representation map).", f"{KW}, Sec. 4",
                  "every enumerated orbit representative gets a verified representation map (share = 1)",
                  value_at_least(1.0), "tab:compression-schemes", needs_interval=False)
PEELING = Claim("compression-min-peeling", "compression", "Peeling a maximum class by minimum degree yields a "
                "representation map, however ties are broken.", f"{KW}, Sec. 6; {THESIS}",
                "every min-peeling run with random tie-breaking succeeds (share = 1)", value_at_least(1.0),
                "tab:compression-schemes", needs_interval=False)
NAMED = Claim("compression-named-size-d", "compression", "Classes of VC dimension d from the literature have labeled "
              "schemes of size d (the sample compression conjecture, at size d).", f"{FW}; {KW}",
              "on every named class the smallest proper labeled scheme is at most the VC dimension",
              None, "tab:compression-named", needs_interval=False)
COPY = Claim("compression-copy-schemes", "compression", "Copy schemes of size d exist for d-maximum classes.",
             f"{THESIS}", "waits for the thesis's definition of a copy scheme", None,
             needs_interval=False)
CLAIMS = (LABELED, UNLABELED, PEELING, NAMED, COPY)


def _share(column: pd.Series) -> tuple[float, int, int]:
    parts = column.astype(str).str.split("/", expand=True).astype(int)
    ok, total = int(parts[0].sum()), int(parts[1].sum())
    return (ok / total if total else float("nan")), ok, total


def measure(schemes: pd.DataFrame, named: pd.DataFrame) -> list[tuple[Claim, Measurement]]:
    out = []
    orbits = int(schemes["classes (orbits)"].sum()) if len(schemes) else 0
    scale = f"every (n, d) with n <= {int(schemes['n'].max()) if len(schemes) else 0}: {orbits} orbit representatives"
    for claim, column in ((LABELED, "Floyd-Warmuth (labeled)"), (UNLABELED, "rep. map by SAT"),
                          (PEELING, "min-peeling, random ties")):
        if column not in schemes or schemes.empty:
            out.append((claim, Measurement(f"{column}: not run", tested=False)))
            continue
        share, ok, total = _share(schemes[column])
        out.append((claim, Measurement(f"share of {column} constructions verified", share, scale=scale,
                                       note=f"{ok}/{total}")))
    if named.empty:
        out.append((NAMED, Measurement("no named classes", tested=False)))
    else:
        excess = named["min labeled-proper"].astype(float) - named["VC"].astype(float)
        ok = bool((excess <= 0).all())
        out.append((replace(NAMED, passes=lambda v, lo, hi, ok=ok: ok), Measurement(
            "largest (smallest proper labeled scheme - VC dimension) over the named classes", float(excess.max()),
            scale=f"{len(named)} named classes", note=", ".join(f"{c}: {int(s)} vs VC {int(v)}" for c, s, v in
                                                               zip(named["class"], named["min labeled-proper"], named["VC"])))))
    out.append((COPY, Measurement("no definition to test", tested=False)))
    return out


_FRACTIONS = ("Floyd-Warmuth (labeled)", "rep. map by SAT", "min-peeling, random ties")
SCHEMES = TableSpec("the schemes built per (n, d) (repro compression tables)", ("n", "d", "classes (orbits)", *_FRACTIONS),
                    text=(*_FRACTIONS, "min-peeling", "corner peeling", "min degree = d", "has a corner",
                          "schemes verified"), integers=("n", "d", "classes (orbits)"), complete=("n", "d", *_FRACTIONS),
                    rebuild="delete it and rerun: compression_tables rebuilds it")
NAMED_TABLE = TableSpec("the named classes (repro compression tables)", ("class", "VC", "min labeled-proper"),
                        text=("class", "maximum", "ample", "maximal", "rep. map of order VC"), complete=("class", "VC"),
                        rebuild="delete it and rerun: compression_tables rebuilds it")


def load(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..io import read_table

    tables = results / "compression" / "tables"
    return read_table(tables / "schemes.csv", SCHEMES), read_table(tables / "named.csv", NAMED_TABLE)
