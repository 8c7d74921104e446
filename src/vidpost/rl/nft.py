"""DiffusionNFT: negative-aware fine-tuning on the forward process, likelihood-free (algorithms.md).

A clean rollout x₀ is re-noised at a grid σ, x_σ = (1 − σ)·x₀ + σ·ε. From the velocity v_θ being trained and
the rollout policy's v_old (fixed), two implicit policies are formed,

    v⁺ = β·v_θ + (1 − β)·v_old,   v⁻ = (1 + β)·v_old − β·v_θ,

each read as a clean-sample prediction x̂₀ = x_σ − σ·v and regressed onto x₀ with an adaptive weight
w = mean|x̂₀ − x₀| (detached, at least 1e-5). The reward enters as the optimality probability
r = clip(A / (2·A_max) + ½, 0, 1) of the sample's clipped advantage A:

    ℓ = A_max · [r·‖x̂₀⁺ − x₀‖²/w⁺ + (1 − r)·‖x̂₀⁻ − x₀‖²/w⁻] / β     (norms: means over the non-batch dims)

A sample better than its group pulls v_θ towards x₀ through v⁺, a worse one pushes it away through v⁻;
A = 0 gives equal pulls, whose gradients cancel while v_θ = v_old. The reference (NVlabs/DiffusionNFT)
scales by A_max the same way; its lagging old policy (an EMA of the trained weights) is here the policy
of the rollout, as in the reference's first iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpost.diffusion.batching import broadcast_over
from vidpost.diffusion.schedule import noisy_sample

# the reference's floor on the adaptive weight, so that a near-perfect prediction is not divided by ~0
MIN_WEIGHT = 1e-5


@dataclass
class Renoised:
    """M training points: clean rollouts re-noised at grid σ, in (sample, step) order."""

    x: torch.Tensor  # (M, C, T, H, W) x_σ
    x0: torch.Tensor  # (M, C, T, H, W) the clean rollout
    sample: torch.Tensor  # (M,) long: the batch row (group order) the point belongs to
    step: torch.Tensor  # (M,) long: the grid index of σ
    sigma: torch.Tensor  # (M,) float64

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Renoised:
        return Renoised(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})


def renoise(
    final: torch.Tensor,
    train: torch.Tensor,
    sigmas: torch.Tensor,
    rows: torch.Tensor,
    generators: list[torch.Generator],
) -> Renoised:
    """The points of `train` (b, N) bool over a rollout's clean samples `final` (b, ...), whose batch rows are
    `rows` (b,): each noised with fresh ε from its row's generator (one per row, so any rank draws the same)."""
    local, step = train.nonzero(as_tuple=True)  # sample-major order
    noise = (
        torch.stack([torch.randn(final.shape[1:], generator=generators[int(j)]) for j in local])
        if len(local)
        else final.new_zeros((0, *final.shape[1:])).cpu()
    )
    x0 = final[local]
    sigma = sigmas[step]
    return Renoised(
        x=noisy_sample(x0, noise.to(x0.device), sigma.to(x0.device)), x0=x0, sample=rows[local], step=step, sigma=sigma
    )


def optimality(advantages: torch.Tensor, adv_clip: float) -> torch.Tensor:
    """r = clip(A / (2·A_max) + ½, 0, 1) of the advantages clipped to ±A_max."""
    return (advantages.clamp(-adv_clip, adv_clip) / (2 * adv_clip) + 0.5).clamp(0, 1)


@dataclass
class NFTLoss:
    loss: torch.Tensor  # (M,), with gradient
    positive: torch.Tensor  # (M,), detached: ‖x̂₀⁺ − x₀‖²/w⁺
    negative: torch.Tensor  # (M,), detached: ‖x̂₀⁻ − x₀‖²/w⁻


def nft_loss(
    v: torch.Tensor, v_old: torch.Tensor, points: Renoised, advantages: torch.Tensor, beta: float, adv_clip: float
) -> NFTLoss:
    """Per-point DiffusionNFT loss (module docstring); v, v_old (M, ...) at the points, advantages (M,)."""
    if v.shape != v_old.shape or v.shape != points.x.shape:
        raise ValueError(
            f"v, v_old and the points differ in shape: {tuple(v.shape)}, {tuple(v_old.shape)}, {tuple(points.x.shape)}"
        )
    dims = tuple(range(1, v.ndim))
    x, x0 = points.x.to(v.device, torch.float32), points.x0.to(v.device, torch.float32)
    sigma = broadcast_over(points.sigma.to(v.device), v, torch.float32)
    v, v_old = v.float(), v_old.float().detach()

    def regression(velocity: torch.Tensor) -> torch.Tensor:
        error = x - sigma * velocity - x0  # x̂₀ − x₀
        weight = error.detach().double().abs().mean(dim=dims, keepdim=True).clamp(min=MIN_WEIGHT)
        return (error.square() / weight.float()).mean(dim=dims)

    positive = regression(beta * v + (1 - beta) * v_old)
    negative = regression((1 + beta) * v_old - beta * v)
    r = optimality(advantages.to(v.device, torch.float64), adv_clip).float()
    loss = adv_clip * (r * positive + (1 - r) * negative) / beta
    return NFTLoss(loss=loss, positive=positive.detach(), negative=negative.detach())


def velocity_kl(v: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """The reference's KL surrogate mean_dims[(v_θ − v_ref)²], (M,)."""
    return (v.float() - v_ref.float()).square().mean(dim=tuple(range(1, v.ndim)))


__all__ = ["MIN_WEIGHT", "NFTLoss", "Renoised", "nft_loss", "optimality", "renoise", "velocity_kl"]
