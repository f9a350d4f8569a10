"""Damaged inputs are refused by their loaders with the file and the way out; writes under a full disk
leave nothing behind (the DAG-level drills are in test_drills.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from repro.io import DiskFullError, InputError, atomic_path, atomic_write_text, is_disk_full


def _truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(int(path.stat().st_size * keep))


def _garble_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(8)
        fh.write(b"\xff" * 16)


@pytest.mark.parametrize("damage", [_truncate, _garble_header])
def test_damaged_adapter_checkpoint_is_named(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    from repro.lm.forgetting import check_checkpoints
    from repro.lm.models import load_safetensors

    ckpt = tmp_path / "run" / "checkpoints" / "step-000004"
    ckpt.mkdir(parents=True)
    save_file({"a": torch.ones(64, 4), "b": torch.zeros(4, 64)}, ckpt / "adapter_model.safetensors")
    assert set(load_safetensors(ckpt / "adapter_model.safetensors")) == {"a", "b"}
    damage(ckpt / "adapter_model.safetensors")
    with pytest.raises(InputError, match="damaged adapter checkpoint file"):
        load_safetensors(ckpt / "adapter_model.safetensors")
    with pytest.raises(InputError) as err:
        check_checkpoints(tmp_path / "run", {0: tmp_path / "run/checkpoints/step-000004"})
    assert str(ckpt / "adapter_model.safetensors") in str(err.value)
    assert f"delete the run folder {tmp_path / 'run'}" in str(err.value)


@pytest.fixture
def resume_setup(tiny_model_dir, tmp_path):
    import torch

    from repro.lm.adapters import build_adapter_model
    from repro.lm.finetune import _save_resume_state
    from repro.lm.models import load_model

    def fresh():
        model = build_adapter_model(load_model(tiny_model_dir)[0], "lora", 2, 16, 0.0, ["q_proj", "v_proj"])
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    model, opt = fresh()
    _save_resume_state(tmp_path / "state", model, opt, 3, identity="0123abcd")
    return tmp_path / "state", fresh


@pytest.mark.parametrize("file, damage", [("meta.json", _truncate), ("adapter.safetensors", _truncate),
                                          ("optimizer.pt", _truncate), ("optimizer.pt", os.remove)])
def test_damaged_resume_state_is_named(resume_setup, file, damage):
    from repro.lm.finetune import _load_resume_state

    state, fresh = resume_setup
    assert _load_resume_state(state, *fresh()) == 3
    damage(state / "resume" / file)
    with pytest.raises(InputError) as err:
        _load_resume_state(state, *fresh())
    assert str(state / "resume" / file) in str(err.value) and "damaged resume state" in str(err.value)
    assert f"delete {state / 'resume'}" in str(err.value)


def test_data_file_that_no_longer_matches_its_manifest(tmp_path):
    from repro.lm.data import DataError, check_data_files
    from repro.lm.models import sha256_file

    data = tmp_path / "data"
    train = data / "finetune" / "x" / "train.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text('{"id": 1}\n')
    (data / "manifest.json").write_text(json.dumps({"files": {"finetune/x/train.jsonl": {"sha256": sha256_file(train)}}}))
    check_data_files(data, [train])
    train.write_text('{"id": 2}\n')
    with pytest.raises(DataError, match=rf"{train}: SHA-256 .* does not match its manifest") as err:
        check_data_files(data, [train])
    assert f"delete {data / 'manifest.json'}" in str(err.value)
    with pytest.raises(DataError, match="not listed"):
        check_data_files(data, [data / "finetune" / "x" / "heldout.jsonl"])
    train.unlink()
    with pytest.raises(DataError, match="listed in .* but missing"):
        check_data_files(data, [train])


def _runs_csv(path: Path) -> Path:
    import pandas as pd

    from repro.lm.aggregate import REQUIRED_COLUMNS

    rows = [{c: (f"run{i}" if c in ("model", "dataset", "method") else i + 1) for c in REQUIRED_COLUMNS} for i in range(3)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_runs_table_missing_a_column(tmp_path):
    import pandas as pd

    from repro.io import read_table
    from repro.lm.aggregate import REQUIRED_COLUMNS, RUNS_TABLE

    path = _runs_csv(tmp_path / "runs.csv")
    assert len(read_table(path, RUNS_TABLE)) == 3
    pd.read_csv(path).drop(columns="loss_forget").to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"{path} \(.*\): missing columns \['loss_forget'\]"):
        read_table(path, RUNS_TABLE)
    assert "loss_forget" in REQUIRED_COLUMNS


def _cut_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])


def _short_row(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0]
    path.write_text("\n".join(lines) + "\n")


def _set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Row ``row`` (1 = the first after the header) gets ``value`` in ``column``, written as text."""
    lines = path.read_text().splitlines()
    cells = lines[row].split(",")
    cells[lines[0].split(",").index(column)] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _letters_in_a_number(path: Path) -> None:
    _set_cell(path, 2, "loss_forget", "6.2x")


def _empty_loss(path: Path) -> None:
    _set_cell(path, 3, "loss_ft", "")


@pytest.mark.parametrize("damage, message", [
    (_cut_last_line, "its last line has no line break"),
    (_short_row, "row 2 has .* fields, the header"),
    (_letters_in_a_number, "row 2, column 'loss_forget': '6.2x' is not a number"),
    (_empty_loss, "row 3, column 'loss_ft': empty"),
])
def test_tidy_tables_are_read_strictly(tmp_path, damage, message):
    """Each damage a lenient reader turns into NaN cells or a shifted column is refused, naming the file,
    the row and the column, with the way to rebuild it."""
    from repro.io import read_table
    from repro.lm.aggregate import RUNS_TABLE

    path = _runs_csv(tmp_path / "runs.csv")
    damage(path)
    with pytest.raises(InputError, match=rf"{path} .*{message}.*delete it and rerun"):
        read_table(path, RUNS_TABLE)


def test_fit_details_must_match_the_fits_table(tmp_path):
    """A fit JSON deleted, added or damaged is refused: the readers would silently drop or add a law."""
    import pandas as pd

    from repro.laws.schemas import fit_file_name, load_fits

    laws = tmp_path / "laws"
    (laws / "fits").mkdir(parents=True)
    fits = [{"model": "m", "dataset": "d", "method": meth, "target": "loss_forget", "family": "linear",
             "status": "ok", "param": "b", "value": 0.1} for meth in ("lora", "rslora")]
    pd.DataFrame(fits).to_csv(laws / "fits.csv", index=False)
    for f in fits:
        (laws / "fits" / fit_file_name(f)).write_text(json.dumps(f))
    assert [f["method"] for f in load_fits(laws / "fits")] == ["lora", "rslora"]
    (laws / "fits" / fit_file_name(fits[1])).unlink()
    with pytest.raises(InputError, match=r"no JSON for \['m_d_rslora_loss_forget_linear.json'\].*delete .*fits.csv"):
        load_fits(laws / "fits")
    (laws / "fits" / fit_file_name(fits[1])).write_text("{")
    with pytest.raises(InputError, match="damaged fit"):
        load_fits(laws / "fits")
    (laws / "fits" / fit_file_name(fits[1])).write_text(json.dumps(fits[1]))
    (laws / "fits" / "m_d_dora_loss_forget_linear.json").write_text("{}")
    with pytest.raises(InputError, match="JSON not in the table"):
        load_fits(laws / "fits")


@pytest.mark.parametrize("file, damage", [
    ("model.safetensors", "same-size"), ("config.json", "edited"), ("tokenizer.json", "deleted")])
def test_model_files_are_verified_on_every_load(tiny_model_dir, tmp_path, file, damage):
    """Weights damaged in place (same size), an edited config.json or a missing tokenizer file: the load
    is refused naming the file and the way to refetch; an undamaged folder is hashed once, then trusted
    by size and modification time."""
    import shutil

    from repro.lm.models import VERIFIED, load_model

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    (model / VERIFIED).unlink(missing_ok=True)
    load_model(model)
    assert file in json.loads((model / VERIFIED).read_text())
    path = model / file
    if damage == "same-size":
        data = bytearray(path.read_bytes())
        data[-300:-44] = bytes(256)
        path.write_bytes(bytes(data))
    elif damage == "edited":
        path.write_text(path.read_text().replace('"silu"', '"gelu"'))
    else:
        path.unlink()
    with pytest.raises(InputError, match=rf"{path}: (SHA-256|listed in).*delete the folder {model} and rerun"):
        load_model(model)


def test_teb_task_tensor_file_damaged_or_changed(tmp_path):
    import torch

    from repro.teb.tasks import tensor_digest
    from repro.teb.train import load_data

    splits = {"train": {"y": torch.arange(6.0), "x": torch.ones(6), "target": torch.zeros(6), "switch": torch.zeros(6)}}
    path = tmp_path / "data.pt"
    torch.save(splits, path)
    (tmp_path / "manifest.json").write_text(json.dumps({"sha256": tensor_digest(splits)}))
    assert torch.equal(load_data(path)["train"]["y"], splits["train"]["y"])
    splits["train"]["y"][0] = 7.0
    torch.save(splits, path)
    with pytest.raises(InputError, match=rf"{path}: its tensors do not match the SHA-256"):
        load_data(path)
    _truncate(path)
    with pytest.raises(InputError, match=rf"{path}: damaged task tensor file"):
        load_data(path)


def test_atomic_path_under_a_full_disk_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "model.pt"
    atomic_write_text(target, "old")
    with pytest.raises(DiskFullError, match=str(target)):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("partial")
            raise OSError(errno.EFBIG, "File too large")
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    # Libraries that wrap the OS error keep its text.
    assert is_disk_full(RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                     'message: "No space left on device" })'))
    assert not is_disk_full(ValueError("bad value"))


def test_quoted_text_cells_with_commas_and_line_breaks_are_read(tmp_path):
    """A status like 'degenerate: a, b' or a multi-line message is one cell, not extra fields or rows."""
    import pandas as pd

    from repro.io import TableSpec, read_table

    path = tmp_path / "t.csv"
    pd.DataFrame({"status": ["ok", "degenerate: one P, one N\nsee log"], "value": [1.0, None]}).to_csv(path, index=False)
    table = read_table(path, TableSpec("a test table", ("status", "value"), text=("status",)))
    assert list(table["status"]) == ["ok", "degenerate: one P, one N\nsee log"]
