"""Fine-tuning datasets and forgetting corpora (small specs; no network)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from repro.lm import data as D
from repro.lm.data import (
    DataError,
    build_hf_instruct,
    build_pydoc_topics,
    build_stdlib_instruct,
    build_stdlib_source,
    hf_text_blocks,
    read_jsonl,
    split_and_sample,
    stable_fraction,
    write_jsonl,
)

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 4)

SPEC = {"max_train": 50, "max_heldout": 10, "heldout_percent": 10, "max_answer_chars": 300}


def _dump(splits) -> str:
    return json.dumps(splits, sort_keys=True)


@pytest.fixture(scope="module")
def tokenizer():
    from repro.lm.models import build_tiny_tokenizer

    return build_tiny_tokenizer(512)


@pytest.fixture(scope="module")
def docstring_items():
    """The stdlib docstring items, parsed once for the tests that only vary split/sampling."""
    return list(D.iter_docstring_items())


@pytest.fixture(scope="module")
def instruct0(docstring_items):
    # Built from the items parsed above; test_stdlib_instruct_same_seed_identical builds it again from a
    # fresh parse of the standard library.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "iter_docstring_items", lambda: iter(docstring_items))
        return build_stdlib_instruct(dict(SPEC), seed=0)


@pytest.fixture
def cached_items(monkeypatch, docstring_items):
    monkeypatch.setattr(D, "iter_docstring_items", lambda: iter(docstring_items))
    return docstring_items


# --------------------------------------------------------------------------- stable_fraction


def test_stable_fraction_deterministic_and_in_range():
    keys = [f"split:module.func{i}" for i in range(2000)] + ["", "x", "ünïcode"]
    values = [stable_fraction(k) for k in keys]
    assert values == [stable_fraction(k) for k in keys]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) > 1990  # depends on the key
    assert 0.45 < sum(values[:2000]) / 2000 < 0.55  # roughly uniform
    assert sum(v < 0.1 for v in values[:2000]) in range(150, 250)
    # pinned: the split of existing datasets must never change between versions
    expected = int(hashlib.sha256(b"split:json.dumps").hexdigest()[:12], 16) / 16**12
    assert stable_fraction("split:json.dumps") == expected


# --------------------------------------------------------------------------- stdlib instruct


def test_stdlib_instruct_sizes_and_disjoint(instruct0):
    train, heldout = instruct0["train"], instruct0["heldout"]
    assert len(train) == SPEC["max_train"] and len(heldout) == SPEC["max_heldout"]
    train_ids, heldout_ids = [r["id"] for r in train], [r["id"] for r in heldout]
    assert len(set(train_ids)) == len(train_ids) and len(set(heldout_ids)) == len(heldout_ids)
    assert not set(train_ids) & set(heldout_ids)
    assert train_ids == sorted(train_ids) and heldout_ids == sorted(heldout_ids)
    # the split follows the hash of the id
    assert all(stable_fraction("split:" + i) < 0.10 for i in heldout_ids)
    assert all(stable_fraction("split:" + i) >= 0.10 for i in train_ids)


def test_stdlib_instruct_rows(instruct0):
    for row in instruct0["train"] + instruct0["heldout"]:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)
        assert len(msgs[1]["content"]) <= SPEC["max_answer_chars"] + 4
        assert f"`{row['id']}" in msgs[0]["content"], (row["id"], msgs[0]["content"])


def test_stdlib_instruct_answers_are_docstrings(instruct0, docstring_items):
    by_name = {it["name"]: it for it in docstring_items}

    def words(text):  # compare modulo indentation/line breaks
        return " ".join(text.split())

    for row in instruct0["train"] + instruct0["heldout"]:
        item = by_name[row["id"]]
        doc, answer = item["doc"].strip(), row["messages"][1]["content"]
        if len(doc) <= SPEC["max_answer_chars"]:
            assert words(answer) == words(doc)
        else:
            stem = answer.removesuffix(" ...")
            assert stem and words(doc).startswith(words(stem))
            assert len(stem) < len(doc)


def test_stdlib_instruct_same_seed_identical(instruct0):
    again = build_stdlib_instruct(dict(SPEC), seed=0)
    assert _dump(again) == _dump(instruct0)


def test_stdlib_instruct_other_seed_differs(instruct0, cached_items):
    other = build_stdlib_instruct(dict(SPEC), seed=1)
    assert {r["id"] for r in other["train"]} != {r["id"] for r in instruct0["train"]}
    assert len(other["train"]) == SPEC["max_train"]
    # the split itself does not depend on the seed: only the subsample does
    assert all(stable_fraction("split:" + r["id"]) < 0.10 for r in other["heldout"])
    assert not {r["id"] for r in other["heldout"]} & {r["id"] for r in instruct0["train"]}


def test_split_independent_of_max_train(cached_items):
    big_heldout = {**SPEC, "max_heldout": 1_000_000}
    small = build_stdlib_instruct({**big_heldout, "max_train": 20}, seed=0)
    large = build_stdlib_instruct({**big_heldout, "max_train": 400}, seed=0)
    held_small, held_large = {r["id"] for r in small["heldout"]}, {r["id"] for r in large["heldout"]}
    assert held_small == held_large and len(held_small) > 10
    assert len(small["train"]) == 20 and len(large["train"]) == 400
    assert not held_small & {r["id"] for r in large["train"]}


def test_answer_truncation_bound():
    doc = "\n\n".join(["word " * 30] * 5)  # paragraphs of 150 chars
    out = D._truncate_doc(doc, 300)
    assert len(out) <= 304 and doc.startswith(out.removesuffix(" ..."))
    one_para = "x" * 20 + " " + "y" * 500
    out = D._truncate_doc(one_para, 100)
    assert out == "x" * 20 + " ..."
    assert D._truncate_doc("short", 100) == "short"


def test_split_and_sample_raises_when_a_split_is_empty():
    items = [{"id": f"a{i}"} for i in range(3)]
    with pytest.raises(DataError, match="held-out"):
        split_and_sample(items, {"heldout_percent": 0.001, "max_train": 10, "max_heldout": 10}, seed=0)


# --------------------------------------------------------------------------- token blocks


def _total_pydoc_blocks(tokenizer, length):
    from pydoc_data.topics import topics

    sep = D._document_separator(tokenizer)
    ids = D._tokenize_documents(tokenizer, (topics[k] for k in sorted(topics)), sep)
    return len(ids) // length


def test_pydoc_topics_blocks(tokenizer):
    spec = {"length": 32, "num_sequences": 6}
    rows = build_pydoc_topics(spec, tokenizer)
    assert len(rows) == 6
    assert [r["id"] for r in rows] == [f"pydoc-topics-{i:05d}" for i in range(6)]
    assert all(len(r["input_ids"]) == 32 for r in rows)
    assert all(all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in r["input_ids"]) for r in rows)
    assert len({tuple(r["input_ids"]) for r in rows}) == 6  # evenly spaced, distinct blocks
    assert rows[0]["text"] == tokenizer.decode(rows[0]["input_ids"])
    assert _dump(build_pydoc_topics(spec, tokenizer)) == _dump(rows)
    assert len(build_pydoc_topics({"length": 16, "num_sequences": 3}, tokenizer)) == 3


def test_pydoc_topics_too_many_sequences(tokenizer):
    n = _total_pydoc_blocks(tokenizer, 64)
    assert len(build_pydoc_topics({"length": 64, "num_sequences": n}, tokenizer)) == n
    with pytest.raises(DataError, match=f"only {n} blocks, {n + 1} requested"):
        build_pydoc_topics({"length": 64, "num_sequences": n + 1}, tokenizer)


def test_stdlib_source_blocks(tokenizer):
    spec = {"heldout_percent": 10, "max_train": 5, "max_heldout": 3, "length": 32}
    out = build_stdlib_source(spec, 0, tokenizer)
    assert len(out["train"]) == 5 and len(out["heldout"]) == 3
    for split, rows in out.items():
        assert all(len(r["input_ids"]) == 32 for r in rows)
        assert [r["id"] for r in rows] == [f"stdlib-source-{split}-{i:05d}" for i in range(len(rows))]
    # the first block of each split starts a module; that module belongs to the split by its hash
    for split in ("train", "heldout"):
        m = re.match(r"# Module: ([\w.]+)\n", out[split][0]["text"])
        assert m, out[split][0]["text"]
        frac = stable_fraction("split:" + m.group(1))
        assert (frac < 0.10) == (split == "heldout")
    assert _dump(build_stdlib_source(dict(spec), 0, tokenizer)) == _dump(out)
    other = build_stdlib_source(dict(spec), 1, tokenizer)
    assert [r["input_ids"] for r in other["train"]] != [r["input_ids"] for r in out["train"]]


# --------------------------------------------------------------------------- jsonl


def test_jsonl_round_trip(tmp_path):
    rows = [{"id": "a", "messages": [{"role": "user", "content": "héllo ✓\nline"}]}, {"id": "b", "input_ids": [1, 2, 3]}]
    path = tmp_path / "deep" / "dir" / "rows.jsonl"
    write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    assert read_jsonl(str(path)) == rows
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert not list(path.parent.glob("*.tmp"))
    write_jsonl(path, rows[:1])  # overwrite
    assert read_jsonl(path) == rows[:1]


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n   \n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_missing(tmp_path):
    path = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError) as exc:
        read_jsonl(path)
    assert str(path) in str(exc.value)


# --------------------------------------------------------------------------- Hugging Face loaders (local files)


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    # datasets reads these at import time; patch the live values too (and keep its cache in tmp_path)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache", raising=False)
    datasets.disable_progress_bars()
    return tmp_path


def _instruct_rows(n=40):
    rows = []
    for i in range(n):
        rows.append({
            "system_prompt": f"You are assistant number {i}." if i % 2 == 0 else "",
            "question": f"What is {i} plus {i}?",
            "response": f"It is {2 * i}.",
        })
    return rows


def _instruct_spec(path: Path, **over) -> dict:
    spec = {
        "path": "json", "data_files": str(path), "split": "train", "name": None, "streaming": False,
        "columns": {"system": "system_prompt", "question": "question", "response": "response"},
        "max_train": 20, "max_heldout": 5, "heldout_percent": 20,
    }
    spec.update(over)
    return spec


def test_hf_instruct_local_json(hf_offline):
    src = _instruct_rows()
    path = hf_offline / "orca.jsonl"
    write_jsonl(path, src)
    by_question = {r["question"]: r for r in src}
    out = build_hf_instruct(_instruct_spec(path), seed=0)
    assert len(out["train"]) == 20 and 1 <= len(out["heldout"]) <= 5
    ids = [r["id"] for r in out["train"] + out["heldout"]]
    assert len(set(ids)) == len(ids)
    with_system = 0
    for row in out["train"] + out["heldout"]:
        msgs = row["messages"]
        roles = [m["role"] for m in msgs]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        orig = by_question[user]
        if orig["system_prompt"]:
            with_system += 1
            assert roles == ["system", "user", "assistant"]
            assert msgs[0]["content"] == orig["system_prompt"]
        else:
            assert roles == ["user", "assistant"]
        assert msgs[-1]["content"] == orig["response"]
        assert row["id"].startswith(hashlib.sha256(user.encode()).hexdigest()[:16] + "-")
    assert 0 < with_system < len(ids)
    for row in out["heldout"]:
        assert stable_fraction("split:" + row["id"]) < 0.20
    # deterministic
    assert _dump(build_hf_instruct(_instruct_spec(path), seed=0)) == _dump(out)


def test_hf_instruct_no_system_column(hf_offline):
    path = hf_offline / "orca.jsonl"
    write_jsonl(path, _instruct_rows())
    spec = _instruct_spec(path, columns={"system": None, "question": "question", "response": "response"})
    out = build_hf_instruct(spec, seed=0)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in out["train"] + out["heldout"])


def test_hf_instruct_wrong_column(hf_offline):
    path = hf_offline / "orca.jsonl"
    write_jsonl(path, _instruct_rows())
    spec = _instruct_spec(path, columns={"system": "system_prompt", "question": "prompt", "response": "response"})
    with pytest.raises(DataError, match="'prompt'"):
        build_hf_instruct(spec, seed=0)


def test_hf_load_missing_file_raises_data_error(hf_offline):
    spec = _instruct_spec(hf_offline / "does-not-exist.jsonl")
    with pytest.raises(DataError, match="could not load dataset path='json'"):
        build_hf_instruct(spec, seed=0)


def _text_spec(path: Path, **over) -> dict:
    spec = {"path": "json", "data_files": str(path), "split": "train", "name": None, "streaming": False,
            "columns": {"text": "text"}, "length": 16}
    spec.update(over)
    return spec


def test_hf_text_blocks_local_json(hf_offline, tokenizer):
    docs = [f"The function number {i} returns the value of its argument." for i in range(12)]
    rows = []
    for d in docs:
        rows += [{"text": d}, {"text": "   "}]  # blank rows are skipped
    path = hf_offline / "wiki.jsonl"
    write_jsonl(path, rows)
    blocks = hf_text_blocks(_text_spec(path), tokenizer)
    ids = [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"]]
    assert len(blocks) == len(ids) // 16 > 2
    assert all(len(b) == 16 for b in blocks)
    assert blocks[0] == ids[:16] and blocks[-1] == ids[16 * (len(blocks) - 1) : 16 * len(blocks)]
    assert hf_text_blocks(_text_spec(path), tokenizer) == blocks


def test_hf_text_blocks_wrong_column(hf_offline, tokenizer):
    path = hf_offline / "wiki.jsonl"
    write_jsonl(path, [{"body": "some text here"}] * 3)
    with pytest.raises(DataError, match="'content'") as exc:
        hf_text_blocks(_text_spec(path, columns={"text": "content"}), tokenizer)
    assert "columns.text" in str(exc.value)
    # default column name is 'text'
    with pytest.raises(DataError, match="'text'"):
        hf_text_blocks(_text_spec(path, columns=None), tokenizer)
