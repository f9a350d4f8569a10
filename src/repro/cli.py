"""``repro <command>``: the only entry point the Snakemake rules call.

Every command reads a validated config file (``--configfile``), so each step can be run, tested and
debugged by hand, on a laptop or on a cluster node, with exactly what the rule would run.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .io import InputError, is_disk_full

# The order commands are listed in by `repro --help`: the language-model study's (model, data,
# finetune, evaluate, aggregate, track) right after `config`, as the pipeline runs them.
BRANCHES = ("lm", "laws", "report", "teb", "compression", "claims", "cluster", "provenance", "paper")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", required=True, type=Path, help="pipeline config (YAML), validated first")


def cmd_config_check(args) -> int:
    cfg = load_config(args.configfile)
    if args.print:
        print(json.dumps(cfg, indent=2, sort_keys=True))
    else:
        print(f"{args.configfile}: valid")
    return 0


def cmd_config_results_dir(args) -> int:
    """The folder the workflow writes this config's results to (as the Snakefile chooses it)."""
    from .config import results_folder

    if args.configfile is None:
        print(results_folder({}))
        return 0
    print(results_folder(load_config(args.configfile), [args.configfile]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    p = config.add_parser("check", help="validate a config file (defaults filled)")
    _add_config(p)
    p.add_argument("--print", action="store_true", help="print the validated config with defaults")
    p.set_defaults(func=cmd_config_check)
    p = config.add_parser("results-dir", help="print the results folder the workflow uses for a config file")
    p.add_argument("--configfile", type=Path, help="the file given to snakemake --configfile (default: config.yaml)")
    p.set_defaults(func=cmd_config_results_dir)

    # Each study branch registers its own command group from repro.<branch>.cli (register(sub)).
    for branch in BRANCHES:
        module = f"repro.{branch}.cli"
        if importlib.util.find_spec(f"repro.{branch}") and importlib.util.find_spec(module):
            importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import time

    from .locks import hold_jobs_lock
    from .provenance.manifest import utc_now, write_manifest

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    hold_jobs_lock()  # inside a workflow run: a later run sees this job even if its Snakemake dies
    started, t0 = utc_now(), time.perf_counter()
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"repro: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, InputError) as exc:
        print(f"repro: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = getattr(args, "out", None) or getattr(args, "out_dir", None)
        print(f"repro {args.command}: out of disk space (or over the file-size limit) while writing"
              f"{f' under {where}' if where else ''}: {exc}\nNothing partial is kept under a final name: "
              "free space, then rerun (snakemake --rerun-incomplete); a fine-tuning run resumes from its "
              "last saved state.", file=sys.stderr)
        return 1
    if not code:
        # Provenance never fails a job whose outputs are written.
        try:
            write_manifest(args, argv, started, time.perf_counter() - t0)
        except Exception as exc:
            print(f"repro: warning: no provenance manifest written: {exc}", file=sys.stderr)
    return code


# Each job is a process that loads a large library stack (torch, transformers, lm-eval: millions of
# long-lived objects), runs one command and exits. At the default gen-0 threshold (700) the collector
# walks that stack again and again while it loads, and once more in the interpreter's final collection.
GC_GEN0_THRESHOLD = 10_000


def tune_collector() -> None:
    """Collector settings for a process that loads a large stack once, does one piece of work and exits.

    Collections of the youngest generation are 14x rarer (the collector still runs, so a long training
    loop reclaims cycles as before), and what is alive at exit is frozen, so the final collection skips
    it: a job importing the language-model stack spends about a quarter less CPU
    (``benchmarks/cli_gc.py``). The Snakefile sets the same for Snakemake's own process.
    """
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    atexit.register(gc.freeze)


def run() -> int:
    """The ``repro`` console script: :func:`main` in a process tuned by :func:`tune_collector`.
    Tests call :func:`main` in their own process, which keeps its settings."""
    tune_collector()
    return main()


if __name__ == "__main__":
    sys.exit(run())
