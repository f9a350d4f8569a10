# The whole pipeline in one DAG. Rules only name files; everything they run is `repro ...`.
#
#   snakemake --cores all                                   # embedded default (config.yaml) -> results/
#   snakemake --cores all --configfile presets/test.yaml    # a preset replaces config.yaml whole -> results-test/
import json
import os
import sys
from pathlib import Path

from repro.cli import tune_collector
from repro.config import SCHEMA_PATH, ConfigError, results_folder, validate_config
from repro.io import write_if_changed
from repro.locks import JOBS_LOCK, JOBS_LOCK_ENV, FolderBusyError, claim_results_folder
from repro.preflight import PreflightError, check_run

# Snakemake's process, like each job's, loads a large stack and exits: collected less often, and frozen
# at exit (a dry run of the test preset: 2.9 against 2.2 CPU-s here).
tune_collector()

# A preset given with --configfile is a complete config: it replaces config.yaml instead of being
# merged into it (a merge would leave the default's datasets in a paper-scale run).
if not workflow.overwrite_configfiles:
    workflow.configfile("config.yaml")

CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or "config.yaml"
try:
    config = validate_config(
        config,
        SCHEMA_PATH,  # inside the package, where every command reads it too
        source=CONFIG_SOURCE,
    )
    # Each config writes into its own folder (results/ for config.yaml, results-test/ for
    # presets/test.yaml, ...): running a preset never touches another config's files. The resolved
    # config records the folder, so `make paper CONFIGFILE=<folder>/config/resolved.json` finds it.
    config["results"] = results_folder(config, workflow.overwrite_configfiles)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


# Rules call `repro` by name: the one installed beside the Python running Snakemake comes first on PATH,
# so `.venv/bin/snakemake ...` works without activating anything (a rule's conda env, when --use-conda
# activates it, still goes in front).
envvars:
    "PATH",


_inherited_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), _inherited_path])

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
# Downloads are keyed by model name and shared by every config.
RESOURCES = "resources"
MODEL = config["model"]["name"]

# Every job reads the same validated config. It is written when the run starts (not while the workflow
# is parsed, so `snakemake -n` writes nothing) and only when its content changes; no rule takes it as
# an input, so its timestamp never triggers reruns: each rule's `identity` param does.
RESOLVED_CONFIG = f"{RESULTS}/config/resolved.json"


# One run per results folder: a second one (another config, other targets) is refused before it writes
# anything, and so is a run while jobs of a killed run are still going (repro.locks). Every job holds
# the jobs lock named here for as long as it runs.
os.environ[JOBS_LOCK_ENV] = str(Path(RESULTS, JOBS_LOCK).resolve())


# Then the prerequisites of the rules about to run (CUDA, the SLURM controller and account, the
# tracking server, the model hub), each in one line, before any job removes an old output
# (repro.preflight).
onstart:
    try:
        claim_results_folder(RESULTS, CONFIG_SOURCE)
        check_run(
            config,
            {job.rule.name for job in workflow.dag.needrun_jobs()},
            executor=getattr(workflow.executor_plugin, "name", "local"),
            tracking_uri=TRACKING_URI,
        )
    except (FolderBusyError, PreflightError) as exc:
        raise WorkflowError(str(exc)) from None
    write_if_changed(Path(RESOLVED_CONFIG), json.dumps(config, indent=2, sort_keys=True))


# Each rule file appends the final outputs of its branch to ALL_TARGETS, and registers what the paper
# includes under its branch name in PAPER_INPUTS: {"figures": [...pdf], "tables": [...tex], "numbers": [...tex]}.
# paper.smk reads only these two; a branch left out leaves a visible note in the paper.
# Every table a branch shows in the HTML report is registered in REPORT_TABLES: CSV -> (caption file
# stem, report category); report.smk renders them.
ALL_TARGETS = []
PAPER_INPUTS = {}
REPORT_TABLES = {}
# The tables the claims ledger reads, registered by each branch under a name (workflow/rules/claims.smk).
CLAIMS_INPUTS = {}


include: "workflow/rules/common.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/laws.smk"
include: "workflow/rules/compression.smk"
include: "workflow/rules/teb.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        ALL_TARGETS,
