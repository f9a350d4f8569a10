"""The SAT existence check against brute force, and the brute force against a plain enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from repro.compression.classes import ConceptClass, all_samples, vc_dimension
from repro.compression.named import named_class
from repro.compression.sat import (
    all_nonempty_classes,
    brute_force_scheme_exists,
    counting_obstruction,
    find_representation_map,
    scheme_exists,
)
from repro.compression.schemes import all_keys
from repro.compression.verify import verify_scheme

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("first", 3)

KINDS = [(kind, proper) for kind in ("labeled", "unlabeled") for proper in (True, False)]


def test_sat_agrees_with_brute_force_on_every_class_over_three_points():
    classes = list(all_nonempty_classes(3))
    assert len(classes) == 255
    answers = {"yes": 0, "no": 0}
    for C in classes:
        for kind, proper in KINDS:
            for k in range(0, 4):
                brute = brute_force_scheme_exists(C, kind, k, proper)
                sat = scheme_exists(C, kind, k, proper, precheck=False)  # SAT alone decides
                full = scheme_exists(C, kind, k, proper)  # with the counting pre-check
                assert sat.status == full.status == ("yes" if brute else "no"), (C, kind, proper, k)
                answers[sat.status] += 1
                for scheme in (brute, sat.scheme):
                    if scheme is not None:
                        v = verify_scheme(scheme)
                        assert v.ok and v.largest_compression <= k
                        if proper:
                            assert all(h in C for h in scheme.table.values())
    # Both answers occur often, so agreement is not vacuous.
    assert answers["yes"] > 500 and answers["no"] > 500


def plain_brute_force(C, kind, k, proper):
    """Every reconstruction table in turn (no pruning at all): does one serve every sample?"""
    keys = all_keys(C, kind, k)
    hyps = list(C.concepts) if proper else list(range(1 << C.n))
    samples = all_samples(C)

    def candidates(S, lab):
        for i, key in enumerate(keys):
            Y = key[0] if isinstance(key, tuple) else key
            if Y & ~S == 0 and (kind == "unlabeled" or lab & Y == key[1]) and bin(Y).count("1") <= k:
                yield i

    cands = [list(candidates(S, lab)) for S, lab in samples]
    for table in itertools.product(hyps, repeat=len(keys)):
        if all(any((table[i] ^ lab) & S == 0 for i in cs) for (S, lab), cs in zip(samples, cands)):
            return True
    return False


def test_pruned_brute_force_agrees_with_plain_enumeration():
    cases = [(C, k) for C in all_nonempty_classes(2) for k in (0, 1)]
    cases += [(C, 0) for C in all_nonempty_classes(3)]
    for C, k in cases:
        for kind, proper in KINDS:
            assert (brute_force_scheme_exists(C, kind, k, proper) is not None) == plain_brute_force(C, kind, k, proper)


def _random_four_point_agreement(seed, count, max_size, min_size=2):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = int(rng.integers(min_size, max_size + 1))
        C = ConceptClass(4, tuple(int(c) for c in rng.choice(16, size=size, replace=False)))
        for kind, proper in KINDS:
            brute = brute_force_scheme_exists(C, kind, 1, proper)
            assert scheme_exists(C, kind, 1, proper, precheck=False).status == ("yes" if brute else "no")


def test_sat_agrees_with_brute_force_on_random_four_point_classes():
    _random_four_point_agreement(seed=0, count=25, max_size=6)


@pytest.mark.slow
def test_sat_agrees_with_brute_force_on_larger_four_point_classes():
    # 7 or 8 concepts, beyond the test above (past 8 the labeled improper brute force takes minutes
    # per class).
    _random_four_point_agreement(seed=1, count=8, min_size=7, max_size=8)


def test_counting_obstruction_is_sound():
    # Whenever the pre-check says no, exhaustive search finds no scheme either.
    hits = 0
    for C in all_nonempty_classes(3):
        for kind, proper in KINDS:
            for k in (0, 1, 2):
                if counting_obstruction(C, kind, k):
                    hits += 1
                    assert brute_force_scheme_exists(C, kind, k, proper) is None
    assert hits > 100


def test_kw07_table1_needs_hypotheses_outside_the_class():
    # KW07 Table 1 / RR12 Example 23: no representation map into the class, but an unlabeled scheme
    # of size 2 exists once a hypothesis outside C (1111) is allowed.
    C = named_class("kw-table1")
    assert vc_dimension(C) == 2
    assert find_representation_map(C, 2).status == "no"
    improper = scheme_exists(C, "unlabeled", 2, False)
    assert improper.status == "yes" and verify_scheme(improper.scheme).ok
    assert any(h not in C for h in improper.scheme.table.values())


def test_sat_honours_the_time_limit():
    C = named_class("cube4")
    out = scheme_exists(C, "unlabeled", 3, False, precheck=False, time_limit=0.01)
    # 16 labelings into 15 sets is a pigeonhole instance: far beyond 10 ms for a CDCL solver.
    assert out.status == "unknown" and out.seconds < 5


@pytest.mark.parametrize("solver", ["glucose4", "minisat22", "cadical153"])
def test_solvers_agree_on_warmuth_class(solver):
    C = named_class("warmuth")
    assert scheme_exists(C, "unlabeled", 2, False, solver=solver).status == "no"
    assert scheme_exists(C, "unlabeled", 3, False, solver=solver).status == "yes"
    assert scheme_exists(C, "labeled", 2, True, solver=solver).status == "yes"
