"""Every construction verifies on every sample; deliberately broken schemes are caught."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from repro.compression.classes import ConceptClass, incident_dimensions, phi, popcount, vc_dimension
from repro.compression.enumeration import as_class, maximum_orbits, sample_maximum_classes
from repro.compression.named import kw_fig2_printed_map, named_class
from repro.compression.sat import find_representation_map, iter_representation_maps, scheme_exists
from repro.compression.schemes import (
    ConstructionError,
    RepresentationScheme,
    SchemeError,
    TableScheme,
    corner_peeling,
    floyd_warmuth,
    is_representation_map,
    min_peeling,
    scheme_from_record,
)
from repro.compression.verify import verify_scheme


def small_maximum_classes():
    """Every orbit representative for n <= 4, and random classes of M(5, 2), M(5, 3)."""
    out = [as_class(n, m) for n in range(1, 5) for d in range(n + 1) for m in maximum_orbits(n, d)]
    rng = np.random.default_rng(0)
    out += [as_class(5, m) for d in (2, 3) for m in sample_maximum_classes(5, d, 4, rng)]
    return out


def test_every_construction_verifies_on_maximum_classes():
    classes = small_maximum_classes()
    assert len(classes) > 20
    rng = np.random.default_rng(1)
    for C in classes:
        d = vc_dimension(C)
        fw = floyd_warmuth(C)
        v = verify_scheme(fw)
        assert v.ok and v.samples > 0 and v.largest_compression <= d
        for rep in (find_representation_map(C).scheme, min_peeling(C), min_peeling(C, rng), corner_peeling(C)):
            ok, why = is_representation_map(C, rep, d)
            assert ok, why
            # KW07 Lemma 3 and Cor. 5: sizes sum to n Phi_{d-1}(n-1); r(c) lies in I(c).
            assert sum(popcount(A) for A in rep.values()) == C.n * phi(d - 1, C.n - 1)
            inc = incident_dimensions(C)
            assert all(rep[c] & ~inc[c] == 0 for c in C.concepts)
            assert verify_scheme(RepresentationScheme(C, rep, d)).ok


def test_schemes_survive_their_records():
    C = named_class("kw-maximum")
    found = scheme_exists(C, "labeled", 2, True).scheme
    for scheme in (floyd_warmuth(C), RepresentationScheme(C, min_peeling(C), 2), found):
        again = scheme_from_record(scheme.to_record())
        assert type(again) is type(scheme)
        assert verify_scheme(again).ok
        assert again.to_record() == scheme.to_record()


def test_kw07_printed_map_is_a_representation_map():
    C = named_class("kw-maximum")
    printed = kw_fig2_printed_map()
    assert is_representation_map(C, printed, 2) == (True, "ok")
    assert verify_scheme(RepresentationScheme(C, printed, 2)).ok


def brute_force_representation_maps(C, k):
    """All non-clashing bijections of C onto the subsets of size <= k, by trying every bijection."""
    subsets = [A for A in range(1 << C.n) if popcount(A) <= k]
    assert len(subsets) == len(C)
    out = set()
    for perm in itertools.permutations(subsets):
        rep = dict(zip(C.concepts, perm))
        if all((c1 ^ c2) & (rep[c1] | rep[c2]) for c1, c2 in itertools.combinations(C.concepts, 2)):
            out.add(tuple(sorted(rep.items())))
    return out


@pytest.mark.parametrize("n, d", [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)])
def test_sat_finds_exactly_the_representation_maps(n, d):
    # SAT prunes r(c) to I(c) (KW07 Cor. 5); brute force tries every bijection without pruning.
    for m in maximum_orbits(n, d):
        C = as_class(n, m)
        sat = {tuple(sorted(r.items())) for r in iter_representation_maps(C)}
        brute = brute_force_representation_maps(C, d)
        assert brute and sat == brute


def test_floyd_warmuth_needs_a_maximum_class():
    with pytest.raises(ConstructionError):
        floyd_warmuth(named_class("kw-maximal"))


def test_corner_peeling_fails_without_corners():
    # A 6-cycle in {0,1}^3: every vertex has two neighbours, and the square they span is not in C.
    C = ConceptClass.from_strings(["000", "100", "110", "111", "011", "001"])
    with pytest.raises(ConstructionError, match="no corner"):
        corner_peeling(C)


# --- deliberately broken schemes ------------------------------------------------------------------------
class WrongHypothesis(RepresentationScheme):
    """Flips the reconstructed label of x1 for one representative."""

    def __init__(self, *a, bad_key, **kw):
        super().__init__(*a, **kw)
        self.bad_key = bad_key

    def reconstruct(self, key):
        h = super().reconstruct(key)
        return h ^ 1 if key == self.bad_key else h


class OutsideSample(TableScheme):
    """Compresses every sample to the whole domain, even points the sample does not contain."""

    def compress(self, S, lab):
        return (1 << self.cls.n) - 1


def test_verifier_catches_a_wrong_hypothesis():
    C = named_class("kw-maximum")
    rep = find_representation_map(C).scheme
    # The concept whose representative contains x1 is the only consistent one on its full sample.
    c = next(c for c, A in rep.items() if A & 1)
    broken = WrongHypothesis(C, rep, 2, bad_key=rep[c])
    v = verify_scheme(broken)
    assert not v.ok and any("disagrees" in f for f in v.first_failures)


def test_verifier_catches_compression_outside_the_sample_and_oversize():
    C = ConceptClass.cube(2)
    good = scheme_exists(C, "unlabeled", 2, False).scheme
    assert verify_scheme(good).ok
    v = verify_scheme(OutsideSample(C, "unlabeled", 2, False, good.table))
    assert not v.ok and any("outside the sample" in f for f in v.first_failures)
    # The same table claimed to be of size 1 compresses some samples to 2 points.
    v = verify_scheme(TableScheme(C, "unlabeled", 1, False, good.table))
    assert not v.ok


def test_verifier_catches_an_improper_hypothesis_in_a_proper_scheme():
    C = named_class("kw-table1")  # no proper unlabeled scheme of size 2 exists here
    improper = scheme_exists(C, "unlabeled", 2, False).scheme
    assert verify_scheme(improper).ok
    v = verify_scheme(TableScheme(C, "unlabeled", 2, True, improper.table))
    assert not v.ok and any("outside the class" in f for f in v.first_failures)


def test_verifier_catches_a_corrupted_record():
    C = named_class("kw-maximum")
    rec = RepresentationScheme(C, min_peeling(C), 2).to_record()
    # Re-assign one concept's representative to a concept outside the class.
    c, A = rec["representation"][3]
    rec["representation"][3] = ["1111", A]
    v = verify_scheme(scheme_from_record(rec))
    # The full sample of the replaced concept has no consistent concept left to compress to.
    assert not v.ok and any("compress failed" in f for f in v.first_failures)


def test_representation_scheme_rejects_ambiguous_samples():
    C = ConceptClass.cube(1)
    clash = {0: 0, 1: 0}  # both concepts represented by the empty set
    assert not is_representation_map(C, clash, 1)[0]
    with pytest.raises(SchemeError):
        RepresentationScheme(C, clash, 1).compress(0, 0)


# Found by the pipeline (schemes stage on M(6, 2), random tie-breaks): a maximum class of VC dimension 2
# on 6 points and a min-peeling order (least degree at every step) that ends with two isolated vertices,
# both represented by the empty set.
MIN_PEELING_CLASS = ["000000", "100000", "001000", "101000", "111000", "000100", "100100", "101100", "111100",
                     "000010", "000110", "100110", "101110", "111110", "000001", "100001", "010001", "110001",
                     "101001", "111001", "000101", "000011"]
MIN_PEELING_ORDER = ["111110", "111100", "101110", "111000", "000101", "001000", "010001", "101100", "100110",
                     "101000", "000011", "100100", "000001", "100000", "100001", "110001", "111001", "101001",
                     "000110", "000100", "000010", "000000"]


def test_min_peeling_can_fail_for_some_tie_breaks():
    C = ConceptClass.from_strings(MIN_PEELING_CLASS)
    assert vc_dimension(C) == 2 and len(C) == phi(2, 6)  # maximum
    order = [ConceptClass.from_strings([s]).concepts[0] for s in MIN_PEELING_ORDER]
    queue = iter(order)
    rep = min_peeling(C, tie_break=lambda ties: next(queue))  # raises if the order is not least-degree
    assert list(rep) == order
    ok, why = is_representation_map(C, rep, 2)
    assert not ok and "not injective" in why
    assert not verify_scheme(RepresentationScheme(C, rep, 2)).ok
    # The deterministic tie-break (smallest concept) and the SAT map are fine on the same class.
    assert is_representation_map(C, min_peeling(C), 2)[0]
    assert is_representation_map(C, find_representation_map(C).scheme, 2)[0]
