"""Evaluation results cached per checkpoint, so an evaluation job recomputes only what it lacks.

A run's evaluation is rerun whenever its run changes (a longer ``max_steps`` adds checkpoints) or its
settings do; each checkpoint's result depends only on that checkpoint's adapter (its SHA-256) and the
evaluation's own identity (settings, data, base model), not on which other checkpoints are evaluated
beside it. So each result is stored under a key made of exactly those, and is reused only when the key
matches: an entry under another key is recomputed and replaced, never read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text, identity_hash


class CheckpointCache:
    """One JSON file per checkpoint step under ``folder``, keyed by ``settings`` and the checkpoint's hash."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.settings_hash = identity_hash(settings)

    def _path(self, step: int) -> Path:
        return self.folder / f"step-{int(step):06d}.json"

    def _key(self, checkpoint_sha256: str) -> str:
        return identity_hash({"settings": self.settings_hash, "checkpoint": checkpoint_sha256})

    def get(self, step: int, checkpoint_sha256: str):
        """The cached value, or None when absent, damaged or made under another key."""
        try:
            doc = json.loads(self._path(step).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != self._key(checkpoint_sha256):
            return None
        return doc.get("value")

    def put(self, step: int, checkpoint_sha256: str, value) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        doc = {"key": self._key(checkpoint_sha256), "settings": self.settings_hash, "step": int(step),
               "checkpoint_sha256": checkpoint_sha256, "value": value}
        # Key order kept: a cached row comes back with its columns in the order they were computed.
        atomic_write_text(self._path(step), json.dumps(doc))

