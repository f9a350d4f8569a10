"""Enumeration of maximum classes and SAT scheme search, each timed against a brute-force baseline.

Every baseline runs in the same process and the same run as what it is compared with, and both sides
must give the same answers (checked). Reported: seconds of each side and the ratio baseline / ours.

1. Listing every maximum class on n = 4 points (all d): lifting from n - 1 points (caches cleared, so the
   lists on 3 points are rebuilt too) against testing every one of the 2^16 subsets of {0,1}^4
   (vectorised numpy). For n = 5 the baseline would test 2^32 subsets; its time is extrapolated from
   the n = 4 rate and printed as an estimate.
2. Counting #M(6, d): the orbit-weighted sum against the direct sum over every class on 5 points
   (both use the lifting; --full only, the direct sum takes minutes for d = 2, 3).
3. Scheme existence: SAT (python-sat) against the exhaustive search over reconstruction tables, on
   every non-empty class over 3 points (labeled / unlabeled, proper / improper, sizes 0..2) and on
   random 4-point classes at size 1.

    python benchmarks/compression_enumeration.py            # about a minute on 2 cores
    python benchmarks/compression_enumeration.py --full     # adds the n = 6 counts
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from repro.compression import enumeration as en  # noqa: E402
from repro.compression.classes import ConceptClass  # noqa: E402
from repro.compression.sat import (  # noqa: E402
    all_nonempty_classes,
    brute_force_scheme_exists,
    scheme_exists,
)

KINDS = [(kind, proper) for kind in ("labeled", "unlabeled") for proper in (True, False)]


def clear_caches() -> None:
    en._maximum_class_tuple.cache_clear()
    en._ORBIT_CACHE.clear()


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        clear_caches()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def report(label: str, baseline: float, ours: float) -> None:
    print(f"{label:58s} baseline {baseline:9.3f} s   ours {ours:8.3f} s   ratio {baseline / ours:10.1f}x")


def bench_listing(repeats: int) -> None:
    n = 4
    t_base, brute = timed(lambda: en.brute_force_maximum_classes(n), repeats)
    t_ours, lifted = timed(lambda: {d: sorted(en.iter_maximum_classes(n, d)) for d in range(n + 1)}, repeats)
    assert all(brute[d] == lifted[d] for d in range(n + 1)), "lifting and brute force disagree"
    report(f"list every maximum class, n = {n} (all d)", t_base, t_ours)
    per_subset = t_base / 2 ** (2 ** n)
    t5, _ = timed(lambda: {d: sum(1 for _ in en.iter_maximum_classes(5, d)) for d in range(6)}, 1)
    est = per_subset * 2 ** 32
    print(f"{'list every maximum class, n = 5 (all d)':58s} baseline ~{est:8.0f} s (estimate: 2^32 subsets at "
          f"the n = 4 rate)   ours {t5:8.3f} s   ratio ~{est / t5:.0f}x")


def bench_counts_n6() -> None:
    for d in range(7):
        clear_caches()
        t0 = time.perf_counter()
        ours = en.count_maximum(6, d, "orbits")
        t_ours = time.perf_counter() - t0
        clear_caches()
        t0 = time.perf_counter()
        base = en.count_maximum(6, d, "direct")
        t_base = time.perf_counter() - t0
        assert ours == base
        report(f"count #M(6,{d}) = {ours}: direct vs orbit-weighted", t_base, t_ours)


def bench_sat(classes, sizes, label) -> None:
    t_base = t_ours = 0.0
    cases = 0
    for C in classes:
        for kind, proper in KINDS:
            for k in sizes:
                t0 = time.perf_counter()
                brute = brute_force_scheme_exists(C, kind, k, proper)
                t_base += time.perf_counter() - t0
                t0 = time.perf_counter()
                sat = scheme_exists(C, kind, k, proper, precheck=False)
                t_ours += time.perf_counter() - t0
                assert (brute is not None) == (sat.status == "yes")
                cases += 1
    report(f"{label} ({cases} questions)", t_base, t_ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also time the n = 6 counts (minutes)")
    args = parser.parse_args()
    print("Enumeration of maximum classes")
    bench_listing(args.repeats)
    if args.full:
        bench_counts_n6()
    print("Scheme existence: SAT vs exhaustive search (agreement checked on every question)")
    bench_sat(list(all_nonempty_classes(3)), (0, 1, 2), "every class over 3 points, sizes 0..2")
    rng = np.random.default_rng(0)
    four = [ConceptClass(4, tuple(int(c) for c in rng.choice(16, size=int(rng.integers(5, 9)), replace=False)))
            for _ in range(12)]
    bench_sat(four, (1,), "12 random 4-point classes (5-8 concepts), size 1")


if __name__ == "__main__":
    main()
