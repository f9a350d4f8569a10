"""The claims ledger: one row per claim of the four sources, the number that tests it and a computed verdict.

A claim is registered with its sentence, its source, the measure that tests it and the criterion, both
written here before any run; ``verdict`` is computed from the measured value and interval, never typed.
A claim about differences between settings that the run measured with one seed per setting is
``not identified at this scale``: seed and setting are confounded there, whatever the numbers say.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_IDENTIFIED = "not identified at this scale"
NOT_TESTED = "not tested"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_IDENTIFIED, NOT_TESTED)

COLUMNS = ("id", "study", "claim", "source", "measure", "value", "ci_low", "ci_high", "criterion", "verdict",
           "scale", "precision", "robust", "link", "note")


@dataclass(frozen=True)
class Claim:
    """A claim and the test decided for it in advance.

    ``passes(value, ci_low, ci_high)`` is the criterion as code; ``criterion`` says the same in words.
    ``needs_seeds``: the fewest seeds per setting for which the measure separates setting from seed.
    ``needs_interval``: the criterion reads the interval; without one (too few runs or ranks to form it)
    the claim is not identified at this scale.
    """

    id: str
    study: str
    claim: str
    source: str
    criterion: str
    passes: Callable[[float, float, float], bool] | None
    link: str = ""
    needs_seeds: int = 1
    needs_interval: bool = True


@dataclass
class Measurement:
    measure: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    scale: str = ""
    seeds_per_setting: int | None = None
    note: str = ""
    tested: bool = True
    identified: bool = True  # False: the measure exists but this run's data cannot separate the claim from its rival


def verdict(claim: Claim, m: Measurement) -> str:
    if not m.tested or claim.passes is None:
        return NOT_TESTED
    if m.seeds_per_setting is not None and m.seeds_per_setting < claim.needs_seeds:
        return NOT_IDENTIFIED
    if not m.identified:
        return NOT_IDENTIFIED
    if math.isnan(m.value):
        return NOT_TESTED
    if claim.needs_interval and (math.isnan(m.ci_low) or math.isnan(m.ci_high)):
        return NOT_IDENTIFIED
    return REPRODUCED if claim.passes(m.value, m.ci_low, m.ci_high) else NOT_REPRODUCED


def row(claim: Claim, m: Measurement, precision: str) -> dict:
    note = m.note
    if claim.needs_interval and not math.isnan(m.value) and (math.isnan(m.ci_low) or math.isnan(m.ci_high)):
        note = "no interval at this scale" + (f"; {note}" if note else "")
    if m.seeds_per_setting is not None and m.seeds_per_setting < claim.needs_seeds:
        note = (f"{m.seeds_per_setting} seed per setting; the claim needs >= {claim.needs_seeds} to separate "
                f"setting from seed" + (f"; {note}" if note else ""))
    return {"id": claim.id, "study": claim.study, "claim": claim.claim, "source": claim.source,
            "measure": m.measure, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "criterion": claim.criterion, "verdict": verdict(claim, m), "scale": m.scale, "precision": precision,
            "robust": "not compared", "link": claim.link, "note": note}


def within(lo: float, hi: float) -> Callable[[float, float, float], bool]:
    """The whole interval inside [lo, hi]."""
    return lambda value, ci_low, ci_high: lo <= ci_low and ci_high <= hi


def above(bound: float) -> Callable[[float, float, float], bool]:
    """The interval's lower end above ``bound``."""
    return lambda value, ci_low, ci_high: ci_low > bound


def below(bound: float) -> Callable[[float, float, float], bool]:
    """The interval's upper end below ``bound``."""
    return lambda value, ci_low, ci_high: ci_high < bound


def covers(target: float) -> Callable[[float, float, float], bool]:
    return lambda value, ci_low, ci_high: ci_low <= target <= ci_high


def value_at_least(bound: float) -> Callable[[float, float, float], bool]:
    return lambda value, ci_low, ci_high: value >= bound


def mark_robustness(rows: list[dict], others: dict[str, list[dict]]) -> list[dict]:
    """``robust`` per row against ledgers of the same claims run at other precisions: ``yes`` when every
    compared verdict agrees, ``no (<ledger>: <verdict>)`` when one flips, ``not compared`` when no ledger ran
    the row at another precision."""
    for r in rows:
        flips, compared = [], 0
        for precision, other in others.items():
            match = [o for o in other if o["id"] == r["id"] and o["measure"] == r["measure"]]
            # a ledger that did not run a study (the float32 preset skips TEB), or ran it at the same precision
            # (compression is exact, TEB float32 in both), has no precision to compare it at
            if not match or NOT_TESTED in (match[0]["verdict"], r["verdict"]) or match[0]["precision"] == r["precision"]:
                continue
            compared += 1
            if match[0]["verdict"] != r["verdict"]:
                flips.append(f"{precision}: {match[0]['verdict']}")
        if flips:
            r["robust"] = "no (" + "; ".join(flips) + ")"
        elif compared:
            r["robust"] = "yes"
    return rows
