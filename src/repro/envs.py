"""The dependency locks (``requirements-lock.txt``, ``requirements-cuda-lock.txt``) and the conda
environments derived from them.

``make lock`` compiles ``pyproject.toml`` (core and test dependencies) into one exact lock with
hashes for CPython on Linux x86_64, then runs ``python -m repro.envs write``: each ``envs/<name>.yaml``
lists the Python packages its rules import and everything they need, every one at the lock's exact
version, so ``make setup`` and ``snakemake --use-conda`` install the same versions.

The CUDA lock adds the ``cuda`` extra and takes torch's CUDA build from PyPI; every package the CPU
lock also lists is constrained to the CPU lock's version (``constraints``), so a result computed on
either route used the same libraries. A venv records its route in ``<venv>/.device`` (make setup
DEVICE=cuda), and ``extraneous``, ``pin`` and ``reinstall`` read the lock of that route.

    python -m repro.envs write        # regenerate envs/*.yaml from the locks
    python -m repro.envs check        # locks <-> pyproject <-> envs agree (exit 1 and the reasons if not)
    python -m repro.envs extraneous   # installed distributions the lock does not list (make setup removes them)
    python -m repro.envs pin NAME     # NAME's line of the lock with its hashes (make setup installs uv so)
    python -m repro.envs uv-sources   # pip's configured package sources as uv options (make setup)
    python -m repro.envs constraints  # the CPU lock's versions as uv constraints (make lock, CUDA lock)
    python -m repro.envs reinstall    # uv options reinstalling another build of a locked release (make setup)

`make setup` runs `pin` and `uv-sources` before anything is installed in the venv, so this module
imports only the standard library at the top; `packaging` is imported where a requirement or a version
is parsed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK_NAME = "requirements-lock.txt"
CUDA_LOCK_NAME = "requirements-cuda-lock.txt"
# The lock each `make setup DEVICE=...` route installs.
LOCKS = {"cpu": LOCK_NAME, "cuda": CUDA_LOCK_NAME}
# Written into the venv by make setup: the route it was built for, so a later plain `make setup` keeps it
# (and does not strip the CUDA build's packages, which the CPU lock does not list).
DEVICE_FILE = ".device"
LOCK_PYTHON = "3.11"
# PyPI's Linux wheel of torch is the CUDA build (several GB of nvidia-* wheels); the lock pins the CPU
# build, which the PyTorch index serves.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Installed with the interpreter or by `make setup` itself, never part of the comparison.
BOOTSTRAP = {"pip", "setuptools", "wheel", "repro"}
# pyproject.toml's extras in each lock; the cuda extra needs triton and a CUDA device, so only its lock has it.
LOCK_EXTRAS = {"cpu": ("test",), "cuda": ("test", "cuda")}


@dataclass(frozen=True)
class EnvSpec:
    what: str                       # completes "Conda environment of ..."
    packages: tuple[str, ...]       # distributions the env's rules import; their dependencies follow from the lock
    conda: tuple[str, ...] = ()     # conda-forge packages besides python and pip
    use: str = "snakemake --use-conda"  # how it is installed, for the header


# What each rule family imports (the `conda:` directive of every rule names one of these files).
ENVS: dict[str, EnvSpec] = {
    "lm": EnvSpec("the language-model rules (download, data, fine-tuning, evaluation)",
                  ("torch", "transformers", "peft", "lm-eval", "gguf", "safetensors", "tokenizers",
                   "huggingface-hub", "datasets", "accelerate", "sentencepiece", "pandas", "numpy", "tqdm",
                   "zstandard", "pyyaml", "jsonschema", "packaging")),
    "laws": EnvSpec("the laws rules (fits, rank stability)",
                    ("pandas", "numpy", "statsmodels", "scipy", "matplotlib", "torch", "tqdm", "pyyaml",
                     "jsonschema", "packaging")),
    "teb": EnvSpec("the TEB rules", ("torch", "numpy", "scipy", "pandas", "matplotlib", "scikit-learn", "ennemi",
                                    "tqdm", "pyyaml", "jsonschema", "packaging")),
    "compression": EnvSpec("the compression rules", ("python-sat", "numpy", "pandas", "tqdm", "pyyaml",
                                                     "jsonschema", "packaging")),
    "report": EnvSpec("the report rules (aggregation, figures, tables, numbers, provenance)",
                      ("pandas", "numpy", "matplotlib", "pygments", "zstandard", "pyyaml", "jsonschema",
                       "packaging")),
    "tracking": EnvSpec("rule track_runs (MLflow)", ("mlflow-skinny", "sqlalchemy", "alembic", "pandas", "scipy",
                                                     "tqdm", "pyyaml", "jsonschema", "packaging")),
    "latex": EnvSpec("rule paper: TeX (latexmk, pdflatex, bibtex) plus the report's Python packages. On\n"
                     "# Debian/Ubuntu without conda use\n"
                     "#   apt-get install --no-install-recommends texlive-latex-recommended latexmk",
                     ("pandas", "numpy", "pyyaml", "jsonschema", "packaging"), conda=("texlive-core", "latexmk")),
}


# Environments generated from the CUDA lock: the language-model rules name lm-cuda on a cuda config
# (LM_CONDA_ENV in workflow/rules/lm.smk); the fused kernels of finetune.fused_cross_entropy need liger-kernel.
CUDA_ENVS: dict[str, EnvSpec] = {
    "lm-cuda": EnvSpec("the language-model rules on a CUDA GPU: CUDA torch, liger-kernel, triton",
                       (*ENVS["lm"].packages, "liger-kernel"), use="snakemake --use-conda on a cuda config"),
}


@dataclass
class Pin:
    name: str                       # canonical name
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)  # canonical names of the locked packages that require it
    direct: bool = False            # required by pyproject.toml itself


def canonicalize_name(name: str) -> str:
    """PEP 503 normalised name (what packaging.utils.canonicalize_name returns for a valid name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class LockError(ValueError):
    """The lock is missing, malformed, or disagrees with pyproject.toml or the envs."""


def lock_path(root: Path | None = None, device: str = "cpu") -> Path:
    if device not in LOCKS:
        raise LockError(f"device {device!r}: no lock for it (one of {', '.join(LOCKS)})")
    return Path(root or ROOT) / LOCKS[device]


def venv_device(prefix: Path | str | None = None) -> str:
    """The route the venv at ``prefix`` (default: the running one) was set up for; cpu when unrecorded,
    as for every venv built before the CUDA route existed."""
    marker = Path(sys.prefix if prefix is None else prefix) / DEVICE_FILE
    try:
        device = marker.read_text().strip()
    except OSError:
        return "cpu"
    if device not in LOCKS:
        raise LockError(f"{marker}: unknown route {device!r} (one of {', '.join(LOCKS)}; make setup DEVICE=cpu)")
    return device


def venv_lock(root: Path | None = None, prefix: Path | str | None = None) -> Path:
    """The lock that the venv at ``prefix`` was installed from: what it must hold, nothing more."""
    return lock_path(root, venv_device(prefix))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def read_lock(path: Path | None = None) -> dict[str, Pin]:
    """The pins of a uv/pip-compile lock with hashes and ``# via`` annotations, by canonical name."""
    path = Path(path or lock_path())
    if not path.is_file():
        raise LockError(f"{path}: lock file not found (make lock writes it)")
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            in_via = False
            if line.startswith("#"):
                current = None
                continue
            if line.startswith("-"):  # an option line such as --extra-index-url
                current = None
                continue
            m = _REQ_LINE.match(line)
            if not m:
                raise LockError(f"{path}:{n}: not an exact pin (name==version): {line!r}")
            name = canonicalize_name(m.group(1))
            if name in pins:
                raise LockError(f"{path}:{n}: {name} is pinned twice")
            current = pins[name] = Pin(name, m.group(3))
            current.hashes += re.findall(r"--hash=(\w+:[0-9a-f]+)", line)
            continue
        if current is None:
            continue
        text = line.strip()
        current.hashes += re.findall(r"--hash=(\w+:[0-9a-f]+)", text)
        if text.startswith("# via"):
            in_via = True
            rest = text[len("# via"):].strip()
            for item in filter(None, (s.strip() for s in rest.split(","))):
                _add_via(current, item)
        elif in_via and text.startswith("#"):
            _add_via(current, text.lstrip("#").strip())
    if not pins:
        raise LockError(f"{path}: no pins")
    return pins


def _add_via(pin: Pin, item: str) -> None:
    if not item:
        return
    if item.startswith("-c "):  # a constraint limits a version; it requires nothing
        return
    if item.startswith(("repro ", "repro[", "-r ")) or item in ("repro", "pyproject.toml"):
        pin.direct = True
        return
    pin.via.append(canonicalize_name(re.split(r"[\s\[]", item, maxsplit=1)[0]))


def pyproject_requirements(pyproject: Path | None = None, extras: tuple[str, ...] = ("test",)) -> list[Requirement]:
    import tomllib  # Python 3.11+, like the lock
    from packaging.requirements import Requirement

    data = tomllib.loads(Path(pyproject or ROOT / "pyproject.toml").read_text())
    project = data["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in extras:
        reqs += [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
    return reqs


def closure(pins: dict[str, Pin], names) -> list[str]:
    """``names`` and every locked package they need, transitively, by the lock's ``via`` annotations."""
    wanted = {canonicalize_name(n) for n in names}
    missing = sorted(wanted - set(pins))
    if missing:
        raise LockError(f"not in the lock: {', '.join(missing)}")
    changed = True
    while changed:
        changed = False
        for pin in pins.values():
            if pin.name not in wanted and wanted.intersection(pin.via):
                wanted.add(pin.name)
                changed = True
    return sorted(wanted)


def render_env(name: str, spec: EnvSpec, pins: dict[str, Pin], python: str = LOCK_PYTHON,
               lock_name: str = LOCK_NAME) -> str:
    names = closure(pins, spec.packages)
    lines = [
        f"# Conda environment of {spec.what} ({spec.use}).",
        f"# Generated from {lock_name} by `python -m repro.envs write` (make lock): every Python package at",
        "# the lock's exact version. Do not edit by hand.",
        f"name: repro-{name}",
        "channels: [conda-forge]",
        "dependencies:",
        f"  - python={python}",
        "  - pip",
        *[f"  - {c}" for c in spec.conda],
        "  - pip:",
    ]
    if any(pins[n].version.endswith("+cpu") for n in names):
        lines.append(f"      - --extra-index-url {TORCH_CPU_INDEX}")
    lines += [f'      - "{n}=={pins[n].version}"' for n in names]
    return "\n".join(lines) + "\n"


def write_envs(env_dir: Path, pins: dict[str, Pin], python: str = LOCK_PYTHON,
               envs: dict[str, EnvSpec] | None = None, lock_name: str = LOCK_NAME) -> list[Path]:
    env_dir = Path(env_dir)
    env_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, spec in (ENVS if envs is None else envs).items():
        path = env_dir / f"{name}.yaml"
        text = render_env(name, spec, pins, python, lock_name)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        out.append(path)
    return out


def env_pins(env_file: Path) -> dict[str, str]:
    """``name -> version`` of the exact pins in an environment file's pip section."""
    import yaml
    from packaging.requirements import Requirement

    spec = yaml.safe_load(Path(env_file).read_text())
    out = {}
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict):
            for req in dep.get("pip", []):
                if req.startswith("-"):
                    continue
                r = Requirement(req)
                spec_list = list(r.specifier)
                if len(spec_list) != 1 or spec_list[0].operator != "==":
                    raise LockError(f"{env_file}: {req!r} is not an exact pin")
                out[canonicalize_name(r.name)] = spec_list[0].version
    return out


def public_version(version: str) -> str:
    """``version`` without its local build tag (``2.13.0+cpu`` -> ``2.13.0``): the release both locks share."""
    return version.partition("+")[0]


def constraints(pins: dict[str, Pin]) -> str:
    """The lock's versions as a uv constraints file: ``name==version`` without local tags, so torch's CPU
    pin admits PyPI's CUDA build of the same release and every other package keeps its exact version."""
    return "".join(f"{pin.name}=={public_version(pin.version)}\n" for pin in sorted(pins.values(), key=lambda p: p.name))


def check(root: Path | None = None) -> list[str]:
    """Every disagreement between pyproject.toml, the locks and envs/*.yaml (empty when they agree)."""
    root = Path(root or ROOT)
    pins = read_lock(lock_path(root))
    problems = _check_lock(root, "cpu", pins, ENVS)
    try:
        cuda = read_lock(lock_path(root, "cuda"))
    except LockError as exc:
        return problems + [str(exc)]
    problems += _check_lock(root, "cuda", cuda, CUDA_ENVS)
    for pin in cuda.values():
        if "+" in pin.version:
            problems.append(f"{CUDA_LOCK_NAME}: {pin.name}=={pin.version} is a local build, not PyPI's (run make lock)")
        other = pins.get(pin.name)
        if other is not None and public_version(other.version) != public_version(pin.version):
            problems.append(f"{CUDA_LOCK_NAME}: {pin.name}=={pin.version} but {LOCK_NAME} pins {other.version}: "
                            "the routes would compute with different libraries (run make lock)")
    return problems


def _check_lock(root: Path, device: str, pins: dict[str, Pin], envs: dict[str, EnvSpec]) -> list[str]:
    from packaging.version import Version

    lock_name = LOCKS[device]
    # The CPU lock's messages predate the CUDA lock and say "the lock".
    the_lock = "the lock" if device == "cpu" else lock_name
    problems = []
    for pin in pins.values():
        if not pin.hashes:
            problems.append(f"{lock_name}: {pin.name}=={pin.version} has no hash")
    env = {"python_version": LOCK_PYTHON, "python_full_version": f"{LOCK_PYTHON}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    extras = LOCK_EXTRAS[device]
    for req in pyproject_requirements(root / "pyproject.toml", extras):
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"pyproject.toml requires {req} but {the_lock} has no {req.name} (run make lock)")
        elif not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"pyproject.toml requires {req} but {the_lock} pins {pin.name}=={pin.version} (run make lock)")
        elif not pin.direct:
            problems.append(f"{lock_name}: {pin.name} is a pyproject.toml requirement but not annotated as one "
                            "(the lock was not compiled from this pyproject.toml; run make lock)")
    for name, spec in envs.items():
        path = root / "envs" / f"{name}.yaml"
        if not path.is_file():
            problems.append(f"envs/{name}.yaml: missing (python -m repro.envs write)")
            continue
        for pkg, version in env_pins(path).items():
            if pkg not in pins:
                problems.append(f"envs/{name}.yaml: {pkg} is not in {the_lock}")
            elif pins[pkg].version != version:
                problems.append(f"envs/{name}.yaml: {pkg}=={version} but {the_lock} pins {pins[pkg].version}")
        try:
            if path.read_text() != render_env(name, spec, pins, lock_name=lock_name):
                problems.append(f"envs/{name}.yaml: differs from what {the_lock} generates (python -m repro.envs write)")
        except LockError as exc:
            problems.append(f"envs/{name}.yaml: {exc}")
    return problems


def installed_versions() -> dict[str, str]:
    """``name -> version`` of the distributions on sys.path (the first one found wins, as for imports).

    Read from the ``<name>-<version>.dist-info`` folder names, which the wheel format fixes, so that
    recording it in every provenance manifest costs milliseconds rather than parsing every METADATA
    file; other layouts (.egg-info) fall back to importlib.metadata.
    """
    out: dict[str, str] = {}
    for entry in sys.path:
        folder = Path(entry or ".")
        if not folder.is_dir():
            continue
        for info in folder.glob("*.dist-info"):
            name, sep, version = info.name[: -len(".dist-info")].partition("-")
            if sep and version:
                out.setdefault(canonicalize_name(name), version)
        for info in folder.glob("*.egg-info"):
            from importlib import metadata

            dist = metadata.Distribution.at(info)
            if dist.metadata["Name"]:
                out.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return out


def compare_installed(pins: dict[str, Pin], installed: dict[str, str] | None = None) -> dict[str, list]:
    """Installed distributions against the lock: missing, different version, extraneous."""
    installed = installed_versions() if installed is None else installed
    missing = sorted(n for n in pins if n not in installed and n not in BOOTSTRAP)
    differ = sorted((n, pins[n].version, installed[n]) for n in pins if n in installed and installed[n] != pins[n].version)
    extra = sorted(n for n in installed if n not in pins and n not in BOOTSTRAP)
    return {"missing": missing, "differ": differ, "extraneous": extra}


def pin_requirement(pins: dict[str, Pin], name: str) -> str:
    """``name``'s exact pin with its hashes, as a requirements file line for `pip install -r`."""
    pin = pins.get(canonicalize_name(name))
    if pin is None:
        raise LockError(f"{LOCK_NAME}: no pin for {name}")
    return f"{pin.name}=={pin.version} " + " ".join(f"--hash={h}" for h in pin.hashes) + "\n"


# make setup installs with uv, which reads neither pip.conf nor PIP_* variables: the indexes and wheel
# folders pip would use are handed to it, so both install the same hash-pinned files from the same places.
# pip options that name where packages come from, and the uv option for each value.
SOURCE_OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links"}
# pip's precedence for one option: the install command's section over [global], the environment over both.
SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}


def pip_sources(config_listing: str) -> dict[str, list[str]]:
    """Effective source options from `pip config list` output (``section.option='value'`` lines)."""
    best: dict[str, tuple[int, str]] = {}
    for line in config_listing.splitlines():
        m = re.match(r"([^.]*)\.([\w-]+)='(.*)'$", line.strip())
        if not m or m.group(2) not in SOURCE_OPTIONS or m.group(1) not in SECTION_RANK:
            continue
        rank = SECTION_RANK[m.group(1)]
        if m.group(2) not in best or rank >= best[m.group(2)][0]:
            best[m.group(2)] = (rank, m.group(3))
    return {option: value.split() for option, (_, value) in best.items()}


def uv_options(sources: dict[str, list[str]]) -> list[str]:
    args = []
    for option, values in sources.items():
        for value in values[:1] if option == "index-url" else values:
            args += [SOURCE_OPTIONS[option], value]
    # pip takes the best match across all its indexes; uv's default (the first index that has a package)
    # would miss a version that only a later mirror holds. Every file is hash-pinned either way.
    return args + ["--index-strategy", "unsafe-best-match"]


def extraneous(pins: dict[str, Pin], installed: dict[str, str] | None = None) -> list[str]:
    """Installed distributions that ``pins`` (the lock of the venv's route) does not list: make setup
    removes them, so on the CUDA route this must be computed from the CUDA lock."""
    return compare_installed(pins, installed)["extraneous"]


def other_builds(pins: dict[str, Pin], installed: dict[str, str] | None = None) -> list[str]:
    """Installed packages of the locked release but another build (``2.13.0+cpu`` for a lock's ``2.13.0``).

    A local tag satisfies ``==2.13.0``, so uv keeps the CPU build of torch where the CUDA lock pins
    PyPI's; make setup names these for reinstalling when a venv changes route."""
    installed = installed_versions() if installed is None else installed
    return sorted(n for n, have in installed.items()
                  if n in pins and have != pins[n].version and public_version(have) == public_version(pins[n].version))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.envs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "check", "extraneous", "pin", "uv-sources", "constraints",
                                           "reinstall"])
    parser.add_argument("name", nargs="?", help="the package `pin` prints")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (locks, pyproject.toml, envs/)")
    parser.add_argument("--device", choices=sorted(LOCKS),
                        help="the route whose lock `extraneous`, `pin` and `reinstall` read (default: the one this "
                             f"interpreter's venv records in {DEVICE_FILE}, else cpu)")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            for path in write_envs(args.root / "envs", read_lock(lock_path(args.root))):
                print(path)
            for path in write_envs(args.root / "envs", read_lock(lock_path(args.root, "cuda")), envs=CUDA_ENVS,
                                   lock_name=CUDA_LOCK_NAME):
                print(path)
            return 0
        if args.action == "check":
            problems = check(args.root)
            for p in problems:
                print(p, file=sys.stderr)
            if not problems:
                print(f"{LOCK_NAME}, {CUDA_LOCK_NAME}, pyproject.toml and envs/*.yaml agree")
            return 1 if problems else 0
        if args.action == "constraints":
            sys.stdout.write(constraints(read_lock(lock_path(args.root))))
            return 0
        if args.action == "uv-sources":
            listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                     text=True, check=True).stdout
            print(" ".join(uv_options(pip_sources(listing))))
            return 0
        lock = lock_path(args.root, args.device or venv_device())
        if args.action == "pin":
            if not args.name:
                parser.error("pin needs the package's name")
            sys.stdout.write(pin_requirement(read_lock(lock), args.name))
            return 0
        if args.action == "reinstall":
            print(" ".join(f"--reinstall-package {n}" for n in other_builds(read_lock(lock))))
            return 0
        print("\n".join(extraneous(read_lock(lock))))
        return 0
    except LockError as exc:
        print(f"repro.envs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
