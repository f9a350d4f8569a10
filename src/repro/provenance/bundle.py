"""Results bundles: ``repro bundle pack`` / ``repro bundle unpack FILE``.

A bundle carries what the paper is built from, so a laptop rebuilds it from a cluster's run without
training anything:

- the config's results folder (``results/**`` for config.yaml, ``results-<name>/**`` for another
  config; its ``logs/`` included) except model weights and training state (``*.safetensors``, ``*.pt``, ``*.pth``,
  ``*.bin``, ``*.ckpt``, ``*.gguf``, ``*.npy``, ``*.npz``, ``*.pkl``, ``*.onnx``, any ``state/`` folder),
  the prepared data files (``<results>/data/<model>/*``: regenerable and large at paper scale; their
  ``manifest.json`` with a SHA-256 per file is kept), the LaTeX build folder and earlier bundles;
- from ``resources/`` only each model's ``manifest.json`` and provenance manifests (never weights);
- ``.bundle/index.json`` (every file with SHA-256, size and mtime; what was left out and why),
  ``.bundle/SHA256SUMS`` (``sha256sum -c`` format) and ``.bundle/snakemake-metadata.json`` (Snakemake's
  metadata records of the bundled outputs).

Snakemake decides that an output is up to date from (i) its existence, (ii) modification times
(an input newer than the output reruns the job) and (iii) its metadata record (params, code, input set,
software stack), where a missing record is reported but never reruns a job. A job whose outputs exist
and are up to date is not rerun because an *upstream* file is absent (the model weights): only a job
that has to run pulls missing upstream outputs in. So the bundle keeps every declared output that the
paper depends on, sub-second modification times (PAX headers, restored by tarfile), and the metadata
records, which unpack writes back into ``.snakemake/metadata`` (so a changed parameter is still
noticed, exactly as on the machine that ran the jobs) after clearing stale ``incomplete`` markers.

A bundle may come from someone else. Unpack reads it twice: the first pass checks every member (a regular
file the index lists, with the index's SHA-256 and size; no absolute path, ``..``, link, device or FIFO),
the index (only paths pack would choose: nothing outside its results folder and model manifests, no weights
that unpickle, no code), ``SHA256SUMS`` against the index, and the destination (not a symbolic link, no
link inside it leading out); only then does the second pass write, each file through a temporary name.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path, PurePosixPath

from ..config import ConfigError, config_hash
from ..config import check_results_name as _check_results_name
from ..io import atomic_path, sha256_file
from ..locks import JOBS_LOCK, RUN_INFO, RUN_LOCK
from .manifest import MANIFEST_DIR, git_state, package_versions, utc_now

INDEX = ".bundle/index.json"
SUMS = ".bundle/SHA256SUMS"
METADATA = ".bundle/snakemake-metadata.json"
WEIGHT_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".npy", ".npz", ".pkl", ".onnx"}
OUTSIDE = "outside the results folder and resources/"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class BundleError(RuntimeError):
    pass


def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def check_results_name(results: object) -> str:
    try:
        return _check_results_name(results)
    except ConfigError as exc:
        raise BundleError(str(exc)) from None


def selection_reason(rel: PurePosixPath, results: str = "results") -> str | None:
    """None when ``rel`` (relative to the workflow root) goes into the bundle, else why not."""
    parts = rel.parts
    if not parts or parts[0] not in (results, "resources"):
        return OUTSIDE
    if parts[0] == "resources":
        ok = len(parts) >= 4 and parts[1] == "models" and (
            (len(parts) == 4 and parts[3] == "manifest.json") or (len(parts) == 5 and parts[3] == MANIFEST_DIR))
        return None if ok else "resources: only model manifests travel"
    if rel.suffix in WEIGHT_SUFFIXES:
        return "model weights or tensors"
    if "state" in parts[:-1]:
        return "resumable training state"
    if parts[0] == results:
        name = parts[-1]
        if len(parts) == 2 and name.startswith("bundle-") and ".tar" in name:
            return "a bundle"
        if len(parts) == 2 and name in (RUN_LOCK, RUN_INFO, JOBS_LOCK):
            return "the run's locks (repro.locks)"
        if parts[1:3] == ("paper", "build"):
            return "LaTeX build folder"
        if parts[1] == "data" and len(parts) >= 4 and not (
                (len(parts) == 4 and name == "manifest.json") or parts[3] == MANIFEST_DIR):
            return "prepared data (regenerable; hashed in its manifest.json)"
    return None


def select_files(root: Path, max_file_mb: float, results: str = "results") -> tuple[list[str], list[dict]]:
    chosen, omitted = [], []
    for top in (results, "resources"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if path.is_symlink() or not path.is_file():
                    continue
                rel = PurePosixPath(path.relative_to(root).as_posix())
                reason = selection_reason(rel, results)
                if reason is None and path.stat().st_size > max_file_mb * 2**20:
                    reason = f"larger than {max_file_mb:g} MB"
                if reason is None:
                    chosen.append(str(rel))
                elif reason != OUTSIDE:
                    omitted.append({"path": str(rel), "reason": reason})
    return chosen, omitted


# Snakemake's file persistence stores one JSON record per output under .snakemake/metadata, named by
# the urlsafe base64 of the output path, split into '@'-prefixed folders when longer than a file name.
def _decode_record_name(rel_parts: tuple[str, ...]) -> str | None:
    b64 = "".join(p[1:] if p.startswith("@") else p for p in rel_parts)
    try:
        return base64.urlsafe_b64decode(b64.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _record_path(subject: Path, key: str) -> Path:
    try:
        max_len = os.pathconf(subject, "PC_NAME_MAX") or 255
    except (OSError, ValueError):
        max_len = 255
    b64 = base64.urlsafe_b64encode(key.encode()).decode()
    chunks = [b64[i: i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    return subject.joinpath(*(["@" + c for c in chunks[:-1]] + [chunks[-1]]))


def read_metadata(root: Path, keys: set[str]) -> dict[str, dict]:
    meta_dir = root / ".snakemake" / "metadata"
    records = {}
    if not meta_dir.is_dir():
        return records
    for dirpath, _, filenames in os.walk(meta_dir):
        for fn in filenames:
            path = Path(dirpath) / fn
            key = _decode_record_name(path.relative_to(meta_dir).parts)
            if key in keys:
                try:
                    records[key] = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
    return records


def write_metadata(root: Path, records: dict[str, dict]) -> int:
    meta_dir = root / ".snakemake" / "metadata"
    incomplete = root / ".snakemake" / "incomplete"
    meta_dir.mkdir(parents=True, exist_ok=True)
    for key, record in records.items():
        path = _record_path(meta_dir, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        if incomplete.is_dir():  # a stale marker would make Snakemake treat the restored file as broken
            marker = _record_path(incomplete, key)
            if marker.exists():
                marker.unlink()
    return len(records)


def bundle_config_hash(root: Path, results: str = "results") -> str:
    resolved = root / results / "config" / "resolved.json"
    if not resolved.exists():
        raise BundleError(f"{resolved} not found: run the workflow first (it writes the resolved config)")
    return config_hash(json.loads(resolved.read_text()))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = time.time()
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _open_write(path: Path, fmt: str):
    raw = open(path, "wb")
    if fmt == "zst":
        stream = _zstd().ZstdCompressor(level=10, threads=-1).stream_writer(raw, closefd=True)
    else:
        stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
    return raw, stream


def pack(root: Path = Path("."), out: Path | None = None, fmt: str = "auto", max_file_mb: float = 256.0,
         metadata: bool = True, results: str = "results") -> dict:
    root = Path(root)
    results = check_results_name(results)
    chash = bundle_config_hash(root, results)
    if fmt == "auto":
        fmt = "zst" if _zstd() else "gz"
    if fmt == "zst" and not _zstd():
        raise BundleError("--format zst needs the zstandard package (pip install zstandard)")
    out = Path(out) if out else root / results / f"bundle-{chash}.tar.{fmt}"
    files, omitted = select_files(root, max_file_mb, results)
    entries = []
    for rel in files:
        st = (root / rel).stat()
        entries.append({"path": rel, "sha256": sha256_file(root / rel), "size": st.st_size,
                        "mtime": st.st_mtime})
    records = read_metadata(root, set(files)) if metadata else {}
    index = {
        "schema": "repro-bundle/1", "config_hash": chash, "results": results, "created": utc_now(), "git": git_state(root),
        "packages": package_versions(("repro", "snakemake")), "files": entries, "omitted": omitted,
        "metadata_records": len(records),
    }
    sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    raw, stream = _open_write(tmp, fmt)
    try:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            # The index comes first so that unpack knows every file before it writes any.
            _add_bytes(tar, INDEX, json.dumps(index, indent=1).encode())
            _add_bytes(tar, SUMS, sums.encode())
            _add_bytes(tar, METADATA, json.dumps(records).encode())
            for rel in files:
                info = tar.gettarinfo(root / rel, arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
    finally:
        stream.close()
        if not raw.closed:
            raw.close()
    os.replace(tmp, out)
    return {"bundle": str(out), "files": len(entries), "bytes": out.stat().st_size, "omitted": len(omitted),
            "metadata_records": len(records), "config_hash": chash, "results": results}


def _open_read(path: Path):
    raw = open(path, "rb")
    magic = raw.read(4)
    raw.seek(0)
    if magic == ZSTD_MAGIC:
        if not _zstd():
            raw.close()
            raise BundleError(f"{path} is zstd-compressed: pip install zstandard")
        return raw, _zstd().ZstdDecompressor().stream_reader(raw, closefd=True)
    if magic[:2] == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    raw.close()
    raise BundleError(f"{path}: not a .tar.zst or .tar.gz bundle")


def _member_problem(member: tarfile.TarInfo, expected: dict[str, str]) -> str | None:
    """Why a tar member must not be restored, or None. Only regular files the index lists are restored."""
    name = PurePosixPath(member.name)
    if member.name.startswith("/") or name.is_absolute():
        return "an absolute path"
    if ".." in name.parts:
        return "a path that climbs out with '..'"
    if member.issym():
        return f"a symbolic link (to {member.linkname})"
    if member.islnk():
        return f"a hard link (to {member.linkname})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a folder entry (bundles hold files only)"
    if not member.isfile():
        return f"a tar entry of type {member.type!r}"
    if member.name not in expected:
        return "not in the bundle's index"
    return None


def _index_files(bundle: Path, index: dict) -> dict[str, dict]:
    """The index's files by path, each path checked as pack would have chosen it."""
    files: dict[str, dict] = {}
    try:
        results = check_results_name(index.get("results", "results"))
    except BundleError:
        raise BundleError(f"{bundle}: the index names the results folder {index.get('results')!r}; "
                          "not a repro bundle") from None
    try:
        entries = list(index["files"])
    except (KeyError, TypeError):
        raise BundleError(f"{bundle}: the index has no file list; not a repro bundle") from None
    for entry in entries:
        try:
            path, digest, size = entry["path"], entry["sha256"], int(entry["size"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{bundle}: malformed index entry {entry!r}") from None
        rel = PurePosixPath(path)
        if not isinstance(path, str) or rel.is_absolute() or ".." in rel.parts or str(rel) != path:
            raise BundleError(f"{bundle}: the index lists {path!r}, a path outside the workflow folder")
        reason = selection_reason(rel, results)
        if reason is not None:
            # Only what pack takes travels: never code, weights that unpickle, or anything outside
            # the results folder and the model manifests.
            raise BundleError(f"{bundle}: the index lists {path}, which no bundle carries ({reason})")
        if path in files:
            raise BundleError(f"{bundle}: the index lists {path} twice")
        files[path] = {"sha256": digest, "size": size}
    return files


def _check_destination(dest: Path, paths) -> None:
    """Refuse a destination through which a restored file would land outside it."""
    if dest.is_symlink():
        raise BundleError(f"destination {dest} is a symbolic link (to {os.readlink(dest)}); "
                          "unpack into the folder itself")
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"destination {dest} is not a folder")
    root = os.path.realpath(dest)
    for rel in paths:
        target = os.path.realpath(dest / rel)
        if os.path.commonpath([root, target]) != root:
            raise BundleError(f"{dest / rel} would be written outside {dest} (a symbolic link on the way "
                              f"resolves to {target}); nothing was restored")
        parent = (dest / rel).parent
        while parent != dest and not parent.exists():
            parent = parent.parent
        if parent != dest and not parent.is_dir():
            raise BundleError(f"{parent} is a file where the bundle needs a folder; nothing was restored")


def _read_members(bundle: Path):
    raw, stream = _open_read(bundle)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                yield tar, member
    except tarfile.TarError as exc:
        raise BundleError(f"{bundle}: damaged archive ({exc}); nothing was restored") from exc
    finally:
        stream.close()
        if not raw.closed:
            raw.close()


def _digest(fileobj, sink=None) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for block in iter(lambda: fileobj.read(1 << 20), b""):
        h.update(block)
        size += len(block)
        if sink is not None:
            sink.write(block)
    return h.hexdigest(), size


def _verify(bundle: Path, dest: Path, force: bool) -> tuple[dict, dict[str, dict], str | None, dict]:
    """First pass: read the whole bundle and check it against its index and the destination; write nothing."""
    index = sums = records = None
    files: dict[str, dict] = {}
    seen: set[str] = set()
    for tar, member in _read_members(bundle):
        if member.name.startswith(".bundle/"):
            if member.name not in (INDEX, SUMS, METADATA) or not member.isfile():
                raise BundleError(f"{bundle}: unexpected bundle entry {member.name}")
            if (member.name == INDEX and index is not None) or (member.name == SUMS and sums is not None) or \
                    (member.name == METADATA and records is not None):
                raise BundleError(f"{bundle}: {member.name} appears twice")
            data = tar.extractfile(member).read()
            try:
                if member.name == INDEX:
                    index = json.loads(data)
                    files = _index_files(bundle, index)
                    _check_destination(dest, files)
                    conflicts = [p for p, e in files.items()
                                 if (dest / p).is_file() and sha256_file(dest / p) != e["sha256"]]
                    if conflicts and not force:
                        raise BundleError(
                            f"{len(conflicts)} files in {dest} differ from the bundle (e.g. {conflicts[0]}); "
                            "unpack into an empty folder or pass --force to overwrite them")
                elif member.name == SUMS:
                    sums = data.decode()
                else:
                    records = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BundleError(f"{bundle}: {member.name} is not readable ({exc})") from exc
            continue
        if index is None:
            raise BundleError(f"{bundle}: the index must come first; not a repro bundle")
        problem = _member_problem(member, files)
        if problem:
            raise BundleError(f"{bundle}: refusing {member.name!r}: {problem}; nothing was restored")
        if member.name in seen:
            raise BundleError(f"{bundle}: {member.name} appears twice; nothing was restored")
        seen.add(member.name)
        digest, size = _digest(tar.extractfile(member))
        if digest != files[member.name]["sha256"] or size != files[member.name]["size"]:
            raise BundleError(f"bundle damaged: {member.name} has the wrong SHA-256 or size for its index entry; "
                              "nothing was restored")
    if index is None:
        raise BundleError(f"{bundle}: no index; not a repro bundle")
    missing = sorted(set(files) - seen)
    if missing:
        raise BundleError(f"bundle damaged: {len(missing)} files of the index are missing from it "
                          f"(e.g. {missing[0]}); nothing was restored")
    if sums is not None:
        listed = {}
        for line in sums.splitlines():
            digest, _, path = line.partition("  ")
            listed[path] = digest
        if listed != {p: e["sha256"] for p, e in files.items()}:
            raise BundleError(f"bundle damaged: {SUMS} disagrees with {INDEX}; nothing was restored")
    # Records only of restored outputs: a record names its file by an encoded path, never a location.
    records = {k: v for k, v in (records or {}).items() if k in files and isinstance(v, dict)}
    return index, files, sums, records


def unpack(bundle: Path, dest: Path = Path("."), force: bool = False, metadata: bool = True) -> dict:
    """Restore a bundle into ``dest``. The bundle is read twice: the first pass checks every member
    against the index, the index against the destination and SHA256SUMS, and writes nothing; only
    then does the second pass write, each file through a temporary name checked again before its rename.
    """
    bundle, dest = Path(bundle), Path(dest)
    index, files, sums, records = _verify(bundle, dest, force)
    restored = []
    for tar, member in _read_members(bundle):
        if member.name.startswith(".bundle/"):
            continue
        # A rename replaces a symbolic link itself, never the file it points to.
        with atomic_path(dest / member.name) as tmp:
            with open(tmp, "wb") as out:
                digest, _ = _digest(tar.extractfile(member), out)
            if digest != files[member.name]["sha256"]:
                raise BundleError(f"{bundle} changed while it was restored ({member.name}); unpack it again")
            os.chmod(tmp, (member.mode & 0o755) | 0o600)
            os.utime(tmp, (member.mtime, member.mtime))
        restored.append(member.name)
    n_records = write_metadata(dest, records) if metadata else 0
    return {"files": len(restored), "config_hash": index.get("config_hash"), "results": index.get("results", "results"),
            "metadata_records": n_records,
            "created": index.get("created"), "git": index.get("git"), "sha256sums": bool(sums)}


def verify_tree(root: Path, bundle_index: dict) -> list[str]:
    """Paths whose content under ``root`` differs from the index (empty: identical)."""
    return [e["path"] for e in bundle_index["files"]
            if not (Path(root) / e["path"]).is_file() or sha256_file(Path(root) / e["path"]) != e["sha256"]]


def read_index(bundle: Path) -> dict:
    raw, stream = _open_read(Path(bundle))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name == INDEX:
                    return json.loads(tar.extractfile(member).read())
    finally:
        stream.close()
        if not raw.closed:
            raw.close()
    raise BundleError(f"{bundle}: no index")


