"""Job identity: a config edit reruns exactly the jobs it changes, saved state of other settings is
never resumed, and a sweep grows without retraining or re-evaluating what it has.

Unit tests train the tiny model in-process; the workflow tests plan edits (dry runs) on a copy of the
shared test-preset run, whose Snakemake records are copied with it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from workflow_helpers import repro_in_process, snakemake, tiny_run_spec

from repro.config import SCHEMA_PATH, load_config
from repro.lm import adapters, forgetting
from repro.lm.finetune import RunSpec, StaleStateError, train_run
from repro.lm.runs import SWEEP_AXES, TIMING_ONLY
from repro.lm.step import StepOptions
from repro.teb.runs import task_names, task_runs, train_settings

RUN = "results-test/lm/runs/tiny-llama/stdlib-instruct/rslora/r1/lr0.001/seed0"


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def _same_adapters(a: Path, b: Path) -> bool:
    wa, wb = _adapter(a), _adapter(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _losses(run_dir: Path) -> list[tuple[str, str, str]]:
    import csv

    with open(run_dir / "train_log.csv") as fh:
        return [(r["step"], r["loss"], r["grad_norm"]) for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------------------------------
# What an identity covers


def test_every_finetune_setting_is_a_sweep_axis_or_part_of_the_runs_identity():
    """A setting the config accepts but the trainer's identity leaves out would let state trained under
    another value be resumed: every schema key is a sweep axis or a RunSpec field (its step options included)."""
    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())
    keys = set(schema["properties"]["finetune"]["properties"])
    fields = set(RunSpec.__dataclass_fields__) | set(StepOptions.__dataclass_fields__)
    assert keys - set(SWEEP_AXES) <= fields, keys - set(SWEEP_AXES) - fields


def test_timing_only_settings_do_not_change_the_numbers(tiny_model_dir, instruct_rows, tmp_path):
    """resume_every and sync_every are left out of every identity: they must not change a number."""
    assert set(TIMING_ONLY["finetune"]) == {"resume_every", "sync_every"}
    rows = instruct_rows["train"]
    a = train_run(tiny_run_spec(resume_every=3, sync_every=1), tiny_model_dir, rows, tmp_path / "a", progress=False)
    b = train_run(tiny_run_spec(resume_every=50, sync_every=32), tiny_model_dir, rows, tmp_path / "b", progress=False)
    assert a["identity"] == b["identity"]
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_teb_identity_resolves_task_overrides():
    """A task's own epochs and batch size are what its models train with; another task's are not."""
    from repro.config import load_config as load

    teb = load(Path(__file__).resolve().parents[1] / "presets/test.yaml")["teb"]
    base = train_settings(teb, "sines", "teb")
    teb["tasks"]["sines"]["epochs"] = 7
    assert train_settings(teb, "sines", "teb")["epochs"] == 7 != base["epochs"]
    teb["tasks"]["sines"]["target_epochs"] = 5
    assert train_settings(teb, "sines", "target")["epochs"] == 5
    assert train_settings(teb, "ar-c0.5", "teb") == train_settings(teb, "ar-c0", "teb")


# --------------------------------------------------------------------------------------------------
# Saved state of other settings


@pytest.mark.parametrize("setting, value, shown", [("alpha", 32, "alpha: 16"), ("dropout", 0.1, "dropout: 0.0")])
def test_direct_finetune_refuses_state_of_other_settings_and_the_workflow_restarts(
        test_preset_run, tmp_path, setting, value, shown):
    ws = test_preset_run
    run = Path(shutil.copytree(ws / RUN, tmp_path / "run"))
    cfg = yaml.safe_load((ws / "presets/test.yaml").read_text())
    cfg["finetune"][setting] = value
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(cfg))
    args = ["finetune", "--configfile", tmp_path / "edited.yaml", "--model-dir", ws / "resources/models/tiny-llama",
            "--data-dir", ws / "results-test/data/tiny-llama", "--dataset", "stdlib-instruct", "--method", "rslora",
            "--rank", "1", "--lr", "0.001", "--seed", "0", "--out", run, "--no-progress"]
    old = json.loads((run / "summary.json").read_text())

    refused = repro_in_process(*args)
    assert refused.returncode == 2
    assert shown in refused.stderr and "--restart-stale" in refused.stderr, refused.stderr
    assert json.loads((run / "summary.json").read_text()) == old  # nothing touched

    restarted = repro_in_process(*args, "--restart-stale")
    assert restarted.returncode == 0, restarted.stderr
    assert "restarting" in restarted.stdout and setting in restarted.stdout
    new = json.loads((run / "summary.json").read_text())
    assert new["resumed_from"] == 0 and new[setting] == value and new["identity"] != old["identity"]
    assert new["checkpoint_sha256"]["8"] != old["checkpoint_sha256"]["8"]
    assert not _same_adapters(run / "checkpoints/step-000008", run / "superseded/checkpoints/step-000008")
    # The old state is kept aside, never beside the new checkpoints.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{s:06d}" for s in (0, 1, 2, 4, 8)]
    assert (run / "superseded/state/identity.json").exists()


class _Stop(Exception):
    pass


def _stop_at(at: int):
    def on_step(step):
        if step == at:
            raise _Stop

    return on_step


def test_state_without_identity_or_of_another_model_is_not_resumed(tiny_model_dir, instruct_rows, tmp_path):
    rows = instruct_rows["train"]
    run = tmp_path / "run"
    train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False)
    (run / "state/identity.json").unlink()  # as an older version of the pipeline left it
    with pytest.raises(StaleStateError, match="records no identity"):
        train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False)
    train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False, restart_stale=True)
    # Killed before its first checkpoint (the folder holds its identity only): starts again, no refusal.
    shutil.rmtree(run)
    with pytest.raises(_Stop):
        train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False, on_step=_stop_at(1))
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "state/resume")
    assert train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False)["resumed_from"] == 0
    # Other training data: refused, naming it.
    with pytest.raises(StaleStateError, match="train_sha256"):
        train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows[1:], run, progress=False)


# --------------------------------------------------------------------------------------------------
# A run that grows


def _evaluated_steps(monkeypatch) -> list[int]:
    loaded: list[int] = []
    real = adapters.AdapterBank.load

    def load(self, step, checkpoint_dir):
        loaded.append(step)
        return real(self, step, checkpoint_dir)

    monkeypatch.setattr(adapters.AdapterBank, "load", load)
    return loaded


def test_more_steps_continue_the_run_and_evaluate_only_new_checkpoints(tiny_model_dir, instruct_rows, tmp_path,
                                                                       monkeypatch):
    from repro.lm.data import build_pydoc_topics
    from repro.lm.models import load_model

    rows, heldout = instruct_rows["train"], instruct_rows["heldout"]
    corpora = {"topics": build_pydoc_topics({"num_sequences": 3, "length": 24}, load_model(tiny_model_dir)[1])}
    grown, scratch = tmp_path / "grown", tmp_path / "scratch"
    loaded = _evaluated_steps(monkeypatch)

    def evaluate(run):
        return forgetting.evaluate_run(run / "summary.json", tiny_model_dir, heldout, corpora, run / "eval.csv",
                                       batch_size=4, threads=1, progress=False)

    short = train_run(tiny_run_spec(max_steps=8), tiny_model_dir, rows, grown, progress=False)
    evaluate(grown)
    assert loaded == [0, 1, 2, 4, 8]
    longer = train_run(tiny_run_spec(max_steps=16), tiny_model_dir, rows, grown, progress=False)
    assert longer["resumed_from"] == 8 and longer["identity"] == short["identity"]
    loaded.clear()
    evaluate(grown)
    assert loaded == [16], "only the new checkpoint is evaluated"

    from_zero = train_run(tiny_run_spec(max_steps=16), tiny_model_dir, rows, scratch, progress=False)
    assert from_zero["resumed_from"] == 0
    # Byte for byte: every checkpoint, every loss and gradient norm, the evaluation table.
    assert longer["checkpoint_sha256"] == from_zero["checkpoint_sha256"]
    assert set(longer["checkpoint_sha256"]) == {"0", "1", "2", "4", "8", "16"}
    assert _losses(grown) == _losses(scratch)
    evaluate(scratch)
    assert (grown / "eval.csv").read_bytes() == (scratch / "eval.csv").read_bytes()


def test_a_grid_the_saved_run_cannot_serve_restarts_it(tiny_model_dir, instruct_rows, tmp_path):
    """A shorter run, or a grid asking for steps the run did not save, cannot be continued."""
    rows = instruct_rows["train"]
    run = tmp_path / "run"
    train_run(tiny_run_spec(max_steps=8), tiny_model_dir, rows, run, progress=False)
    with pytest.raises(StaleStateError, match="beyond max_steps 4"):
        train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False)
    with pytest.raises(StaleStateError, match=r"asks for steps \[3\]"):
        train_run(tiny_run_spec(max_steps=16, checkpoints=[3]), tiny_model_dir, rows, run, progress=False)
    again = train_run(tiny_run_spec(max_steps=4), tiny_model_dir, rows, run, progress=False, restart_stale=True)
    assert again["resumed_from"] == 0 and set(again["checkpoints"]) == {"0", "1", "2", "4"}


# --------------------------------------------------------------------------------------------------
# What the workflow plans after an edit (dry runs on a copy of the finished test-preset run)


def _planned(ws: Path, cfg: dict) -> dict[str, int]:
    # The test preset edited in place: its folder named explicitly (another file name is another folder).
    (ws / "edited.yaml").write_text(yaml.safe_dump({"results": "results-test", **cfg}))
    proc = snakemake(ws, "-n", "--configfile", "edited.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def finished_copy(test_preset_run, tmp_path_factory) -> tuple[Path, dict]:
    # copytree keeps modification times, and .snakemake holds the records of every job's params.
    ws = Path(shutil.copytree(test_preset_run, tmp_path_factory.mktemp("identity") / "ws", symlinks=True))
    return ws, load_config(ws / "presets/test.yaml")


LM_EVERYWHERE = ("aggregate", "fit_laws", "figures", "tables", "numbers", "report_tables", "track_runs", "claims",
                 "claims_tables", "all")


def test_dry_runs_after_config_edits_plan_exactly_the_changed_jobs(finished_copy):
    ws, base = finished_copy
    raw = yaml.safe_load((ws / "presets/test.yaml").read_text())
    assert _planned(ws, raw) == {}

    def edited(section, key, value):
        cfg = yaml.safe_load(yaml.safe_dump(raw))
        node = cfg
        for part in section:
            node = node.setdefault(part, {})
        node[key] = value
        return _planned(ws, cfg)

    # One more rank: only the two new runs (lora, rslora) are trained and evaluated.
    plan = edited(["finetune"], "ranks", [1, 4, 2])
    assert {k: plan.get(k, 0) for k in ("finetune", "evaluate", "evaluate_tasks")} == {
        "finetune": 2, "evaluate": 2, "evaluate_tasks": 2}, plan
    assert set(plan) <= {"finetune", "evaluate", "evaluate_tasks", *LM_EVERYWHERE}, plan

    # alpha is a setting of every run: all four are retrained (and restart from step 0, see above).
    plan = edited(["finetune"], "alpha", 32)
    assert plan["finetune"] == 4 and plan["evaluate"] == 4, plan
    assert not any(k.startswith(("teb", "compression", "prepare_data", "download")) for k in plan), plan

    # More steps: every run continues; nothing upstream or in other studies reruns.
    plan = edited(["finetune"], "max_steps", 16)
    assert plan["finetune"] == 4 and "prepare_data" not in plan and not any(k.startswith("teb") for k in plan)

    # One more beta for one TEB task: that task's model at that beta and that task's evaluation, per seed.
    sines_beta = [100, 10]
    seeds = len(base["teb"]["seeds"])
    plan = edited(["teb", "tasks", "sines"], "betas", sines_beta)
    trained = {k: v for k, v in plan.items() if k.startswith("teb")}
    assert trained == {"teb_train": seeds, "teb_eval": seeds, "teb_aggregate": 1, "teb_figures": 1,
                       "teb_tables": 1, "teb_numbers": 1}, plan
    # One more seed: that seed's target-only model, its source models and its evaluations, nothing else.
    plan = edited(["teb"], "seeds", [*base["teb"]["seeds"], 7])
    per_seed = {k: v for k, v in plan.items() if k in ("teb_target", "teb_train", "teb_eval")}
    tasks = len(task_names(base["teb"]))
    assert per_seed == {"teb_target": tasks, "teb_eval": tasks,
                        "teb_train": sum(len(task_runs(base["teb"], t)) for t in task_names(base["teb"]))}, plan
    assert not any(k in plan for k in ("finetune", "evaluate", "compression_enumerate")), plan

    # A larger enumeration: only the new shapes (n = 5: d = 0..5) are enumerated.
    plan = edited(["compression", "enumerate"], "n_max", base["compression"]["enumerate"]["n_max"] + 1)
    assert plan["compression_enumerate"] == 6 and "compression_schemes" not in plan, plan


def test_task_evaluations_are_cached_per_checkpoint(tiny_model_dir, instruct_rows, tmp_path, monkeypatch):
    """A checkpoint's lm-eval scores and refusal replies are computed once; a later job that asks for it
    again (a run grown to more steps) reads it back exactly and computes only what it lacks."""
    from repro.lm import evals

    cfg = load_config(Path(__file__).resolve().parents[1] / "presets/test.yaml")
    cfg["evals"].update(tasks=["repro_arithmetic"], limit=4)
    cfg["evals"]["safety"].update(limit=2, max_new_tokens=4)
    computed: list[int] = []
    real = adapters.load_adapter_weights

    def load_adapter(model, ckpt_dir):
        computed.append(int(Path(ckpt_dir).name.removeprefix("step-")))
        return real(model, ckpt_dir)

    monkeypatch.setattr(adapters, "load_adapter_weights", load_adapter)
    run = tmp_path / "run"
    train_run(tiny_run_spec(max_steps=8), tiny_model_dir, instruct_rows["train"], run, progress=False)
    first = evals.evaluate_checkpoints(cfg, tiny_model_dir, tmp_path / "a.csv", run / "summary.json", steps=[4, 8],
                                       progress=False)
    assert computed == [4, 8]
    computed.clear()
    again = evals.evaluate_checkpoints(cfg, tiny_model_dir, tmp_path / "b.csv", run / "summary.json", steps=[2, 8],
                                       progress=False)
    assert computed == [2]
    assert again[1] == first[1] and again[1]["step"] == 8
    replies = [json.loads(line) for line in (tmp_path / "b.responses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in replies] == [2, 2, 8, 8]
    # Other settings are another key: nothing is read back.
    computed.clear()
    cfg["evals"]["limit"] = 3
    evals.evaluate_checkpoints(cfg, tiny_model_dir, tmp_path / "c.csv", run / "summary.json", steps=[8], progress=False)
    assert computed == [8]
