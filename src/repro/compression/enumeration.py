"""All maximum classes of VC dimension d on n points, by lifting from n - 1 points.

The lifting lemma (after RR12 Algorithm 1, with an exact criterion instead of a VC check per lift).
Write x = x_n for the last point, m = n - 1 and, for a class C on n points,
P = C - x (delete x) and R = C^x (both extensions in C). For a maximum class of VC dimension d,
P is maximum of VC dimension d and R is maximum of VC dimension d - 1 on m points, and R is inside P
(KW07 Lemma 14). Conversely, given such a pair, every class C with C - x = P and C^x = R is
"R at both levels, plus each tail concept t of T = P - R at one level b(t)", and
|C| = |P| + |R| = Phi_d(m) + Phi_{d-1}(m) = Phi_d(n), so C is maximum iff VCdim(C) <= d.

A (d+1)-set not containing x is not shattered (P has VC dimension d). A set A + {x} with |A| = d is
shattered iff both levels (R + T_0)|_A and (R + T_1)|_A are all of 2^A. R|_A is maximum of VC dimension
d - 1 on d points, so it misses exactly one labeling l_A (the forbidden labeling of R on A), while P|_A
has it. Hence A + {x} is shattered iff the tail concepts t with t|_A = l_A (there is at least one)
are not all lifted to the same level. So

    C is maximum  <=>  for every d-set A, the lift b is constant on T_A = {t in T : t|_A = l_A},

and the lifts are exactly the 2^k choices of one level per connected component of the hypergraph on T
with hyperedges T_A. The map (P, R, lift) -> C is a bijection, so

    #M(n, d) = sum over P in M(m, d), R in M(m, d - 1) with R inside P, of 2^k(P, R),

and the enumeration needs no VC computation at all. Everything here is checked against brute force over
all subsets of the cube for n <= 4 (tests and the ``enumerate`` stage).

Counting uses the symmetry: k(P, R) summed over R is invariant under B_{m}, so the total is a sum over
orbit representatives of M(m, d) weighted by orbit size. Orbits of M(n, d) come from lifting only the
orbit representatives of M(m, d) (every orbit contains a class whose deletion of x_n is a representative)
and canonicalising the results; their orbit sizes sum to the total, an independent check of the count.
"""

from __future__ import annotations

import itertools
import time
from functools import lru_cache
from typing import Callable, Iterator

import numpy as np

from . import CompressionInputError
from .classes import ConceptClass, phi, popcount
from .symmetry import MAX_N, canonical_forms, group_order

#: Largest n the enumeration handles: a class on n points is one 64-bit word up to n = 6.
MAX_ENUM_N = MAX_N
#: Largest n for which brute force over every subset of the cube is feasible (2^16 subsets).
MAX_BRUTE_FORCE_N = 4


def check_shape(n: int, d: int) -> None:
    if not 0 <= n <= MAX_ENUM_N:
        raise CompressionInputError(
            f"n = {n}: the enumeration covers 0 <= n <= {MAX_ENUM_N} (a class on n points is one 64-bit word)"
        )
    if d < -1:
        raise CompressionInputError(f"d = {d}: the VC dimension is at least -1 (the empty class)")


def full_cube_mask(n: int) -> int:
    return (1 << (1 << n)) - 1


# --- the pieces of the lifting ------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _subcube_masks(m: int, d: int) -> tuple[tuple[int, ...], np.ndarray]:
    """For each d-set A of m points (lexicographic), the 2^d point masks {p : p|_A = l}, one per l.

    Returns (the A masks, array of shape (#A, 2^d) of uint64 point masks).
    """
    sets = [sum(1 << i for i in pts) for pts in itertools.combinations(range(m), d)]
    table = np.zeros((len(sets), 1 << d), dtype=np.uint64)
    for a, A in enumerate(sets):
        labels = sorted(_sub(A))
        for j, lab in enumerate(labels):
            table[a, j] = np.uint64(sum(1 << p for p in range(1 << m) if p & A == lab))
    return tuple(sets), table


def _sub(A: int) -> list[int]:
    out, s = [], A
    while True:
        out.append(s)
        if s == 0:
            return out
        s = (s - 1) & A


def forbidden_masks(R_masks: np.ndarray, m: int, d: int) -> np.ndarray:
    """For each class R (maximum, VC dimension d - 1, on m points) and each d-set A, the point mask of
    the subcube {p : p|_A = l_A(R)}, where l_A(R) is the one labeling of A that R misses.

    Shape (len(R_masks), C(m, d)). Raises if some R misses no labeling or several (it is not maximum).
    """
    R = np.asarray(R_masks, dtype=np.uint64)
    _, table = _subcube_masks(m, d)
    out = np.empty((R.size, table.shape[0]), dtype=np.uint64)
    for a in range(table.shape[0]):
        missing = (R[:, None] & table[a][None, :]) == 0  # (len R, 2^d)
        if not np.all(missing.sum(axis=1) == 1):
            raise AssertionError("a class given as maximum of VC dimension d-1 does not miss exactly one "
                                 "labeling on some d-set")
        out[:, a] = table[a][missing.argmax(axis=1)]
    return out


def tail_components(T: int, hyperedges) -> list[int]:
    """Connected components (as point masks) of the hypergraph on the points of T with edges T & f."""
    comps: list[int] = []
    covered = 0
    for f in hyperedges:
        e = T & f
        if not e:
            continue
        covered |= e
        merged, keep = e, []
        for c in comps:
            if c & merged:
                merged |= c
            else:
                keep.append(c)
        keep.append(merged)
        comps = keep
    rest = T & ~covered
    while rest:  # tail concepts in no T_A are free: each is its own component
        low = rest & -rest
        comps.append(low)
        rest ^= low
    return comps


def lifts(P: int, R: int, F_row, m: int) -> Iterator[int]:
    """Every maximum class C on m + 1 points with C - x = P and C^x = R (x the new last point)."""
    half = 1 << m
    base = R | (R << half)
    comps = tail_components(P & ~R, F_row)
    for choice in range(1 << len(comps)):
        C = base
        for i, comp in enumerate(comps):
            C |= comp << half if choice >> i & 1 else comp
        yield C


def _as_int_rows(F: np.ndarray) -> list[tuple[int, ...]]:
    """Rows of uint64 masks as tuples of Python ints (numpy scalars are slow in the inner loops)."""
    return [tuple(int(x) for x in row) for row in F.tolist()]


def _subclasses(P: int, R_arr: np.ndarray) -> np.ndarray:
    """Indices of the R (uint64 masks) contained in P."""
    return np.nonzero((R_arr & np.uint64(~P & 0xFFFFFFFFFFFFFFFF)) == 0)[0]


# --- all classes (streaming) ----------------------------------------------------------------------------
def iter_maximum_classes(n: int, d: int) -> Iterator[int]:
    """Yield every maximum class of VC dimension d on n points as a class mask, one at a time.

    Only the (much smaller) lists on n - 1 points are held in memory, so M(6, 2) (about 10^8 classes)
    can be streamed.
    """
    check_shape(n, d)
    if d > n:
        return
    if d == -1:
        yield 0
        return
    if d == n:
        yield full_cube_mask(n)
        return
    m = n - 1
    Ps = maximum_class_list(m, d)
    Rs = maximum_class_list(m, d - 1)
    R_arr = np.asarray(Rs, dtype=np.uint64)
    F = _as_int_rows(forbidden_masks(R_arr, m, d))
    for P in Ps:
        for i in _subclasses(P, R_arr):
            yield from lifts(P, Rs[i], F[i], m)


@lru_cache(maxsize=None)
def _maximum_class_tuple(n: int, d: int) -> tuple[int, ...]:
    return tuple(iter_maximum_classes(n, d))


def maximum_class_list(n: int, d: int) -> tuple[int, ...]:
    """All of M(n, d) as class masks (held in memory: for n <= 5 that is at most 97,536 words)."""
    check_shape(n, d)
    if n > MAX_ENUM_N - 1:
        raise CompressionInputError(f"M({n}, {d}) is not held in memory; stream it with iter_maximum_classes")
    return _maximum_class_tuple(n, d)


# --- counts -------------------------------------------------------------------------------------------
def _weight_sum(P: int, Rs, R_arr: np.ndarray, F: list, m: int) -> tuple[int, int]:
    """(sum over R inside P of 2^k(P, R), number of such R)."""
    idx = _subclasses(P, R_arr)
    total = 0
    for i in idx:
        total += 1 << len(tail_components(P & ~Rs[i], F[i]))
    return total, len(idx)


def count_maximum(n: int, d: int, method: str = "orbits", progress: bool = False) -> int:
    """#M(n, d), the number of maximum classes of VC dimension d on n points.

    method "orbits": sum over orbit representatives of M(n-1, d), weighted by orbit size (fast);
    method "direct": sum over every class of M(n-1, d) (no symmetry; a cross-check, minutes at n = 6).
    """
    check_shape(n, d)
    if d > n:
        return 0
    if d == -1:
        return 1
    if d == n:
        return 1
    m = n - 1
    Rs = maximum_class_list(m, d - 1)
    R_arr = np.asarray(Rs, dtype=np.uint64)
    F = _as_int_rows(forbidden_masks(R_arr, m, d))
    if method == "orbits":
        weighted = maximum_orbits(m, d)
        items = list(weighted.items())
    elif method == "direct":
        items = [(P, 1) for P in maximum_class_list(m, d)]
    else:
        raise CompressionInputError(f"unknown counting method {method!r} (orbits or direct)")
    total = 0
    for P, weight in _progress(items, progress, f"count M({n},{d})"):
        s, _ = _weight_sum(P, Rs, R_arr, F, m)
        total += weight * s
    return total


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, mininterval=1.0)


# --- orbits under the hyperoctahedral group -----------------------------------------------------------
_ORBIT_CACHE: dict[tuple[int, int], dict[int, int]] = {}


def maximum_orbits(n: int, d: int, progress: bool = False) -> dict[int, int]:
    """Orbits of M(n, d) under B_n: {canonical class mask: orbit size}, sorted by mask.

    Lifts only the orbit representatives on n - 1 points (recursively) and canonicalises the results.
    """
    check_shape(n, d)
    key = (n, d)
    if key in _ORBIT_CACHE:
        return _ORBIT_CACHE[key]
    if d > n:
        result: dict[int, int] = {}
    elif d == -1:
        result = {0: 1}
    elif d == n:
        result = {full_cube_mask(n): 1}
    else:
        m = n - 1
        Rs = maximum_class_list(m, d - 1)
        R_arr = np.asarray(Rs, dtype=np.uint64)
        F = _as_int_rows(forbidden_masks(R_arr, m, d))
        found: dict[int, int] = {}
        order = group_order(n)
        pending: list[int] = []

        def flush():
            if pending:
                canon, stab = canonical_forms(pending, n)
                for c, s in zip(canon.tolist(), stab.tolist()):
                    found[int(c)] = order // int(s)
                pending.clear()

        for P in _progress(list(maximum_orbits(m, d)), progress, f"orbits M({n},{d})"):
            for i in _subclasses(P, R_arr):
                pending.extend(lifts(P, Rs[i], F[i], m))
                if len(pending) >= 4096:
                    flush()
        flush()
        result = dict(sorted(found.items()))
    _ORBIT_CACHE[key] = result
    return result


# --- brute force (tiny n) -----------------------------------------------------------------------------
def brute_force_vc_dimensions(n: int) -> np.ndarray:
    """VC dimension of every subset of {0,1}^n (index = class mask), by testing every A and labeling."""
    if n > MAX_BRUTE_FORCE_N:
        raise CompressionInputError(f"brute force over all 2^(2^{n}) classes is limited to n <= {MAX_BRUTE_FORCE_N}")
    classes = np.arange(1 << (1 << n), dtype=np.uint64)
    vc = np.where(classes == 0, -1, 0).astype(np.int64)
    for A in range(1, 1 << n):
        shattered = np.ones(classes.size, dtype=bool)
        for lab in _sub(A):
            cube = sum(1 << p for p in range(1 << n) if p & A == lab)
            shattered &= (classes & np.uint64(cube)) != 0
        vc = np.where(shattered, np.maximum(vc, popcount(A)), vc)
    return vc


def brute_force_maximum_classes(n: int) -> dict[int, list[int]]:
    """{d: sorted class masks of M(n, d)} from every subset of the cube: |C| = Phi_d(n), VCdim = d."""
    vc = brute_force_vc_dimensions(n)
    sizes = np.array([bin(i).count("1") for i in range(vc.size)])
    out = {}
    for d in range(-1, n + 1):
        hits = np.nonzero((vc == d) & (sizes == phi(d, n)))[0]
        out[d] = [int(i) for i in hits]
    return out


# --- one enumeration job ------------------------------------------------------------------------------
def enumerate_job(n: int, d: int, orbits: bool = True, brute_force_max_n: int = MAX_BRUTE_FORCE_N,
                  direct_check_max_n: int = 5, progress: bool = False,
                  log: Callable[[str], None] = lambda s: None) -> dict:
    """Counts of M(n, d) with timings and cross-checks, and the orbit representatives when asked."""
    check_shape(n, d)
    out: dict = {"n": n, "d": d, "sauer_shelah_bound": phi(d, n), "checks": {}}
    t0 = time.perf_counter()
    out["total"] = count_maximum(n, d, "orbits", progress=progress)
    out["seconds_total"] = time.perf_counter() - t0
    log(f"#M({n},{d}) = {out['total']} ({out['seconds_total']:.2f} s)")
    if orbits:
        t0 = time.perf_counter()
        orb = maximum_orbits(n, d, progress=progress)
        out["seconds_orbits"] = time.perf_counter() - t0
        out["orbits"] = len(orb)
        out["orbit_representatives"] = [f"{c:x}" for c in orb]
        out["orbit_sizes"] = list(orb.values())
        ok = sum(orb.values()) == out["total"]
        out["checks"]["orbit_sizes_sum_to_total"] = ok
        log(f"{len(orb)} orbits ({out['seconds_orbits']:.2f} s); orbit sizes sum to the total: {ok}")
        if not ok:
            raise AssertionError(f"M({n},{d}): orbit sizes sum to {sum(orb.values())}, count says {out['total']}")
    if n <= direct_check_max_n and n <= MAX_ENUM_N:
        t0 = time.perf_counter()
        streamed = sum(1 for _ in iter_maximum_classes(n, d))
        out["seconds_streamed"] = time.perf_counter() - t0
        out["checks"]["streamed_count_equals_total"] = streamed == out["total"]
        log(f"streamed every class without symmetry: {streamed} ({out['seconds_streamed']:.2f} s)")
        if streamed != out["total"]:
            raise AssertionError(f"M({n},{d}): streaming yields {streamed}, count says {out['total']}")
    if n <= brute_force_max_n:
        t0 = time.perf_counter()
        brute = brute_force_maximum_classes(n)[d]
        lifted = sorted(iter_maximum_classes(n, d))
        out["seconds_brute_force"] = time.perf_counter() - t0
        out["checks"]["brute_force_equal"] = brute == lifted
        log(f"brute force over all subsets of the {n}-cube: {len(brute)} classes, equal: {brute == lifted}")
        if brute != lifted:
            raise AssertionError(f"M({n},{d}): lifting and brute force disagree")
    out["seconds"] = sum(v for k, v in out.items() if k.startswith("seconds_"))
    return out


def sample_maximum_classes(n: int, d: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` classes drawn uniformly from M(n, d): an orbit with probability proportional to its
    size, then a uniformly random group element applied to its representative."""
    from .symmetry import apply_point_map, random_group_element

    orb = maximum_orbits(n, d)
    if not orb:
        return []
    reps = list(orb)
    sizes = np.array(list(orb.values()), dtype=float)
    picks = rng.choice(len(reps), size=count, p=sizes / sizes.sum())
    return [apply_point_map(reps[i], random_group_element(n, rng)) for i in picks]


def as_class(n: int, cmask: int) -> ConceptClass:
    return ConceptClass.from_mask(n, cmask)


__all__ = [
    "MAX_ENUM_N", "MAX_BRUTE_FORCE_N", "iter_maximum_classes", "maximum_class_list", "count_maximum",
    "maximum_orbits", "brute_force_maximum_classes", "enumerate_job", "forbidden_masks", "tail_components",
    "lifts", "sample_maximum_classes", "as_class",
]
