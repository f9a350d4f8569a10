"""``results/compression/numbers.tex``: the compression study's quoted numbers as ``\\Comp...`` macros."""

from __future__ import annotations

import json
from pathlib import Path

from ..report.numbers import Macros, macro_name


def collect(summary: dict) -> Macros:
    m = Macros("repro compression numbers")
    counts = {tuple(int(x) for x in k.split(",")): v for k, v in summary.get("counts", {}).items()}
    if counts:
        m.add("CompNMax", max(n for n, _ in counts))
        m.add("CompShapes", len(counts))
        (n_big, d_big), big = max(counts.items(), key=lambda kv: (kv[1]["total"], kv[0]))
        m.add("CompLargestCount", str(big["total"]))  # exact: counts reach 10^8
        m.add("CompLargestCountN", n_big)
        m.add("CompLargestCountD", d_big)
        m.add("CompLargestCountOrbits", big.get("orbits") if big.get("orbits") is not None else "n/a")
        for (n, d), v in sorted(counts.items()):
            m.add(macro_name("CompCount", str(n), str(d)), str(v["total"]))
            if v.get("orbits") is not None:
                m.add(macro_name("CompOrbits", str(n), str(d)), str(v["orbits"]))
    m.add("CompSchemesVerified", summary.get("schemes_verified", 0))
    m.add("CompSamplesChecked", str(summary.get("samples_checked", 0)))
    m.add("CompMinPeelingRandomFailures", len(summary.get("min_peeling_random_failures", [])))
    named = summary.get("named_minimal_sizes", {})
    m.add("CompNamedClasses", len(named))
    for cls, sizes in named.items():
        for kind, size in sizes.items():
            m.add(macro_name("CompNamed", cls, kind), "none" if size is None else size)
    return m


def make_numbers(summary_json: Path, out: Path) -> Path:
    return collect(json.loads(Path(summary_json).read_text())).write(out)
