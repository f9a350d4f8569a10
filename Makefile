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

.PHONY: setup setup-cuda FORCE lock run dry-run-paper forecast paper report bundle test test-fast drills lint clean

# Exact versions with hashes for CPython 3.11 on Linux x86_64, compiled from pyproject.toml by `make lock`.
LOCK := requirements-lock.txt
LOCK_PYTHON := 3.11
# PyPI's Linux torch wheel is the CUDA build; the lock pins the CPU build from the PyTorch index.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Where `make lock` finds torch's CPU build (e.g. TORCH_SOURCE='--find-links DIR' for a local wheelhouse).
TORCH_SOURCE ?= --torch-backend cpu
# The GPU route: PyPI's CUDA build of the same torch, with the cuda extra (liger-kernel, triton) and the
# nvidia-* runtime wheels; every package both locks list has the CPU lock's version.
CUDA_LOCK := requirements-cuda-lock.txt
PYPI_INDEX := https://pypi.org/simple
# `make setup DEVICE=cuda` installs the CUDA lock; the venv records its route in .venv/.device and later
# plain `make setup` (run, test, ...) keeps it, so nothing the CUDA build needs is stripped as not in the
# CPU lock. Only DEVICE on make's command line switches: an exported DEVICE (a common name) is not read.
DEVICE_FILE := $(VENV)/.device
RECORDED_DEVICE := $(or $(shell cat $(DEVICE_FILE) 2>/dev/null),cpu)
ifneq ($(origin DEVICE),command line)
DEVICE := $(RECORDED_DEVICE)
endif
SETUP_LOCK := $(if $(filter cuda,$(DEVICE)),$(CUDA_LOCK),$(LOCK))
# Extra package sources for `make setup`, as pip and uv both spell them (e.g. PIP_ARGS='--find-links DIR').
PIP_ARGS ?=
# Installed files `make setup` leaves uncompiled: imported by no rule (a package's own tests, transformers'
# models other than Llama and the two peft reads); importing one still works, from source.
NOT_COMPILED := /tests?/|/transformers/models/(?!auto/|llama/|bloom/|encoder_decoder/)[^/]+/

# Idempotent: the venv is synced to the lock only when the lock or pyproject.toml changes, or when DEVICE
# names another route than the one the venv records. uv installs exactly the locked files (hashes
# checked) from the sources pip is configured with (pip.conf, PIP_*; uv reads neither, so repro.envs
# hands them over), in parallel: 15 s against pip's 65 s here. pip installs uv itself, hash-checked
# from the lock. torch's CPU build comes from those sources, else from
# the PyTorch index (the CUDA build: else from PyPI alone); then anything the route's lock does not list
# is removed, and the package goes in without dependencies.
UV_ON_VENV := --quiet --python $(BIN)/python
UV_SOURCES = $$(PYTHONPATH=src $(BIN)/python -m repro.envs uv-sources)
# uv takes an installed torch 2.13.0+cpu for the CUDA lock's torch==2.13.0 (a local tag satisfies ==):
# a route switch names the other build for reinstalling. Empty on a fresh venv.
UV_REINSTALL = $$(PYTHONPATH=src $(BIN)/python -m repro.envs reinstall --device $(DEVICE))
# The second try when pip's sources fail: the CPU build is on the PyTorch index alone. PyPI has the CUDA
# build, but a configured wheelhouse or mirror holding 2.13.0+cpu shadows it (uv takes the local tag as the
# best match for ==2.13.0, then refuses its hash), so the CUDA route's second try is PyPI alone.
TORCH_FALLBACK = $(if $(filter cuda,$(DEVICE)),--index-url $(PYPI_INDEX),$(UV_SOURCES) --extra-index-url $(TORCH_CPU_INDEX))
TORCH_FALLBACK_SAYS := $(if $(filter cuda,$(DEVICE)),torch's CUDA build not installable from pip's configured sources: using $(PYPI_INDEX) alone,torch's CPU build not found in pip's configured sources: adding $(TORCH_CPU_INDEX))
setup: $(VENV)/.installed

setup-cuda:
	$(MAKE) setup DEVICE=cuda

FORCE:

$(VENV)/.installed: $(SETUP_LOCK) pyproject.toml $(if $(filter-out $(RECORDED_DEVICE),$(DEVICE)),FORCE)
	@case "$(DEVICE)" in cpu|cuda) ;; *) echo "DEVICE=$(DEVICE): cpu or cuda" >&2; exit 2;; esac
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' || { \
	  echo "$(SETUP_LOCK) is for Python $(LOCK_PYTHON); $(VENV) has $$($(BIN)/python -V)."; \
	  echo "Remove $(VENV) and run: make setup PYTHON=python$(LOCK_PYTHON)"; exit 1; }
	@# Recorded before installing: an install that fails half-way is redone on the same route next time.
	@rm -f $@ && echo $(DEVICE) > $(DEVICE_FILE)
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes \
	  -r <(PYTHONPATH=src $(BIN)/python -m repro.envs pin uv --device $(DEVICE)) $(PIP_ARGS)
	$(BIN)/uv pip install $(UV_ON_VENV) --require-hashes -r $(SETUP_LOCK) $(UV_SOURCES) $(UV_REINSTALL) $(PIP_ARGS) 2>/dev/null || { \
	  echo "$(TORCH_FALLBACK_SAYS)"; \
	  $(BIN)/uv pip install $(UV_ON_VENV) --require-hashes -r $(SETUP_LOCK) $(TORCH_FALLBACK) $(UV_REINSTALL) $(PIP_ARGS); }
	@# Bytecode on every core, for what the pipeline can import: not the packages' own test suites, nor
	@# transformers' model code for other architectures (a third of the bytes: 42 s against 60 s here).
	@# Like pip, it passes over the few files written for newer Pythons (torch's test helpers).
	@echo "compiling bytecode"; $(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' \
	  $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null 2>&1 || true
	@extra=$$(PYTHONPATH=src $(BIN)/python -m repro.envs extraneous --device $(DEVICE)) && \
	  if [ -n "$$extra" ]; then echo "not in $(SETUP_LOCK), removed: $$extra"; $(BIN)/uv pip uninstall $(UV_ON_VENV) $$extra; fi
	@# The build backend (setuptools) is in the lock: no isolated build environment to fetch.
	$(BIN)/uv pip install $(UV_ON_VENV) --no-deps --no-build-isolation -e .
	@touch $@

# Recompile both locks from pyproject.toml (uv comes with the test extra), then the conda envs from them.
# Needs the network: PyPI, and torch's CPU build from the PyTorch index (or TORCH_SOURCE). The CUDA lock
# is resolved on PyPI alone (pip's local mirrors are no source a lock may depend on), constrained to the
# CPU lock's versions; its constraints come on stdin, which uv leaves out of the `# via` annotations.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes --python-version $(LOCK_PYTHON) \
	  --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) --custom-compile-command 'make lock' \
	  --output-file $(LOCK)
	set -o pipefail; $(BIN)/python -m repro.envs constraints | \
	  $(BIN)/uv pip compile pyproject.toml --extra test --extra cuda --generate-hashes \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-manylinux_2_28 --index-url $(PYPI_INDEX) \
	  --constraints - --custom-compile-command 'make lock' --output-file $(CUDA_LOCK)
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
