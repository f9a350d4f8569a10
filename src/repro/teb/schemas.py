"""The tidy tables of the TEB branch: what each must hold for its readers (``repro.io.read_table``).

Text columns are declared; every other column holds numbers (or nothing where a value does not apply,
e.g. the beta of a model without a bottleneck).
"""

from __future__ import annotations

from ..io import TableSpec

_MODEL = ("task", "kind", "variant")
_REAGGREGATE = "delete it and rerun: teb_aggregate rebuilds it from the per-task evaluations"

TASK_EVALS = TableSpec("one task's evaluation of its models (repro teb eval)",
                       (*_MODEL, "beta", "seed", "exact_te", "source_entropy", "te_lower", "te_lower_se", "log_k",
                        "kl", "authors_gain", "gain_vs_target"), text=_MODEL,
                       integers=("seed",), complete=(*_MODEL, "seed"),
                       rebuild="delete it and rerun: teb_eval rebuilds it from the trained models")
EVALS = TableSpec("every TEB model's evaluation (repro teb aggregate)", TASK_EVALS.required, text=_MODEL,
                  integers=("seed",), complete=(*_MODEL, "seed"), rebuild=_REAGGREGATE)
SUMMARY = TableSpec("mean and seed SD per task, variant and beta (repro teb aggregate)",
                    (*_MODEL, "beta", "seeds", "exact_te", "te_lower_mean", "te_lower_sd", "kl_mean",
                     "authors_gain_mean"), text=_MODEL, integers=("seeds",), complete=_MODEL, rebuild=_REAGGREGATE)
ESTIMATORS = TableSpec("reference TE estimators on the AR tasks (repro teb estimators)",
                       ("task", "estimator", "te"), text=("task", "estimator"), complete=("task", "estimator", "te"),
                       rebuild="delete it and rerun: teb_estimators rebuilds it")
TE_SWEEP = TableSpec("TE over the coupling sweep (repro teb aggregate)", ("task", "c", "exact_te", "estimator", "te"),
                     text=("task", "estimator"), complete=("task", "estimator"), rebuild=_REAGGREGATE)
INFO_PLANE = TableSpec("KL and the TE lower bound over beta (repro teb aggregate)",
                       ("task", "variant", "beta", "kl", "te_lower"), text=("task", "kind", "variant"), complete=("task", "variant", "beta"), rebuild=_REAGGREGATE)
