"""The finite compactness skeleton: restriction to subdomains, inverse systems, extension chains."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from repro.compression.classes import is_maximum, restriction, vc_dimension
from repro.compression.compactness import (
    RestrictedScheme,
    check_restrictions,
    compactness_report,
    extension_chain,
    inverse_system,
)
from repro.compression.enumeration import as_class, maximum_orbits
from repro.compression.named import named_class
from repro.compression.sat import scheme_exists
from repro.compression.schemes import (
    RepresentationScheme,
    SchemeError,
    floyd_warmuth,
    is_representation_map,
    min_peeling,
    restrict_representation_map,
)
from repro.compression.verify import verify_scheme


def test_schemes_restrict_to_every_subdomain():
    for name in ("kw-maximum", "kw-maximal", "warmuth"):
        C = named_class(name)
        schemes = [scheme_exists(C, "labeled", 2, True).scheme, scheme_exists(C, "unlabeled", 3, False).scheme]
        if is_maximum(C):
            schemes += [floyd_warmuth(C), RepresentationScheme(C, min_peeling(C), vc_dimension(C))]
        for scheme in schemes:
            report = check_restrictions(scheme)
            assert report["restrictions_verified"] == 2 ** C.n and report["restrictions_failed"] == 0


def test_restricted_scheme_lives_on_the_subdomain():
    C = named_class("kw-maximum")
    sub = RestrictedScheme(floyd_warmuth(C), [3, 1])
    assert sub.cls == restriction(C, [3, 1]) and sub.cls.n == 2
    v = verify_scheme(sub)
    assert v.ok and v.samples == 9  # the full square {0,1}^2 has 9 samples


def test_cor2_restrictions_of_representation_maps_are_representation_maps():
    for n in (3, 4):
        for d in range(1, n):
            for m in maximum_orbits(n, d):
                C = as_class(n, m)
                rep = min_peeling(C)
                for k in range(n + 1):
                    for pts in itertools.combinations(range(n), k):
                        sub = restriction(C, pts)
                        rA = restrict_representation_map(C, rep, list(pts))
                        ok, why = is_representation_map(sub, rA, min(d, k))
                        assert ok, why


def test_cor2_needs_a_valid_map():
    C = named_class("kw-maximum")
    rep = {c: 0 for c in C.concepts}  # every concept represented by the empty set
    with pytest.raises(SchemeError):
        restrict_representation_map(C, rep, [0, 1])


def brute_force_map_count(C, k):
    from repro.compression.classes import popcount

    subsets = [A for A in range(1 << C.n) if popcount(A) <= k]
    return sum(
        1 for perm in itertools.permutations(subsets)
        if all((a ^ b) & (ra | rb) for (a, ra), (b, rb) in itertools.combinations(zip(C.concepts, perm), 2))
    )


def test_inverse_system_counts_and_threads():
    C = as_class(3, next(iter(maximum_orbits(3, 2))))
    inv = inverse_system(C)
    assert inv["complete"] and inv["bonding_maps_into_S_j"] and inv["threads_nonempty"]
    counts = [row["maps"] for row in inv["levels"]]
    expected = [brute_force_map_count(restriction(C, range(j)), min(2, j)) for j in range(4)]
    assert counts == expected and counts[-1] > 1
    for row in inv["levels"]:
        assert 0 < row["on_thread"] <= row["extendable"] <= row["maps"]


def test_extension_chain_is_verified_level_by_level():
    C = named_class("kw-maximal")
    chain = extension_chain(C, "unlabeled", 2)
    assert chain["greedy_complete"] and chain["greedy_verified"] and chain["top_down_chain_verified"]
    top = chain["top_scheme"]
    assert verify_scheme(top).ok and top.cls == C


def test_compactness_report_on_a_maximum_class():
    C = named_class("kw-maximum")
    report, produced = compactness_report("kw-maximum", C, ["unlabeled", "labeled"], propers=(False, True),
                                          order_seeds=[0, 1])
    assert report["maximum"] and report["inverse_system"]["threads_nonempty"]
    assert report["representation_map_restrictions"]["cor2_failed"] == 0
    assert len(report["chains"]) == 2 * 2 * 2
    assert all(row["size"] == 2 and row["greedy_complete"] and row["top_down_chain_verified"]
               for row in report["chains"])
    assert sorted(report["order"]) == [1, 2, 3, 4]
    assert produced and all(verify_scheme(s).ok for s in produced)
    # Each chain follows its seeded order, so its scheme lives on the permuted class.
    orders = {tuple(row["order"]) for row in report["chains"]}
    assert all(any(s.cls == restriction(C, [i - 1 for i in o]) for o in orders) for s in produced)


def test_greedy_extension_can_dead_end_but_the_top_down_chain_cannot():
    # Warmuth's class, proper unlabeled schemes of size 3: in several point orders the greedily chosen
    # scheme on 4 points has no proper extension to the 5th (the stage finds this in every order it
    # tried), while restricting one scheme on all 5 points always gives a compatible chain.
    C = named_class("warmuth")
    dead = 0
    for seed in range(3):
        order = [int(x) for x in np.random.default_rng(seed).permutation(5)]
        chain = extension_chain(restriction(C, order), "unlabeled", 3, proper=True)
        assert chain["greedy_complete"] and chain["top_down_chain_verified"] and chain["greedy_verified"]
        dead += len(chain["dead_ends"])
    assert dead > 0
