"""SAT encodings (python-sat) for compression schemes on small classes, and a brute-force cross-check.

1. ``find_representation_map`` (reference §5 D): variables y[c, A] "r(c) = A" for |A| <= k;
   exactly one A per concept; at most one concept per A (exactly one when the map must be onto all
   subsets of size <= k, as for a maximum class of VC dimension k); no clashes through auxiliaries
   z[c, D] "r(c) misses D": y[c, A] -> z[c, D] when A and D are disjoint, and not both z[c, D] and
   z[c', D] for D = c XOR c'. For a maximum class the candidates can be pruned to A inside I(c)
   (KW07 Cor. 5); for other classes a covering clause per sample (some consistent c has r(c) inside S)
   makes the map a scheme (KW07 Lemma 18 gives at most one; coverage is the other half).
2. ``scheme_exists`` (reference §5 E/F): does C have a labeled / unlabeled, proper / improper scheme of
   size k? Variables h[key, x] (the hypothesis reconstructed from ``key``, bit x), a[key, s] "key serves
   sample s". Each sample s = (S, l) needs one a[key, s] among the keys inside it, and
   a[key, s] -> h[key, x] = l(x) for x in S. Proper: per key exactly one selector q[key, c], c in C,
   with q[key, c] -> h[key, .] = c. The model gives a reconstruction table; compression = first key
   that works. A counting / Hall pre-check (samples on the same S need distinct keys) answers the
   pigeonhole-type "no" instances that are exponentially hard for CDCL solvers.
3. ``brute_force_scheme_exists``: exhaustive search over reconstruction tables (no SAT), to check 2.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pysat.card import CardEnc, EncType
from pysat.formula import IDPool
from pysat.solvers import Solver

from .classes import (
    ConceptClass,
    all_samples,
    incident_dimensions,
    is_maximum,
    phi,
    popcount,
    subsets_up_to,
    vc_dimension,
)
from .schemes import TableScheme, all_keys, candidate_keys

DEFAULT_SOLVER = "glucose4"
#: Solvers whose python-sat bindings cannot be interrupted: a time limit is ignored for them.
UNINTERRUPTIBLE = ("cadical", "lingeling", "kissat")
KINDS = ("labeled", "unlabeled")


@dataclass
class SatOutcome:
    status: str  # "yes" | "no" | "unknown"
    seconds: float = 0.0
    variables: int = 0
    clauses: int = 0
    reason: str = ""
    scheme: object | None = None
    extra: dict = field(default_factory=dict)


def _solve(solver: Solver, time_limit: float | None, assumptions=(), name: str = "") -> bool | None:
    """Solve with an optional wall-clock limit; None when interrupted."""
    if not time_limit or name.startswith(UNINTERRUPTIBLE):
        return solver.solve(assumptions=list(assumptions))
    timer = threading.Timer(time_limit, solver.interrupt)
    timer.start()
    try:
        return solver.solve_limited(assumptions=list(assumptions), expect_interrupt=True)
    finally:
        timer.cancel()
        solver.clear_interrupt()


def _exactly_one(lits: list[int], pool: IDPool) -> list[list[int]]:
    if not lits:
        return [[]]
    if len(lits) == 1:
        return [[lits[0]]]
    return CardEnc.equals(lits=lits, bound=1, vpool=pool, encoding=EncType.seqcounter).clauses


def _at_most_one(lits: list[int], pool: IDPool) -> list[list[int]]:
    if len(lits) <= 1:
        return []
    enc = EncType.pairwise if len(lits) <= 6 else EncType.seqcounter
    return CardEnc.atmost(lits=lits, bound=1, vpool=pool, encoding=enc).clauses


# --- representation maps -------------------------------------------------------------------------------
@dataclass
class RepresentationCNF:
    clauses: list[list[int]]
    y: dict[tuple[int, int], int]
    pool: IDPool
    k: int
    bijective: bool
    pruned: bool
    covering: bool


def representation_map_cnf(C: ConceptClass, k: int | None = None, bijective: bool | None = None,
                           prune: bool | None = None, cover: bool | None = None) -> RepresentationCNF:
    d = vc_dimension(C)
    k = d if k is None else k
    maximum = is_maximum(C) and d == k
    bijective = maximum if bijective is None else bijective
    prune = maximum if prune is None else prune
    cover = (not maximum) if cover is None else cover
    pool = IDPool()
    subsets = subsets_up_to(C.n, k)
    inc = incident_dimensions(C) if prune else {}
    cand = {c: [A for A in subsets if not prune or A & ~inc[c] == 0] for c in C.concepts}
    y = {(c, A): pool.id(("y", c, A)) for c in C.concepts for A in cand[c]}
    clauses: list[list[int]] = []
    for c in C.concepts:
        clauses += _exactly_one([y[c, A] for A in cand[c]], pool)
    users: dict[int, list[int]] = {A: [] for A in subsets}
    for (_c, A), v in y.items():
        users[A].append(v)
    for A in subsets:
        clauses += _exactly_one(users[A], pool) if bijective else _at_most_one(users[A], pool)
    concepts = list(C.concepts)
    for i, c in enumerate(concepts):
        for c2 in concepts[i + 1:]:
            D = c ^ c2
            free1 = [A for A in cand[c] if A & D == 0]
            free2 = [A for A in cand[c2] if A & D == 0]
            if not free1 or not free2:
                continue  # one of them always has a representative meeting D: never a clash
            z1, z2 = pool.id(("z", c, D)), pool.id(("z", c2, D))
            clauses += [[-y[c, A], z1] for A in free1]
            clauses += [[-y[c2, A], z2] for A in free2]
            clauses.append([-z1, -z2])
    if cover:
        for S, lab in all_samples(C):
            clauses.append([y[c, A] for c in C.concepts if (c ^ lab) & S == 0 for A in cand[c] if A & ~S == 0])
    return RepresentationCNF(clauses, y, pool, k, bijective, prune, cover)


def _decode_map(cnf: RepresentationCNF, model: list[int]) -> dict[int, int]:
    true = {v for v in model if v > 0}
    return {c: A for (c, A), v in cnf.y.items() if v in true}


def find_representation_map(C: ConceptClass, k: int | None = None, solver: str = DEFAULT_SOLVER,
                            time_limit: float | None = None, **opts) -> SatOutcome:
    """A non-clashing representation map of order k (default VCdim) as ``scheme`` (a dict), or "no"."""
    t0 = time.perf_counter()
    cnf = representation_map_cnf(C, k, **opts)
    with Solver(name=solver, bootstrap_with=cnf.clauses) as s:
        res = _solve(s, time_limit, name=solver)
        out = SatOutcome("unknown" if res is None else ("yes" if res else "no"),
                         variables=cnf.pool.top, clauses=len(cnf.clauses))
        if res:
            out.scheme = _decode_map(cnf, s.get_model())
    out.seconds = time.perf_counter() - t0
    return out


def iter_representation_maps(C: ConceptClass, k: int | None = None, limit: int | None = None,
                             solver: str = DEFAULT_SOLVER, **opts):
    """Every representation map (as dicts), by blocking each model found; at most ``limit`` of them."""
    cnf = representation_map_cnf(C, k, **opts)
    found = 0
    with Solver(name=solver, bootstrap_with=cnf.clauses) as s:
        while (limit is None or found < limit) and s.solve():
            rep = _decode_map(cnf, s.get_model())
            yield rep
            found += 1
            s.add_clause([-cnf.y[c, A] for c, A in rep.items()])


# --- existence of schemes of size k --------------------------------------------------------------------
def _max_matching(left: list[list[int]]) -> int:
    """Size of a maximum bipartite matching (augmenting paths); left[i] lists right vertices."""
    match: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for r in left[i]:
            if r in seen:
                continue
            seen.add(r)
            if r not in match or augment(match[r], seen):
                match[r] = i
                return True
        return False

    return sum(1 for i in range(len(left)) if augment(i, set()))


def counting_obstruction(C: ConceptClass, kind: str, k: int) -> str | None:
    """A domain S on which the samples cannot get distinct keys, or None.

    Two samples with the same domain S and different labels cannot share a key (the hypothesis would
    have to agree with both on S), so the samples on S need a system of distinct keys inside them:
    Phi_k(|S|) >= |C|_S| (unlabeled), a perfect matching into labeled sub-samples (labeled)."""
    by_domain: dict[int, list[int]] = {}
    for S, lab in all_samples(C):
        by_domain.setdefault(S, []).append(lab)
    for S in sorted(by_domain, key=lambda s: (popcount(s), s)):
        labs = by_domain[S]
        if kind == "unlabeled":
            if phi(k, popcount(S)) < len(labs):
                return (f"the {len(labs)} labelings on a {popcount(S)}-point domain exceed its "
                        f"{phi(k, popcount(S))} subsets of size <= {k}")
        else:
            keys: dict[tuple[int, int], int] = {}
            left = [[keys.setdefault(key, len(keys)) for key in candidate_keys(kind, C.n, k, S, lab)] for lab in labs]
            if _max_matching(left) < len(labs):
                return (f"the {len(labs)} labelings on a {popcount(S)}-point domain cannot get distinct "
                        f"labeled sub-samples of size <= {k}")
    return None


@dataclass
class SchemeCNF:
    clauses: list[list[int]]
    h: dict[tuple, int]
    keys: list
    pool: IDPool


def scheme_cnf(C: ConceptClass, kind: str, k: int, proper: bool,
               fixed: dict | None = None) -> SchemeCNF:
    """CNF of 'C has a scheme of this kind and size k'. ``fixed`` maps a key to (mask, bits): the
    hypothesis of that key must equal ``bits`` on ``mask`` (used to extend a scheme to a larger domain)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pool = IDPool()
    keys = all_keys(C, kind, k)
    h = {(key, x): pool.id(("h", key, x)) for key in keys for x in range(C.n)}
    clauses: list[list[int]] = []
    if proper:
        for key in keys:
            sel = [pool.id(("q", key, c)) for c in C.concepts]
            clauses += _exactly_one(sel, pool)
            for q, c in zip(sel, C.concepts):
                clauses += [[-q, h[key, x] if c >> x & 1 else -h[key, x]] for x in range(C.n)]
    for S, lab in all_samples(C):
        if S == 0:
            continue  # the empty sample is served by the empty key whatever it reconstructs
        agree = []
        for key in candidate_keys(kind, C.n, k, S, lab):
            a = pool.id(("a", key, S, lab))
            agree.append(a)
            clauses += [[-a, h[key, x] if lab >> x & 1 else -h[key, x]] for x in range(C.n) if S >> x & 1]
        clauses.append(agree)
    for key, (mask, bits) in (fixed or {}).items():
        if key in keys:
            clauses += [[h[key, x] if bits >> x & 1 else -h[key, x]] for x in range(C.n) if mask >> x & 1]
    return SchemeCNF(clauses, h, keys, pool)


def scheme_exists(C: ConceptClass, kind: str, k: int, proper: bool, solver: str = DEFAULT_SOLVER,
                  time_limit: float | None = None, precheck: bool = True,
                  fixed: dict | None = None) -> SatOutcome:
    """Decide whether C has a ``kind`` (labeled/unlabeled), proper or improper, scheme of size <= k.

    "yes" comes with ``scheme`` (a TableScheme, to be verified); "no" with the reason (a counting
    obstruction or UNSAT); "unknown" when the time limit ran out."""
    t0 = time.perf_counter()
    if k < 0:
        return SatOutcome("no", reason="negative size")
    if precheck and not fixed:
        why = counting_obstruction(C, kind, k)
        if why:
            return SatOutcome("no", seconds=time.perf_counter() - t0, reason=f"counting: {why}")
    cnf = scheme_cnf(C, kind, k, proper, fixed)
    with Solver(name=solver, bootstrap_with=cnf.clauses) as s:
        res = _solve(s, time_limit, name=solver)
        out = SatOutcome("unknown" if res is None else ("yes" if res else "no"),
                         variables=cnf.pool.top, clauses=len(cnf.clauses),
                         reason="time limit" if res is None else ("SAT" if res else "UNSAT"))
        if res:
            true = {v for v in s.get_model() if v > 0}
            table = {key: sum(1 << x for x in range(C.n) if cnf.h[key, x] in true) for key in cnf.keys}
            out.scheme = TableScheme(C, kind, k, proper, table, construction=f"sat-{kind}")
    out.seconds = time.perf_counter() - t0
    return out


def minimal_size(C: ConceptClass, kind: str, proper: bool, max_size: int | None = None,
                 **kw) -> tuple[int | None, list[tuple[int, SatOutcome]]]:
    """Smallest k with a scheme (None if none up to max_size), and every outcome tried (k = 0, 1, ...)."""
    max_size = C.n if max_size is None else max_size
    tried = []
    for k in range(0, max_size + 1):
        out = scheme_exists(C, kind, k, proper, **kw)
        tried.append((k, out))
        if out.status == "yes":
            return k, tried
    return None, tried


# --- brute force ----------------------------------------------------------------------------------------
def _serve_options(C: ConceptClass, kind: str, k: int, proper: bool):
    """For each key, the distinct non-dominated 'sets of samples served' over all its hypotheses."""
    samples = all_samples(C)
    index = {s: i for i, s in enumerate(samples)}
    hyps = list(C.concepts) if proper else list(range(1 << C.n))
    keys = all_keys(C, kind, k)
    options = []
    for key in keys:
        Y = key[0] if isinstance(key, tuple) else key
        mine = [(S, lab) for S, lab in samples if Y & ~S == 0 and (kind == "unlabeled" or lab & Y == key[1])]
        served: dict[int, int] = {}
        for h in hyps:
            m = 0
            for S, lab in mine:
                if (h ^ lab) & S == 0:
                    m |= 1 << index[(S, lab)]
            served.setdefault(m, h)
        # A hypothesis whose served set is inside another's is never needed: keep the maximal ones.
        masks = sorted(served, key=lambda m: -popcount(m))
        keep = []
        for m in masks:
            if not any(m & ~o == 0 for o in keep):
                keep.append(m)
        options.append((key, [(m, served[m]) for m in keep]))
    return samples, options


def brute_force_scheme_exists(C: ConceptClass, kind: str, k: int, proper: bool) -> TableScheme | None:
    """Exhaustive search over reconstruction tables (one hypothesis per key) for one serving every
    sample. Hypotheses that serve a subset of what another hypothesis of the same key serves are
    dropped, and a branch stops when even the union of all remaining options cannot serve every sample:
    both only skip tables that cannot succeed where a kept one would. Returns a scheme or None."""
    samples, options = _serve_options(C, kind, k, proper)
    target = (1 << len(samples)) - 1
    options.sort(key=lambda kv: len(kv[1]))
    suffix = [0] * (len(options) + 1)
    for i in range(len(options) - 1, -1, -1):
        suffix[i] = suffix[i + 1] | (max((m for m, _ in options[i][1]), default=0) if len(options[i][1]) == 1
                                     else _union(m for m, _ in options[i][1]))
    chosen: list[int] = [0] * len(options)

    def search(i: int, covered: int) -> bool:
        if covered == target:
            for j in range(i, len(options)):  # the rest is free: any kept hypothesis will do
                chosen[j] = options[j][1][0][1]
            return True
        if i == len(options) or (covered | suffix[i]) != target:
            return False
        for m, h in options[i][1]:
            chosen[i] = h
            if search(i + 1, covered | m):
                return True
        return False

    if not search(0, 0):
        return None
    table = {key: chosen[i] for i, (key, _) in enumerate(options)}
    return TableScheme(C, kind, k, proper, table, construction=f"brute-force-{kind}")


def _union(masks) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def all_nonempty_classes(n: int):
    """Every non-empty class on n points (2^(2^n) - 1 of them)."""
    for cmask in range(1, 1 << (1 << n)):
        yield ConceptClass.from_mask(n, cmask)


__all__ = [
    "find_representation_map", "iter_representation_maps", "scheme_exists", "minimal_size",
    "brute_force_scheme_exists", "counting_obstruction", "all_nonempty_classes", "SatOutcome",
]
