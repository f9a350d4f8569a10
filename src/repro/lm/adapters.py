"""The LoRA adapters, and the one module that calls peft: building the adapted model and counting its
parameters, saving and loading adapter weights, switching and merging checkpoints in place for
evaluation, and the precision adapters compute at.

Keeping peft behind this module means a peft upgrade (its state-dict helpers, layer classes and
casting flags change between versions) is checked in one place.

Evaluation never trains, so nothing needs fp32 master weights: the adapters compute in the base
model's dtype. peft's default (``autocast_adapter_dtype=True``) keeps LoRA weights in fp32 on a bf16
base and casts every adapter input up to fp32, so each adapted linear pays an fp32 matmul of width
r on top of the bf16 base: at r = 512 on Llama-2-7B shapes the adapters cost several base forwards,
and the runtime requests (priced at bf16 speed) would not cover them.

Loading the adapters in the base dtype is the evaluation counterpart of the training step's bf16
autocast with peft's input casting switched off (``set_adapter_input_casting``): there autocast
rounds the fp32 adapter weights and the activations to bf16 at each matmul and accumulates in fp32;
here the weights are rounded once when loaded, the activations are bf16 already, and the matmul
accumulates the same way. What it changes in L_f and KL against fp32 is measured by
``benchmarks/eval_precision.py`` (README, "Evaluation at GPU speed").

With an fp32 base nothing changes: adapters and base are fp32, as before, bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def peft_version() -> str:
    """The installed peft's version (part of a training run's identity: it computes the step)."""
    import peft

    return peft.__version__


# --------------------------------------------------------------------------------------------------
# Building the adapted model


def build_adapter_model(base_model, method: str, rank: int, alpha: float, dropout: float, target_modules):
    from peft import LoraConfig, get_peft_model

    if method not in ("lora", "rslora"):
        raise ValueError(f"finetune.methods: unknown method {method!r} (lora or rslora)")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        use_rslora=(method == "rslora"),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base_model, config)


def adapter_scalings(model) -> set[float]:
    """The distinct scaling factors of every LoRA layer of a peft model."""
    from peft.tuners.lora import LoraLayer

    return {float(m.scaling["default"]) for m in model.modules() if isinstance(m, LoraLayer)}


def count_trainable(model) -> int:
    """Trainable parameters (adapters); embeddings are excluded even if something unfroze them."""
    import torch

    embedding_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None:
        embedding_params |= {id(p) for p in out_emb.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in embedding_params)


# --------------------------------------------------------------------------------------------------
# Adapter weights


def adapter_state_dict(model) -> dict:
    """The adapter's tensors as peft saves them (they share storage with the LoRA parameters)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def set_adapter_state_dict(model, weights: dict):
    """Copy adapter tensors into the model; returns peft's result (its missing and unexpected keys)."""
    from peft import set_peft_model_state_dict

    return set_peft_model_state_dict(model, weights)


def load_adapter_weights(model, ckpt_dir: Path) -> None:
    """Load a checkpoint's adapter into the model in place, refusing keys the model does not have."""
    from .models import load_safetensors

    dev = next(model.parameters()).device
    result = set_adapter_state_dict(model, load_safetensors(Path(ckpt_dir) / "adapter_model.safetensors",
                                                            device=str(dev)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{ckpt_dir}: adapter keys do not match the model: {unexpected[:3]}")


# --------------------------------------------------------------------------------------------------
# Precision


def set_adapter_input_casting(model, enabled: bool) -> int:
    """Switch peft's cast of each LoRA layer's input to the adapter's dtype; returns layers touched.

    Off under autocast: the bf16 activations then reach the fp32 adapters unchanged and autocast runs
    the adapter matmuls in bf16 (with the cast on, peft would upcast to fp32 first)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = enabled
            n += 1
    return n


def load_for_evaluation(base, checkpoint_dir: Path):
    """``base`` wrapped with the adapter saved in ``checkpoint_dir``, frozen, in ``base``'s dtype."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, checkpoint_dir, is_trainable=False, autocast_adapter_dtype=False)
    model.eval()
    return model


def adapter_dtypes(model) -> set:
    """dtypes of the LoRA weights (the precision evaluation computes them at)."""
    return {p.dtype for name, p in model.named_parameters() if "lora_" in name}


# --------------------------------------------------------------------------------------------------
# Switching checkpoints in place


class AdapterBank:
    """Adapter weights of several checkpoints held on the model's device, swapped in by an in-place copy.

    The copy targets are the tensors peft saves (get_peft_model_state_dict), which share storage with
    the LoRA parameters, so a swap moves no module and allocates nothing.

    With ``merge`` (default: when every adapted weight is fp32), a checkpoint's forward runs on merged
    weights W + s B A, written into one scratch copy of the adapted weights, instead of peft's extra
    low-rank branch: on the shared 2-core machine that branch cost 10-100% of a bare forward (many small
    ops, each a thread barrier, the worse the busier the machine), merging costs one rank-r matmul per
    weight per batch. fp32 rounds W + s B A at the
    level of the unmerged sum; in bf16 it would round away most of an early checkpoint's update, so
    lower precisions keep the branch.
    """

    def __init__(self, model, merge: bool | None = None):
        import torch
        from peft import get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model = model
        self.targets = get_peft_model_state_dict(model)
        params = {p.data_ptr() for p in model.parameters()}
        aliased = [k for k, t in self.targets.items() if t.data_ptr() not in params]
        if aliased:
            raise RuntimeError(f"adapter tensors are copies, not the model's parameters: {aliased[:3]}")
        self.weights: dict[int, list] = {}
        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self._only_lora = all(isinstance(m, LoraLayer) for m in model.modules() if isinstance(m, BaseTunerLayer))
        mergeable = all(
            isinstance(m.base_layer, torch.nn.Linear) and not m.lora_variant and not m.fan_in_fan_out
            and m.base_layer.weight.dtype == torch.float32
            for m in self.layers
        )
        self.merge = mergeable if merge is None else merge
        if self.merge and not mergeable:
            raise ValueError("merge: only plain LoRA on fp32 nn.Linear weights is merged")
        if self.merge:
            self._base_weights = [m.base_layer.weight for m in self.layers]
            self._merged_weights = [torch.nn.Parameter(torch.empty_like(w), requires_grad=False)
                                    for w in self._base_weights]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.targets.values())

    def add(self, step: int, weights: dict, source: str = "adapter") -> None:
        missing = sorted(set(self.targets) - set(weights))
        unexpected = sorted(set(weights) - set(self.targets))
        if missing or unexpected:
            raise RuntimeError(
                f"{source}: adapter keys do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        self.weights[step] = [weights[k].to(device=t.device, dtype=t.dtype) for k, t in self.targets.items()]

    def load(self, step: int, checkpoint_dir: Path) -> None:
        from .models import load_safetensors

        device = next(iter(self.targets.values())).device
        self.add(step, load_safetensors(Path(checkpoint_dir) / "adapter_model.safetensors", device=str(device)),
                 source=str(checkpoint_dir))

    def is_base(self, step: int) -> bool:
        """Whether the checkpoint's adapter adds nothing (every lora_B zero, as LoRA starts): its model is
        the base model, bit for bit when merged (W + s*0*A = W) or through peft's branch (x + 0)."""
        keys = list(self.targets)
        if not all(".lora_A." in k or ".lora_B." in k for k in keys):
            return False
        return all(not bool(w.any()) for k, w in zip(keys, self.weights[step]) if ".lora_B." in k)

    def activate(self, step: int) -> None:
        """Copy a checkpoint's adapter into the LoRA parameters (the model as peft would run it)."""
        import torch

        with torch.no_grad():
            for target, weight in zip(self.targets.values(), self.weights[step]):
                target.copy_(weight)

    @contextmanager
    def base(self):
        """The base model: adapters disabled."""
        if not self._only_lora:
            with self.model.disable_adapter():
                yield
            return
        # What peft's disable_adapter() does for a LoRA-only model, without its check of the whole
        # model's adapter status on every entry (a walk over all modules: 5 % of an evaluation on CPU).
        for m in self.layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in self.layers:
                m.enable_adapters(True)

    @contextmanager
    def applied(self, step: int):
        """The model fine-tuned to checkpoint ``step`` (merged or through peft's branch)."""
        import torch

        self.activate(step)
        if not self.merge:
            yield
            return
        with torch.no_grad():
            for m, w, merged in zip(self.layers, self._base_weights, self._merged_weights):
                name = m.active_adapters[0]
                torch.addmm(w, m.lora_B[name].weight, m.lora_A[name].weight, alpha=m.scaling[name], out=merged)
                m.base_layer.weight = merged
        try:
            with self.base():
                yield
        finally:
            for m, w in zip(self.layers, self._base_weights):
                m.base_layer.weight = w

    def clear(self) -> None:
        self.weights.clear()
