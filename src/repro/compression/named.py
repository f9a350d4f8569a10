"""Named classes from the literature, transcribed literally (x_1 first, left to right).

Sources (see /work/shared/reference/compression.md §4): Kuzmin & Warmuth, JMLR 8 (2007), Fig. 2, Fig. 3,
Tables 1 and 2; Doliwa, Fan, Simon & Zilles, JMLR 15 (2014), §4.1 Fig. 1 (Warmuth's class C_W). Only the
concept lists are taken from the papers: every property reported about them is computed here.
"""

from __future__ import annotations

import re

from . import CompressionInputError
from .classes import ConceptClass, string_to_concept

_LITERAL = {
    # DFSZ14 Fig. 1: the pairs {x_i, x_i+1} around a 5-cycle plus complements of the "dashed" pairs.
    "warmuth": "11000 01100 00110 00011 10001 01011 01101 10110 10101 11010",
    # KW07 Fig. 3: maximal but not maximum, VC dimension 2, 10 concepts on 4 points.
    "kw-maximal": "0010 0100 0110 1010 1100 1110 0011 0101 1000 1001",
    # KW07 Table 1 (= RR12 Fig. 18(b)): no representation map into the class itself.
    "kw-table1": "0000 1000 0100 0010 1100 0110 1010 1011 1101 0111",
    # KW07 Table 2: maximal, 10 concepts.
    "kw-table2": "0011 0100 0101 0110 1000 1001 1010 1100 1101 1110",
    # KW07 Fig. 2: a maximum class of VC dimension 2 on 4 points (11 concepts).
    "kw-maximum": "0000 0010 0011 0100 0101 0110 0111 1000 1010 1011 1100",
}

DESCRIPTIONS = {
    "warmuth": "Warmuth's class C_W (DFSZ14 Fig. 1)",
    "kw-maximal": "Kuzmin-Warmuth maximal class (KW07 Fig. 3)",
    "kw-table1": "Kuzmin-Warmuth Table 1 class",
    "kw-table2": "Kuzmin-Warmuth Table 2 class",
    "kw-maximum": "Kuzmin-Warmuth maximum class (KW07 Fig. 2)",
}

#: KW07 Fig. 2 as printed: concept -> representative (1-based point numbers).
KW_FIG2_PRINTED = {
    "0000": (), "0010": (3,), "0011": (4,), "0100": (2,), "0101": (3, 4), "0110": (2, 3),
    "0111": (2, 4), "1000": (1,), "1010": (1, 3), "1011": (1, 4), "1100": (1, 2),
}

# Besides the literal classes, ``cubeM`` names the full cube {0,1}^M.
CUBE_DIMENSIONS = range(1, 7)
_CUBES = f"cube{CUBE_DIMENSIONS[0]}..cube{CUBE_DIMENSIONS[-1]}"
# Every name ``named_class`` knows. The config schema and the named rule's wildcard spell it out again (a
# schema cannot import it); tests/test_compression_classes.py holds them to this one.
NAME_PATTERN = rf"^({'|'.join(_LITERAL)}|cube[{CUBE_DIMENSIONS[0]}-{CUBE_DIMENSIONS[-1]}])$"
NAMES_HELP = f"{', '.join(_LITERAL)}, {_CUBES}"


def named_class(name: str) -> ConceptClass:
    """A literal class by name, or ``cubeM`` for the full cube {0,1}^M."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise CompressionInputError(f"unknown named class {name!r}; known: {', '.join(sorted(_LITERAL))}, {_CUBES}")
    if name in _LITERAL:
        return ConceptClass.from_strings(_LITERAL[name].split())
    return ConceptClass.cube(int(name.removeprefix("cube")))


def describe(name: str) -> str:
    if name.startswith("cube"):
        return f"cube {{0,1}}^{name[4:]}"
    return DESCRIPTIONS.get(name, name)


def kw_fig2_printed_map() -> dict[int, int]:
    """The representation map printed in KW07 Fig. 2, as concept -> subset mask."""
    return {string_to_concept(c): sum(1 << (i - 1) for i in pts) for c, pts in KW_FIG2_PRINTED.items()}


ALL_NAMES = tuple(_LITERAL)
