"""What the pipeline reads from others: results bundles, model folders, and nothing unpickled or run.

Crafted bundles are refused before a single file is written (inside or outside the destination); the
package never calls torch.load without weights_only=True, never sets trust_remote_code=True and never
unpickles anything; a model folder with Python code or only pickled weights is refused by the loader.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from repro.io import InputError
from repro.provenance import bundle as B

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "repro"


# --------------------------------------------------------------------------------------------- bundles


def _workflow_tree(root: Path) -> None:
    for rel, text in {"results/config/resolved.json": json.dumps({"seed": 0}), "results/lm/runs.csv": "a,b\n1,2\n",
                      "results/logs/aggregate.log": "ok\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _craft(tmp_path: Path, extra=(), index_files=None, drop=(), sums=None, name="crafted.tar.gz") -> Path:
    """A real bundle of a small tree, rewritten: members appended, removed, or the index replaced."""
    src = tmp_path / "src"
    if not src.exists():
        _workflow_tree(src)
    good = Path(B.pack(src, out=tmp_path / "good.tar.gz", fmt="gz")["bundle"])
    members = []
    with tarfile.open(good, "r:gz") as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            if m.name in drop:
                continue
            if m.name == B.INDEX and index_files is not None:
                index = json.loads(data)
                index["files"] = index_files(index["files"])
                data = json.dumps(index).encode()
                m.size = len(data)
            if m.name == B.SUMS and sums is not None:
                data = sums.encode()
                m.size = len(data)
            members.append((m, data))
    out = tmp_path / name
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for m, data in [*members, *extra]:
            tar.addfile(m, None if data is None else io.BytesIO(data))
    return out


def _indexed(path: str, data: bytes):
    """An index transform that also lists ``path`` with its true hash (so only the path is wrong)."""
    entry = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mtime": 0.0}
    return lambda files: [*files, entry]


def _nothing_written(dest: Path, outside: Path) -> None:
    assert not dest.exists() or not any(dest.rglob("*")), sorted(dest.rglob("*"))
    assert not any(outside.rglob("*")), sorted(outside.rglob("*"))


ESCAPES = {
    "absolute path": lambda o: [_file(str(o / "evil.txt"), b"x")],
    "dot-dot": lambda o: [_file("results/../../outside/evil.txt", b"x")],
    "symlink escape": lambda o: [_special("results/link", tarfile.SYMTYPE, str(o)), _file("results/link/evil.txt", b"x")],
    "hardlink escape": lambda o: [_special("results/hard", tarfile.LNKTYPE, str(o / "target"))],
    "character device": lambda o: [_special("results/dev", tarfile.CHRTYPE)],
    "block device": lambda o: [_special("results/blk", tarfile.BLKTYPE)],
    "fifo": lambda o: [_special("results/fifo", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_unpack_refuses_members_outside_or_not_files(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    bundle = _craft(tmp_path, extra=ESCAPES[case](outside))
    with pytest.raises(B.BundleError, match="refusing|outside"):
        B.unpack(bundle, dest)
    # The crafted member comes last: the good files before it were not written either.
    _nothing_written(dest, outside)


def test_unpack_refuses_index_paths_no_bundle_carries(tmp_path):
    # Listed in the index with their true hashes, so only the path is wrong: outside the workflow
    # folder, the workflow's own code, a pickled tensor a later job would load.
    for path in ("../outside/evil.txt", "/tmp/evil.txt", "Snakefile", "results/teb/models/x/model.pt"):
        dest, outside = tmp_path / "dest", tmp_path / "outside"
        outside.mkdir(exist_ok=True)
        bundle = _craft(tmp_path, extra=[_file(path, b"x")], index_files=_indexed(path, b"x"))
        with pytest.raises(B.BundleError, match="index lists"):
            B.unpack(bundle, dest)
        _nothing_written(dest, outside)


@pytest.mark.parametrize("defect", ["unlisted member", "listed file absent", "sums disagree", "duplicate member"])
def test_unpack_refuses_a_bundle_whose_index_disagrees_with_its_contents(tmp_path, defect):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    kwargs = {
        "unlisted member": {"extra": [_file("results/extra.csv", b"x")]},
        "listed file absent": {"drop": ("results/lm/runs.csv",)},
        "sums disagree": {"sums": "0" * 64 + "  results/lm/runs.csv\n"},
        "duplicate member": {"extra": [_file("results/lm/runs.csv", b"a,b\n1,2\n")]},
    }[defect]
    with pytest.raises(B.BundleError):
        B.unpack(_craft(tmp_path, **kwargs), dest)
    _nothing_written(dest, outside)


def test_unpack_refuses_a_destination_that_leads_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = _craft(tmp_path)
    # The destination itself a symbolic link out.
    link = tmp_path / "dest-link"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(B.BundleError, match="symbolic link"):
        B.unpack(bundle, link)
    # A folder inside the destination that is a symbolic link out.
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "results").symlink_to(outside, target_is_directory=True)
    with pytest.raises(B.BundleError, match="outside"):
        B.unpack(bundle, dest)
    assert not any(outside.rglob("*")) and sorted(p.name for p in dest.iterdir()) == ["results"]
    # The command line says so and fails.
    from repro.cli import main

    assert main(["bundle", "unpack", str(bundle), "--dest", str(link)]) != 0
    # The same bundle restores into a plain folder.
    assert B.unpack(bundle, tmp_path / "plain")["files"] == 3


# ---------------------------------------------------------------------------- nothing unpickled or run


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, {k.arg: k.value for k in node.keywords}, node


def unsafe_loads(source: str) -> list[str]:
    """Calls that would unpickle data or run code a download carries."""
    found = []
    for owner, name, kw, node in _calls(ast.parse(source)):
        where = f"line {node.lineno}: {owner + '.' if owner else ''}{name}"
        wo = kw.get("weights_only")
        if owner == "torch" and name == "load" and not (isinstance(wo, ast.Constant) and wo.value is True):
            found.append(where + " without weights_only=True")
        if owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
            found.append(where)
        if name == "read_pickle" or (name == "Unpickler"):
            found.append(where)
        ap = kw.get("allow_pickle")
        if name == "load" and owner in ("np", "numpy") and not (isinstance(ap, ast.Constant) and ap.value is False):
            found.append(where + " (numpy may unpickle; pass allow_pickle=False)")
        rc = kw.get("trust_remote_code")
        if rc is not None and not (isinstance(rc, ast.Constant) and rc.value is False):
            found.append(where + " with trust_remote_code not False")
    return found


def test_the_scanner_catches_what_it_looks_for():
    planted = ("import torch, pickle, numpy as np\n"
               "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p)\n"
               "AutoModel.from_pretrained(p, trust_remote_code=True)\ntorch.load(p, weights_only=True)\n")
    assert len(unsafe_loads(planted)) == 5


def test_package_never_unpickles_or_runs_remote_code():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = unsafe_loads(path.read_text())
        if hits:
            found[str(path.relative_to(PACKAGE))] = hits
    assert not found, found
    # Belt and braces for text the AST does not see (strings handed to eval, templates).
    text = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "trust_remote_code=True" not in text and "weights_only=False" not in text


# ------------------------------------------------------------------------------------------ model folders


def _copy_model(tiny_model_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_model_dir, dest)
    return dest


def test_model_folder_with_python_code_is_refused(tiny_model_dir, tmp_path):
    from repro.lm.models import ModelSourceError, fetch_model, load_model

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    marker = tmp_path / "code-ran"
    (model / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Custom"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"modeling_custom\.py.*never run"):
        load_model(model)
    with pytest.raises(ModelSourceError, match=r"model\.hf_repo: .*modeling_custom\.py"):
        fetch_model({"name": "x", "source": "hf", "hf_repo": str(model)}, tmp_path / "out", tmp_path / "dl")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_model_folder_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    from repro.lm.models import load_model

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    weights = next(model.glob("*.safetensors"))
    weights.rename(model / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        load_model(model)


def test_damaged_model_weights_are_named(tiny_model_dir, tmp_path):
    from repro.lm.models import load_model

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    weights = next(model.glob("*.safetensors"))
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(InputError) as err:
        load_model(model)
    assert str(weights) in str(err.value) and "damaged model weights" in str(err.value)
    assert f"delete {model}" in str(err.value)
    os.remove(weights)
    with pytest.raises(InputError, match="no \\*.safetensors weights"):
        load_model(model)
