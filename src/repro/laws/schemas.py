"""The tidy tables of the laws branch: what each must hold for its readers (``repro.io.read_table``),
and the fits' JSON files beside ``fits.csv``. Light on imports: the rendering rules read these too.

Text columns are declared; every other column holds numbers (or nothing where a value does not apply).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import InputError, TableSpec, read_table

_KEYS = ("model", "dataset", "method")
_REFIT = "delete it and rerun: fit_laws rebuilds it from runs.csv"

FITS = TableSpec("the law fits (repro laws fit)", (*_KEYS, "target", "family", "status", "param", "value"),
                 text=(*_KEYS, "target", "family", "formula", "status", "fit_loss", "se_kind", "claim_b_positive",
                       "param"),
                 flags=("converged", "chosen", "at_bound"), complete=(*_KEYS, "target", "family", "status"),
                 rebuild=_REFIT)
CURVES = TableSpec("the fitted laws' curves (repro laws fit)",
                   (*_KEYS, "target", "family", "rank", "trainable_params", "N", "value"),
                   text=(*_KEYS, "target", "family"), complete=(*_KEYS, "target", "family", "N", "value"),
                   rebuild=_REFIT)
EARLY_STOPPING = TableSpec("checkpoints matched on fine-tuning loss (repro laws fit)",
                           ("loss_ft", "loss_forget", "rank", "method"), text=_KEYS, rebuild=_REFIT)
GRADNORM_BY_RANK = TableSpec("mean adapter gradient norm per run (repro laws fit)",
                             (*_KEYS, "rank", "lr", "seed", "grad_norm_mean"), text=_KEYS,
                             complete=(*_KEYS, "rank", "grad_norm_mean"), rebuild=_REFIT)
GRADNORM_SPREAD = TableSpec("gradient-norm spread across ranks (repro laws fit)",
                            (*_KEYS, "ratio_max_min"), text=_KEYS, rebuild=_REFIT)
RANK_STABILITY = TableSpec("the rank-stability simulation's moments (repro laws rank-stability)",
                           ("optimizer", "rank", "scaling", "step"), text=("optimizer", "optimizer_role", "scaling"),
                           complete=("optimizer", "rank", "scaling", "step"))
RANK_STABILITY_SLOPES = TableSpec("the rank-stability simulation's fitted slopes (repro laws rank-stability)",
                                  ("optimizer", "scaling", "measure", "slope"),
                                  text=("optimizer", "optimizer_role", "scaling", "measure", "paper_claim", "verdict"),
                                  flags=("primary", "reproduces"))


FIT_KEYS = (*_KEYS, "target", "family")


def fit_file_name(fit: dict) -> str:
    """The JSON file of one fit in the fits folder (one per model, dataset, method, target and family)."""
    return "_".join(str(fit[k]) for k in FIT_KEYS) + ".json"


def load_fits(fits_dir: Path) -> list[dict]:
    """Every fit that ``fits.csv`` (beside the folder) lists, each read from its JSON, in file-name order.

    The readers take the fits' details from the JSONs; a JSON missing, extra or damaged would silently
    change what they show, so each is checked against the table fit_laws wrote with it.
    """
    fits_dir = Path(fits_dir)
    table_path = fits_dir.parent / "fits.csv"
    table = read_table(table_path, FITS)
    redo = f"delete {table_path} and rerun (fit_laws writes both again)"
    listed = sorted({fit_file_name(row) for row in table[list(FIT_KEYS)].to_dict("records")})
    present = sorted(p.name for p in fits_dir.glob("*.json")) if fits_dir.is_dir() else []
    missing, extra = sorted(set(listed) - set(present)), sorted(set(present) - set(listed))
    if missing or extra:
        raise InputError(f"{fits_dir}: does not match {table_path}"
                         + (f"; no JSON for {missing}" if missing else "")
                         + (f"; JSON not in the table: {extra}" if extra else "") + f"; {redo}")
    fits = []
    for name in listed:
        try:
            fits.append(json.loads((fits_dir / name).read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(f"{fits_dir / name}: damaged fit ({type(exc).__name__}: {exc}); {redo}") from exc
    return fits
