"""Config validation: shipped configs pass with defaults filled; bad configs fail naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from repro import cli
from repro.config import ConfigError, config_hash, load_config, validate_config
from repro.lm.runs import format_lr

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "config.yaml": ROOT / "config.yaml",
    "presets/test.yaml": ROOT / "presets" / "test.yaml",
    "presets/paper.yaml": ROOT / "presets" / "paper.yaml",
}


def _raw(path: Path) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _assert_contains(full, part, where="config"):
    """Every key/value of ``part`` is in ``full`` (recursively into mappings)."""
    if isinstance(part, dict):
        assert isinstance(full, dict), where
        for key, value in part.items():
            assert key in full, f"{where}.{key}"
            _assert_contains(full[key], value, f"{where}.{key}")
    else:
        assert full == part, where


@pytest.fixture
def base() -> dict:
    """The raw (defaults not filled) content of presets/test.yaml; each test mutates its own copy."""
    return copy.deepcopy(_raw(SHIPPED["presets/test.yaml"]))


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", sorted(SHIPPED), ids=sorted(SHIPPED))
def test_shipped_config_validates_and_keeps_values(name):
    path = SHIPPED[name]
    raw = _raw(path)
    cfg = load_config(path)
    # every value written in the file survives validation unchanged (defaults only add keys)
    _assert_contains(cfg, raw)
    assert set(cfg["data"]["finetune"]) == set(raw["data"]["finetune"])
    assert list(cfg["data"]["forgetting"]) == list(raw["data"]["forgetting"])  # order: first is loss_forget
    # defaults are filled, whether or not the file sets them
    for key in ("alpha", "dropout", "target_modules", "checkpoints", "resume_every", "adam_betas",
                "max_grad_norm", "weight_decay", "fast_loss", "group_by_length"):
        assert key in cfg["finetune"], key
    assert {"batch_size", "max_cache_gb"} <= set(cfg["evaluate"])
    for spec in [*cfg["data"]["finetune"].values(), *cfg["data"]["forgetting"].values()]:
        assert {"max_train", "max_heldout", "heldout_percent", "num_sequences", "length", "split"} <= set(spec)


def test_defaults_filled_for_test_preset():
    raw = _raw(SHIPPED["presets/test.yaml"])
    assert "alpha" not in raw["finetune"] and "max_cache_gb" not in raw["evaluate"]
    cfg = load_config(SHIPPED["presets/test.yaml"])
    ft = cfg["finetune"]
    assert ft["alpha"] == 16
    assert ft["dropout"] == 0.0
    assert ft["checkpoints"] == "log2"
    assert ft["resume_every"] == 50
    assert ft["adam_betas"] == [0.9, 0.999]
    assert ft["max_grad_norm"] is None
    assert ft["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert cfg["evaluate"] == {"batch_size": 8, "max_cache_gb": 4}
    assert cfg["model"]["tiny"]["max_position_embeddings"] == 512  # nested default inside model.tiny
    si = cfg["data"]["finetune"]["stdlib-instruct"]
    assert si["heldout_percent"] == 10 and si["max_answer_chars"] == 600
    assert si["max_train"] == 64  # the file's value, not the default 2000


def test_defaults_filled_for_absent_sections(base):
    del base["evaluate"]
    del base["seed"], base["device"], base["dtype"]
    del base["model"]["tiny"]
    cfg = validate_config(base)
    assert cfg["evaluate"] == {"batch_size": 8, "max_cache_gb": 4}
    assert (cfg["seed"], cfg["device"], cfg["dtype"]) == (0, "cpu", "float32")
    assert cfg["model"]["tiny"] == {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512, "seed": 0,
    }


def test_validate_does_not_mutate_input(base):
    before = copy.deepcopy(base)
    cfg = validate_config(base)
    assert base == before
    assert "alpha" in cfg["finetune"] and "alpha" not in base["finetune"]


def test_validate_is_idempotent(base):
    once = validate_config(base)
    assert validate_config(once) == once


def test_non_mapping_config_rejected():
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate_config([1, 2, 3])


# --------------------------------------------------------------------------- bad configs


def _set(path: str, value):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _delete(path: str):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


def _both(*fns):
    def mutate(cfg):
        for f in fns:
            f(cfg)
    return mutate


BAD = [
    # (id, mutation, key path that the message must name, extra substring or None)
    ("unknown-top-level-key", _set("extra_section", {"a": 1}), "'extra_section'", "unknown key"),
    ("typo-finetune.rnaks", _set("finetune.rnaks", [1, 4]), "finetune.rnaks", "unknown key"),
    ("typo-model.tiny.hiden_size", _set("model.tiny.hiden_size", 64), "model.tiny.hiden_size", "unknown key"),
    ("ranks-as-string", _set("finetune.ranks", "1,4"), "finetune.ranks", "array"),
    ("max_steps-as-string", _set("finetune.max_steps", "64"), "finetune.max_steps", "integer"),
    ("rank-zero", _set("finetune.ranks", [1, 0]), "finetune.ranks[1]", "minimum"),
    ("rank-negative", _set("finetune.ranks", [4, 1, -2]), "finetune.ranks[2]", "minimum"),
    ("ranks-empty", _set("finetune.ranks", []), "finetune.ranks", "non-empty"),
    ("ranks-duplicate", _set("finetune.ranks", [4, 4]), "finetune.ranks", "non-unique"),
    ("method-qlora", _set("finetune.methods", ["qlora", "lora"]), "finetune.methods[0]", "'qlora'"),
    ("hf-without-hf_repo", _set("model", {"name": "llama", "source": "hf"}), "model.hf_repo",
     "needed when source is 'hf'"),
    ("pypi-gguf-without-pypi_package", _set("model", {"name": "smol", "source": "pypi-gguf"}),
     "model.pypi_package", "needed when source is 'pypi-gguf'"),
    ("unknown-model-source", _set("model.source", "ollama"), "model.source", "'ollama'"),
    ("bad-model-name", _set("model.name", "tiny llama/x"), "model.name", None),
    ("learning-rate-zero", _set("finetune.learning_rates", [0.001, 0]), "finetune.learning_rates[1]", None),
    ("learning-rate-negative", _set("finetune.learning_rates", [-1e-4]), "finetune.learning_rates[0]", None),
    ("finetune.datasets-not-in-data", _set("finetune.datasets", ["stdlib-instruct", "openorca"]),
     "finetune.datasets[1]", "'openorca'"),
    ("forgetting-corpus-stdlib-docstrings", _set("data.forgetting.docs", {"kind": "stdlib-docstrings"}),
     "data.forgetting.docs.kind", "instruction data"),
    ("finetune-dataset-model-samples", _set("data.finetune.samples", {"kind": "model-samples"}),
     "data.finetune.samples.kind", "forgetting corpus"),
    ("unknown-dataset-kind", _set("data.finetune.stdlib-instruct.kind", "csv"),
     "data.finetune.stdlib-instruct.kind", "'csv'"),
    ("hf-instruct-without-path", _set("data.finetune.orca", {"kind": "hf-instruct"}), "data.finetune.orca.path",
     "needed when kind is 'hf-instruct'"),
    ("unknown-dataset-key", _set("data.forgetting.pydoc-topics.num_seqs", 4),
     "data.forgetting.pydoc-topics.num_seqs", "unknown key"),
    ("checkpoints-log3", _set("finetune.checkpoints", "log3"), "finetune.checkpoints", "'log3'"),
    ("checkpoints-1", _set("finetune.checkpoints", 1), "finetune.checkpoints", "1 is not valid"),
    ("checkpoints-step-above-max_steps", _set("finetune.checkpoints", [0, 4, 100]), "finetune.checkpoints",
     "[100] exceed finetune.max_steps=8"),
    ("tiny-hidden-not-divisible-by-heads", _set("model.tiny.hidden_size", 66), "model.tiny.hidden_size",
     "num_attention_heads=4"),
    ("tiny-kv-heads-not-dividing-heads", _set("model.tiny.num_key_value_heads", 3),
     "model.tiny.num_key_value_heads", None),
    ("missing-section-data", _delete("data"), "'data'", "missing key"),
    ("missing-finetune.max_steps", _delete("finetune.max_steps"), "finetune.max_steps", "missing key"),
    ("device-tpu", _set("device", "tpu"), "device", "'tpu'"),
    ("evaluate.batch_size-zero", _set("evaluate.batch_size", 0), "evaluate.batch_size", None),
]


@pytest.mark.parametrize("mutate,key,extra", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_key(base, mutate, key, extra):
    validate_config(copy.deepcopy(base))  # the unmodified preset is valid, so the mutation is the cause
    mutate(base)
    with pytest.raises(ConfigError) as exc:
        validate_config(base)
    msg = str(exc.value)
    assert key in msg, msg
    if extra is not None:
        assert extra in msg, msg


def test_every_offending_schema_key_is_named(base):
    base["finetune"]["ranks"] = [0, 4]
    base["finetune"]["methods"] = ["lora", "dora"]
    base["model"]["tiny"]["vocab_size"] = 10
    with pytest.raises(ConfigError) as exc:
        validate_config(base, source="my.yaml")
    msg = str(exc.value)
    assert msg.startswith("my.yaml is invalid")
    for key in ("finetune.ranks[0]", "finetune.methods[1]", "model.tiny.vocab_size"):
        assert key in msg, msg


def test_unknown_key_message_lists_allowed_keys(base):
    base["finetune"]["rnaks"] = [1]
    with pytest.raises(ConfigError) as exc:
        validate_config(base)
    msg = str(exc.value)
    assert "allowed here:" in msg and "ranks" in msg.split("allowed here:")[1]


def test_checkpoints_at_max_steps_is_valid(base):
    base["finetune"]["checkpoints"] = [0, 2, 8]  # 8 == max_steps: allowed
    assert validate_config(base)["finetune"]["checkpoints"] == [0, 2, 8]
    base["finetune"]["checkpoints"] = 5
    assert validate_config(base)["finetune"]["checkpoints"] == 5


def test_missing_model_source_names_only_source(base):
    del base["model"]["source"]
    with pytest.raises(ConfigError) as exc:
        validate_config(base)
    msg = str(exc.value)
    assert "model.source" in msg
    assert "hf_repo" not in msg and "pypi_package" not in msg, msg


def test_missing_dataset_kind_names_only_kind(base):
    del base["data"]["finetune"]["stdlib-instruct"]["kind"]
    with pytest.raises(ConfigError) as exc:
        validate_config(base)
    msg = str(exc.value)
    assert "data.finetune.stdlib-instruct.kind" in msg
    assert "stdlib-instruct.path" not in msg, msg


@pytest.mark.parametrize(
    "mutate,key",
    [
        (_set("finetune.ranks", [1, 4.0]), "finetune.ranks[1]"),
        (_set("finetune.max_steps", 8.0), "finetune.max_steps"),
    ],
    ids=["rank-4.0", "max_steps-8.0"],
)
def test_float_where_integer_required_rejected(base, mutate, key):
    mutate(base)
    with pytest.raises(ConfigError) as exc:
        validate_config(base)
    assert key in str(exc.value)


# --------------------------------------------------------------------------- CLI


def _write(tmp_path: Path, cfg: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_check_valid(tmp_path, base, capsys):
    path = _write(tmp_path, base, "good.yaml")
    assert cli.main(["config", "check", "--configfile", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid" in out


def test_cli_check_print_shows_defaults(tmp_path, base, capsys):
    path = _write(tmp_path, base, "good.yaml")
    assert cli.main(["config", "check", "--configfile", str(path), "--print"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == validate_config(base)
    assert printed["finetune"]["alpha"] == 16


def test_cli_check_bad_config_exit_2(tmp_path, base, capsys):
    base["finetune"]["ranks"] = [1, 0]
    path = _write(tmp_path, base)
    assert cli.main(["config", "check", "--configfile", str(path)]) == 2
    captured = capsys.readouterr()
    assert "finetune.ranks[1]" in captured.err
    assert str(path) in captured.err  # the source file is named too
    assert "valid\n" not in captured.out


def test_cli_check_unknown_key_exit_2(tmp_path, base, capsys):
    base["finetune"]["rnaks"] = [1]
    path = _write(tmp_path, base)
    assert cli.main(["config", "check", "--configfile", str(path)]) == 2
    assert "finetune.rnaks" in capsys.readouterr().err


def test_cli_check_missing_file(tmp_path, capsys):
    path = tmp_path / "nope" / "missing.yaml"
    assert cli.main(["config", "check", "--configfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not found" in err


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="not found") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_cli_check_invalid_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {name: x\nfinetune: [1, 2\n")
    assert cli.main(["config", "check", "--configfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not valid YAML" in err


def test_load_config_empty_file_reports_missing_sections(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    for key in ("'model'", "'data'", "'finetune'"):
        assert key in msg, msg


# --------------------------------------------------------------------------- hash and lr format


def test_config_hash_stable_and_sensitive(base):
    a = validate_config(base)
    b = validate_config(copy.deepcopy(base))
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12 and all(c in "0123456789abcdef" for c in config_hash(a))
    # key order does not matter
    reordered = {k: a[k] for k in reversed(list(a))}
    assert config_hash(reordered) == config_hash(a)
    # any value change does
    c = copy.deepcopy(a)
    c["finetune"]["learning_rates"] = [0.002]
    assert config_hash(c) != config_hash(a)
    d = copy.deepcopy(a)
    d["data"]["finetune"]["stdlib-instruct"]["max_train"] = 65
    assert config_hash(d) != config_hash(a)


def test_config_hash_of_loaded_configs_differ():
    hashes = {config_hash(load_config(p)) for p in SHIPPED.values()}
    assert len(hashes) == len(SHIPPED)
    assert config_hash(load_config(SHIPPED["config.yaml"])) == config_hash(load_config(SHIPPED["config.yaml"]))


@pytest.mark.parametrize(
    "lr,expected",
    [(0.0005, "0.0005"), (1e-5, "1e-05"), (5e-5, "5e-05"), (0.001, "0.001"), (0.0002, "0.0002"), (1, "1")],
    ids=lambda v: str(v),
)
def test_format_lr(lr, expected):
    assert format_lr(lr) == expected
    assert float(format_lr(lr)) == lr


def test_format_lr_is_exact():
    assert format_lr(0.0010000001) != format_lr(0.001)
    assert float(format_lr(0.00012345678)) == 0.00012345678


def test_resolved_json_config_keeps_exponent_floats(tmp_path):
    # The Snakefile hands jobs a JSON dump of the validated config; 5e-05 must stay a number.
    import json

    cfg = load_config(ROOT / "presets" / "paper.yaml")
    path = tmp_path / "resolved.json"
    path.write_text(json.dumps(cfg))
    again = load_config(path)
    assert again["finetune"]["learning_rates"] == [5e-05]
    assert again == cfg


def test_each_config_file_names_its_own_results_folder(tmp_path):
    from repro.config import results_folder

    (tmp_path / "config.yaml").write_text("")
    assert results_folder({}, [], tmp_path) == "results"
    assert results_folder({}, [tmp_path / "config.yaml"], tmp_path) == "results"
    assert results_folder({}, ["presets/test.yaml"], tmp_path) == "results-test"
    assert results_folder({}, ["my runs/big sweep.yaml"], tmp_path) == "results-big-sweep"
    # The key wins (a resolved config records the folder it was run in).
    assert results_folder({"results": "results-test"}, ["results-test/config/resolved.json"], tmp_path) == "results-test"
    for bad in ("../results", "results/sub", "out"):
        with pytest.raises(ConfigError, match="results folder"):
            results_folder({"results": bad})
    # Every preset the README shows gets a folder of its own.
    folders = {results_folder(load_config(p), [p], ROOT) for p in sorted((ROOT / "presets").glob("*.yaml"))}
    assert len(folders) == len(list((ROOT / "presets").glob("*.yaml"))) and "results" not in folders
