"""Provenance manifests of every ``repro`` command, their collection, and results bundles."""
