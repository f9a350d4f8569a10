"""One look for every figure of the pipeline: the style sheet, the colour cycle and how figures are saved.

The ground floor of `repro.report`: it knows matplotlib and nothing of any study.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_open  # noqa: E402

STYLE = Path(__file__).with_name("repro.mplstyle")
# Okabe and Ito's colour-blind-safe palette, in their order.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442", "#000000"]


def ordered_colours(levels) -> dict:
    """A colour per level of an ordered variable (e.g. rank): Okabe-Ito while it lasts, then cividis."""
    levels = sorted(set(int(v) for v in levels))
    if len(levels) <= len(OKABE_ITO):
        return {v: OKABE_ITO[i] for i, v in enumerate(levels)}
    cmap = plt.get_cmap("cividis")  # perceptually uniform and colour-blind safe
    return {v: cmap(i / max(len(levels) - 1, 1)) for i, v in enumerate(levels)}


def save(fig, out_base: Path, dpi: float | None = None) -> list[Path]:
    """Write ``out_base``.pdf (vector) and .png, each atomically, close the figure, return both paths."""
    out_base = Path(out_base)
    paths = [out_base.parent / (out_base.name + ".pdf"), out_base.parent / (out_base.name + ".png")]
    for path in paths:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=path.suffix[1:], **({"dpi": dpi} if dpi and path.suffix == ".png" else {}))
    plt.close(fig)
    return paths
