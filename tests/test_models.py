"""Model sources: tiny (in-process), hf from a local directory (no network), refusal of pickles."""

from __future__ import annotations

import json
import shutil

import pytest

from repro.io import sha256_file
from repro.lm.models import MANIFEST, ModelSourceError, fetch_model, load_model


def test_tiny_model_is_deterministic_and_safetensors_only(tiny_model_dir, tmp_path):
    from conftest import TINY

    again = tmp_path / "tiny2"
    fetch_model({"name": "tiny", "source": "tiny", "tiny": TINY}, again, tmp_path / "dl")
    a = json.loads((tiny_model_dir / MANIFEST).read_text())["weights"]
    b = json.loads((again / MANIFEST).read_text())["weights"]
    assert a == b and a  # same seed, same weights (hash of every safetensors file)
    assert not list(again.glob("*.bin"))
    model, tok = load_model(again)
    assert model.config.num_hidden_layers == TINY["num_hidden_layers"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_hf_source_from_local_directory(tiny_model_dir, tmp_path):
    src = tmp_path / "snapshot"
    shutil.copytree(tiny_model_dir, src)
    (src / MANIFEST).unlink()
    out = tmp_path / "fetched"
    manifest = fetch_model({"name": "local", "source": "hf", "hf_repo": str(src)}, out, tmp_path / "dl")
    assert manifest["source"] == "hf"
    for name, digest in manifest["weights"].items():
        assert digest == sha256_file(src / name)
    model, _ = load_model(out)
    assert model.config.vocab_size > 0


def test_hf_source_refuses_pickled_weights(tiny_model_dir, tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors" and f.name != MANIFEST:
            shutil.copy2(f, src / f.name)
    (src / "pytorch_model.bin").write_bytes(b"not really weights")
    with pytest.raises(ModelSourceError, match="no .safetensors"):
        fetch_model({"name": "x", "source": "hf", "hf_repo": str(src)}, tmp_path / "out", tmp_path / "dl")
    assert not (tmp_path / "out").exists()


def test_load_model_names_a_directory_that_was_never_fetched(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model(tmp_path)


def test_gguf_conversion_reads_each_file_once_and_leaves_gguf_as_it_was(tmp_path):
    import gguf

    from repro.lm.models import _gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    with _gguf_read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and first.fields["llama.block_count"].parts[-1][0] == 2
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
