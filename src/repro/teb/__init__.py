"""Transfer Entropy Bottleneck (arXiv 2211.16607): stream tasks, models, TE estimates and references."""
