"""CPU seconds of one `repro` job process with the collector tuned (`repro.cli.run`, what the console
script calls) against the same command through `repro.cli.main` at Python's default settings.

A pipeline job is a fresh interpreter that imports a large library stack, runs one command and exits,
so its cost is mostly loading and unloading. Each command below runs in a fresh process through both
entry points, alternating, `--repeats` times; printed per command: the median CPU seconds (user + system,
children included) of each and the ratio baseline / tuned.

    python benchmarks/cli_gc.py                 # 5 rounds, about 2 min on two cores
    python benchmarks/cli_gc.py --repeats 9

The commands: `repro config check` (the config layer only), `repro model fetch` of the test preset's
tiny random Llama (torch + transformers, what every language-model job imports) and `repro teb data`
(torch + the TEB task generator).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "presets" / "test.yaml"
ENTRY = "import sys; sys.argv = ['repro', *sys.argv[1:]]; from repro.cli import {0}; sys.exit({0}())"


def commands(scratch: Path) -> dict[str, list[str]]:
    return {
        "config check": ["config", "check", "--configfile", str(CONFIG)],
        "model fetch (tiny Llama)": ["model", "fetch", "--configfile", str(CONFIG), "--out", str(scratch / "model"),
                                     "--downloads", str(scratch / "downloads")],
        "teb data (ar-c0.5)": ["teb", "data", "--configfile", str(CONFIG), "--task", "ar-c0.5",
                               "--out", str(scratch / "teb")],
    }


def cpu_seconds(entry: str, argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", ENTRY.format(entry), *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"repro {' '.join(argv)} through {entry}() failed:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp)).items():
            cpu_seconds("main", argv)  # outputs in place and the disk cache warm for both entries
            times: dict[str, list[float]] = {"main": [], "run": []}
            for _ in range(args.repeats):
                for entry in times:
                    times[entry].append(cpu_seconds(entry, argv))
            base, tuned = statistics.median(times["main"]), statistics.median(times["run"])
            print(f"{name:26s} default {base:6.2f} CPU-s   tuned {tuned:6.2f} CPU-s   ratio {base / tuned:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
