"""Build the paper with latexmk (pdflatex + bibtex) and check what the log says.

The build fails on undefined references or citations (a branch's absent outputs never cause them:
the text only refers to what it includes). Parts of the paper whose results are absent print a visible
note in the PDF and a ``repro-missing: <what>`` line in the LaTeX log, listed here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..config import DEFAULT_RESULTS
from ..io import atomic_copy

INSTALL_HINT = ("TeX is missing. On Debian/Ubuntu: sudo apt-get install -y --no-install-recommends "
                "texlive-latex-recommended latexmk ; with conda: "
                "conda env create -f envs/latex.yaml")

UNDEFINED = re.compile(r"(?:LaTeX|Package natbib) Warning: (Citation|Reference) `([^']+)' "
                       r"(?:on page \d+ )?undefined")
MISSING = re.compile(r"^repro-missing: (.+)$", re.M)
PAGES = re.compile(r"Output written on .*?\((\d+) pages?")


class PaperError(RuntimeError):
    pass


def paper_locations(results: str) -> tuple[str, str]:
    """(PDF path, latexmk build folder relative to paper/) of a config's paper.

    The default config's paper stays at paper/main.pdf; another config's goes into its own results
    folder and is built in its own LaTeX folder, so two configs' papers never share a build.
    """
    if results == DEFAULT_RESULTS:
        return "paper/main.pdf", "build"
    return f"{results}/paper/main.pdf", f"build-{results}"


def check_tex() -> None:
    missing = [tool for tool in ("latexmk", "pdflatex", "bibtex") if not shutil.which(tool)]
    if missing:
        raise PaperError(f"{', '.join(missing)} not found. {INSTALL_HINT}")


def analyse_log(text: str) -> dict:
    undefined = sorted({f"{kind.lower()}:{key}" for kind, key in UNDEFINED.findall(text)})
    pages = PAGES.findall(text)
    return {
        "pages": int(pages[-1]) if pages else 0,
        "undefined": undefined,
        "missing_parts": sorted(set(m.strip() for m in MISSING.findall(text))),
        "rerun_warning": "Rerun to get cross-references right" in text,
    }


def build(paper_dir: Path, out: Path, main: str = "main.tex", build_dir: str = "build",
          report: Path | None = None, allow_undefined: bool = False, timeout: int = 600,
          results_dir: str = "../results") -> dict:
    check_tex()
    paper_dir = Path(paper_dir)
    stem = Path(main).stem
    if any(ch in results_dir for ch in "\\{}%#$ "):
        raise PaperError(f"results folder {results_dir!r}: not a plain path LaTeX can read")
    # The sources read every result through \resultsdir (repro-macros.tex provides ../results), so one
    # paper source builds any config's results folder.
    cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
           f"-outdir={build_dir}", f"-usepretex=\\def\\resultsdir{{{results_dir}}}", main]
    # Unwrapped log lines, so that warnings and missing-part notes are parsed whole.
    env = {**os.environ, "max_print_line": "10000", "error_line": "254", "half_error_line": "238"}
    proc = subprocess.run(cmd, cwd=paper_dir, capture_output=True, text=True, timeout=timeout, env=env)
    print(proc.stdout[-20000:])
    log_path = paper_dir / build_dir / f"{stem}.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if proc.returncode != 0:
        tail = "\n".join(l for l in log_text.splitlines() if l.startswith(("!", "./", "l.")))[-3000:]
        raise PaperError(f"latexmk failed (exit {proc.returncode}); see {log_path}\n{tail}\n{proc.stderr[-2000:]}")
    info = analyse_log(log_text)
    info["log"] = str(log_path)
    if info["undefined"] and not allow_undefined:
        raise PaperError(f"undefined references/citations in {log_path}: {', '.join(info['undefined'])}")
    pdf = paper_dir / build_dir / f"{stem}.pdf"
    out = Path(out)
    atomic_copy(pdf, out)
    info["pdf"] = str(out)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(info, indent=1) + "\n")
    return info
