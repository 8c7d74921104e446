"""Sigma grids for sampling, sigma draws for training, and the flow-matching training objective.

Flow time σ ∈ [0, 1], σ = 1 is pure noise: x_σ = (1 − σ)·x₀ + σ·ε, and the model predicts the velocity
v = ε − x₀. Sampling grids come from diffusers' own schedulers (never hand-copied tables), so a vidpost
rollout visits exactly the σ that stock diffusers (e.g. WanPipeline) visits for the same scheduler,
step count and shift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vidpost.diffusion.batching import broadcast_over, per_sample

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

# Training σ are kept this far inside (0, 1), so that σ = 0 (no noise) and σ = 1 (no signal) never occur.
TRAINING_SIGMA_EPS = 1e-6

# What diffusers 0.42 does in set_timesteps(N) (the tests recompute both grids independently):
# - "flow_match_euler": FlowMatchEulerDiscreteScheduler(shift=s). σ_i = shift(linspace(1, shift(1/1000), N)),
#   then 0 appended. The low end is shifted twice: the scheduler's training table is already shifted, and
#   set_timesteps interpolates between its ends and shifts again.
# - "unipc": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s),
#   the scheduler WanPipeline ships with (flow_shift 3.0 for Wan2.1). σ_i = shift(linspace(1, 1/1000, N + 1)[:-1]),
#   σ_0 nudged from 1 to 1 − 1e-6, then 0 appended. (Older diffusers built this grid differently; Flash-GRPO's
#   constants come from that older grid, see tests/diffusion/test_sde.py.)
SCHEDULERS = ("flow_match_euler", "unipc")

TRAINING_SIGMA_MODES = ("uniform", "logit_normal")


def make_scheduler(name: str, shift: float) -> FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler:
    """A fresh diffusers scheduler `name` (one of SCHEDULERS) with the given shift, as stock diffusers builds it."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    # imported here: diffusers takes ~3 s to import, and the step maths in sde.py does not need it
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "flow_match_euler":
        return FlowMatchEulerDiscreteScheduler(shift=float(shift))
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=float(shift))


def sampling_sigmas(num_steps: int, shift: float, scheduler: str = "flow_match_euler") -> torch.Tensor:
    """The sampling grid σ_0 > σ_1 > … > σ_N = 0 of diffusers' `scheduler` after set_timesteps(num_steps).

    Returns float64 (N + 1,): diffusers' float32 sigmas, cast exactly to float64.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(num_steps)
    sigmas = sched.sigmas.to(torch.float64)  # (N + 1,)
    if sigmas.shape != (num_steps + 1,) or sigmas[-1] != 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise RuntimeError(
            f"diffusers' {scheduler!r} gave a grid that is not strictly decreasing to 0 "
            f"with {num_steps + 1} entries: {sigmas.tolist()}"
        )
    return sigmas


def shift_sigmas(sigma, shift: float):
    """Timestep shift (SD3, Wan): σ' = s·σ / (1 + (s − 1)·σ). Works on floats, numpy arrays and tensors."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_training_sigmas(
    batch: int,
    mode: str,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw σ for flow-matching training: float32 (B,) in (0, 1).

    mode "uniform": σ ~ U(0, 1); "logit_normal": σ = sigmoid(z), z ~ N(logit_mean, logit_std²). The draw is
    then shifted by `shift` (1 = none) and kept within [TRAINING_SIGMA_EPS, 1 − TRAINING_SIGMA_EPS].
    """
    if mode not in TRAINING_SIGMA_MODES:
        raise ValueError(f"unknown training sigma mode {mode!r}; valid modes: {', '.join(TRAINING_SIGMA_MODES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not logit_std > 0:
        raise ValueError(f"logit_std must be > 0, got {logit_std}")
    if device is None and generator is not None:
        device = generator.device
    if mode == "uniform":
        sigma = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    else:
        z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        sigma = torch.sigmoid(logit_mean + logit_std * z)
    sigma = shift_sigmas(sigma, shift).clamp(TRAINING_SIGMA_EPS, 1 - TRAINING_SIGMA_EPS)
    return sigma.to(torch.float32)


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε; σ a float or (B,), broadcast over the other dims. In x0's dtype."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise shapes differ: {tuple(x0.shape)} vs {tuple(noise.shape)}")
    s = broadcast_over(per_sample(sigma, x0), x0, x0.dtype)
    return (1 - s) * x0 + s * noise.to(x0.dtype)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target v = ε − x₀ (independent of σ)."""
    return noise - x0


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ‖v_pred − (ε − x₀)‖² / D, float32 (B,) (computed in float32 or wider)."""
    if not (v_pred.shape == x0.shape == noise.shape):
        raise ValueError(
            f"v_pred, x0 and noise shapes differ: {tuple(v_pred.shape)}, {tuple(x0.shape)}, {tuple(noise.shape)}"
        )
    if v_pred.ndim < 2:
        raise ValueError(f"expected a batch (B, ...) with at least one non-batch dim, got shape {tuple(v_pred.shape)}")
    dtype = torch.promote_types(torch.promote_types(v_pred.dtype, x0.dtype), torch.float32)
    err = v_pred.to(dtype) - velocity_target(x0.to(dtype), noise.to(dtype))
    return err.square().mean(dim=tuple(range(1, err.ndim)))


__all__ = [
    "SCHEDULERS",
    "TRAINING_SIGMA_MODES",
    "flow_matching_loss",
    "make_scheduler",
    "noisy_sample",
    "sample_training_sigmas",
    "sampling_sigmas",
    "shift_sigmas",
    "velocity_target",
]
