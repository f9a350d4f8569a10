"""Fine-tuning datasets and forgetting corpora.

Default scale (offline): instruction pairs from the docstrings of the running Python's standard
library, raw standard-library source as a new-domain corpus, text sampled from the base model itself
and the ``pydoc_data`` topics text. Paper scale: Hugging Face datasets (OpenOrca, WikiText-103 test)
read through ``datasets.load_dataset`` by name or from local files.

Instruction data is stored as chat messages (tokenised at training time with the model's chat
template). Text data is stored as fixed-length token-id blocks, because decode->encode is not the
identity and the forgetting metric must see exactly the tokens that were sampled.
"""

from __future__ import annotations

import ast
import hashlib
import json
import platform
import random
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ..io import InputError, atomic_open, atomic_write_text, sha256_file

# Parts of the standard library that are tests, demos, GUI toolkits or vendored packages.
_SKIP_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "site-packages", "ensurepip",
    "__pycache__", "__phello__", "pydoc_data", "venv", "msilib", "distutils",
}

QUESTION_TEMPLATES = {
    "function": [
        "What does the Python standard library function `{name}{sig}` do?",
        "Explain what `{name}{sig}` from Python's `{module}` module does.",
        "In Python, what is the function `{name}{sig}` for?",
    ],
    "class": [
        "What is the class `{name}` in Python's `{module}` module?",
        "Explain what the Python standard library class `{name}` is for.",
        "In Python, what does the class `{name}{sig}` represent?",
    ],
}


class DataError(InputError):
    pass


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on ``key`` (split assignment independent of order)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(16**12)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every public pure-Python stdlib module, in a fixed order."""
    root = stdlib_root()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(("_", "config-")) for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_") and rel.name != "__init__.py":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts[0] in ("this", "antigravity"):
            continue
        yield ".".join(parts), path


def _signature(node: ast.AST) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
    elif isinstance(node, ast.ClassDef):
        init = next(
            (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
        )
        if init is None:
            return ""
        args = init.args
        if args.args and args.args[0].arg == "self":
            args = ast.arguments(
                posonlyargs=args.posonlyargs, args=args.args[1:], vararg=args.vararg,
                kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                defaults=args.defaults[-len(args.args[1:]):] if args.args[1:] and args.defaults else [],
            )
    else:
        return ""
    if args.posonlyargs and args.posonlyargs[0].arg in ("self", "cls"):
        args = ast.arguments(
            posonlyargs=args.posonlyargs[1:], args=args.args, vararg=args.vararg,
            kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
            defaults=args.defaults,
        )
    elif args.args and args.args[0].arg in ("self", "cls"):
        args = ast.arguments(
            posonlyargs=args.posonlyargs, args=args.args[1:], vararg=args.vararg,
            kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
            defaults=args.defaults,
        )
    try:
        sig = f"({ast.unparse(args)})"
    except Exception:  # noqa: BLE001 - an odd signature only costs the question its signature
        return ""
    return sig if len(sig) <= 80 else "(...)"


def _truncate_doc(doc: str, max_chars: int) -> str:
    if len(doc) <= max_chars:
        return doc
    out = ""
    for para in doc.split("\n\n"):
        if out and len(out) + 2 + len(para) > max_chars:
            break
        out = f"{out}\n\n{para}" if out else para
    return out if len(out) <= max_chars else out[:max_chars].rsplit(" ", 1)[0] + " ..."


def iter_docstring_items(min_doc_chars: int = 40) -> Iterator[dict]:
    """Documented public functions, classes and methods of the standard library (no imports)."""
    for module, path in iter_stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            yield from _items_from_node(node, module, prefix=module)


def _items_from_node(node: ast.AST, module: str, prefix: str) -> Iterator[dict]:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return
    if node.name.startswith("_"):
        return
    name = f"{prefix}.{node.name}"
    doc = ast.get_docstring(node, clean=True)
    kind = "class" if isinstance(node, ast.ClassDef) else "function"
    if doc and len(doc) >= 40:
        yield {"name": name, "module": module, "kind": kind, "signature": _signature(node), "doc": doc}
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from _items_from_node(child, module, prefix=name)


def docstring_example(item: dict, max_answer_chars: int) -> dict:
    templates = QUESTION_TEMPLATES[item["kind"]]
    template = templates[int(stable_fraction("q:" + item["name"]) * len(templates))]
    question = template.format(name=item["name"], sig=item["signature"], module=item["module"])
    # ast.get_docstring(clean=True) already dedented it; cleaning again would flatten quoted blocks.
    answer = _truncate_doc(item["doc"].strip(), max_answer_chars)
    return {
        "id": item["name"],
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


def split_and_sample(items: list[dict], spec: dict, seed: int) -> dict[str, list[dict]]:
    """Deterministic held-out split by a hash of each item's id, then a seeded subsample."""
    cut = spec["heldout_percent"] / 100.0
    heldout = [x for x in items if stable_fraction("split:" + x["id"]) < cut]
    train = [x for x in items if stable_fraction("split:" + x["id"]) >= cut]
    rng = random.Random(seed)
    if len(train) > spec["max_train"]:
        train = rng.sample(train, spec["max_train"])
    if len(heldout) > spec["max_heldout"]:
        heldout = rng.sample(heldout, spec["max_heldout"])
    train.sort(key=lambda x: x["id"])
    heldout.sort(key=lambda x: x["id"])
    if not train or not heldout:
        raise DataError(
            f"dataset split produced {len(train)} training and {len(heldout)} held-out items; "
            "raise max_train/max_heldout or heldout_percent"
        )
    return {"train": train, "heldout": heldout}


def build_stdlib_instruct(spec: dict, seed: int) -> dict[str, list[dict]]:
    seen, items = set(), []
    for item in iter_docstring_items():
        if item["name"] in seen:
            continue
        seen.add(item["name"])
        items.append(docstring_example(item, spec["max_answer_chars"]))
    return split_and_sample(items, spec, seed)


def chunk_ids(ids: list[int], length: int) -> list[list[int]]:
    return [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]


def _tokenize_documents(tokenizer, docs: Iterable[str], separator_id: int | None) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if separator_id is not None:
            out.append(separator_id)
    return out


def _blocks_rows(tokenizer, blocks: list[list[int]], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}-{i:05d}", "input_ids": b, "text": tokenizer.decode(b)} for i, b in enumerate(blocks)
    ]


def _document_separator(tokenizer) -> int:
    """The pretraining document boundary when the vocabulary has one, else end-of-sequence."""
    vocab = tokenizer.get_vocab()
    return vocab.get("<|endoftext|>", tokenizer.eos_token_id)


def build_stdlib_source(spec: dict, seed: int, tokenizer) -> dict[str, list[dict]]:
    cut = spec["heldout_percent"] / 100.0
    files = [(m, p) for m, p in iter_stdlib_files()]
    splits = {"train": [], "heldout": []}
    for module, path in files:
        splits["heldout" if stable_fraction("split:" + module) < cut else "train"].append((module, path))
    rng = random.Random(seed)
    out = {}
    for split, limit in (("train", spec["max_train"]), ("heldout", spec["max_heldout"])):
        chosen = splits[split]
        rng.shuffle(chosen)
        blocks: list[list[int]] = []
        for module, path in chosen:
            text = f"# Module: {module}\n" + path.read_text(encoding="utf-8", errors="replace")
            ids = _tokenize_documents(tokenizer, [text], _document_separator(tokenizer))
            blocks.extend(chunk_ids(ids, spec["length"]))
            if len(blocks) >= limit:
                break
        out[split] = _blocks_rows(tokenizer, blocks[:limit], f"stdlib-source-{split}")
    return out


def build_pydoc_topics(spec: dict, tokenizer) -> list[dict]:
    from pydoc_data.topics import topics

    ids = _tokenize_documents(tokenizer, (topics[k] for k in sorted(topics)), _document_separator(tokenizer))
    blocks = chunk_ids(ids, spec["length"])
    return _blocks_rows(tokenizer, _evenly_spaced(blocks, spec["num_sequences"]), "pydoc-topics")


def _evenly_spaced(blocks: list, count: int) -> list:
    if len(blocks) < count:
        raise DataError(f"corpus has only {len(blocks)} blocks, {count} requested (num_sequences)")
    step = len(blocks) / count
    return [blocks[int(i * step)] for i in range(count)]


def build_model_samples(spec: dict, seed: int, model, tokenizer, batch_size: int = 16) -> list[dict]:
    """Ancestral samples from the base model, starting at a document boundary (seeded)."""
    import torch

    start = _document_separator(tokenizer)
    rows = []
    device = next(model.parameters()).device
    generator_seed = seed
    for lo in tqdm(range(0, spec["num_sequences"], batch_size), desc="sampling forgetting corpus"):
        n = min(batch_size, spec["num_sequences"] - lo)
        torch.manual_seed(generator_seed + lo)
        prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                temperature=spec["temperature"],
                top_k=0,
                top_p=1.0,
                max_new_tokens=spec["length"] - 1,
                min_new_tokens=spec["length"] - 1,
                pad_token_id=tokenizer.pad_token_id,
            )
        for j, seq in enumerate(out.tolist()):
            rows.append({"id": f"model-samples-{lo + j:05d}", "input_ids": seq, "text": tokenizer.decode(seq)})
    return rows


def _load_hf(spec: dict):
    import datasets

    kwargs = {"path": spec["path"], "name": spec.get("name"), "split": spec["split"]}
    if spec.get("data_files") is not None:
        kwargs["data_files"] = spec["data_files"]
    if spec.get("streaming"):
        kwargs["streaming"] = True
    try:
        return datasets.load_dataset(**kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the config key that names the dataset
        raise DataError(f"data: could not load dataset path={spec['path']!r} name={spec.get('name')!r}: {exc}") from exc


def build_hf_instruct(spec: dict, seed: int) -> dict[str, list[dict]]:
    cols = {"system": "system_prompt", "question": "question", "response": "response", **(spec.get("columns") or {})}
    ds = _load_hf(spec)
    limit = int((spec["max_train"] + spec["max_heldout"]) / (1 - spec["heldout_percent"] / 100.0) * 1.5) + 10
    if spec.get("streaming"):
        ds = ds.shuffle(seed=seed, buffer_size=10_000).take(limit)
    elif len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit))
    items = []
    for i, row in enumerate(ds):
        for key in ("question", "response"):
            if cols[key] not in row:
                raise DataError(f"data: column {cols[key]!r} (columns.{key}) not in dataset {spec['path']!r}")
        messages = []
        system = row.get(cols["system"]) if cols.get("system") else None
        if system:
            messages.append({"role": "system", "content": system})
        messages += [
            {"role": "user", "content": row[cols["question"]]},
            {"role": "assistant", "content": row[cols["response"]]},
        ]
        rid = str(row.get("id", "")) or hashlib.sha256(row[cols["question"]].encode()).hexdigest()[:16]
        items.append({"id": f"{rid}-{i}", "messages": messages})
    return split_and_sample(items, spec, seed)


def hf_text_blocks(spec: dict, tokenizer) -> list[list[int]]:
    column = (spec.get("columns") or {}).get("text", "text")
    ds = _load_hf(spec)
    if column not in ds.column_names:
        raise DataError(f"data: column {column!r} (columns.text) not in dataset {spec['path']!r}")
    docs = (row[column] for row in ds if row[column].strip())
    return chunk_ids(_tokenize_documents(tokenizer, docs, None), spec["length"])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset file not found (run 'repro data build')")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def check_data_files(data_dir: str | Path, paths: Iterable[str | Path]) -> dict[Path, str]:
    """Refuse data files that are not the ones 'repro data build' wrote: each must be listed in the
    folder's manifest.json with the SHA-256 it has now (a file edited, truncated or swapped since is
    caught before a run trains or is evaluated on it). Returns each file's SHA-256: what a job's saved
    state and caches are keyed by."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    rebuild = f"delete {manifest_path} and rerun (prepare_data rebuilds every file of {data_dir})"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        raise DataError(f"{manifest_path}: not found; run 'repro data build'") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: damaged data manifest ({exc}); {rebuild}") from exc
    digests: dict[Path, str] = {}
    for path in paths:
        path = Path(path)
        rel = path.relative_to(data_dir).as_posix()
        if rel not in files:
            raise DataError(f"{path}: not listed in {manifest_path}; {rebuild}")
        if not path.is_file():
            raise DataError(f"{path}: listed in {manifest_path} but missing; {rebuild}")
        digest = sha256_file(path)
        if digest != files[rel]["sha256"]:
            raise DataError(f"{path}: SHA-256 {digest[:12]}... does not match its manifest "
                            f"({files[rel]['sha256'][:12]}...): the file changed after 'repro data build'; {rebuild}")
        digests[path] = digest
    return digests


def finetune_paths(data_dir: Path, name: str) -> dict[str, Path]:
    return {split: Path(data_dir) / "finetune" / name / f"{split}.jsonl" for split in ("train", "heldout")}


def forgetting_path(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "forgetting" / f"{name}.jsonl"


def build_all(config: dict, model_dir: Path, out_dir: Path) -> dict:
    """Build every dataset of the config for one model; write files and a manifest."""
    from .models import load_model

    out_dir = Path(out_dir)
    seed = config["seed"]
    model, tokenizer = load_model(model_dir, dtype=config["dtype"], device=config["device"])
    files: dict[str, Path] = {}
    for name, spec in config["data"]["finetune"].items():
        kind = spec["kind"]
        if kind == "stdlib-docstrings":
            splits = build_stdlib_instruct(spec, seed)
        elif kind == "stdlib-source":
            splits = build_stdlib_source(spec, seed, tokenizer)
        elif kind == "hf-instruct":
            splits = build_hf_instruct(spec, seed)
        elif kind == "hf-text":
            splits = split_and_sample(_blocks_rows(tokenizer, hf_text_blocks(spec, tokenizer), name), spec, seed)
        else:
            raise DataError(f"data.finetune.{name}.kind: {kind!r} cannot be a fine-tuning dataset")
        for split, path in finetune_paths(out_dir, name).items():
            write_jsonl(path, splits[split])
            files[str(path.relative_to(out_dir))] = path
    for name, spec in config["data"]["forgetting"].items():
        kind = spec["kind"]
        if kind == "model-samples":
            rows = build_model_samples(spec, seed, model, tokenizer)
        elif kind == "pydoc-topics":
            rows = build_pydoc_topics(spec, tokenizer)
        elif kind == "hf-text":
            blocks = _evenly_spaced(hf_text_blocks(spec, tokenizer), spec["num_sequences"])
            rows = _blocks_rows(tokenizer, blocks, name)
        elif kind == "stdlib-source":
            rows = build_stdlib_source({**spec, "max_train": spec["num_sequences"], "max_heldout": 1}, seed, tokenizer)["train"]
        else:
            raise DataError(f"data.forgetting.{name}.kind: {kind!r} cannot be a forgetting corpus")
        path = forgetting_path(out_dir, name)
        write_jsonl(path, rows)
        files[str(path.relative_to(out_dir))] = path
    manifest = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib": str(stdlib_root()),
        "seed": seed,
        "model_dir": str(model_dir),
        "datasets": {"finetune": config["data"]["finetune"], "forgetting": config["data"]["forgetting"]},
        "files": {
            rel: {"sha256": sha256_file(p), "rows": sum(1 for _ in open(p, encoding="utf-8"))}
            for rel, p in sorted(files.items())
        },
        "argv": sys.argv,
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
