"""Build the local lm-eval task data shipped in ``repro/lm/tasks/`` (seeded, byte-reproducible).

    python -m repro.lm.taskgen            # rewrite knowledge.jsonl and arithmetic.jsonl in place
    python -m repro.lm.taskgen --check    # exit 1 if the committed files differ from a rebuild

The generated JSONL files are committed rather than built at run time: the items every checkpoint is
scored on must be the same on every machine and stay auditable in review, and a later edit of this
generator must not silently change an evaluation set. The test suite rebuilds both files and compares
them byte for byte with the committed ones, so the generator and the data cannot drift apart. Items are stored in a seeded random order: lm-eval's
``limit`` takes the first items of a task, which then form a random subset across all categories.

Knowledge items come from ``knowledge_facts.csv`` (question, correct answer, category; written for this
project). The three distractors of an item are other answers of the *same category*, so a model cannot
pick the answer by its type (a symbol among symbols, a capital among capitals).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

TASK_DIR = Path(__file__).with_name("tasks")
KNOWLEDGE_SEED = 20240111
ARITHMETIC_SEED = 20240112
N_CHOICES = 4
ARITHMETIC_PER_KIND = 40


def _dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def _place(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def build_knowledge(facts_csv: Path = TASK_DIR / "knowledge_facts.csv", seed: int = KNOWLEDGE_SEED) -> list[dict]:
    with open(facts_csv, newline="", encoding="utf-8") as fh:
        facts = list(csv.DictReader(fh))
    pools: dict[str, list[str]] = {}
    for f in facts:
        pool = pools.setdefault(f["category"], [])
        if f["answer"] not in pool:
            pool.append(f["answer"])
    rng = random.Random(seed)
    rows = []
    for i, f in enumerate(facts):
        others = [a for a in pools[f["category"]] if a != f["answer"]]
        if len(others) < N_CHOICES - 1:
            raise ValueError(f"{facts_csv}: category {f['category']!r} has too few distinct answers for distractors")
        choices, answer = _place(rng, f["answer"], rng.sample(others, N_CHOICES - 1))
        rows.append({"id": f"knowledge-{i:03d}", "category": f["category"], "question": f["question"],
                     "choices": choices, "answer": answer})
    rng.shuffle(rows)
    return rows


def _numeric_distractors(rng: random.Random, answer: int) -> list[str]:
    """Wrong answers a careless solver produces: off by one or ten, a carry dropped, digits swapped."""
    candidates = [answer + 1, answer - 1, answer + 10, answer - 10, answer + 2, answer - 2]
    s = str(answer)
    if len(s) >= 2 and s[-1] != s[-2]:
        candidates.append(int(s[:-2] + s[-1] + s[-2]))
    rng.shuffle(candidates)
    out: list[str] = []
    for c in candidates:
        if c >= 0 and c != answer and str(c) not in out:
            out.append(str(c))
        if len(out) == N_CHOICES - 1:
            break
    return out


def build_arithmetic(seed: int = ARITHMETIC_SEED, per_kind: int = ARITHMETIC_PER_KIND) -> list[dict]:
    rng = random.Random(seed)
    things = ["apples", "books", "marbles", "stamps", "pencils", "coins", "cards", "shells"]
    names = ["Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana"]

    def addition():
        a, b = rng.randint(12, 89), rng.randint(12, 89)
        return f"What is {a} + {b}?", a + b

    def subtraction():
        a = rng.randint(40, 99)
        b = rng.randint(11, a - 1)
        return f"What is {a} - {b}?", a - b

    def multiplication():
        a, b = rng.randint(3, 9), rng.randint(11, 29)
        return f"What is {a} times {b}?", a * b

    def word_problem():
        name, thing = rng.choice(names), rng.choice(things)
        have, give, get = rng.randint(20, 60), rng.randint(2, 19), rng.randint(2, 19)
        return (f"{name} has {have} {thing}, gives away {give} and then receives {get} more. "
                f"How many {thing} does {name} have now?", have - give + get)

    def sequence():
        start, step = rng.randint(1, 30), rng.randint(2, 12)
        seq = [start + k * step for k in range(4)]
        return f"What number comes next in the sequence {', '.join(map(str, seq))}?", start + 4 * step

    def division():
        groups, each = rng.randint(3, 9), rng.randint(3, 12)
        return (f"{groups * each} sweets are shared equally among {groups} children. "
                "How many sweets does each child get?", each)

    kinds = {"addition": addition, "subtraction": subtraction, "multiplication": multiplication,
             "word-problem": word_problem, "sequence": sequence, "division": division}
    items: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for kind, make in kinds.items():
        count = 0
        while count < per_kind:
            question, answer = make()
            if question in seen:  # a repeated item would count twice in the accuracy
                continue
            seen.add(question)
            items.append((kind, question, answer))
            count += 1
    rows = []
    for i, (kind, question, answer) in enumerate(items):
        choices, idx = _place(rng, str(answer), _numeric_distractors(rng, answer))
        rows.append({"id": f"arithmetic-{i:03d}", "category": kind, "question": question,
                     "choices": choices, "answer": idx})
    rng.shuffle(rows)
    return rows


def expected_files() -> dict[Path, str]:
    return {
        TASK_DIR / "knowledge.jsonl": _dumps(build_knowledge()),
        TASK_DIR / "arithmetic.jsonl": _dumps(build_arithmetic()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{path}: {text.count(chr(10))} items")
    if stale:
        print("stale (rerun `python -m repro.lm.taskgen`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
