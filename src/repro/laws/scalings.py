"""Names of the adapter scaling rules and optimizers of the rank-stability check, shared by the
simulation (`rank_stability`) and its figures (`figures`) without importing torch into the latter."""

SCALING_RULES = ("lora", "rslora", "constant")
SCALING_LABEL = {
    "lora": r"$\gamma_r=\alpha/r$ (LoRA)",
    "rslora": r"$\gamma_r=\alpha/\sqrt{r}$ (rsLoRA)",
    "constant": r"$\gamma_r=\alpha$ (constant)",
}
OPTIMIZERS = ("adam", "sgd")
PRIMARY_OPTIMIZER = "adam"
