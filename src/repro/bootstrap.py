"""What `make setup` asks before anything is installed in the venv (standard library only).

    python -m repro.bootstrap pin NAME LOCK   # NAME's requirement with its hashes, from the lock
    python -m repro.bootstrap uv-sources      # pip's configured package sources, as uv options

`make setup` installs the lock with uv (parallel downloads and unpacking) rather than pip. uv does not
read pip's configuration, so the indexes and wheel folders pip would use (pip.conf, PIP_* variables)
are handed to it explicitly: both tools then install the same hash-pinned files from the same places.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# pip options that name where packages come from, and the uv option for each value.
SOURCE_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links"}
# pip's precedence for one option: the install command's section over [global], the environment over both.
SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def lock_stanza(lock: Path, name: str) -> str:
    """The lock's requirement for ``name`` with its --hash lines, ready for `pip install -r`."""
    lines = lock.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(name)}==\S+", line, re.I)), None)
    if start is None:
        raise SystemExit(f"{lock}: no pin for {name}")
    stanza = [lines[start]]
    for line in lines[start + 1:]:
        if not line.strip().startswith("--hash="):
            break
        stanza.append(line)
    return "\n".join(stanza).rstrip(" \\") + "\n"


def pip_sources(config_listing: str) -> dict[str, list[str]]:
    """Effective source options from `pip config list` output (``section.option='value'`` lines)."""
    best: dict[str, tuple[int, str]] = {}
    for line in config_listing.splitlines():
        m = re.match(r"([^.]*)\.([\w-]+)='(.*)'$", line.strip())
        if not m or m.group(2) not in SOURCE_OPTIONS or m.group(1) not in SECTION_RANK:
            continue
        rank = SECTION_RANK[m.group(1)]
        if m.group(2) not in best or rank >= best[m.group(2)][0]:
            best[m.group(2)] = (rank, m.group(3))
    return {option: value.split() for option, (_, value) in best.items()}


def uv_options(sources: dict[str, list[str]]) -> list[str]:
    args = []
    for option, values in sources.items():
        for value in values[:1] if option == "index-url" else values:
            args += [SOURCE_OPTIONS[option], value]
    # pip takes the best match across all its indexes; uv's default (the first index that has a package)
    # would miss a version that only a later mirror holds. Every file is hash-pinned either way.
    return args + ["--index-strategy", "unsafe-best-match"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.bootstrap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    pin = sub.add_parser("pin")
    pin.add_argument("name")
    pin.add_argument("lock", type=Path)
    sub.add_parser("uv-sources")
    args = parser.parse_args(argv)
    if args.action == "pin":
        sys.stdout.write(lock_stanza(args.lock, args.name))
        return 0
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    print(" ".join(uv_options(pip_sources(listing))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
