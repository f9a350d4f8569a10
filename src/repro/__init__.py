"""Reproducible-paper pipeline: forgetting laws, rsLoRA, TEB and sample compression schemes."""

__version__ = "0.1.0"
