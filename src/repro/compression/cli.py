"""``repro compression ...``: enumeration, schemes, verification, SAT existence, compactness, tables.

User commands (no config needed):

    repro compression count-maximum --n 5 --d 2          # prints 97536
    repro compression exists --class examples/C.txt --kind unlabeled --size 2 [--proper] [--show]
    repro compression info --class examples/C.txt

Pipeline commands (what the Snakemake rules run; each reads --configfile):
enumerate, schemes, verify, named, compactness, tables.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from . import CompressionInputError
from .named import NAMES_HELP


def _guard(func):
    """Bad input -> 'repro: <message>' on stderr and exit code 2 (cli.main only catches config errors)."""

    @functools.wraps(func)
    def wrapper(args) -> int:
        try:
            return func(args)
        except CompressionInputError as exc:
            print(f"repro: {exc}", file=sys.stderr)
            return 2

    return wrapper


def _config(args) -> dict:
    from .pipeline import compression_config

    return compression_config(getattr(args, "configfile", None))


@_guard
def cmd_count_maximum(args) -> int:
    from .enumeration import count_maximum

    print(count_maximum(args.n, args.d, method=args.method, progress=args.progress))
    return 0


@_guard
def cmd_enumerate(args) -> int:
    from .enumeration import iter_maximum_classes, maximum_orbits
    from .pipeline import run_enumerate

    cfg = _config(args)
    if args.no_orbits:
        cfg["enumerate"]["orbits"] = False
    result = run_enumerate(cfg, args.n, args.d, args.out, progress=not args.no_progress)
    if args.list != "none":
        stream = maximum_orbits(args.n, args.d) if args.list == "orbits" else iter_maximum_classes(args.n, args.d)
        target = open(args.list_out, "w") if args.list_out else sys.stdout
        try:
            for cmask in stream:  # streamed: M(6, 2) is never held in memory
                target.write(f"{cmask:x}\n")
        finally:
            if args.list_out:
                target.close()
    print(f"M({args.n},{args.d}): {result['total']} maximum classes"
          + (f", {result['orbits']} up to symmetry" if "orbits" in result else ""), file=sys.stderr)
    return 0


@_guard
def cmd_schemes(args) -> int:
    from .pipeline import run_schemes

    run_schemes(_config(args), args.enumeration, args.kind, args.out, args.summary, progress=not args.no_progress)
    return 0


@_guard
def cmd_verify(args) -> int:
    from .pipeline import run_verify

    result = run_verify(args.files, args.out, progress=not args.no_progress)
    print(f"{result['schemes']} schemes, {result['failed']} failed")
    return 0 if result["ok"] else 1


@_guard
def cmd_named(args) -> int:
    from .pipeline import run_named

    result = run_named(_config(args), args.name, args.out, args.schemes_out)
    print(json.dumps(result["minimal_sizes"]))
    return 0


@_guard
def cmd_compactness(args) -> int:
    from .pipeline import run_compactness

    run_compactness(_config(args), args.out, args.schemes_out, progress=not args.no_progress)
    return 0


@_guard
def cmd_tables(args) -> int:
    from .tables import make_tables

    summary = make_tables(args.out_dir, args.enumerate, args.schemes, args.verify, args.named, args.compactness)
    print(json.dumps(summary["counts"]))
    return 0


@_guard
def cmd_numbers(args) -> int:
    from .numbers import make_numbers

    print(make_numbers(args.summary, args.out))
    return 0


@_guard
def cmd_exists(args) -> int:
    from .classes import read_class_file
    from .sat import scheme_exists
    from .schemes import describe_scheme
    from .verify import verify_scheme

    if args.size < 0:
        raise CompressionInputError(f"--size must be >= 0, got {args.size}")
    C = read_class_file(args.class_file)
    out = scheme_exists(C, args.kind, args.size, args.proper, solver=args.solver, time_limit=args.time_limit)
    if out.status == "unknown":
        print("unknown")
        print(f"repro: the SAT solver hit the time limit of {args.time_limit} s", file=sys.stderr)
        return 3
    if out.status == "yes":
        check = verify_scheme(out.scheme)
        if not check.ok:  # a found scheme that fails is a bug, never a 'yes'
            raise AssertionError(f"the SAT scheme failed verification: {check.first_failures}")
    print(out.status)
    if args.show:
        if out.status == "yes":
            print("\n".join(describe_scheme(out.scheme)))
            print(f"# verified on all {check.samples} samples")
        else:
            print(f"# {out.reason}")
    return 0


@_guard
def cmd_info(args) -> int:
    from .classes import read_class_file
    from .pipeline import class_properties

    C = read_class_file(args.class_file)
    print(json.dumps(class_properties(C), indent=1))
    return 0


def register(sub) -> None:
    top = sub.add_parser("compression", help="sample compression schemes on finite concept classes",
                         description=__doc__.splitlines()[0])
    cmds = top.add_subparsers(dest="action", required=True)

    def config_opt(p, required=True):
        p.add_argument("--configfile", type=Path, required=required, help="pipeline config (YAML), validated first")

    def progress_opt(p):
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = cmds.add_parser("count-maximum", help="print the number of maximum classes of VC dimension d on n points")
    p.add_argument("--n", type=int, required=True, help="number of points (0..6)")
    p.add_argument("--d", type=int, required=True, help="VC dimension")
    p.add_argument("--method", choices=["orbits", "direct"], default="orbits",
                   help="orbits: weight orbit representatives (fast); direct: every class on n-1 points")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_count_maximum)

    p = cmds.add_parser("enumerate", help="count M(n, d) (total, orbits, cross-checks) and list classes")
    config_opt(p, required=False)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--d", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON report to write")
    p.add_argument("--no-orbits", action="store_true", help="skip the orbits under the hyperoctahedral group")
    p.add_argument("--list", choices=["none", "orbits", "all"], default="none",
                   help="also list classes (hex class masks, one per line): orbit representatives or all (streamed)")
    p.add_argument("--list-out", type=Path, help="file for --list (default: stdout)")
    progress_opt(p)
    p.set_defaults(func=cmd_enumerate)

    p = cmds.add_parser("schemes", help="build schemes on every orbit representative of one enumeration")
    config_opt(p)
    p.add_argument("--enumeration", type=Path, required=True, help="JSON written by 'enumerate'")
    p.add_argument("--kind", choices=["labeled", "unlabeled"], required=True)
    p.add_argument("--out", type=Path, required=True, help="scheme records (.jsonl.gz)")
    p.add_argument("--summary", type=Path, required=True, help="summary JSON")
    progress_opt(p)
    p.set_defaults(func=cmd_schemes)

    p = cmds.add_parser("verify", help="verify every scheme record exhaustively (exit 1 if any fails)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("files", nargs="+", type=Path, help="scheme record files (.jsonl.gz)")
    progress_opt(p)
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("named", help="scheme existence by kind and size for a named class")
    config_opt(p)
    p.add_argument("--name", required=True, help=NAMES_HELP)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schemes-out", type=Path, required=True)
    p.set_defaults(func=cmd_named)

    p = cmds.add_parser("compactness", help="restriction and extension of schemes along chains of subdomains")
    config_opt(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schemes-out", type=Path, required=True)
    progress_opt(p)
    p.set_defaults(func=cmd_compactness)

    p = cmds.add_parser("tables", help="CSV and LaTeX tables from the stage outputs")
    config_opt(p, required=False)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--enumerate", type=Path, nargs="+", required=True)
    p.add_argument("--schemes", type=Path, nargs="*", default=[], help="scheme summaries (JSON)")
    p.add_argument("--verify", type=Path, nargs="+", required=True)
    p.add_argument("--named", type=Path, nargs="*", default=[])
    p.add_argument("--compactness", type=Path)
    p.set_defaults(func=cmd_tables)

    p = cmds.add_parser("numbers", help="LaTeX macros (\\Comp...) of the numbers the paper quotes")
    p.add_argument("--summary", type=Path, required=True, help="summary.json written by 'tables'")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_numbers)

    p = cmds.add_parser("exists", help="does a class have a scheme of this kind and size? prints yes or no")
    p.add_argument("--class", dest="class_file", type=Path, required=True,
                   help="one concept per line as a 0/1 string (x1 first); '#' comments allowed")
    p.add_argument("--kind", choices=["labeled", "unlabeled"], required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--proper", action="store_true", help="hypotheses must be concepts of the class")
    p.add_argument("--show", action="store_true", help="print the scheme (reconstruction and compression)")
    p.add_argument("--solver", default="glucose4", help="python-sat solver name")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; 'unknown' (exit 3) beyond it")
    p.set_defaults(func=cmd_exists)

    p = cmds.add_parser("info", help="VC dimension, maximum / ample / maximal, shattered sets of a class file")
    p.add_argument("--class", dest="class_file", type=Path, required=True)
    p.set_defaults(func=cmd_info)
