"""Transfer Entropy Bottleneck (arXiv 2211.16607): stream tasks with exact TE, models, bounds and references."""
