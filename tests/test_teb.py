"""TEB branch: exact TE, generators, estimators, a short real training, and the CLI contract."""

from __future__ import annotations

import argparse
import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import repro_in_process

from repro.config import load_config, section_defaults
from repro.teb.estimators import gaussian_te, ksg_te
from repro.teb.exact import closed_form_te1, exact_te, exact_te_inf, exact_te_reverse
from repro.teb.runs import (
    NO_BETA,
    READS_SOURCE,
    STOCHASTIC,
    VARIANTS,
    default_beta,
    task_names,
    task_runs,
    task_specs,
)
from repro.teb.tasks import ar_windows, make_task, simulate_ar, tensor_digest

# Where this module runs under pytest-xdist (tests/conftest.py): a marker, so renaming the file changes nothing.
pytestmark = pytest.mark.schedule("long", 8)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

AR = dict(a=0.8, b=0.3, c=0.3, sigma_x=1.0, sigma_y=0.5)


# ---------------------------------------------------------------------------------------- exact TE


@pytest.mark.parametrize("a,b,c,sx,sy", [(0.8, 0.3, 0.3, 1.0, 0.5), (-0.5, 0.7, 1.2, 0.3, 2.0), (0.2, -0.9, -0.4, 1.5, 0.7)])
def test_exact_matches_closed_form_k1_l1_h1(a, b, c, sx, sy):
    assert exact_te(a, b, c, sx, sy) == pytest.approx(closed_form_te1(a, b, c, sx, sy), abs=1e-12)


def test_reference_value_from_the_notes():
    assert exact_te(**AR) == pytest.approx(0.2402, abs=1e-4)
    assert exact_te(**AR, l=math.inf) == pytest.approx(0.2350, abs=1e-4)


@pytest.mark.parametrize("k,l,H", [(1, 1, 1), (3, 2, 1), (2, 4, 1)])
def test_white_noise_source_closed_form(k, l, H):
    # With a = 0 the only X value that matters for Y_{t+1} is X_t, and Y's past is useless about it.
    expected = 0.5 * math.log(1 + 0.7**2 * 1.3**2 / 0.6**2)
    assert exact_te(0.0, 0.4, 0.7, 1.3, 0.6, k=k, l=l, H=H) == pytest.approx(expected, abs=1e-10)
    assert exact_te_inf(0.0, 0.4, 0.7, 1.3, 0.6) == pytest.approx(expected, abs=1e-12)


def test_zero_coupling_and_reverse_direction_give_zero():
    for k, l, H in [(1, 1, 1), (2, 3, 2), (4, 1, 3)]:
        assert exact_te(0.8, 0.3, 0.0, 1.0, 0.5, k=k, l=l, H=H) == pytest.approx(0.0, abs=1e-12)
        assert exact_te_reverse(**AR, k=k, l=l, H=H) == pytest.approx(0.0, abs=1e-12)
    assert exact_te_inf(0.8, 0.3, 0.0, 1.0, 0.5) == pytest.approx(0.0, abs=1e-12)


def test_invariant_to_scaling_both_noises():
    for k, l, H in [(1, 1, 1), (2, 2, 3)]:
        base = exact_te(**AR, k=k, l=l, H=H)
        scaled = exact_te(0.8, 0.3, 0.3, 7.0, 3.5, k=k, l=l, H=H)
        assert scaled == pytest.approx(base, rel=1e-10)
        assert base > 0.1
    assert exact_te_inf(0.8, 0.3, 0.3, 0.01, 0.005) == pytest.approx(exact_te_inf(**AR), rel=1e-10)


def test_long_target_history_converges_to_infinite_closed_form():
    assert exact_te(**AR, k=2, l=40) == pytest.approx(exact_te_inf(**AR), abs=1e-9)
    # More target history can only explain away source information here (TE(l) decreases to TE_inf).
    assert exact_te(**AR, l=1) > exact_te(**AR, l=3) > exact_te_inf(**AR)


@pytest.mark.parametrize("k,l,H", [(1, 1, 1), (2, 3, 2)])
def test_matches_large_sample_least_squares(k, l, H):
    x, y = simulate_ar(300_000, **AR, rng=np.random.default_rng(1))
    w = ar_windows(x, y, k, l, H)
    assert abs(gaussian_te(**w) - exact_te(**AR, k=k, l=l, H=H)) < 0.005


def test_ksg_estimator_near_exact():
    x, y = simulate_ar(4000, **AR, rng=np.random.default_rng(2))
    w = ar_windows(x, y, 1, 1, 1)
    assert abs(ksg_te(**w) - exact_te(**AR)) < 0.04
    x0, y0 = simulate_ar(4000, 0.8, 0.3, 0.0, 1.0, 0.5, rng=np.random.default_rng(3))
    assert abs(ksg_te(**ar_windows(x0, y0, 1, 1, 1))) < 0.03


@pytest.mark.parametrize("kwargs,match", [
    (dict(AR, a=1.0), "a"), (dict(AR, a=-1.2), "a"), (dict(AR, b=1.0), "b"),
    (dict(AR, sigma_x=-1.0), "sigma_x"), (dict(AR, sigma_y=0.0), "sigma_y"),
    (dict(AR, k=0), "source lags"), (dict(AR, l=0), "target lags"), (dict(AR, H=0), "horizon"),
    (dict(AR, l=math.inf, H=2), "horizon H = 1"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        exact_te(**kwargs)


# ---------------------------------------------------------------------------------------- CLI


def test_cli_exact_te_one_line_and_errors():
    script = subprocess.run([sys.executable, "-m", "repro.cli", "teb", "exact-te", "--a", "0", "--b", "0", "--c", "1",
                             "--sigma-x", "1", "--sigma-y", "1"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and float(script.stdout) == pytest.approx(0.5 * math.log(2), abs=1e-9)
    base = ["teb", "exact-te", "--a", "0.8", "--b", "0.3", "--c", "0.3", "--sigma-x", "1", "--sigma-y", "0.5"]
    out = repro_in_process(*base)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and float(out.stdout) == pytest.approx(exact_te(**AR), abs=1e-9)
    inf = repro_in_process(*base, "--target-lags", "inf")
    assert float(inf.stdout) == pytest.approx(exact_te_inf(**AR), abs=1e-9)
    lags = repro_in_process(*base, "--source-lags", "2", "--target-lags", "3", "--horizon", "2")
    assert float(lags.stdout) == pytest.approx(exact_te(**AR, k=2, l=3, H=2), abs=1e-9)
    bad = repro_in_process("teb", "exact-te", "--a", "1.5", "--b", "0.3", "--c", "0.3", "--sigma-x", "1",
                           "--sigma-y", "0.5")
    assert bad.returncode == 2 and "|a| must be < 1" in bad.stderr
    neg = repro_in_process(*base[:-2], "--sigma-y", "-0.5")
    assert neg.returncode == 2 and "sigma_y" in neg.stderr
    k0 = repro_in_process(*base, "--source-lags", "0")
    assert k0.returncode == 2 and "source lags" in k0.stderr


# ---------------------------------------------------------------------------------------- generators


def _tiny_teb():
    teb = section_defaults("teb")
    t = teb["tasks"]
    t["ar"].update(n_train=300, n_val=100, n_test=200, couplings=[0.4])
    t["sines"].update(n_train=100, n_val=100, n_test=100, history=20, horizon=5)
    t["digits"].update(n_train=100, n_val=100, n_test=100, image_size=8, max_images=200)
    t["needle"].update(n_train=100, n_val=100, n_test=100, image_size=8)
    return teb


@pytest.mark.parametrize("task", ["ar-c0.4", "sines", "digits", "needle"])
def test_generators_are_deterministic_per_seed(task):
    spec = task_specs(_tiny_teb())[task]
    a, info = make_task(spec, 0)
    b, _ = make_task(spec, 0)
    c, _ = make_task(spec, 1)
    assert tensor_digest(a) == tensor_digest(b)
    assert tensor_digest(a) != tensor_digest(c)
    for split in ("train", "val", "test"):
        n = spec[f"n_{split}"]
        assert all(len(v) == n for v in a[split].values())
    if spec["kind"] != "ar":
        frac = a["train"]["switch"].float().mean().item()
        assert 0.2 < frac < 0.8  # switch probability 0.5 (sines: minus same-frequency draws)
    else:
        assert info["exact_te"] == pytest.approx(exact_te(0.8, 0.3, 0.4, 1.0, 0.5))


def test_switch_events_are_announced_by_the_source():
    spec = task_specs(_tiny_teb())
    d, _ = make_task(spec["digits"], 0)
    tr = d["train"]
    # The last source label is the next frame's digit; it differs from the history's digit on switches.
    assert torch.equal(tr["x"][:, -1], tr["label"])
    assert torch.equal(tr["x"][:, 0] != tr["x"][:, -1], tr["switch"])
    n, _ = make_task(spec["needle"], 0)
    src = n["train"]["x"].float()[:, :, :, 1, 1] / 255  # [n, distractors + 1, 3]
    from repro.teb.tasks import PATCH_COLOURS

    true = torch.tensor(PATCH_COLOURS, dtype=torch.float32)[n["train"]["colour"]]
    closest = ((src - true[:, None]) ** 2).sum(-1).min(1).values
    assert closest.max() < 3 * 0.4**2 + 1e-3  # the needle is within the label noise of the true colour
    # Every label pixel reads as its colour (one-sided noise below half the gap between levels).
    assert ((src > 0.5) == (src.round() > 0.5)).all() and (src - src.round()).abs().max() <= 0.4 + 1e-2
    # The history holds the distractors as the very same pixels: the needle is the source frame without a twin.
    dis = n["train"]["y"].float()[:, -5:, :, 1, 1] / 255
    twins = (src[:, :, None] == dis[:, None]).all(-1).any(-1)  # [n, distractors + 1]
    assert (twins.sum(1) >= 5).all()


# ---------------------------------------------------------------------------------------- run plan


def _plans() -> dict[str, dict]:
    default = load_config(REPO / "config.yaml")["teb"]
    no_bottleneck = copy.deepcopy(default)
    no_bottleneck["variants"] = ["deterministic", "joint"]  # only the swept tasks train a bottleneck model
    return {"default": default, "test preset": load_config(REPO / "presets" / "test.yaml")["teb"],
            "no bottleneck variant": no_bottleneck}


def _evaluation_rows(teb: dict) -> pd.DataFrame:
    """What teb eval writes for every task and seed, in its order: the target-only model, then the task's
    runs at the beta their folders name."""
    rows = []
    for task in task_names(teb):
        for seed in teb["seeds"]:
            runs = [("target", NO_BETA), *task_runs(teb, task)]
            rows += [{"task": task, "variant": v, "beta": math.nan if b == NO_BETA else float(b), "seed": seed}
                     for v, b in runs]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("plan", ["default", "test preset", "no bottleneck variant"])
def test_the_aggregate_finds_each_tasks_default_beta_in_the_evaluations(plan):
    """The aggregate is not given the config: the order of the evaluations' rows must lead it to the
    config's default beta."""
    from repro.teb.aggregate import default_betas

    teb = _plans()[plan]
    found = default_betas(_evaluation_rows(teb))
    assert set(found) == set(task_names(teb))
    for task in task_names(teb):
        expected = default_beta(teb, task)
        if set(teb["variants"]) & set(STOCHASTIC):
            assert expected == task_specs(teb)[task]["betas"][0]
        elif task in teb["beta_sweep"]["tasks"]:
            assert expected == teb["beta_sweep"]["betas"][0]
        else:
            assert expected is None
        assert found[task] == (None if expected is None else pytest.approx(expected, rel=1e-5))


def test_variant_sets_are_the_ones_the_schema_the_rules_and_the_cli_accept():
    from repro.cli import build_parser

    schema = yaml.safe_load((REPO / "src/repro/schemas/teb.schema.yaml").read_text())["properties"]
    assert tuple(schema["variants"]["items"]["enum"]) == READS_SOURCE
    assert tuple(schema["beta_sweep"]["properties"]["variants"]["items"]["enum"]) == STOCHASTIC
    assert VARIANTS == ("target", *READS_SOURCE)
    assert f'variant=r"{"|".join(READS_SOURCE)}"' in (REPO / "workflow/rules/teb.smk").read_text()
    parser = build_parser()
    for word in ("teb", "train"):
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    assert tuple(next(a for a in parser._actions if "--variant" in a.option_strings).choices) == VARIANTS


# ---------------------------------------------------------------------------------------- training


def _trained_ar(root, c: float, n_test: int = 20000):
    """Target-only model and TEB from context on the default AR task (a=.8, b=.3, sigma_x=1, sigma_y=.5, k=l=H=1)."""
    from repro.teb.train import load_model, train_run

    teb = section_defaults("teb")
    teb["train"].update(progress=False, epochs=12, target_epochs=8, batch_size=256, lr=0.003)
    teb["tasks"]["ar"]["couplings"] = [c]
    name = f"ar-c{c:g}"
    spec = {**task_specs(teb)[name], "name": name, "n_train": 8000, "n_val": 2000, "n_test": n_test}
    data, info = make_task(spec, 0)
    train_run(teb, spec, data, "target", None, 0, root / "target")
    train_run(teb, spec, data, "teb", 100.0, 0, root / "teb", root / "target")
    target = load_model(root / "target", data)
    return data, info, target, load_model(root / "teb", data, target=target), spec


@pytest.fixture(scope="module")
def ar_coupled(tmp_path_factory):
    return _trained_ar(tmp_path_factory.mktemp("ar-c0.3"), 0.3)


def test_decoder_gap_never_exceeds_kl_and_matches_the_closed_form_on_ar(ar_coupled):
    """The same-network quantity (decoder_gap) on a trained AR model: below the KL term window by window,
    and at the exact TE on this task, where the decoder's noise is the generator's. (On the image tasks
    it is not: there it measures the decoder's sharpness, which is why no table calls it a TE.)"""
    from repro.teb.evaluate import predict

    data, info, _, net, _ = ar_coupled
    torch.manual_seed(0)
    out = predict(net, data["test"], 16, 256)
    te, kl = out["te"].numpy(), out["kl"].numpy()
    assert (te <= kl + 1e-9).all(), float((te - kl).max())
    est, se = te.mean(), te.std(ddof=1) / math.sqrt(len(te))
    assert se < 0.006 and math.sqrt((out["mc_se"].numpy() ** 2).mean()) < 0.08
    assert abs(est - info["exact_te"]) < 0.01, (est, se, info["exact_te"])
    assert kl.mean() > 3 * est  # the KL term is a loose bound here; the estimate is not a copy of it


def test_contrastive_bound_of_a_trained_model_is_below_and_near_the_exact_te(ar_coupled):
    """The conditional InfoNCE bound from the trained network: at most log K, not above the exact TE
    beyond its sampling error, and close to it (the critic is the model's own predictive density)."""
    from repro.teb.evaluate import contrastive_lower_bound

    data, info, _, net, spec = ar_coupled
    b = contrastive_lower_bound(net, "ar", data, spec, info, k=128, windows=2000, seed=0)
    exact = info["exact_te"]
    assert b["log_k"] == pytest.approx(math.log(128)) and b["te_lower"] <= b["log_k"]
    assert b["te_lower"] <= exact + 2 * b["te_lower_se"], (b, exact)
    assert b["te_lower"] > 0.8 * exact, (b, exact)
    # The same windows against sources from the marginal (history ignored) are no bound: the critic then
    # also rewards the source's agreement with the history, and the value overshoots the exact TE.
    from repro.teb.contrastive import infonce_bound, sample_marginal_negatives
    from repro.teb.tasks import as_float

    test = {k: v[:2000] for k, v in data["test"].items()}
    negs = sample_marginal_negatives(test, spec, 127, np.random.default_rng(0))
    ld = net.source_log_density(as_float(test["y"]), torch.cat([test["x"][:, None], negs], 1).float(),
                                as_float(test["target"]))
    wrong = infonce_bound(ld[:, 0], ld[:, 1:])
    assert wrong.mean > exact + 3 * wrong.se, (wrong.mean, wrong.se, exact)


def test_source_log_density_is_the_models_own_predictive_density(ar_coupled):
    """The critic of the bound, for the true source, is the decoder read at the posterior mean."""
    from repro.teb.tasks import as_float

    data, _, _, net, _ = ar_coupled
    test = {k: v[:64] for k, v in data["test"].items()}
    y, x, t = as_float(test["y"]), as_float(test["x"]), as_float(test["target"])
    enc = net.encode(y, x)
    mean, logvar = net.decoder(net.sample_z(enc, sample=False))
    from repro.teb.models import gaussian_loglik

    want = gaussian_loglik(t, mean, logvar).double()
    got = net.source_log_density(y, x[:, None], t)[:, 0]
    torch.testing.assert_close(got, want)


def test_decoder_gap_is_zero_without_coupling(tmp_path_factory):
    """At c = 0 the estimate must not invent information.

    The DV estimate has a systematic negative Jensen gap where posterior and prior coincide (here
    about -3e-4 nats) that the window-to-window standard error (about 5e-6) does not describe, so the
    check is two-sided with a tolerance below and two standard errors above.
    """
    from repro.teb.evaluate import predict

    data, _, _, net, _ = _trained_ar(tmp_path_factory.mktemp("ar-c0"), 0.0, n_test=5000)
    torch.manual_seed(0)
    out = predict(net, data["test"], 16, 64)
    te = out["te"].numpy()
    est, se = te.mean(), te.std(ddof=1) / math.sqrt(len(te))
    assert -0.002 < est <= 2 * se, (est, se)
    assert out["kl"].numpy().mean() < 0.01


def test_te_bound_holds_where_prior_sampling_alone_would_break_it():
    """A sharp untrained decoder, a posterior just off the prior and one prior draw: log-mean-exp over prior
    draws alone puts the estimate above the KL term for many windows; the same-sample bound must not."""
    from repro.teb.tasks import as_float
    from repro.teb.train import build

    teb = _tiny_teb()
    mcfg = {**teb["model"], "latent_dim": 3, "hidden": 16, "x_init_variance": 0.05}
    data, _ = make_task(task_specs(teb)["ar-c0.4"], 0)
    torch.manual_seed(1)
    net = build("teb0", data, mcfg)
    with torch.no_grad():
        net.post[-1].bias[:3] = 0.1  # KL 0.3 nats
        net.decoder.net[0].weight[:, 3:] *= 100  # log d swings by nats over the prior's spread
    y, x, t = (as_float(data["test"][k]) for k in ("y", "x", "target"))
    o = net.te_terms(y, x, t, posterior_samples=4, prior_samples=1)
    plain = o["post_loglik"] - o["log_marginal_prior"]
    assert (plain > o["kl"]).float().mean() > 0.2
    assert (o["te"] <= o["kl"] + 1e-9).all()
    assert torch.allclose(o["kl"], torch.full_like(o["kl"], 0.3), atol=1e-5)


def test_tiny_needle_target_model_reads_the_colour_from_the_past_frames(tmp_path):
    """Non-switch events: the next ball has the history's colour, which the target-only model must read."""
    from repro.teb.evaluate import accuracy_hits, predict
    from repro.teb.train import load_model, train_run

    teb = section_defaults("teb")
    teb["train"].update(progress=False, epochs=10, batch_size=16, lr=0.004)
    teb["model"].update(hidden=32, channels=8, latent_dim=8)
    spec = {**task_specs(teb)["needle"], "name": "needle", "n_train": 1000, "n_val": 200, "n_test": 400,
            "image_size": 8}
    data, _ = make_task(spec, 0)
    train_run(teb, spec, data, "target", None, 0, tmp_path / "target")
    net = load_model(tmp_path / "target", data)
    out = predict(net, data["test"], 2, 2)
    hits = accuracy_hits("needle", out["point_mean"], data["test"], data)
    noswitch = ~data["test"]["switch"].numpy()
    # chance is 1/7; 0.45 here, 0.32 with a z-dependent output variance, 0.19 with the broadcast decoder
    assert hits[noswitch].mean() > 0.38, hits[noswitch].mean()


def test_teb_starts_as_the_target_model_and_baselines_run(tmp_path):
    """Zero-initialised source offset: before training TEB predicts exactly what the target model does."""
    from repro.teb.tasks import as_float
    from repro.teb.train import build

    teb = _tiny_teb()
    mcfg = {**teb["model"], "latent_dim": 4, "hidden": 16, "channels": 4, "x_init_variance": 1e-12}
    for task in ("ar-c0.4", "digits", "needle"):
        data, _ = make_task(task_specs(teb)[task], 0)
        target = build("target", data, mcfg)
        net = build("teb", data, mcfg, target)
        y, x, t = (as_float(data["test"][k][:16]) for k in ("y", "x", "target"))
        with torch.no_grad():
            m0, _ = target.decoder(target.sample_z(target.encode(y, x)))
            enc = net.encode(y, x)
            m1, _ = net.decoder(net.sample_z(enc))
        assert torch.allclose(m0, m1, atol=1e-4)
        assert torch.count_nonzero(enc["mu_x"]) == 0
        assert torch.allclose(net.kl(enc), torch.zeros(len(y)), atol=1e-5)  # the prior starts at the posterior
        for variant in ("teb0", "deterministic", "joint"):
            other = build(variant, data, mcfg)
            loss, parts = other.loss(y, x, t, 10.0)
            loss.backward()
            assert math.isfinite(loss.item())
            # The loss reaches the variant's own encoder and decoder (a detached term would not).
            grads = {n.split(".")[0]: p.grad for n, p in other.named_parameters() if p.grad is not None}
            assert {"decoder"} <= set(grads) and all(torch.isfinite(g).all() for g in grads.values()), sorted(grads)
            assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_accuracy_metrics_score_true_frames_high_and_blank_frames_low():
    from repro.teb.evaluate import digit_accuracy_hits, digit_templates, frame_colours
    from repro.teb.tasks import as_float

    teb = _tiny_teb()
    spec = task_specs(teb)
    d, _ = make_task({**spec["digits"], "n_train": 600}, 0)
    tmpl = digit_templates(d["train"])
    assert digit_accuracy_hits(as_float(d["test"]["target"]), d["test"], tmpl).mean() > 0.6
    n, _ = make_task({**spec["needle"], "image_size": 16}, 0)  # at 8 px a blurred pair of balls covers most pixels
    true = as_float(n["test"]["target"])
    colour = n["test"]["colour"]
    assert (frame_colours(true, true) == colour).all()
    # Blur (mass kept) and a lifted background do not change the reading (the old readout got 49%).
    blurred = torch.nn.functional.avg_pool2d(true.flatten(0, 1), 3, 1, 1, count_include_pad=False).view_as(true)
    assert (frame_colours(blurred + 0.05, true) == colour).float().mean() > 0.95
    # A prediction that hedges towards the average colour, as the target-only model's must, still reads right.
    from repro.teb.tasks import BALL_COLOURS

    mean = torch.tensor(BALL_COLOURS, dtype=torch.float32).mean(0)[None, None, :, None, None]
    ball = true.amax(dim=2, keepdim=True)
    assert (frame_colours(0.42 * true + 0.58 * ball * mean, true) == colour).all()
    # The average colour itself carries nothing: about chance.
    assert (frame_colours(ball * mean, true) == colour).float().mean() < 0.3


def test_mnist_without_torchvision_is_a_clear_config_error():
    pytest.importorskip("sklearn")
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    from repro.config import ConfigError

    teb = _tiny_teb()
    teb["tasks"]["digits"]["source"] = "mnist"
    with pytest.raises(ConfigError, match="teb.tasks.digits.source.*torchvision"):
        make_task(task_specs(teb)["digits"], 0)


def test_authors_likelihoods_are_theirs():
    """Fixed-variance Gaussian (0.1) on series and frames, Bernoulli on the ball frames, per window."""
    from repro.teb.evaluate import AUTHORS_VARIANCE, authors_loglik

    t = torch.tensor([[0.2, 0.5], [1.0, 0.0]])
    assert AUTHORS_VARIANCE == 0.1
    exact = authors_loglik("sines", t, t)
    assert np.allclose(exact, 2 * -0.5 * math.log(2 * math.pi * 0.1))
    off = authors_loglik("sines", t + 0.1, t)
    assert np.allclose(exact - off, 2 * 0.1**2 / (2 * 0.1))  # the squared error over 2 sigma^2, per element
    p = torch.tensor([[0.9, 0.5], [0.7, 0.2]])
    want = [(0.2 * math.log(0.9) + 0.8 * math.log(0.1)
            + 0.5 * math.log(0.5) + 0.5 * math.log(0.5)), math.log(0.7) + math.log(0.8)]
    assert np.allclose(authors_loglik("needle", p, t), want)


def test_batch_means_se_covers_serially_dependent_windows():
    """Windows sliding along one AR series: the plain per-window SE understates the error of their mean;
    batch means of consecutive windows do not. For independent windows both agree."""
    from repro.teb.evaluate import batch_means_se

    rng = np.random.default_rng(0)
    n, reps, phi = 1000, 400, 0.8
    means, plain, blocked = [], [], []
    for _ in range(reps):
        e = rng.normal(size=n + 200)
        x = np.empty_like(e)
        x[0] = e[0]
        for t in range(1, len(e)):
            x[t] = phi * x[t - 1] + e[t]
        x = x[200:]
        means.append(x.mean())
        plain.append(x.std(ddof=1) / math.sqrt(n))
        blocked.append(batch_means_se(x))
    true_se = np.std(means)
    assert np.mean(plain) < 0.5 * true_se  # the plain formula is off by sqrt((1 + phi) / (1 - phi)) = 3
    assert abs(np.mean(blocked) / true_se - 1) < 0.2
    iid = rng.normal(size=(reps, n))
    assert abs(np.mean([batch_means_se(r) for r in iid]) / (1 / math.sqrt(n)) - 1) < 0.1
