"""The pieces of one fine-tuning step: batch layout (padded or packed), loss, optimizer, and the
device-side bookkeeping that keeps the host from waiting on the device at every step.

Each piece is chosen by a key of the config's ``finetune`` section (see ``StepOptions``); with the
defaults, a CPU step computes exactly what the plain padded step computes.

- Layout: examples are right-padded one per row, or (``packing``) several per row with position
  ids restarting at every example. transformers' Llama reads restarting position ids with no 2-D
  attention mask as packed sequences and builds a block-diagonal causal mask (sdpa, eager) or uses
  varlen kernels (flash attention), so no token attends across an example boundary. The width is
  rounded up to ``pad_to_multiple`` (length buckets: few distinct shapes for compiled kernels and
  the allocator).
- Loss: the output layer runs only at supervised positions, whose flat indices and targets are
  computed on the host from the examples (no boolean indexing on the device, which would wait for
  it). On CUDA with liger-kernel installed, the output layer and the cross-entropy are one fused
  kernel that never holds the logits; elsewhere the plain matmul and ``F.cross_entropy`` in fp32.
- Precision: with ``autocast``, matmuls run in bf16 under ``torch.autocast`` while the adapters
  (peft keeps them in fp32 on a bf16 base) and AdamW's state stay fp32 master weights; peft's cast of
  each adapter's input to fp32 is switched off so the adapters compute in bf16 too.
- Bookkeeping: loss and gradient norms of every step stay on the device in a small buffer and come
  to the host together (``StepRunner.flush``), with CUDA events timing each step.
- Attention mask: the step hands the decoder its (rows, 1, width, width) mask, built on the device
  from the 2-D padding mask or the packed position ids (``dense_attention_mask``). transformers
  returns a 4-D mask as it is, so it never inspects the mask's values on the host (below), and the
  decoder layers always receive a tensor, never None for a batch that happens to have no padding.
- Compilation (``compile``): each decoder layer is compiled with dynamic shapes, and all layers share
  one code object and so one dynamo cache, whose recompile limit (8) they share too: past it, dynamo
  would silently run the layers eagerly. ``compile_decoder_layers`` removes every cause of a second
  graph the pipeline's batches used to trigger, so one graph serves every length bucket:

  * layer 0's input did not require grad while the others' did (the LoRA adapters make them), a
    guard on ``requires_grad``: the input embeddings' output is made to require grad
    (``enable_input_require_grads``). Adapter gradients are unchanged; the backward computes layer
    0's input gradient too (its query/key/value projections' input gradients: about 0.5% of the
    backward's matmuls for SmolLM2-135M's 30 layers);
  * duck sizing gave input dims of equal size one symbol, so a width equal to the head size (64,
    the last dim of the rotary cos/sin) specialised the graph to that width: off while the decoder
    runs (``torch.fx.experimental._config.use_duck_shape``);
  * transformers passed None instead of a mask to batches without padding (now always the 4-D mask);
  * dynamo specialises a size-1 dim: a packed batch of several examples is laid out in at least two
    rows (``layout_batch(min_rows=2)``: the same tokens, split between two rows), so the batch dim is
    1 only in runs of one example per batch, where every batch has one row.

  While the decoder runs, ``torch._dynamo.config.fail_on_recompile_limit_hit`` turns the silent
  fallback into an error, which ``StepRunner.run`` re-raises as ``RecompileLimitError`` naming each
  recompilation's reason; ``CompileWatch`` counts graphs and recompilations over any block of steps.

Host syncs (where the host waits for the device inside a step). Removed: transformers' sdpa mask
creation asks whether a 2-D mask has any padding (``fast_all(mask)``, a ``bool`` of a device tensor)
and, for packed rows, whether the position ids restart anywhere (``(...).all()``); both are skipped
since the step passes the 4-D mask. The loss takes its supervised indices and count from the host.
Remaining, with liger's fused cross-entropy (liger-kernel 0.8; its API takes no counts from the
caller): its forward counts the non-ignored targets with ``target_mask.sum().item()``, and its
backward compares the incoming gradient with 1.0 (``torch.equal`` against ``torch.tensor(1.0,
device=...)``, a copy to the device and a read back). So the host waits for the forward to finish
before it can queue the backward; the plain cross-entropy path has neither. Other attention
implementations (flash_attention_*, flex_attention) keep transformers' own mask handling and its
syncs. A CPU cannot show CUDA syncs: on a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` warns at
each one (benchmarks/gpu_smoke.py counts them per step).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field

from .adapters import set_adapter_input_casting
from .tokens import IGNORE, Example


@dataclass(frozen=True)
class StepOptions:
    fast_loss: bool = True
    packing: bool = False
    pad_to_multiple: int = 1
    autocast: bool = False
    fused_cross_entropy: bool = True
    fused_optimizer: bool = True
    gradient_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"


# ----------------------------------------------------------------------------------------------
# Batch layout


@dataclass
class Batch:
    """One step's tensors and the counts the host knows without asking the device."""

    input_ids: object
    labels: object
    attention_mask: object | None  # (rows, width) for padded rows; None when packed
    position_ids: object | None  # restarting at every example when packed; None when padded
    sup_index: object  # flat indices of supervised positions in the (rows, width - 1) grid
    sup_targets: object  # the token each of those positions predicts
    sup_owner: list[int]  # example (index in the given list) of each supervised position
    n_tokens: int  # real (non-padding) input tokens
    n_supervised: int
    rows: list[list[int]] = field(default_factory=list)  # examples of each row, in order

    def to(self, device: str) -> Batch:
        """Copy to the device; on CUDA from pinned memory without blocking the host."""
        if device == "cpu":
            return self
        cuda = str(device).startswith("cuda")

        def move(t):
            if t is None:
                return None
            return t.pin_memory().to(device, non_blocking=True) if cuda else t.to(device)

        return Batch(move(self.input_ids), move(self.labels), move(self.attention_mask), move(self.position_ids),
                     move(self.sup_index), move(self.sup_targets), self.sup_owner, self.n_tokens,
                     self.n_supervised, self.rows)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices of each row: first-fit over examples in decreasing length (ties by index), so
    the layout is a pure function of the lengths; each row's examples keep ascending index order."""
    if max(lengths) > capacity:
        raise ValueError(f"finetune.packing: an example of {max(lengths)} tokens exceeds the row capacity {capacity}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def split_rows(rows: list[list[int]], lengths: list[int], min_rows: int) -> list[list[int]]:
    """Split the longest rows of several examples in two (where the halves' tokens are most even)
    until there are ``min_rows`` rows or no row has two examples; the order of rows and of the
    examples in each is kept."""
    rows = [list(r) for r in rows]
    while len(rows) < min_rows:
        candidates = [k for k, r in enumerate(rows) if len(r) > 1]
        if not candidates:
            break
        k = max(candidates, key=lambda k: (sum(lengths[i] for i in rows[k]), -k))
        row = rows[k]
        total, prefix, cut, best = sum(lengths[i] for i in row), 0, 1, None
        for j in range(1, len(row)):
            prefix += lengths[row[j - 1]]
            if best is None or abs(2 * prefix - total) < best:
                cut, best = j, abs(2 * prefix - total)
        rows[k : k + 1] = [row[:cut], row[cut:]]
    return rows


def layout_batch(examples: list[Example], pad_id: int, packing: bool = False, pad_to_multiple: int = 1,
                 row_capacity: int | None = None, min_rows: int = 1) -> Batch:
    """Host tensors of one batch, padded (one example per row) or packed (rows of at most
    ``row_capacity`` tokens, default the longest example; with ``min_rows``, rows are split until
    there are that many, as far as the examples allow)."""
    import torch

    lengths = [len(e.input_ids) for e in examples]
    if packing:
        rows = split_rows(pack_rows(lengths, max(row_capacity or 0, max(lengths))), lengths, min_rows)
    else:
        rows = [[i] for i in range(len(examples))]
    width = max(sum(lengths[i] for i in r) for r in rows)
    if pad_to_multiple > 1:
        width = -(-width // pad_to_multiple) * pad_to_multiple
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n_rows, width), dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    sup_index: list[int] = []
    sup_targets: list[int] = []
    sup_owner: list[int] = []
    for r, members in enumerate(rows):
        off = 0
        for i in members:
            e, n = examples[i], lengths[i]
            ids[r, off : off + n] = torch.tensor(e.input_ids)
            row_labels = list(e.labels)
            # The first token of an example is never a target (in a packed row, position off - 1
            # belongs to the previous example).
            row_labels[0] = IGNORE
            labels[r, off : off + n] = torch.tensor(row_labels)
            mask[r, off : off + n] = 1
            pos[r, off : off + n] = torch.arange(n)
            supervised = [t for t in range(1, n) if row_labels[t] != IGNORE]
            sup_index += [r * (width - 1) + off + t - 1 for t in supervised]
            sup_targets += [row_labels[t] for t in supervised]
            sup_owner += [i] * len(supervised)
            off += n
        # The padding tail is one more "sequence" of its own: real tokens never attend to it.
        pos[r, off:] = torch.arange(width - off)
    return Batch(
        input_ids=ids, labels=labels,
        attention_mask=None if packing else mask, position_ids=pos if packing else None,
        sup_index=torch.tensor(sup_index, dtype=torch.long), sup_targets=torch.tensor(sup_targets, dtype=torch.long),
        sup_owner=sup_owner, n_tokens=sum(lengths), n_supervised=len(sup_index), rows=rows,
    )


# ----------------------------------------------------------------------------------------------
# Loss


def plain_linear_cross_entropy(hidden, weight, bias, targets):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against targets, logits in fp32."""
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def liger_linear_cross_entropy(hidden, weight, bias, targets):
    """The same sum by liger-kernel's fused kernel: logits computed and reduced chunk by chunk."""
    import torch
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    # The kernel takes input and weight in one dtype and upcasts internally; autocast must not
    # re-cast its matmuls behind its back.
    with torch.autocast(hidden.device.type, enabled=False):
        loss = liger_fused_linear_cross_entropy(hidden.to(weight.dtype).contiguous(), weight, targets, bias,
                                                reduction="sum")
    return loss.float()


def liger_available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # ImportError, or triton failing to initialise
        return False
    return True


def select_cross_entropy(device: str, fused: bool):
    """(function, name) of the output layer + cross-entropy: liger's fused kernel where asked for and
    able to run (CUDA, liger-kernel importable), else the plain path."""
    if fused and str(device).startswith("cuda"):
        if liger_available():
            return liger_linear_cross_entropy, "liger"
        warnings.warn("finetune.fused_cross_entropy: liger-kernel is not installed (pip install '.[cuda]'); "
                      "using the plain output layer and cross-entropy", stacklevel=2)
    return plain_linear_cross_entropy, "plain"


def causal_lm_loss(model, input_ids, attention_mask, labels, fast: bool, *, position_ids=None, supervised=None,
                   cross_entropy=None):
    """Mean next-token cross-entropy over supervised positions, and the supervised-token count.

    fast=True runs the decoder, then the output layer only at supervised positions: the same loss as
    the full logits path, without the vocabulary-sized matmul and softmax over prompt and padding.
    ``supervised`` = (flat index into the (rows, width - 1) grid, targets, count) as ``layout_batch``
    computes them on the host; without it they are read from ``labels`` (which waits for the device).
    ``position_ids`` restarting inside a row, with no attention mask, mark packed examples.
    """
    import torch.nn.functional as F

    if supervised is None:
        targets = labels[:, 1:]
        keep = (targets != IGNORE).flatten()
        index = keep.nonzero().squeeze(1)
        sup_targets, n = targets.flatten()[index], int(keep.sum())
    else:
        index, sup_targets, n = supervised
    cross_entropy = cross_entropy or plain_linear_cross_entropy
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if fast:
        out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        head = base.get_output_embeddings()
        loss = cross_entropy(hidden, head.weight, head.bias, sup_targets) / max(n, 1)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits[:, :-1]
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
        loss = F.cross_entropy(logits.float(), sup_targets, reduction="sum") / max(n, 1)
    return loss, n


# ----------------------------------------------------------------------------------------------
# Model and optimizer


def prepare_model(model, options: StepOptions) -> None:
    """Apply the options that change the model: input casting, gradient checkpointing, compilation."""
    if options.autocast:
        set_adapter_input_casting(model, False)
    if options.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # Non-reentrant checkpointing needs no input that requires grad (the base is frozen).
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if options.compile:
        compile_decoder_layers(model, options.compile_backend)


# Dynamo settings in force while a compiled decoder runs (read at each forward, when dynamo traces
# a layer or decides to recompile one). Duck sizing would give a width equal to another input dim
# (the head size) one symbol and specialise the graph to it; past the recompile limit dynamo would
# run the layers eagerly without a word.
FX_SETTINGS = {"use_duck_shape": False}
DYNAMO_SETTINGS = {"fail_on_recompile_limit_hit": True}


@contextlib.contextmanager
def compile_settings(recompile_limit: int | None = None):
    """``FX_SETTINGS`` and ``DYNAMO_SETTINGS`` (and ``recompile_limit``, dynamo's default 8 if None)
    for the duration of the block."""
    import torch._dynamo.config as dynamo_config
    import torch.fx.experimental._config as fx_config

    dynamo = dict(DYNAMO_SETTINGS)
    if recompile_limit is not None:
        dynamo["recompile_limit"] = recompile_limit
    with fx_config.patch(**FX_SETTINGS), dynamo_config.patch(**dynamo):
        yield


def compile_decoder_layers(model, backend: str = "inductor", recompile_limit: int | None = None) -> int:
    """torch.compile each decoder layer (regional compilation): the layers share one compiled graph,
    so compiling costs about one layer's worth of tracing, not the whole model's.

    One graph also serves every batch shape the step produces (see the module docstring): the input
    embeddings' output requires grad so that every layer's input does, and the decoder runs under
    ``compile_settings`` (hooks around its forward: once per step, where patching the config around
    each layer would cost ~70 us a layer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.enable_input_require_grads()
    decoder = base.get_decoder()
    layers = decoder.layers
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    active: list = []

    def enter(module, args):
        settings = compile_settings(recompile_limit)
        settings.__enter__()
        active.append(settings)

    def leave(module, args, output):
        if active:  # not entered if an earlier pre-hook raised
            active.pop().__exit__(None, None, None)

    decoder.register_forward_pre_hook(enter)
    decoder.register_forward_hook(leave, always_call=True)
    return len(layers)


# Attention implementations whose 4-D mask the step builds itself (sdpa: boolean, True = attend;
# eager: additive). Others (flash attention's varlen kernels, flex attention) take transformers' path.
DENSE_MASK_IMPLEMENTATIONS = ("sdpa", "eager")


def dense_attention_mask(input_ids, attention_mask=None, position_ids=None, implementation: str = "sdpa",
                         dtype=None):
    """The (rows, 1, width, width) mask of a padded (``attention_mask``) or packed (``position_ids``
    restarting at each example) batch: causal, within each example, never onto padding as a key;
    built on the device without reading any value back to the host.

    transformers returns a 4-D mask unchanged, so this skips its host-side checks of the 2-D mask and
    gives every batch a mask, padded or not. Padding queries attend to the keys before them, as in
    transformers' own mask, so no row is empty (an empty row would give sdpa NaNs)."""
    import torch

    rows, width = input_ids.shape
    device = input_ids.device
    allowed = torch.ones(width, width, dtype=torch.bool, device=device).tril()[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    elif position_ids is not None:
        # An example starts wherever the position does not follow the previous one.
        starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
        example = starts.cumsum(-1)
        allowed = allowed & (example[:, None, :, None] == example[:, None, None, :])
    else:
        allowed = allowed.expand(rows, 1, width, width)
    if implementation == "eager":
        dtype = dtype or torch.float32
        blocked = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
        return blocked.masked_fill(allowed, 0.0)
    return allowed


def attention_implementation(model) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None)


# ----------------------------------------------------------------------------------------------
# Watching dynamo


class RecompileLimitError(RuntimeError):
    """Dynamo reached its recompile limit for the compiled decoder layers."""


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process (``counters["stats"]["unique_graphs"]``)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompileWatch:
    """What dynamo compiled while the block ran (or since it was entered, read while open):

    - ``graphs``: graphs compiled (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``);
    - ``frames``: compilations started (``counters["frames"]``), ``failed`` of them (the recompile
      limit among others: without ``fail_on_recompile_limit_hit``, dynamo then runs the code eagerly);
    - ``graph_breaks``;
    - from dynamo's compilation records (it keeps the last 64): ``recompiles``, ``compiles_per_code``
      ({"name (file:line)": compilations}; all decoder layers share one code) and ``reasons`` (the
      first failed guard of each recompilation);
    - ``failed_guards``: every guard that failed when dynamo looked for a graph to reuse, one per
      cached graph tried."""

    def __init__(self):
        self._start = None
        self._end = None

    @staticmethod
    def _snapshot() -> dict:
        from torch._dynamo.utils import counters, get_compilation_metrics, guard_failures

        return {"graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["total"],
                "ok": counters["frames"]["ok"], "graph_breaks": sum(counters["graph_break"].values()),
                "records": get_compilation_metrics(),
                "guards": {code: list(failures) for code, failures in guard_failures.items()}}

    def __enter__(self) -> CompileWatch:
        self._start, self._end = self._snapshot(), None
        return self

    def __exit__(self, *exc) -> None:
        self._end = self._snapshot()

    def summary(self) -> dict:
        if self._start is None:
            raise RuntimeError("CompileWatch: not entered")
        start, end = self._start, self._end or self._snapshot()
        seen = {id(r) for r in start["records"]}  # start holds them, so their ids stay unique
        records = [r for r in end["records"] if id(r) not in seen]
        per_code: dict[str, int] = {}
        for r in records:
            if r.co_name:  # dynamo's frame compilations, not a refused one
                key = f"{r.co_name} ({r.co_filename}:{r.co_firstlineno})"
                per_code[key] = per_code.get(key, 0) + 1
        failed_guards = []
        for code, failures in end["guards"].items():
            failed_guards += failures[len(start["guards"].get(code, [])):]
        frames = end["frames"] - start["frames"]
        return {"graphs": end["graphs"] - start["graphs"], "frames": frames,
                "failed": frames - (end["ok"] - start["ok"]),
                "graph_breaks": end["graph_breaks"] - start["graph_breaks"],
                "recompiles": sum(1 for r in records if r.recompile_reason), "compiles_per_code": per_code,
                "reasons": [f"{r.co_name or '?'} [{r.compile_id}]: {r.recompile_reason}" for r in records
                            if r.recompile_reason],
                "failed_guards": failed_guards}

    graphs = property(lambda self: self.summary()["graphs"])
    frames = property(lambda self: self.summary()["frames"])
    failed = property(lambda self: self.summary()["failed"])
    graph_breaks = property(lambda self: self.summary()["graph_breaks"])
    recompiles = property(lambda self: self.summary()["recompiles"])
    compiles_per_code = property(lambda self: self.summary()["compiles_per_code"])
    reasons = property(lambda self: self.summary()["reasons"])
    failed_guards = property(lambda self: self.summary()["failed_guards"])

    def describe(self) -> str:
        s = self.summary()
        lines = [f"dynamo compiled {s['graphs']} graph(s) in {s['frames']} compilation(s), {s['failed']} "
                 f"failed, {s['recompiles']} recompilation(s)"]
        lines += [f"  recompiled {reason}" for reason in s["reasons"]]
        return "\n".join(lines)

    def check(self, max_recompiles: int = 0) -> None:
        """Raise ``RecompileLimitError`` naming each recompilation's reason if there were more than
        ``max_recompiles``, or any failed compilation."""
        s = self.summary()
        if s["recompiles"] > max_recompiles or s["failed"]:
            raise RecompileLimitError(self.describe())


def make_optimizer(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, device: str = "cpu",
                   fused: bool = True):
    """AdamW over the adapters: one fused kernel on CUDA, multi-tensor (foreach) on CPU; with
    fused=False torch's default implementation."""
    import torch

    kwargs = {}
    if fused:
        kwargs = {"fused": True} if str(device).startswith("cuda") else {"foreach": True}
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kwargs)


def native_bf16(device: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the device multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU
    that advertises AVX512-BF16 / AMX-BF16 (x86) or BF16 (Arm). Elsewhere oneDNN emulates bf16 by
    conversion, slower than fp32."""
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_autocast(value, device: str) -> bool:
    """finetune.autocast: true, false, or "auto" (on where the device computes bf16 in hardware)."""
    if value == "auto":
        return native_bf16(device)
    if isinstance(value, bool):
        return value
    raise ValueError(f"finetune.autocast: expected true, false or 'auto', got {value!r}")


def autocast_context(device: str, enabled: bool):
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# The step and its deferred bookkeeping


class StepRunner:
    """Runs steps and keeps their metrics on the device until ``flush``.

    ``loss_fn(model, input_ids, attention_mask, labels, fast, position_ids=, supervised=,
    cross_entropy=)`` defaults to ``causal_lm_loss``; a caller may pass its own (tests inject NaNs).
    """

    def __init__(self, model, optimizer, params, options: StepOptions, device: str, max_grad_norm=None,
                 loss_fn=None, row_capacity: int | None = None):
        self.model, self.optimizer, self.params = model, optimizer, params
        self.options, self.device, self.max_grad_norm = options, str(device), max_grad_norm
        self.loss_fn = loss_fn or causal_lm_loss
        self.row_capacity = row_capacity
        self.cross_entropy, self.cross_entropy_name = select_cross_entropy(self.device, options.fused_cross_entropy)
        self.cuda = self.device.startswith("cuda")
        self._pending: list[tuple[int, object, object]] = []  # (step, metrics tensor, timing)
        self.attention = attention_implementation(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._mask_dtype = getattr(base, "dtype", None)
        # Compilations from here on: named in the error if the recompile limit is reached.
        self.compile_watch = CompileWatch().__enter__() if options.compile else None

    def layout(self, examples: list[Example], pad_id: int) -> Batch:
        """The batch's layout; compiled packed batches of several examples take at least two rows, so
        the compiled layers never see a batch dim of 1 beside batches of more rows."""
        return layout_batch(examples, pad_id, self.options.packing, self.options.pad_to_multiple, self.row_capacity,
                            min_rows=2 if self.options.compile else 1)

    def attention_inputs(self, batch: Batch) -> tuple[object, object]:
        """(attention_mask, position_ids) the decoder gets for the batch: the dense 4-D mask where the
        attention implementation takes one (``dense_attention_mask``), else the batch's own."""
        # Only where it pays: a compiled step needs one mask argument for one graph, a CUDA step saves
        # transformers' host-side mask checks. An eager CPU step keeps transformers' own mask path, so
        # its results stay bit for bit those of the runs already published.
        if self.attention not in DENSE_MASK_IMPLEMENTATIONS or not (self.options.compile or self.cuda):
            return batch.attention_mask, batch.position_ids
        mask = dense_attention_mask(batch.input_ids, batch.attention_mask, batch.position_ids, self.attention,
                                    self._mask_dtype)
        return mask, batch.position_ids

    def run(self, batch: Batch, step: int = 0, update: bool = True) -> None:
        """Forward, backward and (if update) an optimizer step; nothing waits for the device."""
        import torch

        batch = batch.to(self.device)
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        attention_mask, position_ids = self.attention_inputs(batch)
        try:
            with autocast_context(self.device, self.options.autocast):
                loss, _ = self.loss_fn(self.model, batch.input_ids, attention_mask, batch.labels,
                                       fast=self.options.fast_loss, position_ids=position_ids,
                                       supervised=(batch.sup_index, batch.sup_targets, batch.n_supervised),
                                       cross_entropy=self.cross_entropy)
        except Exception as exc:
            from torch._dynamo.exc import FailOnRecompileLimitHit

            if isinstance(exc, FailOnRecompileLimitHit) and self.compile_watch is not None:
                raise RecompileLimitError(
                    f"step {step}: the compiled decoder layers reached dynamo's recompile limit (batch of "
                    f"{tuple(batch.input_ids.shape)}); {self.compile_watch.describe()}") from exc
            raise
        loss.backward()
        grads = [p.grad.detach() for p in self.params]
        # One multi-tensor kernel on CUDA instead of one launch per adapter matrix.
        norms = torch.stack(torch._foreach_norm(grads) if self.cuda else [g.norm() for g in grads])
        metrics = torch.stack([loss.detach().float(), norms.mean(), norms.norm()])
        if update:
            # A non-finite loss is found at the next flush, before any checkpoint is written after it.
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            end.record()
            timing = (start, end)
        else:
            timing = time.perf_counter() - t0
        self._pending.append((step, metrics, timing))

    def flush(self) -> list[dict]:
        """Metrics of every step since the last flush, in one transfer: step, loss, grad_norm (mean of
        the per-parameter norms), grad_norm_global, seconds."""
        import torch

        if not self._pending:
            return []
        values = torch.stack([m for _, m, _ in self._pending]).tolist()
        if self.cuda:
            self._pending[-1][2][1].synchronize()
        out = []
        for (step, _, timing), (loss, gmean, gglobal) in zip(self._pending, values):
            seconds = timing[0].elapsed_time(timing[1]) / 1000 if self.cuda else timing
            out.append({"step": step, "loss": loss, "grad_norm": gmean, "grad_norm_global": gglobal,
                        "seconds": seconds})
        self._pending = []
        return out
