"""Loading fine-tuned adapters for evaluation, in the precision the evaluation runs at.

Evaluation never trains, so nothing needs fp32 master weights: the adapters compute in the base
model's dtype. peft's default (``autocast_adapter_dtype=True``) keeps LoRA weights in fp32 on a bf16
base and casts every adapter input up to fp32, so each adapted linear pays an fp32 matmul of width
r on top of the bf16 base: at r = 512 on Llama-2-7B shapes the adapters cost several base forwards,
and the runtime requests (priced at bf16 speed) would not cover them.

Loading the adapters in the base dtype is the evaluation counterpart of the training step's bf16
autocast with peft's input casting switched off (``repro.lm.step.set_adapter_input_casting``): there
autocast rounds the fp32 adapter weights and the activations to bf16 at each matmul and accumulates
in fp32; here the weights are rounded once when loaded, the activations are bf16 already, and the
matmul accumulates the same way. What it changes in L_f and KL against fp32 is measured by
``benchmarks/eval_precision.py`` (README, "Evaluation precision").

With an fp32 base nothing changes: adapters and base are fp32, as before, bit for bit.
"""

from __future__ import annotations

from pathlib import Path


def load_for_evaluation(base, checkpoint_dir: Path):
    """``base`` wrapped with the adapter saved in ``checkpoint_dir``, frozen, in ``base``'s dtype."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, checkpoint_dir, is_trainable=False, autocast_adapter_dtype=False)
    model.eval()
    return model


def adapter_dtypes(model) -> set:
    """dtypes of the LoRA weights (the precision evaluation computes them at)."""
    return {p.dtype for name, p in model.named_parameters() if "lora_" in name}
