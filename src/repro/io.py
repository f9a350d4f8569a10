"""Writes that never leave a half-written file where a finished one is expected, file hashes, and the
errors of inputs that are missing or damaged.

Every output of the pipeline is written beside its final path under a temporary name and renamed over
it at the end, so a kill, a full disk or an exception leaves the old file (or none) and never a
truncated one that Snakemake or a resume would take as finished. Temporary names are unique (two
writers of one path never share a temporary file) and start with a dot.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Out of space, over a quota, or over the per-process file-size limit (RLIMIT_FSIZE, e.g. a scheduler's).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Libraries that wrap the OS error in their own exception keep its text (safetensors); torch's zip writer
# reports a short write as a failed write or as a position mismatch.
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large", "FileTooLarge",
                  "StorageFull", "file write failed", "unexpected pos ")


_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(RuntimeError):
    """An input file that is missing, damaged or inconsistent; the message names it and the way out."""


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the file that was being written."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write refused for lack of space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _no_room_for(tmp: str) -> bool:
    """Whether a failed write stopped at the file-size limit or on a full file system.

    Some writers (torch's zip writer) report a refused write without the OS error, so the condition
    itself is checked: the partial file reached RLIMIT_FSIZE, or the file system has no block left.
    """
    import resource

    try:
        size = os.path.getsize(tmp)
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and size >= soft:
            return True
        st = os.statvfs(os.path.dirname(tmp) or ".")
        return st.f_bavail * st.f_frsize < 1 << 20
    except (OSError, ValueError):
        return False


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on any error remove it.

    A kill leaves the old file or the new one, never a partial one under the final name; a failed write
    (a full disk) also removes the partial temporary file, so the space is given back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the output gets the permissions an ordinary write would give.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and (is_disk_full(exc) or _no_room_for(tmp))
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(errno.ENOSPC, f"no space to write {path} ({exc})") from exc
        raise


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write to a temporary file beside ``path``, then rename: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding=encoding)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator:
    """``open()`` for writing whose file appears at ``path`` only when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (data and timestamps) so that ``dst`` is never seen half copied."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copystat(src, tmp)


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


def rows_sha256(rows: list[dict]) -> str:
    """SHA-256 of a data set's rows as a job read them (the same content hashes the same, from any file)."""
    import json

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def json_default(value):
    """``json.dumps(default=...)`` for numpy scalars: bools stay bools, integers integers."""
    import numpy as np

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return float(value)


def identity_hash(settings) -> str:
    """Short hex digest of JSON-serialisable settings, independent of key order: a job's identity.

    Two settings that differ only in int/float spelling of the same number (16 and 16.0) are the same
    identity, since the config validator may hand over either."""
    import json

    def canonical(value):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        raise TypeError(f"identity_hash: {type(value).__name__} is not a setting")

    blob = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def settings_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two settings dicts (for error messages)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{name}.")
        elif identity_hash([a]) != identity_hash([b]):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Tidy tables, read strictly


@dataclass(frozen=True)
class TableSpec:
    """What a tidy table must hold for its readers.

    ``required``: columns the readers use; ``text``: the columns that hold text (every other column
    holds numbers, or nothing where a value does not apply); ``flags``: True/False columns;
    ``integers``: whole numbers; ``complete``: columns never empty. ``rebuild`` says how to recover.
    """

    what: str
    required: tuple[str, ...]
    text: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    integers: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()
    rebuild: str = "delete it and rerun: the workflow rebuilds it from its inputs"


def _cell_error(kind: str, cell: str) -> str | None:
    if kind == "text":
        return None
    if kind == "flag":
        return None if cell in ("True", "False") else "is not True or False"
    try:
        value = float(cell)
    except ValueError:
        return "is not a number"
    if kind == "integer" and not (value == value and abs(value) != float("inf") and value.is_integer()):
        return "is not a whole number"
    return None


def read_table(path: str | Path, spec: TableSpec):
    """The table at ``path`` as a DataFrame, after refusing anything its readers would misread.

    Every row has the header's number of fields and the file ends with a line break (a file cut in the
    middle of a line is refused, not read with missing cells); the required columns are present; every
    cell of a number column is a number (or empty, unless the column is ``complete``). The error names
    the file, the row (1 = the first line after the header) and the column.
    """
    import csv
    import io

    import pandas as pd

    path = Path(path)
    where = f"{path} ({spec.what})"
    fail = lambda why: InputError(f"{where}: {why}; {spec.rebuild}")  # noqa: E731
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not raw.strip():
        raise fail("empty")
    if not raw.endswith("\n"):
        raise fail("its last line has no line break (the file was cut while it was written)")
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    header, body = rows[0], rows[1:]
    missing = [c for c in spec.required if c not in header]
    if missing:
        raise fail(f"missing columns {missing}")
    if len(set(header)) != len(header):
        raise fail(f"repeated column names {sorted({c for c in header if header.count(c) > 1})}")
    kinds = ["text" if c in spec.text else "flag" if c in spec.flags else "integer" if c in spec.integers
             else "number" for c in header]
    complete = [c in spec.complete for c in header]
    for i, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise fail(f"row {i} has {len(row)} fields, the header {len(header)}")
        for column, kind, needed, cell in zip(header, kinds, complete, row):
            if cell == "":
                if needed:
                    raise fail(f"row {i}, column '{column}': empty")
                continue
            why = _cell_error(kind, cell)
            if why:
                raise fail(f"row {i}, column '{column}': {cell[:40]!r} {why}")
    return pd.read_csv(path)
