"""TEB branch: exact TE, generators, estimators, a short real training, and the CLI contract."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from repro.config import section_defaults
from repro.teb.estimators import gaussian_te, ksg_te
from repro.teb.exact import closed_form_te1, exact_te, exact_te_inf, exact_te_reverse
from repro.teb.tasks import ar_windows, make_task, simulate_ar, task_specs, tensor_digest

torch.set_num_threads(1)

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


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _repro_cli(*args, capsys=None):
    """The CLI in-process (a subprocess per call costs seconds of imports)."""
    from repro.cli import main

    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return _Result(rc, out.out, out.err)


def test_cli_exact_te_one_line_and_errors(capsys):
    script = subprocess.run([sys.executable, "-m", "repro.cli", "teb", "exact-te", "--a", "0", "--b", "0", "--c", "1",
                             "--sigma-x", "1", "--sigma-y", "1"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and float(script.stdout) == pytest.approx(0.5 * math.log(2), abs=1e-9)
    _repro = functools.partial(_repro_cli, capsys=capsys)
    base = ["teb", "exact-te", "--a", "0.8", "--b", "0.3", "--c", "0.3", "--sigma-x", "1", "--sigma-y", "0.5"]
    out = _repro(*base)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and float(out.stdout) == pytest.approx(exact_te(**AR), abs=1e-9)
    inf = _repro(*base, "--target-lags", "inf")
    assert float(inf.stdout) == pytest.approx(exact_te_inf(**AR), abs=1e-9)
    lags = _repro(*base, "--source-lags", "2", "--target-lags", "3", "--horizon", "2")
    assert float(lags.stdout) == pytest.approx(exact_te(**AR, k=2, l=3, H=2), abs=1e-9)
    bad = _repro("teb", "exact-te", "--a", "1.5", "--b", "0.3", "--c", "0.3", "--sigma-x", "1", "--sigma-y", "0.5")
    assert bad.returncode == 2 and "|a| must be < 1" in bad.stderr
    neg = _repro(*base[:-2], "--sigma-y", "-0.5")
    assert neg.returncode == 2 and "sigma_y" in neg.stderr
    k0 = _repro(*base, "--source-lags", "0")
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
    from repro.teb.tasks import BALL_COLOURS

    true = torch.tensor(BALL_COLOURS, dtype=torch.float32)[n["train"]["colour"]]
    closest = ((src - true[:, None]) ** 2).sum(-1).min(1).values
    assert closest.max() < 3 * 0.4**2 + 1e-3  # the needle is within the label noise of the true colour


# ---------------------------------------------------------------------------------------- training


def test_short_teb_training_recovers_exact_te(tmp_path):
    from repro.teb.evaluate import evaluate_task
    from repro.teb.train import train_run

    teb = section_defaults("teb")
    teb["train"].update(progress=False, epochs=12, target_epochs=8, batch_size=256, lr=0.003)
    spec = {**task_specs(teb)["ar-c0.3"], "name": "ar-c0.3", "n_train": 8000, "n_val": 2000, "n_test": 20000}
    data, info = make_task(spec, 0)
    train_run(teb, spec, data, "target", None, 0, tmp_path / "target")
    train_run(teb, spec, data, "teb", 100.0, 0, tmp_path / "teb", tmp_path / "target")
    df = evaluate_task("ar-c0.3", "ar", data, {("teb", 100.0): tmp_path / "teb"}, tmp_path / "target", 8, 0)
    row = df.set_index("variant").loc["teb"]
    assert row["te_estimate"] >= 0
    assert row["te_estimate"] < row["kl"]
    assert abs(row["te_estimate"] - info["exact_te"]) < 0.05, (row["te_estimate"], info["exact_te"])


def test_teb_starts_as_the_target_model_and_baselines_run(tmp_path):
    """Zero-initialised source offset: before training TEB predicts exactly what the target model does."""
    from repro.teb.models import TEBNet
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
            m0, _ = target.decoder(target.encode(y, x)["c_mu"])
            enc = net.encode(y, x)
            m1, _ = net.decoder(net.sample_z(enc))
        assert torch.allclose(m0, m1, atol=1e-4)
        assert torch.count_nonzero(enc["mu_x"]) == 0
        for variant in ("teb0", "deterministic", "joint"):
            other = build(variant, data, mcfg)
            loss, parts = other.loss(y, x, t, 10.0)
            loss.backward()
            assert math.isfinite(loss.item())
            assert isinstance(other, TEBNet)


def test_accuracy_metrics_score_true_frames_high_and_blank_frames_low():
    from repro.teb.evaluate import digit_accuracy_hits, digit_templates, frame_colours
    from repro.teb.tasks import as_float

    teb = _tiny_teb()
    spec = task_specs(teb)
    d, _ = make_task({**spec["digits"], "n_train": 600}, 0)
    tmpl = digit_templates(d["train"])
    assert digit_accuracy_hits(as_float(d["test"]["target"]), d["test"], tmpl).mean() > 0.6
    n, _ = make_task(spec["needle"], 0)
    true = as_float(n["test"]["target"])
    assert (frame_colours(true) == n["test"]["colour"]).all()
    # A colourless (grey) prediction scores one palette entry for every frame, i.e. about chance.
    grey = true.mean(dim=2, keepdim=True).expand_as(true)
    assert (frame_colours(grey) == n["test"]["colour"]).float().mean() < 0.4


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
