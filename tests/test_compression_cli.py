"""`repro compression ...`: the user contract (count-maximum, exists) and the pipeline commands."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from repro.cli import main
from repro.compression.classes import ConceptClass
from repro.compression.enumeration import brute_force_maximum_classes
from repro.compression.named import named_class
from repro.compression.sat import brute_force_scheme_exists
from repro.compression.schemes import RepresentationScheme, min_peeling
from repro.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(["compression", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_class(tmp_path, rows, name="c.txt"):
    path = tmp_path / name
    path.write_text("".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize("n", [2, 3, 4])
def test_count_maximum_prints_one_line(capsys, n):
    brute = brute_force_maximum_classes(n)
    for d in range(n + 1):
        code, out, _ = run(capsys, "count-maximum", "--n", str(n), "--d", str(d))
        assert code == 0 and out == f"{len(brute[d])}\n"


def test_count_maximum_rejects_large_n(capsys):
    code, out, err = run(capsys, "count-maximum", "--n", "7", "--d", "2")
    assert code == 2 and out == "" and err.startswith("repro: ") and "n = 7" in err


@pytest.mark.parametrize("kind, size, proper", [("labeled", 0, False), ("labeled", 1, False),
                                                 ("labeled", 1, True), ("unlabeled", 1, False),
                                                 ("unlabeled", 2, True)])
def test_exists_matches_brute_force(capsys, tmp_path, kind, size, proper):
    C = ConceptClass.cube(2)
    path = write_class(tmp_path, C.to_strings())
    args = ["exists", "--class", str(path), "--kind", kind, "--size", str(size)] + (["--proper"] if proper else [])
    code, out, _ = run(capsys, *args)
    expected = "yes" if brute_force_scheme_exists(C, kind, size, proper) else "no"
    assert code == 0 and out == f"{expected}\n"


def test_exists_show_prints_a_verified_scheme(capsys, tmp_path):
    path = write_class(tmp_path, named_class("kw-maximal").to_strings())
    code, out, _ = run(capsys, "exists", "--class", str(path), "--kind", "unlabeled", "--size", "2", "--show")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "yes"
    assert any(line.startswith("{x1, x2} -> ") for line in lines)  # reconstruction table
    assert any(line.startswith("x1=") and " -> {" in line for line in lines)  # compression of samples
    assert lines[-1].startswith("# verified on all")
    code, out, _ = run(capsys, "exists", "--class", str(path), "--kind", "unlabeled", "--size", "1", "--show")
    assert out.splitlines()[0] == "no" and "counting" in out


@pytest.mark.parametrize(
    "content, needle",
    [
        ("0101\n011\n", "line 2"),
        ("0101\n01a1\n", "line 2"),
        ("0101\n0101\n", "line 2"),
        ("\n# nothing\n", "empty"),
    ],
)
def test_exists_reports_malformed_files(capsys, tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    code, out, err = run(capsys, "exists", "--class", str(path), "--kind", "labeled", "--size", "1")
    assert code == 2 and out == ""
    assert err.startswith(f"repro: {path}") and needle in err


def test_exists_reports_missing_file_and_bad_size(capsys, tmp_path):
    code, _, err = run(capsys, "exists", "--class", str(tmp_path / "nope.txt"), "--kind", "labeled", "--size", "1")
    assert code == 2 and "not found" in err
    path = write_class(tmp_path, ["01", "10"])
    code, _, err = run(capsys, "exists", "--class", str(path), "--kind", "labeled", "--size", "-1")
    assert code == 2 and "--size" in err


def test_enumerate_lists_classes(capsys, tmp_path):
    out_json = tmp_path / "e.json"
    listing = tmp_path / "all.txt"
    code, _, _ = run(capsys, "enumerate", "--n", "3", "--d", "1", "--out", str(out_json), "--list", "all",
                     "--list-out", str(listing), "--no-progress")
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["total"] == len(brute_force_maximum_classes(3)[1]) == len(listing.read_text().split())
    assert result["checks"] == {"orbit_sizes_sum_to_total": True, "streamed_count_equals_total": True,
                                "brute_force_equal": True}
    assert sorted(int(h, 16) for h in listing.read_text().split()) == brute_force_maximum_classes(3)[1]


def test_verify_fails_on_a_broken_scheme_file(capsys, tmp_path):
    C = named_class("kw-maximum")
    good = RepresentationScheme(C, min_peeling(C), 2).to_record()
    bad = json.loads(json.dumps(good))
    bad["representation"][0], bad["representation"][5] = (
        [bad["representation"][0][0], bad["representation"][5][1]],
        [bad["representation"][5][0], bad["representation"][0][1]],
    )
    for name, records, expected in (("good", [good], 0), ("bad", [good, bad], 1)):
        path = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(path, "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        code, out, _ = run(capsys, "verify", "--out", str(tmp_path / f"{name}.json"), str(path), "--no-progress")
        assert code == expected
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["schemes"] == len(records) and report["failed"] == expected


def test_config_section_defaults_and_rejections():
    cfg = yaml.safe_load((REPO / "presets/test.yaml").read_text())
    cfg.pop("compression", None)
    filled = validate_config(cfg)["compression"]
    assert filled["enumerate"]["n_max"] == 5 and filled["sat"]["solver"] == "glucose4"
    assert filled["named"]["classes"][0] == "warmuth"
    for section, bad, key in (("enumerate", {"n_max": 7}, "compression.enumerate.n_max"),
                              ("named", {"classes": ["nosuch"]}, "compression.named.classes[0]"),
                              ("sat", {"solvr": "x"}, "compression.sat.solvr")):
        cfg2 = {**cfg, "compression": {section: bad}}
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            validate_config(cfg2)


@pytest.mark.parametrize("preset", ["config.yaml", "presets/test.yaml", "presets/paper.yaml"])
def test_shipped_configs_validate(preset):
    cfg = validate_config(yaml.safe_load((REPO / preset).read_text()), source=preset)["compression"]
    assert cfg["schemes"]["n_max"] <= cfg["enumerate"]["n_max"]
