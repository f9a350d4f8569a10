"""Readers of what the rendering commands write (figure files, booktabs tables, number macros), shared by
the ground floor's and each study's report tests."""

from __future__ import annotations

import re
from pathlib import Path

from repro.cli import main
from repro.report.numbers import number

PDF_MAGIC, PNG_MAGIC = b"%PDF-", b"\x89PNG\r\n\x1a\n"


def assert_figure_files(base: Path) -> None:
    """``base``.pdf and .png exist and are what their suffix says (not an empty or half-written file)."""
    pdf, png = base.parent / (base.name + ".pdf"), base.parent / (base.name + ".png")
    assert pdf.read_bytes().startswith(PDF_MAGIC) and pdf.read_bytes().rstrip().endswith(b"%%EOF"), pdf
    assert png.read_bytes().startswith(PNG_MAGIC) and png.read_bytes().endswith(b"IEND\xaeB`\x82"), png


def no_temp_files(folder: Path) -> bool:
    return not [p for p in Path(folder).rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def read_macros(path: Path) -> dict[str, str]:
    """``\\newcommand{\\Name}{value}`` lines of a numbers file, in order; every other line is a comment."""
    lines = Path(path).read_text().splitlines()
    out = {}
    for line in lines:
        if line.startswith("%"):
            continue
        m = re.fullmatch(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", line)
        assert m, f"{path}: not a macro definition: {line!r}"
        assert m.group(1) not in out
        out[m.group(1)] = m.group(2)
    return out


def shows(text: str, value, digits: int = 3) -> bool:
    """A macro shows ``value`` to ``digits`` significant digits (a neighbouring number prints otherwise)."""
    return text == number(float(value), digits)


def tex_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of a booktabs table written by ``to_latex`` (one row per line)."""
    text = Path(path).read_text()
    assert text.count("\\toprule") == text.count("\\midrule") == text.count("\\bottomrule") == 1, path
    head = text.split("\\toprule")[1].split("\\midrule")[0].strip()
    body = text.split("\\midrule")[1].split("\\bottomrule")[0].strip()

    def cells(line):
        return [c.strip() for c in line.strip().removesuffix("\\\\").split(" & ")]

    return cells(head), [cells(line) for line in body.splitlines() if line.strip()]


def run_cli(*argv: str) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, argv
