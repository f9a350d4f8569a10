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
import gc, json, sys
import repro.cli as cli

seen = {}
def command():
    seen.update(threshold=gc.get_threshold()[0], enabled=gc.isenabled(), frozen_during=gc.get_freeze_count())
    return 3
cli.main = command
code = cli.run()
print(json.dumps({**seen, "code": code, "frozen_after": gc.get_freeze_count()}))
"""


def test_run_collects_less_often_during_the_command_and_freezes_what_is_left():
    # A fresh interpreter: the settings are process-wide, and this test's own process keeps the defaults.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen["threshold"] == GC_GEN0_THRESHOLD > 700
    # Still collecting during the command (a long training loop reclaims cycles), nothing frozen yet.
    assert seen["enabled"] and seen["frozen_during"] == 0
    # Frozen when the command is done, so the final collection at exit skips it; the exit status passes.
    assert seen["frozen_after"] > 1000 and seen["code"] == 3
