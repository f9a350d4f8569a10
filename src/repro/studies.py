"""The studies' configuration checks, registered with ``repro.config`` when the package loads.

``repro.config`` is the ground floor and imports no study; each study keeps its cross-key check beside
its run plan (``<study>/runs.py``, torch-free), and this module hands them to the validator. Adding a
study means adding its check here.
"""

from __future__ import annotations

from .cluster.memory import gpu_fit_errors
from .compression.runs import check as compression_check
from .config import register_check
from .laws.runs import check as laws_check
from .lm.runs import check as lm_check
from .teb.runs import check as teb_check

STUDY_CHECKS = (lm_check, laws_check, teb_check, compression_check, gpu_fit_errors)

for _check in STUDY_CHECKS:
    register_check(_check)
