# Two commands for a fresh machine:  `make run` (default DAG)  and  `make test` (test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: setup run dry-run-paper test test-fast lint clean

# Idempotent: the venv is (re)installed only when pyproject.toml changes.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

dry-run-paper: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n --configfile presets/paper.yaml

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
