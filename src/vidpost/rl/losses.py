"""The GRPO policy loss on transitions, and Flash-GRPO's temporal gradient rectification weights.

For a transition m (sample j taking its stochastic step i) with advantage A_j:

    ρ_m = exp(log π_θ − log π_old)
    ℓ_m = max(−A_j·ρ_m, −A_j·clip(ρ_m, 1 − ε, 1 + ε))·w_m + β·KL_m

averaged over the transitions of the (global) minibatch. w_m = 1, except under temporal gradient
rectification, where w_m = c(σ_i)⁻¹ / mean_minibatch(c⁻¹): the gradient of a step's log-probability
scales with c(σ_i) (diffusion/sde.py: gradient_scale), so dividing by it gives every timestep the same
say in the update whichever step each group happened to draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def rectification_weights(scales: torch.Tensor, mean_inverse: float | None = None) -> torch.Tensor:
    """w = c⁻¹ / mean(c⁻¹) for the gradient scales c (M,) of transitions trained together; float64 (M,).

    The mean is over the transitions of one optimizer step on *all* ranks, as Flash-GRPO takes it: pass
    `mean_inverse` when `scales` holds only this rank's share (default: the mean of `scales`, weights of mean 1).
    """
    inverse = 1.0 / scales.to(torch.float64)
    if not bool(torch.isfinite(inverse).all()) or not bool((inverse > 0).all()):
        raise ValueError("gradient scales must be finite and > 0")
    return inverse / (inverse.mean() if mean_inverse is None else mean_inverse)


@dataclass
class PolicyLoss:
    """Per-transition terms (M,): the loss to average, and what the logs report about it."""

    loss: torch.Tensor  # (M,), with gradient
    ratio: torch.Tensor  # (M,), detached
    clipped: torch.Tensor  # (M,) bool: the clipped branch was the one taken (its gradient is 0)
    approx_kl: torch.Tensor  # (M,), detached: (ρ − 1) − log ρ, an estimate of KL(old ‖ θ) that is >= 0
    kl: torch.Tensor | None  # (M,), detached: closed-form KL to the reference, when β > 0


def policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    weights: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> PolicyLoss:
    """PPO-clip on the per-transition ratio, times the rectification weight, plus β·KL to the reference."""
    log_ratio = log_prob - old_log_prob.to(log_prob.dtype)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(log_prob.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    if kl_beta > 0:
        if kl is None:
            raise ValueError("kl_beta > 0 needs the KL to the reference")
        loss = loss + kl_beta * kl
    with torch.no_grad():
        approx_kl = ratio - 1 - log_ratio
    return PolicyLoss(
        loss=loss,
        ratio=ratio.detach(),
        clipped=(clipped > unclipped).detach(),
        approx_kl=approx_kl,
        kl=None if kl is None else kl.detach(),
    )


__all__ = ["PolicyLoss", "policy_loss", "rectification_weights"]
