"""Loaders for the local lm-eval tasks in this directory (referenced from the YAML files).

The JSONL files are found next to this module, not relative to the working directory, so the tasks
work from an installed package and from any directory lm-eval is started in.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_local(file: str, **_ignored) -> dict:
    """A one-split ("test") DatasetDict from a JSONL file in this directory.

    lm-eval passes the task's metadata and dataset_kwargs as keyword arguments; only ``file`` is used.
    """
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_jsonl(HERE / file))})
