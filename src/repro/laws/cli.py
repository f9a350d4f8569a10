"""`repro laws ...`: fits of the forgetting laws and the rsLoRA rank-stability check."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..io import atomic_write_text


def cmd_fit(args) -> int:

    from ..faults import kill_point
    from ..io import read_table
    from ..lm.aggregate import RUNS_TABLE, STEPS_TABLE
    from .fits import run_fits
    from .gradnorm import gradient_norm_by_rank, gradient_norm_spread

    cfg = load_config(args.configfile)["laws"]
    read_table(args.runs, RUNS_TABLE)  # both refused before any fit if damaged
    steps = read_table(args.steps, STEPS_TABLE)
    table = run_fits(args.runs, args.out, cfg["families"], cfg["targets"], cfg["holdout_last"],
                     cfg["bootstrap_resamples"], cfg["seed"], cfg["n_starts"], jobs=args.jobs,
                     bootstrap_starts=cfg["bootstrap_starts"])
    kill_point("fit_laws:after-fits")
    by_rank = gradient_norm_by_rank(steps)
    atomic_write_text(Path(args.out) / "gradnorm_by_rank.csv", by_rank.to_csv(index=False))
    spread = gradient_norm_spread(by_rank)
    atomic_write_text(Path(args.out) / "gradnorm_spread.csv", spread.to_csv(index=False))
    fits = table.drop_duplicates(["model", "dataset", "method", "target", "family"])
    for _, f in fits.iterrows():
        # An under-determined sweep (one rank, too few runs) has no fit: its status says why, R2 is absent.
        r2 = f"{f['r2']:.4g}" if isinstance(f["r2"], (int, float)) and f["r2"] == f["r2"] else "n/a"
        print(f"{f['method']:7s} {f['target']:12s} {f['family']:9s} {f['status']:30s} R2={r2}"
              + ("" if f["status"] != "ok" or f["family"] == "linear" or f["converged"] is True else " NOT CONVERGED")
              + (" (chosen)" if f["chosen"] is True else ""))
    for _, s in spread.iterrows():
        print(f"{s['method']:7s} grad-norm max/min across ranks: {s['ratio_max_min']:.3g}")
    return 0


def cmd_rank_stability(args) -> int:
    import sys

    import pandas as pd

    from .rank_stability import aggregate, fitted_slopes, simulate

    # load_config ran laws.runs.check: the primary optimizer is one of the optimizers.
    cfg = load_config(args.configfile)["laws"]["rank_stability"]
    primary = cfg["primary_optimizer"]
    if max(cfg["ranks"]) > cfg["d_in"] // 2:
        # The closed forms and the paper's regime assume near-orthogonal rows of A, i.e. r well below d_in.
        print(f"warning: ranks up to {max(cfg['ranks'])} exceed d_in/2 = {cfg['d_in'] // 2}; "
              "the fit leaves the r << d_in regime", file=sys.stderr)
    optimizers = [primary] + [o for o in cfg["optimizers"] if o != primary]
    per_seed = pd.concat(
        [simulate(ranks=cfg["ranks"], d_in=cfg["d_in"], d_out=cfg["d_out"], alpha=cfg["alpha"],
                  steps=tuple(cfg["steps"]), lr=cfg["lr"], n_inputs=cfg["n_inputs"], n_init_seeds=cfg["seeds"],
                  optimizer=o, seed=cfg["seed"], per_seed=True) for o in optimizers],
        ignore_index=True,
    )
    moments = aggregate(per_seed)
    moments.insert(1, "optimizer_role", ["primary" if o == primary else "contrast" for o in moments["optimizer"]])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, moments.to_csv(index=False))
    slopes = fitted_slopes(per_seed, primary_optimizer=primary, flat_tolerance=cfg["flat_tolerance"])
    Path(args.slopes_out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.slopes_out, slopes.to_csv(index=False))
    last = slopes[slopes["step"] == slopes["step"].max()]
    cols = ["optimizer", "scaling", "measure", "slope", "slope_low", "slope_high", "expected_slope",
            "paper_claim", "verdict"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(f"primary ({primary}), step {int(last['step'].iloc[0])}, 95 % jackknife intervals over "
              f"{cfg['seeds']} init seeds:")
        print(last[last["primary"]][cols].to_string(index=False))
        contrast = last[~last["primary"]
                        & last["measure"].isin(["output_moment", "param_grad_norm", "output_moment_meanfield"])]
        print("contrast:")
        print(contrast[cols].to_string(index=False))
    return 0


def cmd_fit_table(args) -> int:
    from .table_fit import TableError, fit_table, one_line, write_json

    try:
        result = fit_table(args.csv, args.x1, args.x2, args.y, args.family, drop_highest=args.drop_highest,
                           bootstrap=args.bootstrap, seed=args.seed, drop_invalid=args.drop_invalid,
                           n_starts=args.n_starts, cluster=args.cluster, progress=True,
                           bootstrap_starts=args.bootstrap_starts)
    except TableError as exc:
        raise SystemExit(f"repro laws fit-table: {exc}") from None
    write_json(result, args.json)
    print(one_line(result))
    return 0


def cmd_design(args) -> int:
    import pandas as pd

    from ..io import read_table
    from ..lm.aggregate import RUNS_TABLE, STEPS_TABLE
    from .design import cheapest, design_table

    runs = read_table(args.runs, RUNS_TABLE)
    if args.model or args.dataset:
        runs = runs[(runs["model"] == args.model if args.model else True)
                    & (runs["dataset"] == args.dataset if args.dataset else True)]
    steps = read_table(args.steps, STEPS_TABLE) if args.steps else None
    try:
        table = design_table(runs, steps, targets=args.targets, width=args.width, resamples=args.bootstrap,
                             seed=args.seed, min_ranks=args.min_ranks, max_steps=args.max_steps,
                             eval_seconds_per_checkpoint=args.eval_seconds_per_checkpoint, jobs=args.jobs)
    except ValueError as exc:
        raise SystemExit(f"repro laws design: {args.runs}: {exc}") from None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table.to_csv(index=False))
    cols = ["method", "target", "ranks", "n_seeds", "max_step", "family", "alpha_width", "beta_width",
            "both_within", "cost_cpu_min"]
    with pd.option_context("display.width", 200, "display.max_rows", 400, "display.float_format", "{:.3g}".format):
        print(table[cols].to_string(index=False))
        best = cheapest(table)
        print(f"\ncheapest design with both exponent intervals <= {args.width} (per method and target):")
        print(best[cols].to_string(index=False) if len(best) else "  none in this sweep")
    return 0


def cmd_figures(args) -> int:
    from .figures import make_figures, plot_rank_stability

    paths = make_figures(args.runs, args.steps, args.laws_dir / "fits", args.laws_dir / "curves.csv", args.out)
    if args.rank_stability:

        from ..io import read_table
        from .schemas import RANK_STABILITY

        moments = read_table(args.rank_stability, RANK_STABILITY)
        for optimizer, grp in moments.groupby("optimizer"):
            paths += plot_rank_stability(grp, args.out / f"rank_stability_{optimizer}")
    for p in paths:
        print(p)
    return 0


def cmd_tables(args) -> int:
    from .tables import make_tables

    for p in make_tables(args.laws_dir / "fits", args.laws_dir / "gradnorm_spread.csv",
                         args.laws_dir / "early_stopping.csv", args.out):
        print(p)
    return 0


def cmd_numbers(args) -> int:
    from .numbers import make_numbers

    print(make_numbers(args.runs, args.laws_dir / "fits", args.laws_dir / "gradnorm_spread.csv",
                       args.rank_stability_slopes, args.out))
    return 0


def register(sub) -> None:
    laws = sub.add_parser("laws", help="fits of the forgetting laws, rsLoRA checks").add_subparsers(
        dest="action", required=True)
    p = laws.add_parser("fit", help="linear and power-law fits, early stopping, gradient-norm spread")
    p.add_argument("--configfile", required=True, type=Path)
    p.add_argument("--runs", required=True, type=Path, help="results/lm/runs.csv")
    p.add_argument("--steps", required=True, type=Path, help="results/lm/steps.csv")
    p.add_argument("--out", required=True, type=Path, help="output directory (results/laws)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the bootstraps (results do not depend on it)")
    p.set_defaults(func=cmd_fit)
    p = laws.add_parser("rank-stability", help="adapter moments vs rank for alpha/r, alpha/sqrt(r), alpha")
    p.add_argument("--configfile", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="CSV of moments per rank, scaling and step")
    p.add_argument("--slopes-out", required=True, type=Path, help="CSV of log-log slopes")
    p.set_defaults(func=cmd_rank_stability)
    p = laws.add_parser("fit-table", help="fit a power-law family to any CSV table (Huber on log residuals)")
    p.add_argument("--csv", required=True, type=Path, help="input table")
    p.add_argument("--x1", required=True, help="column of the first variable (P in the laws of this project)")
    p.add_argument("--x2", required=True, help="column of the second variable (N)")
    p.add_argument("--y", required=True, help="column fitted")
    p.add_argument("--family", required=True, choices=["additive", "joint", "shifted"])
    p.add_argument("--drop-highest", type=int, default=0, metavar="K", help="leave out the K rows of largest y")
    p.add_argument("--drop-invalid", action="store_true",
                   help="leave out rows with a missing, non-positive or non-finite value instead of refusing")
    p.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap resamples for intervals")
    p.add_argument("--cluster", help="column whose groups are resampled whole (default: single rows)")
    p.add_argument("--n-starts", type=int, default=8, help="starting points of the fit (default 8)")
    p.add_argument("--bootstrap-starts", type=int,
                   help="grid starts of each bootstrap refit, besides the fit's optimum (default: laws.bootstrap_starts's, 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, type=Path, help="output JSON")
    p.set_defaults(func=cmd_fit_table)
    p = laws.add_parser("design", help="interval width of the exponents vs cost, for every sub-sweep of a sweep")
    p.add_argument("--runs", required=True, type=Path, help="runs.csv of one sweep")
    p.add_argument("--steps", type=Path, help="steps.csv of the same sweep (per-step seconds: the cost)")
    p.add_argument("--model")
    p.add_argument("--dataset")
    p.add_argument("--targets", nargs="+", default=["loss_forget", "loss_ft"])
    p.add_argument("--width", type=float, default=0.15, help="largest acceptable 95 %% interval width")
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ranks", type=int, default=3)
    p.add_argument("--max-steps", type=int, nargs="+", help="only these maximum steps (default: every checkpoint >= 8)")
    p.add_argument("--eval-seconds-per-checkpoint", type=float,
                   help="CPU seconds of evaluating one checkpoint, added to the cost")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--out", type=Path, help="CSV of every design")
    p.set_defaults(func=cmd_design)
    p = laws.add_parser("figures", help="PDF + PNG figures of the laws and rsLoRA studies")
    p.add_argument("--runs", required=True, type=Path)
    p.add_argument("--steps", required=True, type=Path)
    p.add_argument("--laws-dir", required=True, type=Path, help="what `repro laws fit` wrote (fits/, curves.csv)")
    p.add_argument("--rank-stability", type=Path, help="moments CSV of `repro laws rank-stability`")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_figures)
    p = laws.add_parser("tables", help="LaTeX (booktabs) tables of the fits")
    p.add_argument("--laws-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_tables)
    p = laws.add_parser("numbers", help="number macros of the laws and rsLoRA sections (results/numbers.tex)")
    p.add_argument("--runs", required=True, type=Path)
    p.add_argument("--laws-dir", required=True, type=Path)
    p.add_argument("--rank-stability-slopes", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_numbers)
