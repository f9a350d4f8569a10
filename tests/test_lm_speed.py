"""benchmarks/lm_speed.py runs end to end on the tiny shape and writes the agreed JSON schema."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

EVAL_KEYS = {"one_pass_tok_s", "per_checkpoint_tok_s", "forward_tok_s", "ratio_vs_per_checkpoint", "ratio_vs_forward"}
TRAIN_KEYS = {"repro_tok_s", "plain_tok_s", "plain_compiled_tok_s", "ratio", "mfu", "peak_mem_gb"}


def test_lm_speed_tiny_writes_the_schema_and_records_its_throughput(tmp_path):
    from repro.cluster.throughput import COLUMNS, TABLE, read_table, record_rows

    out = tmp_path / "speed.json"
    # A copy of the package table plus a FLOP-based estimate for the key the run will measure.
    table = tmp_path / "throughput.csv"
    table.write_bytes(TABLE.read_bytes())
    estimate = {"model": "tiny", "device": "cpu", "dtype": "float32", "phase": "train", "rank": 16, "batch_size": 4,
                "max_length": 128, "threads": 1, "tokens_per_s": "1.0", "source": "estimate", "measured": "",
                "command": "flops"}
    record_rows([estimate], table)
    before = read_table(table)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/lm_speed.py"), "--device", "cpu", "--model", "tiny",
         "--json", str(out), "--threads", "1", "--rounds", "1", "--batches", "1", "--train-steps", "2",
         "--packing", "--record", "--table", str(table)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    after = read_table(table)
    assert len(after) == len(before)
    (row,) = [r for r in after if r["model"] == "tiny"]
    assert row["source"] == "measured" and row["measured"] and "--record" not in row["command"]
    assert float(row["tokens_per_s"]) == round(result["train"]["repro_input_tok_s"], 1) > 1.0
    assert [r for r in after if r["model"] != "tiny"] == [r for r in before if r["model"] != "tiny"]
    assert set(COLUMNS) == set(row)
    assert result["train"]["repro_options"]["packing"] is True
    assert result["train"]["repro_options"]["cross_entropy"] == "plain"
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


def test_lm_speed_refuses_to_record_the_tiny_shape_into_the_package_table():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/lm_speed.py"), "--model", "tiny", "--record"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--table" in proc.stderr
