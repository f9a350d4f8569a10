"""Concept-class primitives against definitions written out naively here, and KW07's structure facts."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest

from repro.compression import CompressionInputError
from repro.compression.classes import (
    ConceptClass,
    complement,
    deletion,
    is_ample,
    is_maximal,
    is_maximum,
    multi_reduction,
    one_inclusion_graph,
    parse_class_text,
    phi,
    reduction,
    restriction,
    shattered_sets,
    strongly_shattered_sets,
    tail,
    vc_dimension,
)
from repro.compression.named import named_class


# --- naive definitions (independent of the library) ---------------------------------------------------
def naive_shattered(concepts, n):
    out = []
    for k in range(n + 1):
        for pts in itertools.combinations(range(n), k):
            labelings = {tuple(c >> p & 1 for p in pts) for c in concepts}
            if len(labelings) == 2 ** k:
                out.append(sum(1 << p for p in pts))
    return sorted(out)


def naive_vc(concepts, n):
    return max((bin(A).count("1") for A in naive_shattered(concepts, n)), default=-1)


def naive_strongly_shattered(concepts, n):
    cs = set(concepts)
    out = []
    for A in naive_shattered(concepts, n):
        flips = [sum(1 << p for p in pts) for k in range(n + 1)
                 for pts in itertools.combinations([i for i in range(n) if A >> i & 1], k)]
        if any(all(c ^ f in cs for f in flips) for c in cs):
            out.append(A)
    return sorted(out)


def brute_maximum(n):
    """{d: list of classes (sets)} of maximum classes on n <= 3 points, from all subsets of the cube."""
    out = {}
    for cmask in range(1, 1 << (1 << n)):
        cs = [c for c in range(1 << n) if cmask >> c & 1]
        d = naive_vc(cs, n)
        if len(cs) == sum(comb(n, i) for i in range(d + 1)):
            out.setdefault(d, []).append(ConceptClass(n, tuple(cs)))
    return out


def random_classes(seed, count, n_max=5):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, n_max + 1))
        size = int(rng.integers(1, 2 ** n + 1))
        yield ConceptClass(n, tuple(int(c) for c in rng.choice(2 ** n, size=size, replace=False)))


# --- tests ----------------------------------------------------------------------------------------------
def test_phi_is_the_sauer_shelah_sum():
    assert [phi(2, 4), phi(2, 5), phi(3, 10)] == [11, 16, 176]  # reference §6 (definition)
    assert phi(-1, 3) == 0 and phi(0, 3) == 1 and phi(5, 3) == 8


@pytest.mark.parametrize("seed", range(4))
def test_shattering_and_vc_match_the_definition(seed):
    for C in random_classes(seed, 40):
        assert shattered_sets(C) == naive_shattered(C.concepts, C.n)
        assert vc_dimension(C) == naive_vc(C.concepts, C.n)
        assert strongly_shattered_sets(C) == naive_strongly_shattered(C.concepts, C.n)


def test_sauer_shelah_and_sandwich_hold_on_random_classes():
    for C in random_classes(11, 150):
        assert len(C) <= phi(vc_dimension(C), C.n)
        # Pajor / sandwich lemma: strongly shattered <= |C| <= shattered.
        assert len(strongly_shattered_sets(C)) <= len(C) <= len(shattered_sets(C))
        assert is_ample(C) == (len(C) == len(naive_shattered(C.concepts, C.n)))


def test_vc_of_trivial_classes():
    assert vc_dimension(ConceptClass(3, ())) == -1
    assert vc_dimension(ConceptClass(3, (5,))) == 0
    assert vc_dimension(ConceptClass.cube(3)) == 3


def test_kw07_structure_of_every_maximum_class_up_to_three_points():
    brute = brute_maximum(3)
    assert sum(len(v) for v in brute.values()) > 40
    for d, classes in brute.items():
        for C in classes:
            n = C.n
            assert is_maximum(C) and is_ample(C) and is_maximal(C)
            edges = one_inclusion_graph(C)
            if d >= 1:
                assert len(edges) == n * phi(d - 1, n - 1)  # KW07 Lemma 3
            for x in range(n):
                P, R = deletion(C, x), reduction(C, x)
                assert is_maximum(P) and vc_dimension(P) == min(d, n - 1)  # (the cube loses a dimension)
                if d >= 1:
                    assert is_maximum(R) and vc_dimension(R) == d - 1
                # C = 0C^x + 1C^x + tail_x(C), |tail_x(C)| = C(n-1, d)
                assert len(tail(C, x)) == comb(n - 1, d)
                assert len(C) == 2 * len(R) + len(tail(C, x))
            for pts in itertools.combinations(range(n), d):
                assert len(multi_reduction(C, sum(1 << p for p in pts))) == 1  # d-fold reduction
            # There is exactly one forbidden labeling on each (d+1)-set.
            for pts in itertools.combinations(range(n), d + 1):
                assert len(restriction(C, pts)) == 2 ** (d + 1) - 1


def test_reduction_tail_and_restriction_by_hand():
    C = ConceptClass.from_strings(["00", "01", "10"])
    assert reduction(C, 0).to_strings() == ["0"]  # 00 and 10 both present -> x2 = 0
    assert tail(C, 0) == (0b10,)  # "01" (bit 1 set): its x1-neighbour 11 is missing
    assert restriction(C, [1]).to_strings() == ["0", "1"]
    assert complement(C).to_strings() == ["11"]
    assert vc_dimension(C) == 1 and is_maximum(C)


def test_maximal_against_the_definition():
    for C in random_classes(5, 60, n_max=4):
        d = naive_vc(C.concepts, C.n)
        naive = all(naive_vc(C.concepts + (c,), C.n) > d for c in range(2 ** C.n) if c not in C)
        assert is_maximal(C) == naive
    assert not is_maximal(ConceptClass.from_strings(["00", "10"]))  # 01 can be added at VC 1


def test_named_classes_have_their_published_shape():
    # KW07 Fig. 3: maximal but not maximum, VC dimension 2, 10 concepts on 4 points.
    fig3 = named_class("kw-maximal")
    assert (fig3.n, len(fig3), vc_dimension(fig3)) == (4, 10, 2)
    assert is_maximal(fig3) and not is_maximum(fig3)
    # KW07 Fig. 2: maximum, VC 2, 11 concepts on 4 points. DFSZ14: Warmuth's class has VCD 2.
    fig2 = named_class("kw-maximum")
    assert (len(fig2), vc_dimension(fig2)) == (11, 2) and is_maximum(fig2)
    cw = named_class("warmuth")
    assert (cw.n, len(cw), vc_dimension(cw)) == (5, 10, 2)


def test_named_class_names_are_the_ones_the_schema_and_the_rule_accept():
    """named.py holds the names; the config schema and the named rule's wildcard cannot import them."""
    import re
    from pathlib import Path

    import yaml

    from repro.compression.named import NAME_PATTERN, NAMES_HELP

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "src/repro/schemas/compression.schema.yaml").read_text())["properties"]
    assert schema["named"]["properties"]["classes"]["items"]["pattern"] == NAME_PATTERN
    assert schema["compactness"]["properties"]["classes"]["items"]["pattern"] == NAME_PATTERN
    rule = (repo / "workflow/rules/compression.smk").read_text()
    assert f'name=r"{NAME_PATTERN[2:-2]}"' in rule
    *literal, cubes = NAME_PATTERN[2:-2].split("|")
    assert literal == ["warmuth", "kw-maximal", "kw-table1", "kw-table2", "kw-maximum"] and cubes == "cube[1-6]"
    assert NAMES_HELP == ", ".join(literal) + ", cube1..cube6"
    for name in literal + [f"cube{m}" for m in range(1, 7)]:
        assert re.fullmatch(NAME_PATTERN, name) and len(named_class(name)) > 0
    for bad in ("cube0", "cube7", "cube10", "warmuth ", "Warmuth", "cube1\n"):
        with pytest.raises(CompressionInputError, match="unknown named class .*; known: kw-maximal, .*cube1..cube6"):
            named_class(bad)


@pytest.mark.parametrize(
    "text, where",
    [
        ("010\n01\n", "line 2"),
        ("010\n0x0\n", "line 2"),
        ("# header\n\n111\n 101 \n1 1\n", "line 5"),
        ("01\n01\n", "line 2"),
        ("# only a comment\n\n", "empty"),
        ("", "empty"),
    ],
)
def test_malformed_class_text_names_the_line(text, where):
    with pytest.raises(CompressionInputError, match=where):
        parse_class_text(text, source="c.txt")


def test_class_text_with_comments_parses():
    C = parse_class_text("# x1 x2\n00  # first\n\n11\n", source="c.txt")
    assert C.n == 2 and C.to_strings() == ["00", "11"]
