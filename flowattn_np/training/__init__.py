"""Training: the optimisers, the loop, checkpoints, progress bars and safe file writes."""
