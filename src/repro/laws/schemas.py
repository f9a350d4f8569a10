"""The tidy tables of the laws branch: what each must hold for its readers (``repro.io.read_table``).

Text columns are declared; every other column holds numbers (or nothing where a value does not apply).
"""

from __future__ import annotations

from ..io import TableSpec

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
