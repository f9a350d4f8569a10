"""The `repro` console script: which function it runs and the collector settings that function sets."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from repro.cli import GC_GEN0_THRESHOLD


def test_console_script_runs_the_tuned_entry():
    (script,) = entry_points(group="console_scripts", name="repro")
    assert script.value == "repro.cli:run"


PROBE = """
import atexit, gc, json, sys
import repro.cli as cli

seen = {}
def command():
    seen.update(threshold=gc.get_threshold()[0], enabled=gc.isenabled(), frozen_during=gc.get_freeze_count())
    return 3
# Exit handlers run last-registered first: this one runs after whatever run() registers.
atexit.register(lambda: print(json.dumps({**seen, "frozen_at_exit": gc.get_freeze_count()})))
cli.main = command
sys.exit(cli.run())
"""


def test_run_collects_less_often_during_the_command_and_freezes_what_is_left_at_exit():
    # A fresh interpreter: the settings are process-wide, and this test's own process keeps the defaults.
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    seen = json.loads(proc.stdout)
    assert seen["threshold"] == GC_GEN0_THRESHOLD > 700
    # Still collecting during the command (a long training loop reclaims cycles), nothing frozen yet.
    assert seen["enabled"] and seen["frozen_during"] == 0
    # Frozen before the interpreter's final collection, which then skips it; the exit status passes.
    assert seen["frozen_at_exit"] > 1000 and proc.returncode == 3
