"""Configuration: schema validation with defaults, and errors that name the offending key.

The same schema file (``src/repro/schemas/config.schema.yaml``, shipped in the package) documents every key. Validation runs
in the Snakefile before any job is scheduled, and in every CLI command that reads a config, so a bad
config never starts (or half-finishes) a run.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError

# Package data, so a non-editable install (a wheel, each --use-conda environment) validates the same way.
SCHEMA_PATH = Path(__file__).resolve().with_name("schemas") / "config.schema.yaml"



def load_schema(path: Path | None = None) -> dict:
    """The main schema plus one fragment per study branch.

    A file ``<section>.schema.yaml`` beside the main schema describes the top-level key ``<section>``
    (e.g. ``compression.schema.yaml`` -> ``compression:``), so each branch owns its part of the schema.
    Parsed once per process (every command validates its config, then its provenance record reads it
    again); each caller gets its own copy.
    """
    path = Path(path or SCHEMA_PATH)
    if not path.exists():
        raise ConfigError(f"config schema not found: {path}")
    return copy.deepcopy(_parse_schema(str(path.resolve())))


# libyaml's loader where PyYAML was built with it: the schemas are parsed by every command.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=8)
def _parse_schema(path_text: str) -> dict:
    path = Path(path_text)
    with open(path) as fh:
        schema = yaml.load(fh, Loader=_YAML_LOADER)
    for fragment in sorted(path.parent.glob("*.schema.yaml")):
        if fragment.resolve() == path:
            continue
        section = fragment.name.removesuffix(".schema.yaml")
        if section in schema["properties"]:
            raise ConfigError(f"{fragment}: section {section!r} is already defined in {path}")
        with open(fragment) as fh:
            schema["properties"][section] = yaml.load(fh, Loader=_YAML_LOADER)
    return schema


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        names = ", ".join(f"'{_key_path([*error.absolute_path, u])}'" for u in unknown) or key
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown key {names}{hint}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        where = _key_path([*error.absolute_path, missing])
        return f"missing key '{where}'" + _required_reason(error)
    if error.validator == "anyOf":
        desc = error.schema.get("description", "")
        return f"key '{key}': {error.instance!r} is not valid" + (f"; expected: {desc}" if desc else "")
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"key '{key}': {error.instance!r} is not one of {allowed}"
    if error.validator == "propertyNames":
        return f"key '{key}': name {error.instance!r} is not allowed ({error.message})"
    return f"key '{key}': {error.message}"


def _required_reason(error: jsonschema.ValidationError) -> str:
    # Conditional requirements (if/then) deserve the condition in the message, e.g. source: hf.
    path = list(error.schema_path)
    if "then" in path:
        parent = error.instance if isinstance(error.instance, dict) else {}
        for cond_key in ("source", "kind"):
            if cond_key in parent:
                return f" (needed when {cond_key} is {parent[cond_key]!r})"
    return ""


def _extend_with_defaults(validator_class):
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_props(validator, properties, instance, schema)

    # JSON Schema counts 4.0 as an integer; a rank of 4.0 would then name a run directory r4.0.
    type_checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool)
    )
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=type_checker)


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


# Cross-key checks that the schema cannot express, one per study (and one for the cluster requests).
# Each lives beside the run plan it guards (<study>/runs.py) and is registered as an entry point of the
# group below in pyproject.toml, so this module imports no study.
CHECKS_GROUP = "repro.config_checks"


@functools.cache
def registered_checks() -> tuple[Callable[[dict], list[str]], ...]:
    """The studies' checks, in the order of their entry-point names; refused when none is registered
    (the package is not installed, so no study's check could run)."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=CHECKS_GROUP), key=lambda ep: ep.name)
    if not found:
        raise ConfigError(f"no configuration checks registered under {CHECKS_GROUP!r}: the repro package is not "
                          "installed (make setup), so the studies' cross-key checks cannot run")
    return tuple(ep.load() for ep in found)


def _semantic_errors(cfg: dict) -> list[str]:
    return [message for check in registered_checks() for message in check(cfg)]


def validate_config(config: dict, schema_path: Path | None = None, source: str = "config") -> dict:
    """Return a validated copy of ``config`` with defaults filled in; raise ConfigError otherwise."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    validator = _DefaultFillingValidator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    messages = list(dict.fromkeys(_describe(e) for e in errors))
    if not messages:
        messages = _semantic_errors(cfg)
    if messages:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(f"  - {m}" for m in messages))
    return cfg


def section_defaults(section: str, schema_path: Path | None = None) -> dict:
    """The defaults of one top-level section, validated, as if the config had left it out."""
    schema = load_schema(schema_path)["properties"].get(section)
    if schema is None:
        raise ConfigError(f"no config section {section!r} in the schema")
    cfg: dict = {}
    errors = [_describe(e) for e in _DefaultFillingValidator(schema).iter_errors(cfg)]
    if errors:
        raise ConfigError(f"defaults of section {section!r} are invalid: " + "; ".join(errors))
    return cfg


def load_config(path: str | Path, schema_path: Path | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":
        # The Snakefile's resolved config. Not read as YAML: YAML 1.1 reads the JSON number 5e-05 as a string.
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        return validate_config(raw, schema_path, source=str(path))
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return validate_config(raw, schema_path, source=str(path))


def config_hash(config: dict) -> str:
    """Stable short hash of a (validated) configuration, for provenance and bundle names."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]




DEFAULT_RESULTS = "results"
# The same pattern as the schema's key: one folder of the workflow, never a path out of it.
RESULTS_NAME = re.compile(r"results[A-Za-z0-9._-]*")


def check_results_name(name: object) -> str:
    if not isinstance(name, str) or not RESULTS_NAME.fullmatch(name):
        raise ConfigError(f"results folder {name!r}: expected one folder name starting with 'results' "
                          "(letters, digits, '.', '_', '-'), e.g. results-mine")
    return name


def results_folder(config: dict, configfiles: Iterable[str | Path] = (), workdir: str | Path = ".") -> str:
    """The folder a config's outputs and logs go to (relative to the workflow).

    The config's own ``results`` key when set (a resolved config always sets it); else ``results`` for
    the embedded config.yaml and ``results-<name>`` for a config file ``<name>.yaml`` given with
    --configfile, so that the test preset, a cluster preset or a user's edited copy never overwrite the
    default run's files.
    """
    chosen = config.get("results")
    if not chosen:
        files = [Path(f) for f in configfiles]
        if not files or files[-1].resolve() == (Path(workdir) / "config.yaml").resolve():
            chosen = DEFAULT_RESULTS
        else:
            stem = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in files[-1].stem)
            chosen = f"{DEFAULT_RESULTS}-{stem}"
    return check_results_name(chosen)
