# Two commands for a fresh machine:  `make run` (default DAG)  and  `make test` (test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=
# `make paper CONFIGFILE=presets/test.yaml` (or results/config/resolved.json after `repro bundle unpack`).
CONFIGFILE ?=
CONFIG_ARG := $(if $(CONFIGFILE),--configfile $(CONFIGFILE),)

.PHONY: setup run dry-run-paper forecast paper report bundle test test-fast drills lint clean

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

# The paper from the results of `make run` (only what changed is rebuilt); needs TeX from Debian.
paper: setup
	@command -v latexmk >/dev/null && command -v pdflatex >/dev/null && command -v bibtex >/dev/null || { \
	  echo "make paper needs TeX (latexmk, pdflatex, bibtex). Install it with:"; \
	  echo "  sudo apt-get install -y --no-install-recommends texlive-latex-recommended latexmk"; \
	  echo "or, with conda: conda env create -f envs/latex.yaml"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake paper/main.pdf --cores $(CORES) $(CONFIG_ARG) $(SNAKEMAKE_ARGS)

# HTML report of the run (figures and tables by study, with the code that made them).
report: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake $(CONFIG_ARG) --report results/report.html

# Restorable results bundle: results/bundle-<confighash>.tar.zst (restore: .venv/bin/repro bundle unpack FILE).
bundle: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/repro bundle pack

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not drills"

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow and not drills"

# Fault drills on the real DAG (SIGKILL mid-job, damaged inputs, full disk, locks, SLURM): README "Fault drills".
drills: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m drills

# Device-hours and jobs of a preset before submitting it:  make forecast PRESET=presets/paper.yaml
PRESET ?= presets/paper.yaml
forecast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/repro forecast --configfile $(PRESET)

# Snakemake's own linter (every rule has a log and a conda env), the Snakemake formatter, ruff.
lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf results logs .snakemake paper/build paper/main.pdf
