"""benchmarks/lm_speed.py runs end to end on the tiny shape and writes the agreed JSON schema."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

EVAL_KEYS = {"one_pass_tok_s", "per_checkpoint_tok_s", "forward_tok_s", "ratio_vs_per_checkpoint", "ratio_vs_forward"}
TRAIN_KEYS = {"repro_tok_s", "plain_tok_s", "plain_compiled_tok_s", "ratio", "mfu", "peak_mem_gb"}


def test_lm_speed_tiny_writes_the_schema(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/lm_speed.py"), "--device", "cpu", "--model", "tiny",
         "--json", str(out), "--threads", "1", "--rounds", "1", "--batches", "1", "--train-steps", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ev, tr = result["eval"], result["train"]
    assert EVAL_KEYS <= set(ev) and TRAIN_KEYS <= set(tr)
    assert all(isinstance(ev[k], float) and ev[k] > 0 for k in EVAL_KEYS)
    assert ev["ratio_vs_per_checkpoint"] == ev["one_pass_tok_s"] / ev["per_checkpoint_tok_s"]
    assert ev["ratio_vs_forward"] == ev["one_pass_tok_s"] / ev["forward_tok_s"]
    # Both evaluation paths measured the same numbers on the same batches.
    assert ev["max_rel_diff_loss_forget"] < 1e-6
    assert all(isinstance(tr[k], float) and tr[k] > 0 for k in TRAIN_KEYS - {"plain_compiled_tok_s"})
    assert tr["plain_compiled_tok_s"] is None  # measured only with --compile
    assert tr["ratio"] == tr["repro_tok_s"] / tr["plain_tok_s"]
    assert 0 < tr["mfu"] < 1
