"""The claims ledger: every verdict kind from a small fixture table that must produce it, the TEB rows from the
default run's evaluations, robustness across precisions, and the ledger of the test preset's real DAG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repro.claims import compression, forgetting, rslora, teb
from repro.claims.across_runs import slope_across_runs
from repro.claims.ledger import (
    NOT_IDENTIFIED,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    VERDICTS,
    Claim,
    Measurement,
    mark_robustness,
    row,
    verdict,
    within,
)

TEB_FIXTURE = Path(__file__).parent / "data" / "teb_report"
KEYS = {"model": "m", "dataset": "d", "lr": 1e-3}


def _steps(exponents: dict[str, float], ranks=(1, 4, 16, 64), seeds=(0,), steps=20, noise=0.02, seed=0) -> pd.DataFrame:
    """Per-step adapter gradient norms proportional to r^exponent, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, e in exponents.items():
        for r in ranks:
            for s in seeds:
                for step in range(1, steps + 1):
                    rows.append({**KEYS, "method": method, "rank": r, "seed": s, "step": step,
                                 "grad_norm": r**e * math.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def _final_runs(slopes: dict[str, float], ranks=(1, 4, 16, 64), seeds=(0,), noise=0.002, seed=0) -> pd.DataFrame:
    """Last-checkpoint fine-tuning losses falling by ``slope`` nats per doubling of the rank."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{**KEYS, "method": m, "rank": r, "seed": s, "step": 64,
                          "loss_ft": 2.7 + k * math.log2(r) + noise * rng.standard_normal()}
                         for m, k in slopes.items() for r in ranks for s in seeds])


def _verdicts(pairs) -> dict[str, str]:
    return {c.id: verdict(c, m) for c, m in pairs}


# ------------------------------------------------------------------------------------ verdict logic


def test_verdict_kinds_follow_value_interval_and_seeds():
    claim = Claim("x", "s", "c", "src", "interval inside [-1, 1]", within(-1, 1))
    assert verdict(claim, Measurement("m", 0.1, -0.2, 0.3)) == REPRODUCED
    assert verdict(claim, Measurement("m", 0.1, -0.2, 1.3)) == NOT_REPRODUCED
    assert verdict(claim, Measurement("m", 0.1, -0.2, 0.3, seeds_per_setting=1)) == REPRODUCED
    assert verdict(Claim(**{**claim.__dict__, "needs_seeds": 2}), Measurement("m", 0.1, -0.2, 0.3, seeds_per_setting=1)) \
        == NOT_IDENTIFIED
    assert verdict(claim, Measurement("m", 0.1)) == NOT_IDENTIFIED  # no interval: too few runs to judge
    assert verdict(claim, Measurement("m")) == NOT_TESTED
    assert verdict(claim, Measurement("m", 0.1, -0.2, 0.3, tested=False)) == NOT_TESTED


# ------------------------------------------------------------------------------------------- rsLoRA


def test_rslora_paper_pattern_reproduces_and_swapped_does_not():
    paper = _verdicts(rslora.measure(_steps({"lora": -0.5, "rslora": 0.0}),
                                     _final_runs({"lora": 0.0, "rslora": -0.03}), None))
    assert paper["rslora-grad-collapse"] == REPRODUCED
    assert paper["rslora-grad-stable"] == REPRODUCED
    assert paper["rslora-lora-stalls"] == REPRODUCED
    assert paper["rslora-larger-ranks-better"] == REPRODUCED
    assert paper["rslora-derivation-check"] == NOT_TESTED
    swapped = _verdicts(rslora.measure(_steps({"lora": 0.0, "rslora": -0.5}),
                                       _final_runs({"lora": -0.03, "rslora": 0.0}), None))
    assert {k: v for k, v in swapped.items() if k != "rslora-derivation-check"} == {
        "rslora-grad-collapse": NOT_REPRODUCED, "rslora-grad-stable": NOT_REPRODUCED,
        "rslora-lora-stalls": NOT_REPRODUCED, "rslora-larger-ranks-better": NOT_REPRODUCED}


def test_gradient_norms_are_averaged_over_the_steps_every_run_logged():
    steps = _steps({"lora": -0.5}, ranks=(1, 4), noise=0.0)
    # rank 4 logged 10 more steps with huge norms: a mean over all its steps would move the slope
    extra = steps[steps["rank"] == 4].assign(step=lambda d: d["step"] + 100, grad_norm=1e3)
    from repro.laws.gradnorm import gradient_norm_at_matched_steps

    matched = gradient_norm_at_matched_steps(pd.concat([steps, extra]))
    assert matched.set_index("rank")["grad_norm_mean"].to_dict() == pytest.approx({1: 1.0, 4: 0.5})
    assert (matched["matched_steps"] == 20).all()


def test_slope_interval_across_runs_uses_seeds_when_there_are_two():
    one = slope_across_runs(_final_runs({"lora": -0.02}).assign(x=lambda d: np.log2(d["rank"])), "x", "loss_ft")
    two = slope_across_runs(_final_runs({"lora": -0.02}, seeds=(0, 1)).assign(x=lambda d: np.log2(d["rank"])), "x",
                            "loss_ft")
    assert one["interval"].startswith("OLS t") and "run bootstrap" in two["interval"]
    for s in (one, two):
        assert s["ci_low"] < -0.02 < s["ci_high"] and s["ci_high"] - s["ci_low"] < 0.01
    two_ranks = slope_across_runs(_final_runs({"lora": -0.02}, ranks=(1, 4)).assign(x=lambda d: np.log2(d["rank"])),
                                  "x", "loss_ft")
    assert math.isnan(two_ranks["ci_low"])  # two runs, two ranks: no residual degrees of freedom


# --------------------------------------------------------------------------------------- forgetting


def _trajectories(seeds=(0,), ranks=(1, 4, 16, 64), shift: dict[int, float] | None = None, seed=0) -> pd.DataFrame:
    """Checkpoints on one line L_f = 4.5 - 0.25 L_ft (or shifted per rank), P grows with r."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in ranks:
        for s in seeds:
            for step in (0, 1, 2, 4, 8, 16, 32, 64):
                lft = 3.4 - 0.7 * (1 - math.exp(-step / 12)) + (0.0 if step == 0 else 0.004 * rng.standard_normal())
                lf = 4.5 - 0.25 * lft + (0.0 if step == 0 else (shift or {}).get(r, 0.0) + 0.002 * rng.standard_normal())
                rows.append({**KEYS, "method": "lora", "rank": r, "seed": s, "step": step,
                             "trainable_params": 1000 * r, "loss_ft": lft, "loss_forget": lf})
    return pd.DataFrame(rows)


def test_linear_law_rows_pass_on_one_line_and_the_common_line_fails_on_shifted_runs():
    ok = _verdicts(forgetting.linear_law(_trajectories(), "lora", resamples=199))
    assert ok["forgetting-linear-slope"] == REPRODUCED and ok["forgetting-one-line"] == REPRODUCED
    shifted = _verdicts(forgetting.linear_law(_trajectories(shift={1: 0.05, 4: -0.05, 16: 0.03, 64: -0.03}), "lora",
                                              resamples=199))
    assert shifted["forgetting-one-line"] == NOT_REPRODUCED


def _fits(alpha_ci: tuple[float, float, float], beta_ci: tuple[float, float, float]) -> pd.DataFrame:
    rows = []
    for param, (v, lo, hi) in (("alpha", alpha_ci), ("beta", beta_ci)):
        rows.append({**KEYS, "method": "lora", "target": "loss_forget", "family": "shifted", "status": "ok",
                     "param": param, "value": v, "ci_low": lo, "ci_high": hi, "converged": True})
    return pd.DataFrame(rows)


def _power_law_runs(seeds) -> pd.DataFrame:
    rows = []
    for r in (1, 4, 16, 64):
        for s in seeds:
            for step in (1, 2, 4, 8, 16, 32, 64):
                rows.append({**KEYS, "method": "lora", "rank": r, "seed": s, "step": step, "trainable_params": 1000 * r,
                             "loss_forget": 3.7 + 0.05 * (1000 * r / 8000) ** 0.3 * (step + 1.0) ** 0.5 * (1 + 0.001 * s)})
    return pd.DataFrame(rows)


def test_power_law_claims_need_two_seeds_per_rank():
    fits = _fits((0.3, 0.2, 0.4), (0.5, 0.4, 0.6))
    one = _verdicts(forgetting.power_laws(_power_law_runs((0,)), fits, "lora"))
    assert one == {"forgetting-power-law-params": NOT_IDENTIFIED, "forgetting-power-law-steps": NOT_IDENTIFIED}
    two = _verdicts(forgetting.power_laws(_power_law_runs((0, 1)), fits, "lora"))
    assert two == {"forgetting-power-law-params": REPRODUCED, "forgetting-power-law-steps": REPRODUCED}
    # an interval across 0 is no evidence for the law in that variable
    straddles = _verdicts(forgetting.power_laws(_power_law_runs((0, 1)), _fits((0.3, -0.1, 0.7), (0.5, 0.4, 0.6)), "lora"))
    assert straddles["forgetting-power-law-params"] == NOT_REPRODUCED


def test_leave_one_rank_out_recovers_the_exponent_of_a_clean_power_law():
    loro = forgetting.leave_one_rank_out(_power_law_runs((0,)), "alpha")
    assert set(loro) == {1, 4, 16, 64}
    assert all(v == pytest.approx(0.3, abs=0.03) for v in loro.values()), loro


def test_early_stopping_share_is_one_half_on_the_linear_law_and_small_when_forgetting_comes_late():
    linear = forgetting.early_stopping(_trajectories())[1]
    assert linear.value == pytest.approx(0.5, abs=0.05)
    late = _trajectories().assign(loss_forget=lambda d: 3.65 + 0.2 * (d["step"] / 64) ** 4)
    claim, m = forgetting.early_stopping(late)
    assert m.value < 0.1 and verdict(claim, m) == NOT_REPRODUCED


def test_erosion_is_judged_against_the_base_score_with_its_error():
    runs = _trajectories().assign(task_repro_knowledge_acc=lambda d: np.where(d["step"] == 0, 0.8, 0.5),
                                  task_repro_knowledge_acc_stderr=0.02)
    rows = _verdicts(forgetting.erosion(runs))
    assert rows["forgetting-erodes-knowledge"] == REPRODUCED
    assert rows["forgetting-erodes-reasoning"] == NOT_TESTED  # not evaluated in this table
    noisy = runs.assign(task_repro_knowledge_acc_stderr=0.5)
    assert _verdicts(forgetting.erosion(noisy))["forgetting-erodes-knowledge"] == NOT_REPRODUCED


# ---------------------------------------------------------------------------------------------- TEB


@pytest.fixture(scope="module")
def teb_tables(tmp_path_factory):
    from repro.teb.aggregate import aggregate

    out = tmp_path_factory.mktemp("teb")
    evals = sorted((TEB_FIXTURE / "evals").glob("*/seed*.csv"))
    aggregate(evals, sorted((TEB_FIXTURE / "estimators").glob("*.csv")), sorted((TEB_FIXTURE / "data").glob("*/manifest.json")), out)
    return pd.read_csv(out / "summary.csv"), pd.read_csv(out / "evals.csv")


def test_teb_rows_from_the_default_runs_evaluations(teb_tables):
    from repro.config import load_config

    summary, evals = teb_tables
    cfg = load_config(Path(__file__).parents[1] / "config.yaml")["teb"]
    pairs = teb.measure(summary, evals, cfg)
    by = {(c.id, m.measure.split(":")[0]): (verdict(c, m), m) for c, m in pairs}
    # AR: every coupling's bound within 2 SE of the closed form; nonlinear: far below the exact TE
    assert by[("teb-ar-exact", "largest |lower bound - exact TE| over couplings and variants (nats)")][0] == REPRODUCED
    for task in ("sines", "digits", "needle"):
        v, m = by[("teb-nonlinear-exact", task)]
        assert v == NOT_REPRODUCED and m.ci_high < 0
    v, m = by[("teb-from-context", "needle")]
    assert v == NOT_REPRODUCED and m.value < -0.5 and m.seeds_per_setting >= 3


def test_teb_context_claim_is_not_identified_with_one_seed(teb_tables):
    from repro.config import load_config

    summary, evals = teb_tables
    cfg = load_config(Path(__file__).parents[1] / "config.yaml")["teb"]
    pairs = teb.measure(summary, evals[evals["seed"] == 0], cfg)
    context = [verdict(c, m) for c, m in pairs if c.id == "teb-from-context"]
    assert context and set(context) == {NOT_IDENTIFIED}


# -------------------------------------------------------------------------------------- compression


def test_compression_shares_and_the_copy_scheme_row():
    schemes = pd.DataFrame({"n": [3, 4], "d": [1, 2], "classes (orbits)": [2, 3],
                            "Floyd-Warmuth (labeled)": ["2/2", "3/3"], "rep. map by SAT": ["2/2", "2/3"],
                            "min-peeling, random ties": ["40/40", "60/60"]})
    named = pd.DataFrame({"class": ["a", "b"], "VC": [2, 2], "min labeled-proper": [2, 3]})
    got = _verdicts(compression.measure(schemes, named))
    assert got == {"compression-labeled-maximum": REPRODUCED, "compression-unlabeled-maximum": NOT_REPRODUCED,
                   "compression-min-peeling": REPRODUCED, "compression-named-size-d": NOT_REPRODUCED,
                   "compression-copy-schemes": NOT_TESTED}


# ------------------------------------------------------------------------------------ robustness


def test_a_verdict_that_flips_at_another_precision_is_marked_not_robust():
    claim = Claim("x", "rsLoRA", "c", "src", "inside", within(-1, 1))
    here = [row(claim, Measurement("m", 0.0, -0.5, 0.5), "bf16"), row(claim, Measurement("k", 0.0, -0.5, 0.5), "bf16")]
    other = [row(claim, Measurement("m", 0.0, -0.5, 1.5), "float32"), row(claim, Measurement("k", 0.0, -0.5, 0.5), "float32")]
    marked = mark_robustness(here, {"results-fp32/claims.csv (float32)": other})
    assert marked[0]["robust"].startswith("no (") and "not reproduced" in marked[0]["robust"]
    assert marked[1]["robust"] == "yes"
    assert mark_robustness([row(claim, Measurement("m", 0.0, -0.5, 0.5), "bf16")], {})[0]["robust"] == "not compared"
    untested = [row(claim, Measurement("m", tested=False), "float32")]
    assert mark_robustness([row(claim, Measurement("m", 0.0, -0.5, 0.5), "bf16")],
                           {"other": untested})[0]["robust"] == "not compared"
    same_precision = [row(claim, Measurement("m", 0.0, -0.5, 1.5), "bf16")]
    assert mark_robustness([row(claim, Measurement("m", 0.0, -0.5, 0.5), "bf16")],
                           {"other": same_precision})[0]["robust"] == "not compared"


# ------------------------------------------------------------------------------- the real DAG


def test_test_preset_ledger_lists_every_claim(test_preset_run):
    from repro.claims.build import CLAIMS_TABLE
    from repro.io import read_table

    ledger = read_table(test_preset_run / "results-test/claims.csv", CLAIMS_TABLE)
    registered = {c.id for module in (forgetting, rslora, teb, compression) for c in module.CLAIMS}
    assert set(ledger["id"]) == registered
    assert set(ledger["verdict"]) <= set(VERDICTS)
    # one seed per rank and few checkpoints: the power laws cannot be judged there, and the row says why
    power = ledger[ledger["id"].str.startswith("forgetting-power-law")]
    assert set(power["verdict"]) <= {NOT_IDENTIFIED, NOT_TESTED} and power["note"].notna().all()
    assert ledger["precision"].str.contains("float32").all() or ledger["precision"].isin(["exact"]).any()
    tex = (test_preset_run / "results-test/tables/claims.tex").read_text()
    assert r"\label{tab:claims}" in tex and tex.count(r"\\") >= len(ledger)


def test_float32_preset_differs_from_the_default_only_where_it_says():
    import yaml

    repo = Path(__file__).parents[1]
    default = yaml.safe_load((repo / "config.yaml").read_text())
    fp32 = yaml.safe_load((repo / "presets/float32.yaml").read_text())
    assert fp32.pop("results") == "results-float32"
    assert fp32["finetune"].pop("autocast") is False and default["finetune"].pop("autocast") == "auto"
    for task in ("ar", "sines", "digits", "needle"):
        assert fp32["teb"]["tasks"][task].pop("enabled") is False
    assert fp32["teb"]["beta_sweep"].pop("tasks") == []
    default["teb"]["beta_sweep"].pop("tasks")
    for part in ("enumerate", "schemes"):
        assert fp32["compression"][part].pop("n_max") == 3
        default["compression"][part].pop("n_max")
    # config.yaml compares against this preset's ledger; the preset compares against nothing
    assert "results-float32" in default.pop("claims")["compare"]
    assert fp32 == default


def test_common_line_is_not_identified_when_within_run_errors_persist_like_shifts():
    # a random walk within each run (seed 0: its AR(1) estimate is at the bound, as 4 of 5 seeds are)
    d = _trajectories()
    rng = np.random.default_rng(10)
    walk = {r: np.cumsum(0.02 * rng.standard_normal(8)) for r in d["rank"].unique()}
    d["loss_forget"] += [0.0 if s == 0 else walk[r][i % 8] for i, (r, s) in enumerate(zip(d["rank"], d["step"]))]
    pairs = [(c, m) for c, m in forgetting.linear_law(d, "lora", resamples=199) if c.id == "forgetting-one-line"]
    (claim, m), = pairs
    assert verdict(claim, m) == NOT_IDENTIFIED and "persistent" in m.note


def test_markdown_shows_robustness_only_when_a_ledger_was_compared():
    from repro.claims.render import markdown

    claim = Claim("x", "rsLoRA", "c", "src", "inside", within(-1, 1))
    rows = [row(claim, Measurement("m", 0.0, -0.5, 0.5), "bf16"), row(claim, Measurement("k", 0.0, -0.5, 0.5), "bf16")]
    plain = markdown(pd.DataFrame(rows))
    assert "robust" not in plain and plain.count("| c |") == 1  # the sentence once for both measures
    marked = markdown(pd.DataFrame(mark_robustness(rows, {"fp32": [row(claim, Measurement("m", 0.0, -0.5, 1.5), "float32")]})))
    assert "robust across precision" in marked and "no (fp32: not reproduced)" in marked


def test_float32_preset_plans_its_ledger_without_the_teb_branch(tmp_path):
    from workflow_helpers import make_workspace, snakemake

    ws = make_workspace(tmp_path / "ws")
    proc = snakemake(ws, "-n", "--cores", "2", "--configfile", "presets/float32.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["claims"] == 1 and counts["finetune"] == 8
    # every TEB task disabled: nothing of the branch is planned (it used to plan an aggregate of nothing)
    assert not [rule for rule in counts if rule.startswith("teb_")], counts
