# The whole pipeline in one DAG. Rules only name files; everything they run is `repro ...`.
#
#   snakemake --cores all                                   # embedded default (config.yaml)
#   snakemake --cores all --configfile presets/test.yaml    # a preset replaces config.yaml whole
import json
import os
import sys
from pathlib import Path

from repro.config import ConfigError, validate_config, config_hash, format_lr

# A preset given with --configfile is a complete config: it replaces config.yaml instead of being
# merged into it (a merge would leave the default's datasets in a paper-scale run).
if not workflow.overwrite_configfiles:
    workflow.configfile("config.yaml")

try:
    config = validate_config(
        config,
        Path(workflow.basedir) / "workflow/schemas/config.schema.yaml",
        source=", ".join(map(str, workflow.overwrite_configfiles)) or "config.yaml",
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


# Rules call `repro` by name: the one installed beside the Python running Snakemake comes first on PATH,
# so `.venv/bin/snakemake ...` works without activating anything (a rule's conda env, when --use-conda
# activates it, still goes in front).
envvars:
    "PATH",


_inherited_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), _inherited_path])

RESULTS = "results"
RESOURCES = "resources"
MODEL = config["model"]["name"]

# Every job reads the same validated config; it is rewritten only when its content changes, so
# its timestamp never triggers reruns by itself.
RESOLVED_CONFIG = f"{RESULTS}/config/resolved.json"
_resolved_text = json.dumps(config, indent=2, sort_keys=True)
_resolved_path = Path(RESOLVED_CONFIG)
if not _resolved_path.exists() or _resolved_path.read_text() != _resolved_text:
    _resolved_path.parent.mkdir(parents=True, exist_ok=True)
    _resolved_path.write_text(_resolved_text)


# Each rule file appends the final outputs of its branch to ALL_TARGETS.
ALL_TARGETS = []


include: "workflow/rules/common.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/laws.smk"
include: "workflow/rules/compression.smk"
include: "workflow/rules/teb.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        ALL_TARGETS,
