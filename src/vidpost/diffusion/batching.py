"""Per-sample scalars (σ, Δ, g) given as a float, a 0-dim or a (B,) tensor, broadcast over a batch."""

from __future__ import annotations

import torch


def per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-dim or (B,) value as float64 on like's device: shape () or (B,)."""
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=torch.float64)
    else:  # a python float goes straight to float64 (via float32 it would lose digits)
        t = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if t.ndim == 1 and t.shape[0] != like.shape[0]:
        raise ValueError(f"a per-sample value has {t.shape[0]} entries but the batch has {like.shape[0]}")
    if t.ndim > 1:
        raise ValueError(
            f"per-sample values (sigma, sigma_next, g) must be floats or (B,) tensors, got shape {tuple(t.shape)}"
        )
    return t


def broadcast_over(coef: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) or () float64 -> dtype, shaped (B, 1, …, 1) or () to broadcast over like (B, ...)."""
    coef = coef.to(dtype)
    return coef.view(-1, *([1] * (like.ndim - 1))) if coef.ndim == 1 else coef
