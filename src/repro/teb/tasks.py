"""Seeded stream tasks: a source stream X and a target stream Y, cut into (history, future) windows.

Every task writes the same layout per split (train/val/test), so models and estimators never branch
on the task:

* ``y``      target history, float ``[N, l, *frame]`` (needle: the distractor frames are appended)
* ``x``      source history, float ``[N, k, *frame]`` or integer labels ``[N, k]`` (digits)
* ``target`` target future, float ``[N, H, *frame]``
* ``switch`` bool ``[N]``: the future departs from what the target history alone predicts
  (frequency / digit / colour switch); all False for the AR task
* task-specific integer metadata used by the accuracy metrics (``label``, ``angle``, ``colour``)

Images are stored as uint8 to keep the data small; ``as_float`` converts them back to [0, 1].
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .exact import NEEDLE_PALETTE, check_ar_params, exact_te, exact_te_inf
from .exact import SINE_MULTIPLIERS as _MULTIPLIERS

SPLITS = ("train", "val", "test")
# Seeds of the three splits are offset so the held-out data never reuses training noise.
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_029}


def _rng(seed: int, split: str, salt: str) -> np.random.Generator:
    h = int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([seed, _SPLIT_OFFSET[split], h])


# --------------------------------------------------------------------------------------------------
# Coupled linear-Gaussian AR(1) streams


def simulate_ar(n: int, a: float, b: float, c: float, sigma_x: float, sigma_y: float,
                rng: np.random.Generator, burn_in: int = 500) -> tuple[np.ndarray, np.ndarray]:
    check_ar_params(a, b, c, sigma_x, sigma_y)
    total = n + burn_in
    eps = rng.normal(0.0, sigma_x, total)
    eta = rng.normal(0.0, sigma_y, total)
    x = np.zeros(total)
    y = np.zeros(total)
    for t in range(1, total):
        x[t] = a * x[t - 1] + eps[t]
        y[t] = b * y[t - 1] + c * x[t - 1] + eta[t]
    return x[burn_in:], y[burn_in:]


def ar_windows(x: np.ndarray, y: np.ndarray, k: int, l: int, H: int) -> dict[str, np.ndarray]:
    """Sliding windows: source X_{t-k+1..t}, target history Y_{t-l+1..t}, future Y_{t+1..t+H}."""
    m = max(k, l)
    n = len(y) - m - H + 1
    if n <= 0:
        raise ValueError(f"series of length {len(y)} is too short for k={k}, l={l}, H={H}")
    t = np.arange(m - 1, m - 1 + n)
    xs = np.stack([x[t - k + 1 + j] for j in range(k)], axis=1)
    ys = np.stack([y[t - l + 1 + j] for j in range(l)], axis=1)
    fut = np.stack([y[t + 1 + h] for h in range(H)], axis=1)
    return {"x": xs, "y": ys, "target": fut}


def make_ar(spec: dict, seed: int) -> tuple[dict, dict]:
    k, l, H = spec["source_lags"], spec["target_lags"], spec["horizon"]
    params = {p: spec[p] for p in ("a", "b", "c", "sigma_x", "sigma_y")}
    splits = {}
    for split in SPLITS:
        n = spec[f"n_{split}"]
        x, y = simulate_ar(n + max(k, l) + H - 1, **params, rng=_rng(seed, split, f"ar{params}"))
        w = ar_windows(x, y, k, l, H)
        splits[split] = {
            "x": torch.tensor(w["x"], dtype=torch.float32),
            "y": torch.tensor(w["y"], dtype=torch.float32),
            "target": torch.tensor(w["target"], dtype=torch.float32),
            "switch": torch.zeros(n, dtype=torch.bool),
        }
    info = {
        "exact_te": exact_te(**params, k=k, l=l, H=H),
        "exact_te_inf": exact_te_inf(**params),
        **params, "source_lags": k, "target_lags": l, "horizon": H,
    }
    return splits, info


# --------------------------------------------------------------------------------------------------
# Multi-component sinusoids with a frequency switch


# Defined beside the exact TE (torch-free), which must see the same values.
SINE_MULTIPLIERS = np.array(_MULTIPLIERS)


def make_sines_split(n: int, spec: dict, rng: np.random.Generator) -> dict:
    hist, H, k = spec["history"], spec["horizon"], spec["source_lags"]
    ncomp = len(SINE_MULTIPLIERS)
    T = hist + H
    mult = np.stack([rng.permutation(SINE_MULTIPLIERS) for _ in range(n)])  # [n, 5]
    phase0 = rng.uniform(0, 2 * np.pi, (n, ncomp))
    switching = rng.random(n) < spec["switch_prob"]
    which = rng.integers(0, ncomp, n)
    # The new multiplier may equal the old one (as in the authors' generator); `switch` marks a real change.
    new_mult = rng.choice(SINE_MULTIPLIERS, n)
    t = np.arange(T)
    omega = 2 * np.pi * mult / 20.0  # a k-multiplier of 0.2 means a period of 100 steps
    comps = np.sin(omega[:, :, None] * t[None, None, :] + phase0[:, :, None])  # [n, 5, T]
    labels = np.repeat(mult[:, :, None], T, axis=2)
    rows = np.nonzero(switching)[0]
    m = which[rows]
    theta = omega[rows, m] * (hist - 1) + phase0[rows, m]  # state at the last history step
    new_omega = 2 * np.pi * new_mult[rows] / 20.0
    after = np.arange(hist, T) - (hist - 1)
    comps[rows, m, hist:] = np.sin(theta[:, None] + new_omega[:, None] * after[None, :])
    # The source reveals the new frequency one step early: labels switch from the last history step.
    labels[rows, m, hist - 1:] = new_mult[rows, None]
    labels = labels + rng.uniform(-spec["label_noise"], spec["label_noise"], labels.shape)
    series = comps.mean(axis=1)  # target = mean of the components
    switch = switching & (new_mult != mult[np.arange(n), which])
    return {
        "y": torch.tensor(series[:, :hist], dtype=torch.float32),
        "x": torch.tensor(labels[:, :, hist - k:hist].transpose(0, 2, 1), dtype=torch.float32),  # [n, k, 5]
        "target": torch.tensor(series[:, hist:], dtype=torch.float32),
        "switch": torch.tensor(switch),
    }


def make_sines(spec: dict, seed: int) -> tuple[dict, dict]:
    if spec["source_lags"] > spec["history"]:
        raise ValueError("teb.tasks.sines.source_lags must be <= teb.tasks.sines.history")
    splits = {s: make_sines_split(spec[f"n_{s}"], spec, _rng(seed, s, "sines")) for s in SPLITS}
    return splits, {"components": len(SINE_MULTIPLIERS), "multipliers": SINE_MULTIPLIERS.tolist()}


# --------------------------------------------------------------------------------------------------
# Rotating digits with a digit switch


def _load_digit_images(spec: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """Images in [0, 1] of shape [N, s, s] and labels; scikit-learn's bundled digits or MNIST."""
    if spec["source"] == "sklearn":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images / 16.0, d.target.astype(np.int64), "sklearn.datasets.load_digits (8x8)"
    try:
        import torchvision  # noqa: F401
        from torchvision.datasets import MNIST
    except ImportError as exc:
        from ..config import ConfigError

        raise ConfigError(
            "key 'teb.tasks.digits.source' is 'mnist' but torchvision is not installed "
            "(pip install torchvision, or set teb.tasks.digits.source: sklearn)") from exc
    ds = MNIST(root=spec["mnist_root"], train=True, download=spec["mnist_download"])
    return ds.data.numpy() / 255.0, ds.targets.numpy().astype(np.int64), f"torchvision MNIST ({spec['mnist_root']})"


def _rotations(images: np.ndarray, size: int, step_deg: float, n_angles: int) -> np.ndarray:
    from scipy.ndimage import rotate, zoom

    src = images
    if images.shape[-1] != size:
        src = np.stack([zoom(im, size / im.shape[-1], order=1) for im in images])
    out = np.empty((len(src), n_angles, size, size), dtype=np.float32)
    for a in range(n_angles):
        out[:, a] = rotate(src, step_deg * a, axes=(1, 2), reshape=False, order=1, mode="constant")
    return np.clip(out, 0.0, 1.0)


def _to_uint8(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


def make_digits(spec: dict, seed: int) -> tuple[dict, dict]:
    images, labels, origin = _load_digit_images(spec)
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(images))
    if spec["max_images"]:
        order = order[: spec["max_images"]]
    # Disjoint image pools per split: held-out sequences show digits never seen in training.
    cut1, cut2 = int(0.6 * len(order)), int(0.7 * len(order))
    pools = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    step = spec["angle_step"]
    n_angles = int(round(360 / step))
    l, k = spec["history"], spec["source_lags"]
    splits = {}
    for split in SPLITS:
        pool = pools[split]
        rot = _rotations(images[pool], spec["image_size"], step, n_angles)  # [P, A, s, s]
        lab = labels[pool]
        r = _rng(seed, split, "digits")
        n = spec[f"n_{split}"]
        first = r.integers(0, len(pool), n)
        start = r.integers(0, n_angles, n)
        switching = r.random(n) < spec["switch_prob"]
        nxt = first.copy()
        for i in np.nonzero(switching)[0]:
            # A different digit at the same angle: only the label stream can announce it.
            while True:
                j = r.integers(0, len(pool))
                if lab[j] != lab[first[i]]:
                    nxt[i] = j
                    break
        angles = (start[:, None] + np.arange(l + 1)[None, :]) % n_angles
        hist = rot[first[:, None], angles[:, :l]]  # [n, l, s, s]
        fut = rot[nxt, angles[:, l]]
        src = np.repeat(lab[first][:, None], k, axis=1)
        src[:, -1] = lab[nxt]  # the label at the last history step already shows the next digit
        splits[split] = {
            "y": _to_uint8(hist[:, :, None]),
            "x": torch.tensor(src, dtype=torch.long),
            "target": _to_uint8(fut[:, None, None]),
            "switch": torch.tensor(switching),
            "label": torch.tensor(lab[nxt], dtype=torch.long),
            "angle": torch.tensor(angles[:, l], dtype=torch.long),
        }
    # The exact TE depends on each pool's label counts (exact.exact_te_digits).
    counts = {s: np.bincount(labels[pools[s]], minlength=10).tolist() for s in SPLITS}
    return splits, {"images": origin, "n_images": int(len(order)), "n_angles": n_angles, "n_classes": 10,
                    "pool_label_counts": counts}


# --------------------------------------------------------------------------------------------------
# Needle in a haystack: coloured bouncing balls with a colour switch

BALL_COLOURS = (NEEDLE_PALETTE * 2 + 1) / 3.0
# The one-pixel source labels use the plain palette (channel levels 0 and 1), as in the authors' code;
# only the balls are drawn in the whitened colours above.
PATCH_COLOURS = NEEDLE_PALETTE.astype(float)
COLOUR_NAMES = ("white", "red", "green", "blue", "yellow", "magenta", "cyan")


def noisy_patches(colours: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Label pixels [..., 3]: each channel moved from its level towards the other by U(0, noise).

    One-sided, as in the authors' generator: with noise < 0.5 every colour stays recognisable. A
    symmetric U(-noise, noise) on the whitened palette (levels 1/3 and 1) made neighbouring colours
    overlap, so about a fifth of the label pixels could not be read.
    """
    levels = PATCH_COLOURS[colours]
    r = rng.uniform(0.0, noise, levels.shape)
    return np.where(levels > 0.5, levels - r, levels + r)


def bouncing_balls(n: int, frames: int, n_balls: int, radius: float, box: float, speed: float,
                   rng: np.random.Generator, substeps: int = 10) -> np.ndarray:
    """Ball centres [n, frames, balls, 2] in a box with elastic walls (balls pass through each other)."""
    pos = rng.uniform(radius, box - radius, (n, n_balls, 2))
    ang = rng.uniform(0, 2 * np.pi, (n, n_balls))
    vel = speed * np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    out = np.empty((n, frames, n_balls, 2))
    for f in range(frames):
        out[:, f] = pos
        for _ in range(substeps):
            pos = pos + vel / substeps
            lo, hi = pos < radius, pos > box - radius
            vel = np.where(lo | hi, -vel, vel)
            pos = np.where(lo, 2 * radius - pos, np.where(hi, 2 * (box - radius) - pos, pos))
    return out


def render_balls(centres: np.ndarray, size: int, radius: float, box: float) -> np.ndarray:
    """Intensity [..., size, size] of anti-aliased discs."""
    grid = (np.arange(size) + 0.5) * box / size
    gx, gy = np.meshgrid(grid, grid, indexing="xy")
    px = box / size
    d = np.sqrt((gx - centres[..., 0, None, None]) ** 2 + (gy - centres[..., 1, None, None]) ** 2)
    disc = np.clip((radius - d) / px + 0.5, 0.0, 1.0)  # [..., balls, s, s]
    return np.clip(disc.sum(axis=-3), 0.0, 1.0)


def make_needle_split(n: int, spec: dict, rng: np.random.Generator) -> dict:
    l, S = spec["history"], spec["image_size"]
    nd = spec["distractors"]
    centres = bouncing_balls(n, l + 1, spec["n_balls"], spec["radius"], spec["box"], spec["speed"], rng)
    inten = render_balls(centres, S, spec["radius"], spec["box"])  # [n, l+1, s, s]
    ncol = len(BALL_COLOURS)
    colour = rng.integers(0, ncol, n)
    switching = rng.random(n) < spec["switch_prob"]
    shift = rng.integers(1, ncol, n)  # a different colour when switching
    nxt = np.where(switching, (colour + shift) % ncol, colour)
    frames = inten[:, :, None] * BALL_COLOURS[colour][:, None, :, None, None]  # [n, l+1, 3, s, s]
    frames[:, l] = inten[:, l, None] * BALL_COLOURS[nxt][:, :, None, None]
    # Source: nd + 1 one-pixel frames; one (at a random position) holds the next colour, the others
    # are distractors that the target history also holds, as the very same noisy pixels (the authors'
    # copies), so the needle is the one source frame without a twin in the history. Drawn with fresh
    # noise the history's copies only roughly matched the source's, and no model found the needle.
    distract = rng.integers(0, ncol, (n, nd))
    pos = rng.integers(0, nd + 1, n)
    dis_pix = noisy_patches(distract, spec["label_noise"], rng)  # [n, nd, 3]
    needle_pix = noisy_patches(nxt, spec["label_noise"], rng)  # [n, 3]
    src_pix = np.empty((n, nd + 1, 3))
    for i in range(n):
        src_pix[i] = np.insert(dis_pix[i], pos[i], needle_pix[i], axis=0)
    src = np.zeros((n, nd + 1, 3, S, S))
    src[:, :, :, 1, 1] = src_pix
    dis = np.zeros((n, nd, 3, S, S))
    dis[:, :, :, 1, 1] = dis_pix
    return {
        "y": _to_uint8(np.concatenate([frames[:, :l], dis], axis=1)),
        "x": _to_uint8(src),
        "target": _to_uint8(frames[:, l:]),
        "switch": torch.tensor(switching),
        "colour": torch.tensor(nxt, dtype=torch.long),
    }


def make_needle(spec: dict, seed: int) -> tuple[dict, dict]:
    splits = {s: make_needle_split(spec[f"n_{s}"], spec, _rng(seed, s, "needle")) for s in SPLITS}
    return splits, {"colours": COLOUR_NAMES}


# --------------------------------------------------------------------------------------------------

MAKERS = {"ar": make_ar, "sines": make_sines, "digits": make_digits, "needle": make_needle}


def make_task(spec: dict, seed: int) -> tuple[dict, dict]:
    """(splits, info) of one task; deterministic in (spec, seed)."""
    splits, info = MAKERS[spec["kind"]](spec, seed)
    return splits, {"kind": spec["kind"], "seed": seed, **info}


def as_float(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t if t.dtype == torch.long else t.float()


def describe(splits: dict) -> dict:
    out = {}
    for split, d in splits.items():
        out[split] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in d.items()}
        out[split]["switch_fraction"] = float(d["switch"].float().mean())
    return out


def tensor_digest(splits: dict) -> str:
    h = hashlib.sha256()
    for split in sorted(splits):
        for key in sorted(splits[split]):
            h.update(f"{split}/{key}".encode())
            h.update(splits[split][key].contiguous().numpy().tobytes())
    return h.hexdigest()

