"""Inference-only speed-ups applied to an unmodified model (caches, compilation, attention backends)."""
