"""Enumeration of maximum classes: brute force over all subsets of the cube, duality, symmetry."""

from __future__ import annotations

import types
from math import comb

import numpy as np
import pytest

from repro.compression.classes import ConceptClass, complement, is_maximum, vc_dimension
from repro.compression.enumeration import (
    _as_int_rows,
    _weight_sum,
    brute_force_maximum_classes,
    count_maximum,
    forbidden_masks,
    iter_maximum_classes,
    maximum_class_list,
    maximum_orbits,
    sample_maximum_classes,
)
from repro.compression.symmetry import canonical, canonical_forms, canonical_slow, group_order, point_maps

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("first", 2)


def phi(d, n):
    return sum(comb(n, i) for i in range(d + 1)) if d >= 0 else 0


def brute_force_by_definition(n):
    """{d: sorted class masks} of every maximum class on n points, by testing each subset of {0,1}^n.

    Written independently of the library: only subsets of size Phi_d(n) can be maximum of VC dimension
    d, and VC dimension is computed from projections onto every subset of the domain.
    """
    points = list(range(1 << n))
    sizes = {phi(d, n): d for d in range(n + 1)}
    out = {d: [] for d in range(n + 1)}
    for cmask in range(1, 1 << (1 << n)):
        size = bin(cmask).count("1")
        if size not in sizes:
            continue
        cs = [p for p in points if cmask >> p & 1]
        vc = max(bin(A).count("1") for A in range(1 << n) if len({c & A for c in cs}) == 1 << bin(A).count("1"))
        if vc == sizes[size]:
            out[vc].append(cmask)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_lifting_equals_brute_force_over_all_subsets(n):
    brute = brute_force_by_definition(n)
    for d in range(n + 1):
        lifted = list(iter_maximum_classes(n, d))
        assert len(lifted) == len(set(lifted))  # the lifting never produces a class twice
        assert sorted(lifted) == brute[d]
        assert count_maximum(n, d) == len(brute[d])
        assert sum(maximum_orbits(n, d).values()) == len(brute[d])
    # The library's own brute force (used by the enumerate stage) agrees too.
    lib = brute_force_maximum_classes(n)
    assert all(lib[d] == brute[d] for d in range(n + 1))


def test_counts_are_dual_up_to_six_points():
    for n in range(1, 7):
        for d in range(n):
            assert count_maximum(n, d) == count_maximum(n, n - d - 1), (n, d)


def test_complement_of_every_maximum_class_on_five_points_is_maximum():
    full = (1 << 32) - 1
    for d in range(5):
        dual = set(maximum_class_list(5, 5 - d - 1))
        classes = maximum_class_list(5, d)
        assert {full ^ c for c in classes} == dual
    # spot-check the definition on a few of them
    rng = np.random.default_rng(0)
    for cmask in rng.choice(maximum_class_list(5, 2), 5):
        comp = complement(ConceptClass.from_mask(5, int(cmask)))
        assert is_maximum(comp) and vc_dimension(comp) == 2


def test_every_listed_class_is_maximum_of_the_right_dimension():
    rng = np.random.default_rng(1)
    for d in range(6):
        classes = maximum_class_list(5, d)
        for cmask in rng.choice(classes, min(20, len(classes)), replace=False):
            C = ConceptClass.from_mask(5, int(cmask))
            assert vc_dimension(C) == d and len(C) == phi(d, 5)


def test_orbit_and_direct_counts_agree_at_six_points():
    for d in (0, 1, 4, 5, 6):
        assert count_maximum(6, d, "orbits") == count_maximum(6, d, "direct")


def test_orbit_and_direct_counts_agree_at_five_points():
    for d in range(6):
        assert count_maximum(5, d, "orbits") == count_maximum(5, d, "direct"), d


def test_six_point_dimension_two_count_rests_on_sums_constant_on_orbits():
    """#M(6, 2) by orbits weights one representative's sum by its orbit's size; the direct count (a minute
    here) sums every class of M(5, 2). They agree iff the sum is the same across each orbit and the
    orbit sizes add up to #M(5, 2): both checked, the first on 1,500 random classes against their
    canonical representative."""
    m, d = 5, 2
    Rs = maximum_class_list(m, d - 1)
    R_arr = np.asarray(Rs, dtype=np.uint64)
    F = _as_int_rows(forbidden_masks(R_arr, m, d))
    orbits = maximum_orbits(m, d)
    classes = maximum_class_list(m, d)
    assert sum(orbits.values()) == len(classes)
    rng = np.random.default_rng(6)
    sample = [classes[i] for i in rng.choice(len(classes), 1500, replace=False)]
    canon, _ = canonical_forms(sample, m)
    assert {int(c) for c in canon} <= set(orbits)
    moved = 0
    for P, rep in zip(sample, canon):
        moved += P != int(rep)
        assert _weight_sum(P, Rs, R_arr, F, m) == _weight_sum(int(rep), Rs, R_arr, F, m), P
    assert moved > 1000  # the sample is not mostly representatives themselves
    total = sum(w * _weight_sum(P, Rs, R_arr, F, m)[0] for P, w in orbits.items())
    assert total == count_maximum(6, 2, "orbits") == count_maximum(6, 3, "orbits")


def test_enumeration_streams():
    gen = iter_maximum_classes(6, 1)
    assert isinstance(gen, types.GeneratorType)
    first = [next(gen) for _ in range(5)]
    assert all(is_maximum(ConceptClass.from_mask(6, c)) for c in first)
    assert 5 + sum(1 for _ in gen) == count_maximum(6, 1)


def test_fast_canonical_form_matches_explicit_group_action():
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 4):
        masks = [int(x) for x in rng.integers(0, 2 ** (2 ** n), size=25, dtype=np.uint64)]
        canon, stab = canonical_forms(masks, n)
        for m, c, s in zip(masks, canon, stab):
            assert (int(c), int(s)) == canonical_slow(m, n)
    assert len(point_maps(3)) == group_order(3) == 48


def test_orbits_partition_the_classes():
    for n in (3, 4):
        for d in range(n + 1):
            orbits = maximum_orbits(n, d)
            # Every class's canonical form is one of the representatives, hit as often as its orbit size.
            hits = {}
            for cmask in iter_maximum_classes(n, d):
                rep = canonical_slow(cmask, n)[0]
                hits[rep] = hits.get(rep, 0) + 1
            assert hits == orbits
    for n, d in ((5, 2), (5, 3)):
        for rep in list(maximum_orbits(n, d))[:5]:
            assert canonical(rep, n) == rep


def test_forbidden_labelings_need_maximum_classes():
    # R = {000, 111} on 3 points misses 2 labelings of a 2-set: not maximum of VC dimension 1.
    R = np.array([(1 << 0b000) | (1 << 0b111)], dtype=np.uint64)
    with pytest.raises(AssertionError):
        forbidden_masks(R, 3, 2)


def test_uniform_samples_are_maximum():
    rng = np.random.default_rng(3)
    for cmask in sample_maximum_classes(5, 2, 10, rng):
        C = ConceptClass.from_mask(5, cmask)
        assert is_maximum(C) and vc_dimension(C) == 2
        assert cmask in set(maximum_class_list(5, 2))
