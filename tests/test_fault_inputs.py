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

    from repro.lm.finetune import _save_resume_state, build_adapter_model
    from repro.lm.models import load_model

    def fresh():
        model = build_adapter_model(load_model(tiny_model_dir)[0], "lora", 2, 16, 0.0, ["q_proj", "v_proj"])
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    model, opt = fresh()
    _save_resume_state(tmp_path / "state", model, opt, 3)
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


def test_runs_table_missing_a_column(tmp_path):
    import pandas as pd

    from repro.lm.aggregate import REQUIRED_COLUMNS, check_columns

    path = tmp_path / "runs.csv"
    pd.DataFrame({c: [1.0] for c in REQUIRED_COLUMNS}).to_csv(path, index=False)
    check_columns(path, REQUIRED_COLUMNS)
    pd.DataFrame({c: [1.0] for c in REQUIRED_COLUMNS if c != "loss_forget"}).to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"{path}: missing column loss_forget"):
        check_columns(path, REQUIRED_COLUMNS)


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
