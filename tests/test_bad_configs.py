"""The committed corpus of malformed configs (tests/data/bad_configs/): each is refused naming its key.

Every file is ``valid.yaml`` with one defect, one or more per config section. All of them go through the
loader every job and the Snakefile use (repro.config); a handful, one per kind of check (schema type,
enum, cross-key semantics of each branch), also go through ``snakemake -n`` in the drills, which shows
the refusal comes before any job and writes nothing under results/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from workflow_helpers import make_workspace, snakemake

from repro.config import ConfigError, load_config

CORPUS = Path(__file__).parent / "data" / "bad_configs"
INDEX = yaml.safe_load((CORPUS / "index.yaml").read_text())
SECTIONS = ("top", "model", "data", "finetune", "evaluate", "evals", "laws", "teb", "compression")


def test_corpus_covers_every_section_and_is_indexed():
    files = {p.name for p in CORPUS.glob("*.yaml")} - {"index.yaml", "valid.yaml"}
    assert files == set(INDEX) and len(files) >= 30
    assert {name.split("_")[0] for name in files} == set(SECTIONS)
    load_config(CORPUS / "valid.yaml")  # the defect, not the base, is what each file is refused for


@pytest.mark.parametrize("name", sorted(INDEX))
def test_bad_config_is_refused_naming_its_key(name):
    path = CORPUS / name
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path} is invalid"), message
    assert f"'{INDEX[name]['key']}'" in message, message


@pytest.mark.parametrize("config", ["config.yaml", "presets/test.yaml", "presets/paper.yaml"])
def test_teb_sweep_check_names_the_tasks_the_branch_plans(config, tmp_path):
    """The validator's list of enabled TEB tasks is the branch's own plan (repro.teb.runs), not a copy."""
    import yaml

    from repro.teb.runs import task_specs

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / config).read_text())
    raw.setdefault("teb", {}).setdefault("beta_sweep", {})["tasks"] = ["no-such-task"]
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    planned = task_specs(load_config(Path(__file__).resolve().parents[1] / config)["teb"])
    assert f"(enabled: {', '.join(sorted(planned)) or 'none'})" in str(err.value)


# One per kind of check: an enum, a semantic check of the model, the evaluation plan, a non-stationary AR
# coefficient, a cross-key check of the TEB branch, of the laws branch and of the compression branch.
THROUGH_SNAKEMAKE = ["top_unknown_device.yaml", "model_tiny_heads.yaml", "evals_step_not_checkpoint.yaml",
                     "teb_nonstationary_source.yaml", "teb_sweep_unknown_task.yaml", "laws_primary_not_run.yaml",
                     "compression_shape_d_above_n.yaml"]


@pytest.mark.drills
def test_bad_configs_stop_snakemake_before_any_job(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    for name in THROUGH_SNAKEMAKE:
        (ws / name).write_text((CORPUS / name).read_text())
        proc = snakemake(ws, "-n", "--configfile", name)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, (name, out[-2000:])
        assert f"'{INDEX[name]['key']}'" in out, (name, out[-2000:])
        assert "Job stats" not in out and not list(ws.glob("results*")), name
