"""The ground floor of rendering (style, LaTeX, number macros); each study's figures, tables and numbers
are tested beside it (test_laws_report.py, test_teb_report.py, test_compression_report.py)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from report_helpers import assert_figure_files, read_macros, tex_table

from repro.report import style
from repro.report.latex import tex_escape, to_latex
from repro.report.numbers import Macros, macro_name, number

SPECIALS = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
            "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}", "|": r"\textbar{}"}


@pytest.mark.parametrize("char", sorted(SPECIALS))
def test_tex_escape_escapes_each_special_character(char):
    assert tex_escape(f"a{char}b{char}") == f"a{SPECIALS[char]}b{SPECIALS[char]}"


def test_tex_escape_leaves_everything_else_alone():
    plain = "".join(chr(c) for c in range(32, 127) if chr(c) not in SPECIALS) + "é–Ω\n\t"
    assert tex_escape(plain) == plain
    # The braces of \textbackslash{} are output, not input: they must not be escaped again.
    assert tex_escape("\\{x}") == r"\textbackslash{}\{x\}"
    assert tex_escape(3.5) == "3.5"


def test_to_latex_escape_true_escapes_cells_headers_and_caption(tmp_path):
    df = pd.DataFrame({"#runs": ["a_b", "50%"], "name": ["x&y", "{z}"]})
    out = to_latex(df, tmp_path / "t.tex", "M(n, d) & #classes_total", "tab:test", escape=True, position="t")
    text = out.read_text()
    head, rows = tex_table(out)
    assert head == [r"\#runs", "name"]
    assert rows == [[r"a\_b", r"x\&y"], [r"50\%", r"\{z\}"]]
    assert r"\caption{M(n, d) \& \#classes\_total}" in text and r"\label{tab:test}" in text
    assert text.startswith("\\begin{table}[t]") and "\\centering" in text


def test_to_latex_escape_false_passes_latex_through(tmp_path):
    df = pd.DataFrame({"$R^2$": ["0.99"], r"$\alpha$": [r"0.3 [0.2, 0.4]"], "x": ["$L_{ft}$"]})
    out = to_latex(df, tmp_path / "t.tex", r"Fits of $L_f$ (95\% intervals).", "tab:fits")
    head, rows = tex_table(out)
    assert head == ["$R^2$", r"$\alpha$", "x"] and rows == [["0.99", "0.3 [0.2, 0.4]", "$L_{ft}$"]]
    assert r"\caption{Fits of $L_f$ (95\% intervals).}" in out.read_text()


def test_outputs_replace_the_path_atomically(tmp_path):
    df = pd.DataFrame({"a": [1]})
    tex = tmp_path / "t.tex"
    tex.write_text("old\n")
    inode = tex.stat().st_ino
    to_latex(df, tex, "c", "tab:c")
    # A new file renamed over the old one (a reader holding the old file never sees it truncated).
    assert tex.stat().st_ino != inode and "\\toprule" in tex.read_text()
    numbers = tmp_path / "numbers.tex"
    numbers.write_text("old\n")
    m = Macros("repro test numbers")
    m.add("Alpha", 1.5)
    m.write(numbers)
    assert read_macros(numbers) == {"Alpha": "1.5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers.tex", "t.tex"]


def test_save_writes_pdf_and_png_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = style.save(fig, tmp_path / "sub" / "fig")
    assert [p.name for p in paths] == ["fig.pdf", "fig.png"]
    assert_figure_files(tmp_path / "sub" / "fig")
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig.pdf", "fig.png"]


def test_save_that_fails_leaves_the_old_files_and_no_temporary(tmp_path, monkeypatch):
    base = tmp_path / "fig"
    fig, ax = plt.subplots()
    style.save(fig, base)
    before = (base.parent / "fig.pdf").read_bytes()
    fig, ax = plt.subplots()

    def broken(fh, **kwargs):
        fh.write(b"%PDF-half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        style.save(fig, base)
    assert (base.parent / "fig.pdf").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]
    plt.close(fig)


def test_ordered_colours_okabe_ito_up_to_eight_then_a_colormap():
    few = style.ordered_colours([16, 1, 4, 4, 2])
    assert list(few) == [1, 2, 4, 16] and list(few.values()) == style.OKABE_ITO[:4]
    eight = style.ordered_colours(range(8))
    assert list(eight.values()) == style.OKABE_ITO and len(set(style.OKABE_ITO)) == 8
    many = style.ordered_colours([2**i for i in range(12)])
    assert list(many) == [2**i for i in range(12)]
    rgba = [tuple(c) for c in many.values()]
    assert len(set(rgba)) == 12 and all(len(c) == 4 for c in rgba)
    cmap = plt.get_cmap("cividis")
    assert rgba[0] == tuple(cmap(0.0)) and rgba[-1] == tuple(cmap(1.0))
    # Ordered: the colormap's lightness grows with the level.
    lightness = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b, _ in rgba]
    assert lightness == sorted(lightness)


def test_macros_refuse_duplicates_and_name_their_generator(tmp_path):
    m = Macros("repro laws numbers")
    m.add("NumRuns", 12)
    m.add("Slope", 0.123456)
    m.add("Pvalue", 0.0123456, 2)
    m.add("Claim", "supported")
    with pytest.raises(ValueError, match=r"\\NumRuns defined twice"):
        m.add("NumRuns", 13)
    text = m.render()
    assert text.splitlines()[0] == "% Generated by `repro laws numbers`; do not edit by hand."
    assert read_macros(m.write(tmp_path / "n.tex")) == {"NumRuns": "12", "Slope": "0.123", "Pvalue": "0.012",
                                                        "Claim": "supported"}
    assert number(float("nan")) == "n/a" and number(None) == "n/a" and number(2.0) == "2"


def test_macro_name_gives_letters_only():
    assert macro_name("Teb", "Coupling", "0p3") == "TebCouplingZeroPThree"
    assert macro_name("Lin", "stdlib_instruct", "rslora") == "LinStdlibInstructRslora"
    assert macro_name("CompNamed", "kw-maximal", "labeled-proper") == "CompNamedKwMaximalLabeledProper"
    for parts in (("CompCount", "5", "2"), ("RankStab", "lora", "output_moment", "adam"), ("x", "a1b2-c_3")):
        assert re.fullmatch(r"[A-Za-z]+", macro_name(*parts)), parts
    # Distinct numbers give distinct names where the studies use them (digits become words).
    shapes = [macro_name("CompCount", str(n), str(d)) for n in range(7) for d in range(n + 1)]
    couplings = [macro_name("Teb", "Coupling", f"{c:g}".replace(".", "p")) for c in (0, 0.1, 0.01, 1, 10, 1.5)]
    assert len(set(shapes)) == len(shapes) and len(set(couplings)) == len(couplings)
