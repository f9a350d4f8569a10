"""The finite skeleton of the Ben-David-Litman compactness argument (reference §3).

The infinite argument: a scheme of size k is a reconstruction map rho (sets, or labeled sets, of size
<= k -> hypotheses); the maps that are correct on every sample inside a finite A form a closed set K_A;
the K_A have the finite intersection property because a scheme on a finite A restricts to one on every
B inside A; Tychonoff (choice) then gives a rho in every K_A. On a finite chain
X_1 < X_2 < ... < X_n this becomes checkable:

1. *Restriction.* A scheme for C restricts to a scheme for C|_A on every subdomain A: keep the
   compression, restrict the reconstructed hypotheses to A (``RestrictedScheme``). Verified exhaustively
   on every one of the 2^n subdomains. For a representation map the restriction is KW07 Cor. 2, and
   it must again be a representation map of C|_A.
2. *Inverse system.* For a maximum class, S_j = all representation maps of C|_{X_j} (SAT with
   blocking clauses) and Cor. 2 gives bonding maps S_{j+1} -> S_j. We count |S_j|, how many elements of
   S_j extend one level up (the image of S_{j+1}), and how many lie on a thread through the whole chain
   (the image of S_n). All images are non-empty and compatible (König's lemma in finite form), while the
   maps that do not extend show why a choice through the inverse limit is needed.
3. *Extension.* For any class (named or random maximum) and each scheme kind: build schemes level by
   level, each extending the previous one (SAT with the previous reconstruction fixed on the old
   points). A dead end is a scheme on X_j that has no extension to X_{j+1}; the chain obtained by
   restricting one scheme on X_n never meets one. Every scheme of both chains is verified.
"""

from __future__ import annotations

import time

import numpy as np

from .classes import ConceptClass, compress_bits, expand_bits, is_maximum, restriction, vc_dimension
from .sat import find_representation_map, iter_representation_maps, minimal_size, scheme_exists
from .schemes import (
    RepresentationScheme,
    Scheme,
    SchemeError,
    TableScheme,
    is_representation_map,
    restrict_representation_map,
)
from .verify import verify_scheme


class RestrictedScheme(Scheme):
    """scheme|_A: compress a sample of C|_A as the original scheme does, restrict hypotheses to A."""

    def __init__(self, scheme: Scheme, points: list[int]):
        super().__init__(restriction(scheme.cls, points), scheme.kind, scheme.size, scheme.proper,
                         f"{scheme.construction}|restricted", {})
        self.base = scheme
        self.points = list(points)

    def _up(self, x: int) -> int:
        return expand_bits(x, self.points)

    def _down(self, x: int) -> int:
        return compress_bits(x, self.points)

    def compress(self, S: int, lab: int):
        key = self.base.compress(self._up(S), self._up(lab))
        if isinstance(key, tuple):
            return (self._down(key[0]), self._down(key[1]))
        return self._down(key)

    def reconstruct(self, key) -> int:
        if isinstance(key, tuple):
            h = self.base.reconstruct((self._up(key[0]), self._up(key[1])))
        else:
            h = self.base.reconstruct(self._up(key))
        return self._down(h)

    def to_record(self) -> dict:
        # A restriction is a view of its parent scheme; it is verified in place and never written out.
        raise TypeError("restricted schemes are checked in place, not stored")


def subdomains(n: int) -> list[list[int]]:
    return [[i for i in range(n) if A >> i & 1] for A in range(1 << n)]


def check_restrictions(scheme: Scheme) -> dict:
    """Verify the restriction of ``scheme`` to every subdomain (and Cor. 2 for representation maps)."""
    n = scheme.cls.n
    verified = failed = 0
    cor2_ok = cor2_bad = 0
    for pts in subdomains(n):
        if verify_scheme(RestrictedScheme(scheme, pts)).ok:
            verified += 1
        else:
            failed += 1
        if isinstance(scheme, RepresentationScheme):
            sub = restriction(scheme.cls, pts)
            try:
                rA = restrict_representation_map(scheme.cls, scheme.rep, pts)
                ok = is_representation_map(sub, rA, k=scheme.size, bijective=is_maximum(sub) and
                                           vc_dimension(sub) == scheme.size)[0]
                ok = ok and verify_scheme(RepresentationScheme(sub, rA, scheme.size)).ok
            except SchemeError:
                ok = False
            cor2_ok += ok
            cor2_bad += not ok
    out = {"subdomains": 1 << n, "restrictions_verified": verified, "restrictions_failed": failed}
    if isinstance(scheme, RepresentationScheme):
        out.update(cor2_verified=cor2_ok, cor2_failed=cor2_bad)
    return out


def _freeze(rep: dict[int, int]) -> tuple:
    return tuple(sorted(rep.items()))


def inverse_system(C: ConceptClass, max_maps: int = 20000) -> dict:
    """Representation maps of C|_{X_j} for X_j = first j points, with the Cor. 2 bonding maps.

    C must be maximum. Returns per level j = 0..n: |S_j| (or None when over ``max_maps``), the number
    of maps in the image of S_{j+1} (extendable one level) and of S_n (on a thread through the chain)."""
    d = vc_dimension(C)
    levels = []
    maps: list[set | None] = []
    for j in range(C.n + 1):
        sub = restriction(C, range(j))
        found = set()
        for rep in iter_representation_maps(sub, k=min(d, j), limit=max_maps + 1):
            found.add(_freeze(rep))
        maps.append(found if len(found) <= max_maps else None)
    complete = all(m is not None for m in maps)
    for j in range(C.n + 1):
        row = {"j": j, "maps": len(maps[j]) if maps[j] is not None else None}
        levels.append(row)
    if not complete:
        return {"complete": False, "levels": levels, "max_maps": max_maps}
    bonding_ok = True
    # image of S_{j+1} in S_j, and image of S_n in S_j (composition of the bonding maps).
    thread = maps[C.n]
    for j in range(C.n - 1, -1, -1):
        top = restriction(C, range(j + 1))
        one_up, ok = set(), True
        for rep in maps[j + 1]:
            r = restrict_representation_map(top, dict(rep), list(range(j)))
            one_up.add(_freeze(r))
        ok = one_up <= maps[j]
        new_thread = set()
        for rep in thread:
            new_thread.add(_freeze(restrict_representation_map(top, dict(rep), list(range(j)))))
        thread = new_thread
        bonding_ok &= ok and thread <= one_up
        levels[j]["extendable"] = len(one_up)
        levels[j]["on_thread"] = len(thread)
    levels[C.n]["extendable"] = levels[C.n]["maps"]
    levels[C.n]["on_thread"] = levels[C.n]["maps"]
    nonempty = all(row["on_thread"] > 0 for row in levels)
    return {"complete": True, "levels": levels, "bonding_maps_into_S_j": bonding_ok,
            "threads_nonempty": nonempty}


def _fixed_from(scheme: TableScheme, j: int) -> dict:
    mask = (1 << j) - 1
    return {key: (mask, h) for key, h in scheme.table.items()}


def extension_chain(C: ConceptClass, kind: str, size: int, proper: bool = False,
                    time_limit: float | None = None) -> dict:
    """Greedy level-by-level extension of schemes (SAT), and the chain restricted from the top scheme.

    Levels j = 1..n use the first j points. Greedy: the scheme at level j must agree with the one at
    level j - 1 on the old keys and old points; when none does (a dead end), restart from a fresh
    scheme at level j. The top-down chain restricts one scheme on all n points to each level."""
    n = C.n
    dead_ends: list[int] = []
    greedy_verified = True
    prev: TableScheme | None = None
    unknown = False
    for j in range(1, n + 1):
        sub = restriction(C, range(j))
        fixed = _fixed_from(prev, j - 1) if prev is not None else None
        out = scheme_exists(sub, kind, size, proper, time_limit=time_limit, fixed=fixed, precheck=False)
        if out.status == "no" and fixed:
            dead_ends.append(j - 1)
            out = scheme_exists(sub, kind, size, proper, time_limit=time_limit, precheck=False)
        if out.status != "yes":
            unknown |= out.status == "unknown"
            return {"kind": kind, "size": size, "proper": proper, "levels": n, "greedy_complete": False,
                    "dead_ends": dead_ends, "failed_level": j, "status": out.status}
        greedy_verified &= verify_scheme(out.scheme).ok
        prev = out.scheme
    top = prev
    chain_verified = all(verify_scheme(RestrictedScheme(top, list(range(j)))).ok for j in range(n + 1))
    return {"kind": kind, "size": size, "proper": proper, "levels": n, "greedy_complete": True,
            "dead_ends": dead_ends, "greedy_verified": bool(greedy_verified),
            "top_down_chain_verified": bool(chain_verified), "top_scheme": top}


def compactness_report(name: str, C: ConceptClass, kinds: list[str], propers: tuple[bool, ...] = (False,),
                       max_maps: int = 20000, time_limit: float | None = None,
                       order_seeds: list[int | None] = (None,)) -> tuple[dict, list[Scheme]]:
    """Everything above for one class. For each seed the points are put in a seeded random order (None:
    the given order) and the chain X_1 < ... < X_n follows it; the inverse system of representation maps
    is built for the first order only. Returns the report and the schemes it produced."""
    t0 = time.perf_counter()
    report: dict = {"class": name, "n": C.n, "d": vc_dimension(C), "concepts": len(C), "maximum": is_maximum(C),
                    "chains": []}
    produced: list[Scheme] = []
    for i, seed in enumerate(order_seeds):
        order = list(range(C.n)) if seed is None else [int(x) for x in np.random.default_rng(seed).permutation(C.n)]
        Cp = restriction(C, order)
        d = vc_dimension(Cp)
        if i == 0:
            report["order"] = [x + 1 for x in order]
            if report["maximum"]:
                rm = find_representation_map(Cp, time_limit=time_limit)
                if rm.status == "yes":
                    scheme = RepresentationScheme(Cp, rm.scheme, d, construction="kw-sat", meta={"class": name})
                    report["representation_map_restrictions"] = check_restrictions(scheme)
                    produced.append(scheme)
                report["inverse_system"] = inverse_system(Cp, max_maps=max_maps)
        for kind in kinds:
            for proper in propers:
                size, _ = minimal_size(Cp, kind, proper, time_limit=time_limit)
                row = {"order_seed": seed, "order": [x + 1 for x in order], "kind": kind, "proper": proper,
                       "size": size}
                if size is not None:
                    chain = extension_chain(Cp, kind, size, proper, time_limit=time_limit)
                    top = chain.pop("top_scheme", None)
                    row.update(chain)
                    if top is not None:
                        top.meta = {"class": name, "order": row["order"], "compactness": True}
                        top.construction = f"sat-{kind}"
                        row["restrictions"] = check_restrictions(top)
                        produced.append(top)
                report["chains"].append(row)
    report["seconds"] = time.perf_counter() - t0
    return report, produced
