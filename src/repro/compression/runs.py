"""The compression run plan: which (n, d) shapes each stage covers, and each job's identity.

Pure functions of the compression section, importing nothing heavy: the workflow reads them while it is
parsed. A job's identity is the settings its output depends on, minus what its path names (n, d, kind,
class name): the rules fingerprint it, so raising ``n_max`` only schedules the new shapes.
"""

from __future__ import annotations


def shapes(n_max: int) -> list[tuple[int, int]]:
    """Every (n, d) with 1 <= n <= n_max and 0 <= d <= n."""
    return [(n, d) for n in range(1, n_max + 1) for d in range(0, n + 1)]


def enumerate_shapes(comp: dict) -> list[tuple[int, int]]:
    return shapes(comp["enumerate"]["n_max"])


def scheme_shapes(comp: dict) -> list[tuple[int, int]]:
    """Schemes are built on enumerated classes only: shapes up to the smaller of the two n_max."""
    return shapes(min(comp["schemes"]["n_max"], comp["enumerate"]["n_max"]))


def enumerate_settings(comp: dict, n: int) -> dict:
    """compression_enumerate{n,d}: whether orbits are counted, and which of the cross-checks run at this n."""
    ecfg = comp["enumerate"]
    return {"orbits": ecfg["orbits"], "brute_force_check": n <= ecfg["brute_force_n_max"],
            "stream_check": n <= ecfg["stream_check_n_max"]}


def schemes_settings(comp: dict) -> dict:
    """compression_schemes{n,d,kind}: the construction settings and the SAT solver's."""
    return {"schemes": {k: v for k, v in comp["schemes"].items() if k != "n_max"}, "sat": comp["sat"]}


def named_settings(comp: dict) -> dict:
    """compression_named{name}: the largest scheme size searched and the SAT solver's settings."""
    return {"max_size": comp["named"]["max_size"], "sat": comp["sat"]}


def compactness_settings(comp: dict) -> dict:
    """compression_compactness: its own section and the SAT solver's settings."""
    return {"compactness": comp["compactness"], "sat": comp["sat"]}


def check(cfg: dict) -> list[str]:
    """The compression study's cross-key errors, each naming its key (registered with repro.config)."""
    shapes = ((cfg.get("compression") or {}).get("compactness") or {}).get("random_maximum", {}).get("shapes", [])
    return [f"key 'compression.compactness.random_maximum.shapes[{i}]': [{n}, {d}] has d > n"
            for i, (n, d) in enumerate(shapes) if d > n]
