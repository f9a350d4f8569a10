"""Writes that never leave a half-written file where a finished one is expected, and file hashes.

Every output of the pipeline is written beside its final path under a temporary name and renamed over
it at the end, so a kill, a full disk or an exception leaves the old file (or none) and never a
truncated one that Snakemake or a resume would take as finished. Temporary names are unique (two
writers of one path never share a temporary file) and start with a dot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator:
    """``open()`` for writing whose file appears at ``path`` only when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a kill leaves the old file or the new one."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (data and timestamps) so that ``dst`` is never seen half copied."""
    with atomic_open(dst, "wb") as fh, open(src, "rb") as inp:
        shutil.copyfileobj(inp, fh)
        tmp_name = fh.name
        fh.flush()
        shutil.copystat(src, tmp_name)


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` only if ``path`` holds something else, so its timestamp moves only with its content."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def atomic_dir(final: Path, writer: Callable[[Path], None]) -> None:
    """Fill a temporary folder with ``writer(folder)``, then swap it in for ``final`` by renames."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        writer(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (model weights do not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_default(value):
    """``json.dumps(default=...)`` for numpy scalars: bools stay bools, integers integers."""
    import numpy as np

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return float(value)
