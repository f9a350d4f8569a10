"""Bootstrap refits from few grid starts against refits from the full fit's eight, on the same draws.

Each family's data are the coverage test's (tests/test_laws_fitter.py: 4 ranks x 3 seeds x 6 checkpoints,
run-correlated noise); for every replicate the full-data fit is made once, then its percentile bootstrap
over runs twice with the same seed: every resample refitted from the full-data optimum plus 8 grid starts
(the baseline), and plus `--starts` (default: laws.bootstrap_starts, 3). Printed per family: seconds of
each, the ratio baseline / ours, the largest and median difference of an interval endpoint divided by
the interval's width, and how often each covers the true exponent.

    python benchmarks/bootstrap_starts.py                 # 10 replicates per family, about 2 min
    python benchmarks/bootstrap_starts.py --replicates 20 --resamples 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_laws_fitter import TRUE, draw_runs  # noqa: E402

from repro.laws.fits import bootstrap_power_law, fit_power_law  # noqa: E402
from repro.laws.powerlaw import BOOTSTRAP_STARTS, FAMILIES  # noqa: E402

BASELINE_STARTS = 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=20)
    ap.add_argument("--starts", type=int, default=BOOTSTRAP_STARTS)
    args = ap.parse_args()
    for name in ("joint", "shifted", "additive"):
        fam = FAMILIES[name]
        seconds = {"baseline": 0.0, "ours": 0.0}
        diffs, covered = [], {"baseline": [], "ours": []}
        for rep in range(args.replicates):
            df, p_ref, n_ref = draw_runs(name, rep)
            fit = fit_power_law(df, "y", fam, holdout_last=0, p_ref=p_ref, n_ref=n_ref)
            ci = {}
            for side, starts in (("baseline", BASELINE_STARTS), ("ours", args.starts)):
                t0 = time.perf_counter()
                ci[side] = bootstrap_power_law(df, "y", fam, fit["params"], p_ref, n_ref, resamples=args.resamples,
                                               seed=rep, n_starts=starts)["ci95"]
                seconds[side] += time.perf_counter() - t0
                covered[side] += [ci[side][p][0] <= TRUE[name][p] <= ci[side][p][1] for p in ("alpha", "beta")]
            for p in ("alpha", "beta"):
                width = ci["baseline"][p][1] - ci["baseline"][p][0]
                diffs.append(max(abs(ci["baseline"][p][i] - ci["ours"][p][i]) for i in (0, 1)) / width)
        print(f"{name:8s} {BASELINE_STARTS} starts {seconds['baseline']:6.1f} s, {args.starts} starts "
              f"{seconds['ours']:6.1f} s, ratio {seconds['baseline'] / seconds['ours']:.2f}x; endpoint difference / "
              f"width: max {max(diffs):.1e}, median {np.median(diffs):.1e}; coverage "
              f"{np.mean(covered['baseline']):.2f} vs {np.mean(covered['ours']):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
