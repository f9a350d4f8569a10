"""Concept classes on a finite domain, stored as bit vectors.

A concept on n points is an int c with bit i equal to its label on x_{i+1} (the class files write x_1
first, left to right). A class is a sorted tuple of distinct concepts. A subset A of the domain is an int
mask over n bits. ``class_mask`` packs a whole class into one int with bit c set for each concept c (for
n <= 6 that is one 64-bit word, which the enumeration relies on).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from math import comb
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import CompressionInputError


def popcount(x: int) -> int:
    return bin(x).count("1")


def phi(d: int, n: int) -> int:
    """Sauer-Shelah bound Phi_d(n) = sum_{i <= d} C(n, i); Phi_{-1}(n) = 0 (the empty class)."""
    if d < 0:
        return 0
    return sum(comb(n, i) for i in range(min(d, n) + 1))


def bits_of(mask: int) -> list[int]:
    """Indices of the set bits of ``mask``, increasing."""
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def submasks(mask: int) -> Iterator[int]:
    """Every subset of ``mask`` (including 0 and mask), in decreasing order."""
    s = mask
    while True:
        yield s
        if s == 0:
            return
        s = (s - 1) & mask


def subsets_up_to(n: int, k: int, within: int | None = None) -> list[int]:
    """Masks of the subsets of size <= k of ``within`` (default: all n points), by size then value."""
    within = (1 << n) - 1 if within is None else within
    out = [s for s in submasks(within) if popcount(s) <= k]
    return sorted(out, key=lambda s: (popcount(s), s))


def compress_bits(x: int, points: list[int]) -> int:
    """Re-index the bits of ``x`` at ``points`` to positions 0..len(points)-1 (a software PEXT)."""
    out = 0
    for j, p in enumerate(points):
        out |= ((x >> p) & 1) << j
    return out


def expand_bits(x: int, points: list[int]) -> int:
    """Inverse of ``compress_bits``: bit j of x goes to position points[j]."""
    out = 0
    for j, p in enumerate(points):
        out |= ((x >> j) & 1) << p
    return out


def concept_to_string(c: int, n: int) -> str:
    return "".join("1" if c >> i & 1 else "0" for i in range(n))


def string_to_concept(s: str) -> int:
    return sum(1 << i for i, ch in enumerate(s) if ch == "1")


def subset_to_string(A: int, n: int) -> str:
    """{x1, x3} style (1-based, as in the literature)."""
    return "{" + ", ".join(f"x{i + 1}" for i in bits_of(A) if i < n) + "}"


@dataclass(frozen=True)
class ConceptClass:
    """A finite concept class C on the domain {x_1..x_n}: a set of n-bit concepts."""

    n: int
    concepts: tuple[int, ...]

    def __post_init__(self):
        if self.n < 0:
            raise CompressionInputError(f"domain size must be >= 0, got {self.n}")
        cs = tuple(sorted(set(int(c) for c in self.concepts)))
        if cs and (cs[0] < 0 or cs[-1] >= 1 << self.n):
            raise CompressionInputError(f"a concept does not fit on {self.n} points")
        object.__setattr__(self, "concepts", cs)

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_strings(cls, rows: Iterable[str]) -> "ConceptClass":
        rows = list(rows)
        n = len(rows[0]) if rows else 0
        return cls(n, tuple(string_to_concept(r) for r in rows))

    @classmethod
    def from_mask(cls, n: int, cmask: int) -> "ConceptClass":
        return cls(n, tuple(bits_of(int(cmask))))

    @classmethod
    def cube(cls, n: int) -> "ConceptClass":
        return cls(n, tuple(range(1 << n)))

    # --- views ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self):
        return iter(self.concepts)

    def __contains__(self, c: int) -> bool:
        return c in self.concept_set

    @cached_property
    def concept_set(self) -> frozenset[int]:
        return frozenset(self.concepts)

    @cached_property
    def array(self) -> np.ndarray:
        return np.asarray(self.concepts, dtype=np.int64)

    @cached_property
    def mask(self) -> int:
        """The class as one int over the 2^n points of the cube (bit c set for each concept c)."""
        m = 0
        for c in self.concepts:
            m |= 1 << c
        return m

    @property
    def full(self) -> int:
        return (1 << self.n) - 1

    def to_strings(self) -> list[str]:
        return [concept_to_string(c, self.n) for c in self.concepts]

    def __repr__(self) -> str:
        body = " ".join(self.to_strings()) if len(self) <= 16 else f"{len(self)} concepts"
        return f"ConceptClass(n={self.n}: {body})"


# --- reading class files ----------------------------------------------------------------------------
def parse_class_text(text: str, source: str = "<class>") -> ConceptClass:
    """One concept per line as a 0/1 string (x_1 first). Blank lines and '#' comments are ignored.

    Raises CompressionInputError naming the offending line for ragged lines, characters other than 0/1,
    duplicates, or an empty class.
    """
    rows: list[str] = []
    first_line: dict[str, int] = {}
    width = None
    width_line = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        bad = sorted(set(ch for ch in line if ch not in "01"))
        if bad:
            shown = ", ".join(repr(ch) for ch in bad)
            raise CompressionInputError(
                f"{source}, line {lineno}: {line!r} contains {shown}; a concept is a string of 0s and 1s"
            )
        if width is None:
            width, width_line = len(line), lineno
        elif len(line) != width:
            raise CompressionInputError(
                f"{source}, line {lineno}: {line!r} has {len(line)} labels, but line {width_line} has "
                f"{width}; every concept must label the same points"
            )
        if line in first_line:
            raise CompressionInputError(
                f"{source}, line {lineno}: concept {line} repeats line {first_line[line]}"
            )
        first_line[line] = lineno
        rows.append(line)
    if not rows:
        raise CompressionInputError(f"{source}: the class is empty (no concept lines)")
    return ConceptClass.from_strings(rows)


def read_class_file(path: str | Path) -> ConceptClass:
    path = Path(path)
    if not path.exists():
        raise CompressionInputError(f"class file not found: {path}")
    return parse_class_text(path.read_text(), source=str(path))


# --- shattering, VC dimension, Sauer-Shelah ---------------------------------------------------------
def restriction_labels(C: ConceptClass, A: int) -> set[int]:
    """C|_A as the set of label masks c & A."""
    return {c & A for c in C.concepts}


def is_shattered(C: ConceptClass, A: int) -> bool:
    return len(restriction_labels(C, A)) == 1 << popcount(A)


def shattered_sets(C: ConceptClass) -> list[int]:
    """X(C): every A shattered by C (a down-closed family; empty list for the empty class)."""
    if not C.concepts:
        return []
    arr = C.array
    limit = len(C).bit_length() - 1  # a shattered A needs 2^|A| <= |C|
    out = []
    for A in range(1 << C.n):
        k = popcount(A)
        if k <= limit and np.unique(arr & A).size == 1 << k:
            out.append(A)
    return out


def vc_dimension(C: ConceptClass) -> int:
    """Size of the largest shattered set; -1 for the empty class, 0 for a single concept."""
    sets = shattered_sets(C)
    return max((popcount(A) for A in sets), default=-1)


def is_strongly_shattered(C: ConceptClass, A: int) -> bool:
    """C contains a whole A-subcube: some b (zero on A) with b | B in C for every B within A."""
    members = C.concept_set
    subs = list(submasks(A))
    return any(all((b | B) in members for B in subs) for b in C.concepts if b & A == 0)


def strongly_shattered_sets(C: ConceptClass) -> list[int]:
    return [A for A in shattered_sets(C) if is_strongly_shattered(C, A)]


def sauer_shelah_bound(C: ConceptClass) -> int:
    return phi(vc_dimension(C), C.n)


def is_maximum(C: ConceptClass) -> bool:
    """|C| = Phi_d(n) with d = VCdim(C) (for a finite domain this is Welzl's definition)."""
    return len(C) > 0 and len(C) == phi(vc_dimension(C), C.n)


def is_ample(C: ConceptClass) -> bool:
    """|C| = |X(C)| (ample = extremal = lopsided = shattering-extremal)."""
    return len(C) > 0 and len(C) == len(shattered_sets(C))


def vc_raising_concepts(C: ConceptClass) -> set[int]:
    """The concepts outside C whose addition raises the VC dimension.

    c raises VCdim(C) = d iff some (d+1)-set A has |C|_A| = 2^{d+1} - 1 and c|_A is its missing labeling.
    """
    d = vc_dimension(C)
    if d >= C.n:
        return set()
    raising: set[int] = set()
    outside = [c for c in range(1 << C.n) if c not in C.concept_set]
    for pts in itertools.combinations(range(C.n), d + 1):
        A = sum(1 << p for p in pts)
        labels = restriction_labels(C, A)
        if len(labels) == (1 << (d + 1)) - 1:
            missing = next(l for l in submasks(A) if l not in labels)
            raising.update(c for c in outside if c & A == missing)
    return raising


def is_maximal(C: ConceptClass) -> bool:
    """Adding any concept of the cube raises the VC dimension."""
    outside = (1 << C.n) - len(C)
    return len(C) > 0 and len(vc_raising_concepts(C)) == outside


# --- operations -------------------------------------------------------------------------------------
def restriction(C: ConceptClass, points: Iterable[int]) -> ConceptClass:
    """C|_A on the subdomain A (listed as 0-based point indices; the order gives the new indices)."""
    pts = list(points)
    return ConceptClass(len(pts), tuple({compress_bits(c, pts) for c in C.concepts}))


def deletion(C: ConceptClass, x: int) -> ConceptClass:
    """C - x: delete the column x (the restriction to X minus x)."""
    return restriction(C, [i for i in range(C.n) if i != x])


def reduction(C: ConceptClass, x: int) -> ConceptClass:
    """C^x on X minus x: the concepts of C - x both of whose extensions at x lie in C."""
    keep = [i for i in range(C.n) if i != x]
    e = 1 << x
    return ConceptClass(C.n - 1, tuple(compress_bits(c, keep) for c in C.concepts if c & e == 0 and (c | e) in C))


def multi_reduction(C: ConceptClass, A: int) -> ConceptClass:
    """C^A on X minus A: concepts whose whole A-subcube lies in C (the |A|-fold reduction)."""
    keep = [i for i in range(C.n) if not A >> i & 1]
    return ConceptClass(C.n - popcount(A), tuple(
        compress_bits(b, keep) for b in C.concepts if b & A == 0 and all((b | B) in C for B in submasks(A))
    ))


def tail(C: ConceptClass, x: int) -> tuple[int, ...]:
    """tail_x(C): the concepts of C whose neighbour across x is not in C (C = 0C^x + 1C^x + tail)."""
    e = 1 << x
    return tuple(c for c in C.concepts if (c ^ e) not in C)


def complement(C: ConceptClass) -> ConceptClass:
    return ConceptClass(C.n, tuple(c for c in range(1 << C.n) if c not in C.concept_set))


def incident_dimensions(C: ConceptClass) -> dict[int, int]:
    """I(c): the mask of points x with c XOR e_x in C (the colours of the edges at c)."""
    members = C.concept_set
    return {c: sum(1 << i for i in range(C.n) if (c ^ (1 << i)) in members) for c in C.concepts}


def one_inclusion_graph(C: ConceptClass) -> list[tuple[int, int, int]]:
    """Edges (c, c', x) with c' = c + e_x, c < c': concepts at Hamming distance 1, coloured by the point."""
    members = C.concept_set
    return [(c, c | (1 << i), i) for c in C.concepts for i in range(C.n)
            if not c >> i & 1 and (c | (1 << i)) in members]


def all_samples(C: ConceptClass) -> list[tuple[int, int]]:
    """Every distinct sample (S, labels) of every concept: S a subset of X, labels = c & S for c in C."""
    out = []
    for S in range(1 << C.n):
        out.extend((S, lab) for lab in sorted({c & S for c in C.concepts}))
    return out
