"""Sample compression schemes on a finite class, and the constructions that produce them.

A scheme of size k for C is a pair (compress, reconstruct):

- unlabeled: compress(S, labels) is a set Y within S with |Y| <= k, reconstruct(Y) a hypothesis;
- labeled: compress(S, labels) is a sub-sample (Y, labels & Y) with |Y| <= k, reconstruct maps it to a
  hypothesis;

and reconstruct(compress(s)) must agree with s on S for every sample s of every concept of C. A scheme is
proper when every hypothesis it reconstructs lies in C. Sizes are "at most k" (Floyd-Warmuth's "exactly
d" differs only on samples with fewer than d points, which this module compresses to themselves).

Three kinds of objects:

- ``RepresentationScheme``: an unlabeled scheme from a representation map r: C -> subsets (KW07 §3);
  compress(s) = r(c) for the unique c consistent with s whose r(c) lies in S (KW07 Lemma 1).
- ``FloydWarmuthScheme``: the labeled scheme of a maximum class (FW95 as restated in KW07 §5):
  representatives c_(A,l) = (the one concept of the d-fold reduction C^A) extended by l on A.
- ``TableScheme``: any reconstruction table (found by SAT, or given); compress(s) = the first candidate
  key (by size, then value) whose hypothesis agrees with s.

Every object turns into a JSON record and back; ``verify.verify_scheme`` checks it over every sample.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .classes import (
    ConceptClass,
    concept_to_string,
    incident_dimensions,
    is_maximum,
    phi,
    popcount,
    string_to_concept,
    submasks,
    subsets_up_to,
    vc_dimension,
)


class SchemeError(Exception):
    """A scheme could not compress or reconstruct a sample (a verifier failure, not a user error)."""


class ConstructionError(Exception):
    """A heuristic construction did not produce a scheme (e.g. corner peeling found no corner)."""


Key = Any  # unlabeled: int Y; labeled: (Y, labels)


@dataclass
class Scheme(abc.ABC):
    """A compression scheme: each construction implements compress, reconstruct and to_record."""

    cls: ConceptClass
    kind: str  # "labeled" | "unlabeled"
    size: int
    proper: bool
    construction: str
    meta: dict = field(default_factory=dict)

    @abc.abstractmethod
    def compress(self, S: int, lab: int) -> Key: ...

    @abc.abstractmethod
    def reconstruct(self, key: Key) -> int: ...

    # --- records ---------------------------------------------------------------------------------------
    def _base_record(self) -> dict:
        return {
            "n": self.cls.n,
            "concepts": self.cls.to_strings(),
            "kind": self.kind,
            "size": self.size,
            "proper": self.proper,
            "construction": self.construction,
            "meta": self.meta,
        }

    @abc.abstractmethod
    def to_record(self) -> dict: ...


def _class_of(rec: dict) -> ConceptClass:
    return ConceptClass(rec["n"], tuple(string_to_concept(s) for s in rec["concepts"]))


# --- unlabeled schemes from representation maps -------------------------------------------------------
class RepresentationScheme(Scheme):
    """Unlabeled scheme of a non-clashing representation map r (KW07 Lemma 1 / Lemma 18)."""

    def __init__(self, cls: ConceptClass, rep: dict[int, int], size: int | None = None,
                 construction: str = "representation-map", meta: dict | None = None):
        size = max((popcount(A) for A in rep.values()), default=0) if size is None else size
        super().__init__(cls, "unlabeled", size, True, construction, meta or {})
        self.rep = dict(rep)
        self._inverse: dict[int, int] = {}
        for c, A in self.rep.items():
            self._inverse.setdefault(A, c)
        # Per sample domain S: labels on S -> representatives inside S of the concepts with those labels.
        self._by_domain: dict[int, dict[int, list[int]]] = {}

    def _domain_index(self, S: int) -> dict[int, list[int]]:
        index = self._by_domain.get(S)
        if index is None:
            index = {}
            for c, A in self.rep.items():
                if A & ~S == 0:
                    index.setdefault(c & S, []).append(A)
            self._by_domain[S] = index
        return index

    def compress(self, S: int, lab: int) -> int:
        hits = self._domain_index(S).get(lab, [])
        if len(hits) != 1:
            raise SchemeError(f"{len(hits)} concepts consistent with the sample have their representative "
                              f"inside it (KW07 Lemma 1 needs exactly one)")
        return hits[0]

    def reconstruct(self, key: int) -> int:
        if key not in self._inverse:
            raise SchemeError(f"no concept is represented by the set {key:b}")
        return self._inverse[key]

    def to_record(self) -> dict:
        rec = self._base_record()
        rec["representation"] = [[concept_to_string(c, self.cls.n), A] for c, A in sorted(self.rep.items())]
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "RepresentationScheme":
        C = _class_of(rec)
        rep = {string_to_concept(c): int(A) for c, A in rec["representation"]}
        return cls(C, rep, rec["size"], rec["construction"], rec.get("meta"))


def is_representation_map(C: ConceptClass, rep: dict[int, int], k: int | None = None,
                          bijective: bool | None = None) -> tuple[bool, str]:
    """Check KW07's conditions: every concept gets a set of size <= k, injectively, onto all subsets of
    size <= k when ``bijective`` (default: when C is maximum of VC dimension k), and no two concepts
    clash (c, c' clash iff they agree on r(c) + r(c')). Returns (ok, reason)."""
    d = vc_dimension(C)
    k = d if k is None else k
    if bijective is None:
        bijective = len(C) == phi(k, C.n) and is_maximum(C) and d == k
    if set(rep) != set(C.concepts):
        return False, "the map is not defined on exactly the concepts of the class"
    sizes = [popcount(A) for A in rep.values()]
    if any(s > k for s in sizes):
        return False, f"a representative has more than {k} points"
    if any(A >> C.n for A in rep.values()):
        return False, "a representative is not a subset of the domain"
    if len(set(rep.values())) != len(rep):
        return False, "two concepts share a representative (not injective)"
    if bijective and set(rep.values()) != set(subsets_up_to(C.n, k)):
        return False, f"the image is not the set of all subsets of size <= {k}"
    cs = np.asarray(list(rep), dtype=np.int64)
    rs = np.asarray(list(rep.values()), dtype=np.int64)
    clash = (((cs[:, None] ^ cs[None, :]) & (rs[:, None] | rs[None, :])) == 0)
    np.fill_diagonal(clash, False)
    if clash.any():
        i, j = map(int, np.argwhere(clash)[0])
        return False, (f"concepts {concept_to_string(int(cs[i]), C.n)} and {concept_to_string(int(cs[j]), C.n)} "
                       "clash")
    return True, "ok"


def min_peeling(C: ConceptClass, rng: np.random.Generator | None = None,
                tie_break: Callable[[list[int]], int] | None = None) -> dict[int, int]:
    """KW07 Fig. 6: repeatedly remove a vertex of least degree in the one-inclusion graph of what is
    left and represent it by its incident dimensions there. Ties: smallest concept, random with rng, or
    ``tie_break(ties)``. The dict's order is the peeling order. The result is a candidate only: check it
    with ``is_representation_map`` (KW's Conj. 2 is open, and some tie-breaks fail on M(6, 2))."""
    current = set(C.concepts)
    rep: dict[int, int] = {}
    while current:
        inc = {c: sum(1 << i for i in range(C.n) if (c ^ (1 << i)) in current) for c in current}
        least = min(popcount(v) for v in inc.values())
        ties = sorted(c for c, v in inc.items() if popcount(v) == least)
        if tie_break is not None:
            pick = tie_break(ties)
            if pick not in ties:
                raise ValueError("tie_break must return one of the tied concepts")
        else:
            pick = ties[0] if rng is None else ties[int(rng.integers(len(ties)))]
        rep[pick] = inc[pick]
        current.remove(pick)
    return rep


def corners(current: set[int], n: int) -> list[int]:
    """Vertices v whose incident dimensions I(v) span a cube lying in ``current``: v then lies in a
    unique maximal cube of the class and all its neighbours are in it (a corner, RR12 Def. 13)."""
    out = []
    for v in current:
        inc = sum(1 << i for i in range(n) if (v ^ (1 << i)) in current)
        if all((v ^ B) in current for B in submasks(inc)):
            out.append(v)
    return sorted(out)


def corner_peeling(C: ConceptClass, rng: np.random.Generator | None = None) -> dict[int, int]:
    """Greedy corner peeling (RR12): remove a corner of least degree (ties: smallest, or random) and
    represent it by the colours of its cube. Raises ConstructionError when no corner is left (CCMW
    built a maximum class with no corner at all, so this can fail on larger classes)."""
    current = set(C.concepts)
    rep: dict[int, int] = {}
    while current:
        cands = corners(current, C.n)
        if not cands:
            raise ConstructionError(f"no corner left after peeling {len(rep)} of {len(C)} concepts")
        degs = {v: sum(1 for i in range(C.n) if (v ^ (1 << i)) in current) for v in cands}
        least = min(degs.values())
        ties = [v for v in cands if degs[v] == least]
        pick = ties[0] if rng is None else ties[int(rng.integers(len(ties)))]
        rep[pick] = sum(1 << i for i in range(C.n) if (pick ^ (1 << i)) in current)
        current.remove(pick)
    return rep


def restrict_representation_map(C: ConceptClass, rep: dict[int, int], points: list[int]) -> dict[int, int]:
    """KW07 Cor. 2: r_A(c) := r(c') for the unique c' in C with c'|_A = c and r(c') inside A, as a map of
    C|_A on the re-indexed subdomain ``points``. Raises SchemeError when c' is not unique."""
    from .classes import compress_bits

    A = sum(1 << p for p in points)
    out: dict[int, int] = {}
    for c in sorted({x & A for x in C.concepts}):
        hits = [x for x in C.concepts if x & A == c and rep[x] & ~A == 0]
        if len(hits) != 1:
            raise SchemeError(f"{len(hits)} concepts restrict to {c:b} with representative inside the subdomain")
        out[compress_bits(c, points)] = compress_bits(rep[hits[0]], points)
    return out


# --- Floyd-Warmuth labeled scheme for maximum classes --------------------------------------------------
class FloydWarmuthScheme(Scheme):
    """Labeled scheme of size d for a maximum class (FW95; KW07 §5, Fig. 12).

    The stored table maps labeled sub-samples (A, l) to hypotheses: for |A| = d the representative
    c_(A,l); for |A| < d (only used for samples with fewer than d points) the first concept of C
    consistent with (A, l). compress(s): for |S| < d the sample itself, otherwise (A, s|_A) for the first
    d-set A in S (lexicographic) whose representative is consistent with s.
    """

    def __init__(self, cls: ConceptClass, d: int, table: dict[tuple[int, int], int],
                 construction: str = "floyd-warmuth", meta: dict | None = None):
        super().__init__(cls, "labeled", d, True, construction, meta or {})
        self.d = d
        self.table = dict(table)

    def compress(self, S: int, lab: int) -> tuple[int, int]:
        if popcount(S) < self.d:
            return (S, lab)
        pts = [i for i in range(self.cls.n) if S >> i & 1]
        for combo in itertools.combinations(pts, self.d):
            A = sum(1 << i for i in combo)
            key = (A, lab & A)
            h = self.table.get(key)
            if h is not None and (h ^ lab) & S == 0:
                return key
        raise SchemeError("no d-subset of the sample has a consistent representative")

    def reconstruct(self, key: tuple[int, int]) -> int:
        if tuple(key) not in self.table:
            raise SchemeError(f"no representative for the labeled set {key}")
        return self.table[tuple(key)]

    def to_record(self) -> dict:
        rec = self._base_record()
        rec["table"] = [[A, l, concept_to_string(h, self.cls.n)] for (A, l), h in sorted(self.table.items())]
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "FloydWarmuthScheme":
        table = {(int(A), int(l)): string_to_concept(h) for A, l, h in rec["table"]}
        return cls(_class_of(rec), rec["size"], table, rec["construction"], rec.get("meta"))


def floyd_warmuth(C: ConceptClass) -> FloydWarmuthScheme:
    """Build the Floyd-Warmuth table of a maximum class; ConstructionError if some d-fold reduction C^A
    is not exactly one concept (the class is not maximum)."""
    d = vc_dimension(C)
    members = C.concept_set
    table: dict[tuple[int, int], int] = {}
    for combo in itertools.combinations(range(C.n), d):
        A = sum(1 << i for i in combo)
        subs = list(submasks(A))
        bases = [b for b in C.concepts if b & A == 0 and all((b | B) in members for B in subs)]
        if len(bases) != 1:
            raise ConstructionError(f"the d-fold reduction C^A for A = {A:b} has {len(bases)} concepts, not 1")
        for l in subs:
            table[(A, l)] = bases[0] | l
    for Y in subsets_up_to(C.n, d - 1):
        for l in sorted({c & Y for c in C.concepts}):
            table[(Y, l)] = next(c for c in C.concepts if c & Y == l)
    return FloydWarmuthScheme(C, d, table)


# --- reconstruction tables (SAT schemes, user schemes) -------------------------------------------------
def candidate_keys(kind: str, n: int, k: int, S: int, lab: int) -> list[Key]:
    """The keys a sample (S, lab) may be compressed to, by size then value."""
    subs = subsets_up_to(n, k, within=S)
    if kind == "unlabeled":
        return subs
    return [(Y, lab & Y) for Y in subs]


def all_keys(C: ConceptClass, kind: str, k: int) -> list[Key]:
    """Every key of a scheme of size k: sets of size <= k (unlabeled), or realizable labeled sets."""
    subs = subsets_up_to(C.n, k)
    if kind == "unlabeled":
        return subs
    return [(Y, l) for Y in subs for l in sorted({c & Y for c in C.concepts})]


class TableScheme(Scheme):
    """A scheme given by its reconstruction table; compress picks the first key that works."""

    def __init__(self, cls: ConceptClass, kind: str, size: int, proper: bool, table: dict,
                 construction: str = "table", meta: dict | None = None):
        if kind not in ("labeled", "unlabeled"):
            raise ValueError(f"kind must be labeled or unlabeled, got {kind!r}")
        super().__init__(cls, kind, size, proper, construction, meta or {})
        self.table = {(tuple(k) if isinstance(k, (list, tuple)) else k): v for k, v in table.items()}

    def compress(self, S: int, lab: int) -> Key:
        for key in candidate_keys(self.kind, self.cls.n, self.size, S, lab):
            h = self.table.get(key)
            if h is not None and (h ^ lab) & S == 0:
                return key
        raise SchemeError("no key inside the sample reconstructs a consistent hypothesis")

    def reconstruct(self, key: Key) -> int:
        key = tuple(key) if isinstance(key, (list, tuple)) else key
        if key not in self.table:
            raise SchemeError(f"the table has no entry for {key}")
        return self.table[key]

    def to_record(self) -> dict:
        rec = self._base_record()
        rows = []
        for key, h in sorted(self.table.items(), key=lambda kv: (str(type(kv[0])), kv[0])):
            rows.append([list(key) if isinstance(key, tuple) else key, concept_to_string(h, self.cls.n)])
        rec["table"] = rows
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "TableScheme":
        table = {(tuple(k) if isinstance(k, list) else int(k)): string_to_concept(h) for k, h in rec["table"]}
        return cls(_class_of(rec), rec["kind"], rec["size"], rec["proper"], table, rec["construction"],
                   rec.get("meta"))


def scheme_from_record(rec: dict) -> Scheme:
    if "representation" in rec:
        return RepresentationScheme.from_record(rec)
    if rec["construction"] == "floyd-warmuth":
        return FloydWarmuthScheme.from_record(rec)
    return TableScheme.from_record(rec)


def format_key(key: Key, n: int) -> str:
    from .classes import subset_to_string

    if isinstance(key, tuple):
        Y, l = key
        return "{" + ", ".join(f"x{i + 1}={l >> i & 1}" for i in range(n) if Y >> i & 1) + "}"
    return subset_to_string(key, n)


def describe_scheme(scheme: Scheme) -> list[str]:
    """Human-readable lines: the reconstruction table and the compression of every sample."""
    n = scheme.cls.n
    lines = [f"# {scheme.kind} {'proper' if scheme.proper else 'improper'} scheme of size {scheme.size} "
             f"({scheme.construction}) for {len(scheme.cls)} concepts on {n} points"]
    table = getattr(scheme, "table", None)
    if table is None and isinstance(scheme, RepresentationScheme):
        table = {A: c for c, A in scheme.rep.items()}
    lines.append("# reconstruction: compressed set -> hypothesis (x1..xn)")
    for key, h in sorted(table.items(), key=lambda kv: (popcount(kv[0][0] if isinstance(kv[0], tuple) else kv[0]),
                                                        kv[0])):
        lines.append(f"{format_key(key, n)} -> {concept_to_string(h, n)}")
    lines.append("# compression: sample -> compressed set")
    from .classes import all_samples

    for S, lab in all_samples(scheme.cls):
        if S == 0:
            continue
        sample = " ".join(f"x{i + 1}={lab >> i & 1}" for i in range(n) if S >> i & 1)
        lines.append(f"{sample} -> {format_key(scheme.compress(S, lab), n)}")
    return lines


def incident_sets_ok(C: ConceptClass, rep: dict[int, int]) -> bool:
    """KW07 Cor. 5 for maximum classes: r(c) lies inside the incident dimensions I(c)."""
    inc = incident_dimensions(C)
    return all(rep[c] & ~inc[c] == 0 for c in C.concepts)
