"""LaTeX for every study: number formatting, escaping and booktabs tables (pandas' Styler).

The ground floor of `repro.report`: it knows pandas and LaTeX and nothing of any study.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "--"
    return f"{value:.{digits}g}"


def with_ci(value, ci) -> str:
    """``value [low, high]``; with value None, the interval alone."""
    if not ci or any(c is None or not math.isfinite(c) for c in ci):
        return fmt(value)
    interval = f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return interval if value is None else f"{fmt(value)} {interval}"


def tex_escape(s) -> str:
    """Text safe inside LaTeX: the ten special characters escaped, backslash first, and the bar."""
    s = str(s).replace("\\", "\0")
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$"), ("{", r"\{"),
                 ("}", r"\}"), ("^", r"\^{}"), ("~", r"\~{}")):
        s = s.replace(a, b)
    # not special, but the default font encoding prints a bar as an em dash
    return s.replace("|", r"\textbar{}").replace("\0", r"\textbackslash{}")


def to_latex(df: pd.DataFrame, path: Path, caption: str, label: str, escape: bool = False,
             position: str = "htbp") -> Path:
    """A booktabs table float. ``escape``: cells, headers and caption are plain text (escaped here);
    otherwise they are LaTeX already (math in headers, formatted intervals)."""
    if escape:
        df = df.astype(str).map(tex_escape)
        df.columns = [tex_escape(c) for c in df.columns]
        caption = tex_escape(caption)
    styler = df.style.hide(axis="index")
    text = styler.to_latex(hrules=True, caption=caption, label=label, position=position, position_float="centering")
    atomic_write_text(Path(path), text)
    return Path(path)
