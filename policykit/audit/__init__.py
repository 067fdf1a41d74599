"""The audit: generate images for erased, related and preserved prompts with
the base and the edited model, classify them, and report the metrics."""
