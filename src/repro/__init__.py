"""Reproducible-paper pipeline: forgetting laws, rsLoRA, TEB and sample compression schemes."""

__version__ = "0.1.0"

# The studies register their configuration checks with repro.config (which imports none of them).
from . import studies  # noqa: E402, F401
