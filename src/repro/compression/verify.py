"""Exhaustive verification of a compression scheme: every sample of every concept.

For each concept c of C and each subset S of the domain, the sample is (S, c & S). The scheme sees only
the sample, so the distinct pairs (S, c & S) are checked once each (at most 3^n of them). For each:

1. compress must return a key (no exception);
2. the key lies inside the sample: unlabeled Y within S; labeled (Y, l) with Y within S and l = labels on Y;
3. its size is at most the scheme's size;
4. reconstruct must return a hypothesis on the domain that agrees with the sample on S;
5. for a proper scheme, that hypothesis is a concept of C.

A scheme that fails any check on any sample is reported with the first failures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .classes import all_samples, popcount
from .schemes import Scheme, SchemeError


@dataclass
class Verification:
    construction: str
    kind: str
    size: int
    proper: bool
    n: int
    concepts: int
    samples: int = 0
    failures: int = 0
    largest_compression: int = 0
    first_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.samples > 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def verify_scheme(scheme: Scheme, max_reported: int = 5) -> Verification:
    C = scheme.cls
    rep = Verification(scheme.construction, scheme.kind, scheme.size, scheme.proper, C.n, len(C))
    members = C.concept_set
    full = C.full

    def fail(S: int, lab: int, why: str) -> None:
        rep.failures += 1
        if len(rep.first_failures) < max_reported:
            sample = "".join(str(lab >> i & 1) if S >> i & 1 else "*" for i in range(C.n))
            rep.first_failures.append(f"sample {sample}: {why}")

    for S, lab in all_samples(C):
        rep.samples += 1
        try:
            key = scheme.compress(S, lab)
        except SchemeError as exc:
            fail(S, lab, f"compress failed: {exc}")
            continue
        if scheme.kind == "labeled":
            if not (isinstance(key, tuple) and len(key) == 2):
                fail(S, lab, f"labeled scheme returned {key!r}, not a labeled sub-sample")
                continue
            Y, l = key
            if Y & ~S:
                fail(S, lab, "the compression uses points outside the sample")
                continue
            if l != lab & Y:
                fail(S, lab, "the compression's labels differ from the sample's")
                continue
        else:
            if not isinstance(key, int):
                fail(S, lab, f"unlabeled scheme returned {key!r}, not a set")
                continue
            Y = key
            if Y & ~S:
                fail(S, lab, "the compression uses points outside the sample")
                continue
        size = popcount(Y)
        rep.largest_compression = max(rep.largest_compression, size)
        if size > scheme.size:
            fail(S, lab, f"compressed to {size} points, more than the size {scheme.size}")
            continue
        try:
            h = scheme.reconstruct(key)
        except SchemeError as exc:
            fail(S, lab, f"reconstruct failed: {exc}")
            continue
        if not isinstance(h, int) or h < 0 or h & ~full:
            fail(S, lab, f"reconstructed {h!r}, not a hypothesis on {C.n} points")
            continue
        if (h ^ lab) & S:
            fail(S, lab, "the reconstructed hypothesis disagrees with the sample")
            continue
        if scheme.proper and h not in members:
            fail(S, lab, "a proper scheme reconstructed a hypothesis outside the class")
    return rep
