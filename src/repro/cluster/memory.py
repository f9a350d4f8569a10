"""Peak GPU memory of a fine-tuning job, and the GPU it has to ask for: arithmetic on the config.

A job that does not fit its GPU fails at the first optimizer step, and the SLURM profile's retries
only grow host memory and time, so the fit is decided here, before any job runs: ``gpu_fit_errors``
refuses a cuda config with a rank that fits none of ``cluster.gpus`` (part of the config check), and
``gpu_for_job`` gives each fine-tuning job the first of them that holds it (``repro.cluster.resources``
turns that into SLURM's ``--gpus=<type>:1``; ``repro forecast`` prints it).

The estimate follows what the training step keeps on the device (``repro.lm.step``,
``repro.lm.finetune``): the frozen base in the config's dtype, peft's fp32 adapters with fp32
gradients and AdamW's two fp32 moments, the tensors autograd saves for backward (eager PyTorch, SDPA
attention; ``torch.compile`` recomputes some of them, so a compiled step needs at most this), the output
layer and cross-entropy, and a fixed allowance for the CUDA context. The components are summed, though
activations peak at the start of the backward pass and gradients at its end: the overlap is the
margin of an estimate meant to keep a job from failing, not to pack a GPU to the last gigabyte.
Byte counts are exact integers; GB means 10^9 bytes throughout. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .shapes import ModelShape, model_shape

GB = 1e9
FP32 = 4
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Memory of the GPUs a job may ask for, in GB (10^9 bytes): the vendors' nominal sizes. The HBM cards
# hold binary gigabytes (an H100 "80 GB" reports about 79 GiB = 85e9 bytes to torch.cuda.mem_get_info,
# an H200 about 140 GiB = 150e9 bytes), so reading the nominal figure as 10^9 bytes leaves the 5-9 GB
# a driver keeps out of sight below what the card has. An L40S reports about its nominal 48e9 bytes,
# which FIT_MARGIN covers.
GPU_MEMORY_GB = {"H100": 80, "H200": 141, "A100": 80, "L40S": 48}
# A job fits a GPU when its estimate leaves at least this fraction of the GPU's memory free: PyTorch's
# caching allocator reserves more than it hands out (blocks rounded up, fragmentation as batch widths
# vary), and the estimate is arithmetic about eager kernels, not a measurement.
FIT_MARGIN = 0.10
# CUDA context (~0.5 GB on a Hopper GPU with lazy kernel loading), cuBLAS/cuBLASLt workspaces, the
# kernels Triton compiles for torch.compile and liger: outside the caching allocator, fixed per job.
CUDA_CONTEXT_BYTES = 2 * 10**9
# cluster.gpus when the config leaves it out (the schema's default).
DEFAULT_GPUS = ("H100",)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one fine-tuning job needs: on the GPU (every field but ``host_checkpoint``, summed by
    ``total_gpu``) and in host memory to save one checkpoint."""

    base_weights: int
    adapter_weights: int
    adapter_gradients: int
    optimizer_state: int
    optimizer_workspace: int
    activations: int
    output_layer: int
    cuda_context: int
    host_checkpoint: int

    @property
    def total_gpu(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "host_checkpoint")

    def gigabytes(self) -> dict[str, float]:
        """The device components, ``total_gpu`` and ``host_checkpoint``, in GB."""
        device = {f.name: getattr(self, f.name) / GB for f in fields(self) if f.name != "host_checkpoint"}
        return {**device, "total_gpu": self.total_gpu / GB, "host_checkpoint": self.host_checkpoint / GB}


def module_fans(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(fan_in, fan_out) of each linear of a Llama decoder layer; ``ModelShape.adapter_parameters``
    counts r * (fan_in + fan_out) from the same sizes, and a name it does not know as (h, h)."""
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def _fan(shape: ModelShape, module: str) -> tuple[int, int]:
    return module_fans(shape).get(module, (shape.hidden_size, shape.hidden_size))


def uses_autocast(cfg: dict) -> bool:
    """Whether the training step runs its matmuls in bf16 (``finetune.autocast``). "auto" is on for a
    cuda config, since every GPU of GPU_MEMORY_GB computes bf16 in hardware; on a CPU it depends on the
    machine, and off is the larger estimate there."""
    value = cfg["finetune"].get("autocast", False)
    return cfg.get("device") == "cuda" if value == "auto" else bool(value)


def compute_bytes(cfg: dict) -> int:
    """Bytes per element of the activations the matmuls produce: bf16 under autocast, else the model's dtype."""
    return 2 if uses_autocast(cfg) else BYTES[cfg["dtype"]]


def row_width(cfg: dict) -> int:
    """Widest row of a batch, padding included: max_length (a packed row holds at most max_length
    tokens) rounded up to the length bucket."""
    ft = cfg["finetune"]
    bucket = max(1, int(ft.get("pad_to_multiple", 1)))
    return -(-ft["max_length"] // bucket) * bucket


def tokens_per_step(cfg: dict) -> int:
    """Positions of one batch, padding included: at most batch_size rows of ``row_width``."""
    return cfg["finetune"]["batch_size"] * row_width(cfg)


def fused_cross_entropy(cfg: dict) -> bool:
    """Whether the step will use liger's fused output layer + cross-entropy (``select_cross_entropy``):
    asked for on cuda. liger-kernel missing falls back to the plain path with a warning, which the
    config check cannot see; the cuda extra (pip install '.[cuda]') installs it."""
    return cfg.get("device") == "cuda" and bool(cfg["finetune"].get("fused_cross_entropy", True))


def lora_activation_bytes_per_token(shape: ModelShape, cfg: dict, rank: int) -> int:
    """What LoRA adds to one decoder layer's saved tensors, per token.

    Each adapter computes B(A(dropout(x))): autograd keeps A's output (r wide) as B's input. A's input
    is the base linear's input itself (saved once, in the layer's count) unless something makes a new
    tensor of it: dropout (its output plus a one-byte mask), or, without autocast on a bf16/fp16 base,
    peft's cast of the input to the fp32 adapter dtype (one copy per adapted module, q/k/v each their own).
    """
    ft = cfg["finetune"]
    autocast = uses_autocast(cfg)
    # Under autocast the adapters' input casting is switched off and A, B run in bf16.
    adapter_input = 2 if autocast else FP32
    casts = not autocast and BYTES[cfg["dtype"]] != FP32
    dropout = float(ft.get("dropout", 0.0)) > 0
    total = 0
    for module in ft["target_modules"]:
        fan_in, _ = _fan(shape, module)
        if dropout or casts:
            total += fan_in * adapter_input
        if dropout:
            total += fan_in
        total += rank * adapter_input
    return total


def layer_activation_bytes_per_token(shape: ModelShape, cfg: dict, rank: int) -> int:
    """Bytes one Llama decoder layer keeps for its backward pass, per token (eager PyTorch).

    Frozen base weights need no saved input for a weight gradient, so what is kept is what the adapters
    and the nonlinear ops need (c = compute dtype bytes):
      RMSNorm, twice:     its input upcast to fp32 (x^2 and x * rsqrt need it)          2 * 4h
      attention:          normed input (A of q/k/v), q and k after RoPE, v, and the SDPA
                          output (o_proj's input, same storage); flash/memory-efficient
                          SDPA keeps only an fp32 logsumexp per head, never T x T scores  c * (3h + 2kv') + 4 * heads
                          kv' = h when k, v are repeated to every query head (grouped-query
                          models given a mask), else kv
      attention mask:     SDPA turns the boolean (rows, 1, T, T) mask into an additive bias
                          of the compute dtype in every layer and the memory-efficient
                          kernel keeps it for backward: T entries per token               c * T
                          (on a CPU, bounded by the math kernel's softmax output:         c * heads * T)
      MLP:                normed input (A of gate/up), gate (SiLU's input), SiLU output,
                          up, and their product (down_proj's input)                     c * (h + 4i)
    plus ``lora_activation_bytes_per_token``. Llama-2-7B under autocast: 20h + 8i + 2T + 128 = 172,160
    bytes (0.17 MB) at T = 1024, + 14r. The mask's term is the only one that grows with the row width:
    per step, activations are linear in batch_size and, but for it, in max_length.
    """
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    c = compute_bytes(cfg)
    kv_attended = h if shape.num_key_value_heads != shape.num_attention_heads else kv
    norms = 2 * FP32 * h
    attention = c * (3 * h + 2 * kv_attended) + FP32 * shape.num_attention_heads
    mask_bias = c * row_width(cfg) * (1 if cfg.get("device") == "cuda" else shape.num_attention_heads)
    mlp = c * (h + 4 * i)
    return norms + attention + mask_bias + mlp + lora_activation_bytes_per_token(shape, cfg, rank)


def _base_linear_parameters_per_layer(shape: ModelShape) -> int:
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    return 2 * h * h + 2 * h * kv + 3 * h * i


def activation_bytes(shape: ModelShape, cfg: dict, rank: int) -> int:
    """Saved activations of one step plus the gradients alive in one layer's backward.

    Without gradient checkpointing every layer keeps its tensors until the backward pass reaches it.
    With it, only each layer's input (the residual stream, in the model's dtype) is kept and one layer
    at a time is recomputed, whole, in the backward pass. Either way the backward pass of a layer holds
    gradients of its widest tensors at once: the residual stream's (compute dtype, and fp32 through the
    norm) and the MLP's three intermediate-wide ones.
    """
    n = tokens_per_step(cfg)
    c = compute_bytes(cfg)
    model_bytes = BYTES[cfg["dtype"]]
    layers = shape.num_hidden_layers
    per_layer = n * layer_activation_bytes_per_token(shape, cfg, rank)
    # Autocast casts a non-bf16 base weight to bf16 at each use and autograd keeps the copy for the
    # input gradient (its cache holds only weights that require grad, which the frozen base's do not).
    weight_copies = 2 * _base_linear_parameters_per_layer(shape) if uses_autocast(cfg) and model_bytes != 2 else 0
    if cfg["finetune"].get("gradient_checkpointing"):
        saved = layers * n * shape.hidden_size * model_bytes + per_layer + weight_copies
    else:
        saved = layers * (per_layer + weight_copies)
    backward = n * (c * (shape.hidden_size + 3 * shape.intermediate_size) + FP32 * shape.hidden_size)
    # The boolean mask itself, one for every layer: a byte per (query, key) pair of each row.
    mask = n * row_width(cfg)
    return saved + backward + mask


def output_layer_bytes(shape: ModelShape, cfg: dict) -> int:
    """The final norm, output layer and cross-entropy, bounded by batch * max_length supervised positions.

    The final RMSNorm keeps its fp32 input. liger's fused kernel never holds the logits: it computes
    the loss and the input gradient (n x h, in the weight's dtype) chunk by chunk, chunks of
    next_pow2(n / ceil(V / h)) rows of fp32-bounded logits. The plain path keeps the fp32 log-probabilities
    (log_softmax's output), and at the start of the backward pass nll's gradient and log_softmax's input
    gradient join them: three fp32 n x V tensors.
    """
    n = tokens_per_step(cfg)
    h, vocab = shape.hidden_size, shape.vocab_size
    model_bytes = BYTES[cfg["dtype"]]
    final_norm = n * h * FP32
    if fused_cross_entropy(cfg):
        rows = -(-n // -(-vocab // h))
        chunk = 1 << (rows - 1).bit_length()
        return final_norm + n * h * model_bytes + min(chunk, n) * vocab * FP32
    # Under autocast a non-bf16 output layer is cast to bf16 for the matmul and the copy kept.
    head_copy = 2 * vocab * h if uses_autocast(cfg) and model_bytes != 2 else 0
    return final_norm + 3 * n * vocab * FP32 + head_copy


def job_memory(cfg: dict, rank: int, shape: ModelShape | None = None) -> MemoryEstimate:
    """Peak device memory of the ``finetune`` job at ``rank``, and host memory to save its checkpoints."""
    shape = shape or model_shape(cfg["model"])
    ft = cfg["finetune"]
    adapters = shape.adapter_parameters(rank, ft["target_modules"])
    # The training job loads the fetched safetensors in the config's dtype, whatever the model's
    # source (a GGUF model is de-quantised when it is fetched, not when it is trained).
    base = int(shape.parameters) * BYTES[cfg["dtype"]]
    # peft keeps adapters in fp32 on a bf16 base, their gradients take the parameters' dtype, and AdamW
    # keeps exp_avg and exp_avg_sq per parameter in fp32, fused or not.
    # Under autocast each adapter is also cast to bf16 (2 bytes a parameter), cached through the forward
    # pass and kept for the backward one; the backward pass frees a layer's copies as its 4-byte gradients
    # appear, so the gradients' term bounds both.
    weights = FP32 * adapters
    grads = FP32 * adapters
    state = 2 * FP32 * adapters
    # torch's fused AdamW (cuda, fused_optimizer) updates in place. The foreach path (torch's default
    # on cuda, make_optimizer's choice on a CPU) allocates sqrt(exp_avg_sq) for every parameter at
    # once; the single-tensor loop (a CPU without fused_optimizer) one parameter's at a time.
    largest = max(rank * max(_fan(shape, m)) for m in ft["target_modules"])
    on_cuda, fused = cfg.get("device") == "cuda", ft.get("fused_optimizer", True)
    workspace = 0 if on_cuda and fused else FP32 * (adapters if on_cuda or fused else largest)
    # Saving a checkpoint or the resume state copies the whole adapter state dict to the host (peft's
    # save_pretrained through safetensors, and the resume file's .cpu() copy) before writing it;
    # torch.save streams the resume file's AdamW moments one tensor at a time, so of those only the
    # largest single matrix is on the host at once.
    host_checkpoint = weights + FP32 * largest
    return MemoryEstimate(
        base_weights=base, adapter_weights=weights, adapter_gradients=grads, optimizer_state=state,
        optimizer_workspace=workspace, activations=activation_bytes(shape, cfg, rank),
        output_layer=output_layer_bytes(shape, cfg),
        cuda_context=CUDA_CONTEXT_BYTES if cfg.get("device") == "cuda" else 0,
        host_checkpoint=host_checkpoint,
    )


# ----------------------------------------------------------------------------------------------
# Which GPU


def allowed_gpus(cfg: dict) -> list[str]:
    """``cluster.gpus``: the GPUs a job may ask for, in order of preference."""
    return list((cfg.get("cluster") or {}).get("gpus") or DEFAULT_GPUS)


def usable_bytes(gpu: str) -> float:
    return (1 - FIT_MARGIN) * GPU_MEMORY_GB[gpu] * GB


def fits(estimate: MemoryEstimate, gpu: str) -> bool:
    return estimate.total_gpu <= usable_bytes(gpu)


def choose_gpu(cfg: dict, rank: int, estimate: MemoryEstimate | None = None) -> str | None:
    """The first GPU of ``cluster.gpus`` that holds the fine-tuning job at ``rank``; None if none does."""
    estimate = estimate or job_memory(cfg, rank)
    return next((gpu for gpu in allowed_gpus(cfg) if fits(estimate, gpu)), None)


def site_gpu(cfg: dict, site_model: str | None) -> str:
    """The GPU a job gets without asking for a particular one: the site's REPRO_SLURM_GPU_MODEL where
    it names a GPU of the table (h100 -> H100), else the first of ``cluster.gpus``."""
    name = (site_model or "").upper()
    return name if name in GPU_MEMORY_GB else allowed_gpus(cfg)[0]


def gpu_for_job(cfg: dict, rank: int, site_model: str | None = None,
                estimate: MemoryEstimate | None = None) -> str | None:
    """The GPU the fine-tuning job at ``rank`` runs on: the site's (``site_gpu``) when it holds the
    job, so that every rank that fits keeps the site's choice; else the first of ``cluster.gpus`` that
    does; None when none does."""
    estimate = estimate or job_memory(cfg, rank)
    default = site_gpu(cfg, site_model)
    return default if fits(estimate, default) else choose_gpu(cfg, rank, estimate)


def gpu_model_request(cfg: dict, rank: int, site_model: str | None = None) -> str | None:
    """SLURM's ``gpu_model`` resource of the fine-tuning job at ``rank``: the site's own setting (None:
    any GPU) where the job fits the GPU it stands for, else the GPU that ``gpu_for_job`` picked,
    lower-case as SLURM's GPU types are named (--gpus=h200:1)."""
    estimate = job_memory(cfg, rank)
    if fits(estimate, site_gpu(cfg, site_model)):
        return site_model or None
    chosen = choose_gpu(cfg, rank, estimate)
    return chosen.lower() if chosen else (site_model or None)


def largest_fitting_rank(cfg: dict, gpu: str, upto: int, shape: ModelShape | None = None) -> int:
    """The largest rank <= upto whose job fits ``gpu`` (0: not even rank 1). Memory grows with the rank."""
    shape = shape or model_shape(cfg["model"])
    lo, hi = 0, upto
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(job_memory(cfg, mid, shape), gpu):
            lo = mid
        else:
            hi = mid - 1
    return lo


COMPONENTS = {"base_weights": "base weights", "adapter_weights": "adapter weights",
              "adapter_gradients": "adapter gradients", "optimizer_state": "AdamW moments",
              "optimizer_workspace": "AdamW workspace", "activations": "activations",
              "output_layer": "output layer", "cuda_context": "CUDA context"}


def describe(estimate: MemoryEstimate) -> str:
    gb = estimate.gigabytes()
    parts = ", ".join(f"{label} {gb[name]:.1f}" for name, label in COMPONENTS.items() if getattr(estimate, name))
    return f"{gb['total_gpu']:.1f} GB ({parts})"


def gpu_fit_errors(cfg: dict) -> list[str]:
    """One message per rank of a cuda config whose fine-tuning job fits none of ``cluster.gpus``.

    A CPU config has no GPU to fit. A model whose architecture is not known before download cannot be
    sized: refused, naming ``model.shape``.
    """
    if cfg.get("device") != "cuda":
        return []
    try:
        shape = model_shape(cfg["model"])
    except KeyError as exc:  # a GPU job that cannot be sized is refused here, not after it has queued
        return [f"key 'model.shape': {exc.args[0]}"]
    gpus = allowed_gpus(cfg)
    largest = max(gpus, key=lambda g: GPU_MEMORY_GB[g])
    errors = []
    for index, rank in enumerate(cfg["finetune"]["ranks"]):
        estimate = job_memory(cfg, rank, shape)
        if any(fits(estimate, gpu) for gpu in gpus):
            continue
        bigger = [g for g in sorted(GPU_MEMORY_GB, key=GPU_MEMORY_GB.get)
                  if g not in gpus and fits(estimate, g)]
        best = largest_fitting_rank(cfg, largest, rank - 1, shape)
        sizes = ", ".join(f"{g} {usable_bytes(g) / GB:.0f} of {GPU_MEMORY_GB[g]}" for g in gpus)
        remedies = [f"add {' or '.join(bigger)} to cluster.gpus (it holds this job)" if bigger else
                    "no GPU of repro.cluster.memory.GPU_MEMORY_GB holds this job",
                    f"adapt fewer finetune.target_modules (now {', '.join(cfg['finetune']['target_modules'])})",
                    (f"or use a smaller rank (at most {best} fits {largest})" if best else
                     f"or use a smaller model (not even rank 1 fits {largest})")]
        errors.append(
            f"key 'finetune.ranks[{index}]': rank {rank} needs an estimated {describe(estimate)} of GPU "
            f"memory, more than any GPU of cluster.gpus [{', '.join(gpus)}] holds with {FIT_MARGIN:.0%} kept free "
            f"(usable GB: {sizes}); remedies: " + ", ".join(remedies))
    return errors


def memory_table(cfg: dict, site_model: str | None = None) -> list[dict]:
    """One row per rank of the sweep: adapter parameters, each component and the total in GB, and the
    GPU the job runs on (None on a CPU config, or where none of cluster.gpus holds it)."""
    shape = model_shape(cfg["model"])
    rows = []
    for rank in cfg["finetune"]["ranks"]:
        estimate = job_memory(cfg, rank, shape)
        gpu = gpu_for_job(cfg, rank, site_model, estimate) if cfg.get("device") == "cuda" else None
        rows.append({"rank": rank, "adapter_params": shape.adapter_parameters(rank, cfg["finetune"]["target_modules"]),
                     **estimate.gigabytes(), "gpu": gpu})
    return rows
