# Two commands for a fresh machine:  `make run` (default DAG)  and  `make test` (test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=
# `make paper CONFIGFILE=presets/test.yaml` (or <results>/config/resolved.json after `repro bundle unpack`).
# Each config writes into its own folder: results/ for config.yaml, results-<name>/ for <name>.yaml.
CONFIGFILE ?=
CONFIG_ARG := $(if $(CONFIGFILE),--configfile $(CONFIGFILE),)
RESULTS_DIR = $$($(BIN)/repro config results-dir $(CONFIG_ARG))
# A misspelled CONFIGFILE stops in one line, before Snakemake's own traceback.
CHECK_CONFIGFILE = $(if $(CONFIGFILE),@test -f "$(CONFIGFILE)" || { echo "CONFIGFILE=$(CONFIGFILE): no such file" >&2; exit 2; })

.PHONY: setup lock run dry-run-paper forecast paper report bundle test test-fast drills lint clean

# Exact versions with hashes for CPython 3.11 on Linux x86_64, compiled from pyproject.toml by `make lock`.
LOCK := requirements-lock.txt
LOCK_PYTHON := 3.11
# PyPI's Linux torch wheel is the CUDA build; the lock pins the CPU build from the PyTorch index.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Where `make lock` finds torch's CPU build (e.g. TORCH_SOURCE='--find-links DIR' for a local wheelhouse).
TORCH_SOURCE ?= --torch-backend cpu
# Extra package sources for `make setup`, as pip and uv both spell them (e.g. PIP_ARGS='--find-links DIR').
PIP_ARGS ?=
# Installed files `make setup` leaves uncompiled: imported by no rule (a package's own tests, transformers'
# models other than Llama and the two peft reads); importing one still works, from source.
NOT_COMPILED := /tests?/|/transformers/models/(?!auto/|llama/|bloom/|encoder_decoder/)[^/]+/

# Idempotent: the venv is synced to the lock only when the lock or pyproject.toml changes. uv installs
# exactly the locked files (hashes checked) from the sources pip is configured with (pip.conf, PIP_*;
# uv reads neither, so repro.envs hands them over), in parallel: 15 s against pip's 65 s here. pip
# installs uv itself, hash-checked from the lock. torch's CPU build comes from those sources, else from
# the PyTorch index; then anything the lock does not list is removed, and the package goes in without
# dependencies.
UV_ON_VENV := --quiet --python $(BIN)/python
UV_SOURCES = $$(PYTHONPATH=src $(BIN)/python -m repro.envs uv-sources)
setup: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' || { \
	  echo "$(LOCK) is for Python $(LOCK_PYTHON); $(VENV) has $$($(BIN)/python -V)."; \
	  echo "Remove $(VENV) and run: make setup PYTHON=python$(LOCK_PYTHON)"; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes \
	  -r <(PYTHONPATH=src $(BIN)/python -m repro.envs pin uv) $(PIP_ARGS)
	$(BIN)/uv pip install $(UV_ON_VENV) --require-hashes -r $(LOCK) $(UV_SOURCES) $(PIP_ARGS) 2>/dev/null || { \
	  echo "torch's CPU build not found in pip's configured sources: adding $(TORCH_CPU_INDEX)"; \
	  $(BIN)/uv pip install $(UV_ON_VENV) --require-hashes -r $(LOCK) $(UV_SOURCES) --extra-index-url $(TORCH_CPU_INDEX) $(PIP_ARGS); }
	@# Bytecode on every core, for what the pipeline can import: not the packages' own test suites, nor
	@# transformers' model code for other architectures (a third of the bytes: 42 s against 60 s here).
	@# Like pip, it passes over the few files written for newer Pythons (torch's test helpers).
	@echo "compiling bytecode"; $(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' \
	  $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null 2>&1 || true
	@extra=$$(PYTHONPATH=src $(BIN)/python -m repro.envs extraneous) && \
	  if [ -n "$$extra" ]; then echo "not in $(LOCK), removed: $$extra"; $(BIN)/uv pip uninstall $(UV_ON_VENV) $$extra; fi
	@# The build backend (setuptools) is in the lock: no isolated build environment to fetch.
	$(BIN)/uv pip install $(UV_ON_VENV) --no-deps --no-build-isolation -e .
	@touch $@

# Recompile the lock from pyproject.toml (uv comes with the test extra), then the conda envs from the lock.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes --python-version $(LOCK_PYTHON) \
	  --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) --custom-compile-command 'make lock' \
	  --output-file $(LOCK)
	$(BIN)/python -m repro.envs write

run: setup
	$(CHECK_CONFIGFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS) $(CONFIG_ARG)

dry-run-paper: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n --configfile presets/paper.yaml

# The paper from the results of `make run` (only what changed is rebuilt); needs TeX from Debian.
paper: setup
	@command -v latexmk >/dev/null && command -v pdflatex >/dev/null && command -v bibtex >/dev/null || { \
	  echo "make paper needs TeX (latexmk, pdflatex, bibtex). Install it with:"; \
	  echo "  sudo apt-get install -y --no-install-recommends texlive-latex-recommended latexmk"; \
	  echo "or, with conda: conda env create -f envs/latex.yaml"; exit 1; }
	$(CHECK_CONFIGFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake paper --cores $(CORES) $(SNAKEMAKE_ARGS) $(CONFIG_ARG)

# HTML report of the run (figures and tables by study, with the code that made them).
report: setup
	$(CHECK_CONFIGFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report "$(RESULTS_DIR)/report.html" $(CONFIG_ARG)

# Restorable results bundle: <results>/bundle-<confighash>.tar.zst (restore: .venv/bin/repro bundle unpack FILE).
bundle: setup
	$(CHECK_CONFIGFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/repro bundle pack --results "$(RESULTS_DIR)"

# Tests run on TEST_WORKERS processes (pytest-xdist; 0 runs them in this process). A module's tests stay
# on one worker (its module fixtures are built once); the end-to-end run of the test preset is shared
# by all workers (tests/conftest.py). Much of the suite waits on subprocesses (Snakemake, SLURM polls),
# so two workers fill two cores.
TEST_WORKERS ?= 2
PYTEST := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: setup
	$(PYTEST) -m "not drills"

test-fast: setup
	$(PYTEST) -m "not slow and not drills"

# Fault drills on the real DAG (SIGKILL mid-job, damaged inputs, full disk, locks, SLURM): README "Fault drills".
drills: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m drills

# Device-hours and jobs of a preset before submitting it:  make forecast PRESET=presets/paper.yaml
PRESET ?= presets/paper.yaml
forecast: setup
	@test -f "$(PRESET)" || { echo "PRESET=$(PRESET): no such file" >&2; exit 2; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/repro forecast --configfile $(PRESET)

# Snakemake's own linter (every rule has a log and a conda env), the Snakemake formatter, ruff.
lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf results results-*/ logs .snakemake paper/build paper/build-*/ paper/main.pdf
