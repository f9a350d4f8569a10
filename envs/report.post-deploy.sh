#!/usr/bin/env bash
# Snakemake runs this once after creating the environment: the pipeline's own package, without
# dependencies (the environment file pins them), from the workflow directory.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "${REPRO_SOURCE:-.}"
