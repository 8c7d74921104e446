"""Diffusion maths: sigma grids and training draws (schedule), ODE/SDE steps, log-probs, KL and c(σ) (sde)."""

from vidpost.diffusion.schedule import (
    SCHEDULERS,
    TRAINING_SIGMA_MODES,
    flow_matching_loss,
    make_scheduler,
    noisy_sample,
    sample_training_sigmas,
    sampling_sigmas,
    shift_sigmas,
    velocity_target,
)
from vidpost.diffusion.sde import (
    NOISE_SCHEDULES,
    PURE_NOISE_TOL,
    gradient_scale,
    noise_levels,
    ode_step,
    sde_mean_std,
    sde_step,
    transition_kl,
    transition_log_prob,
)

__all__ = [
    "NOISE_SCHEDULES",
    "PURE_NOISE_TOL",
    "SCHEDULERS",
    "TRAINING_SIGMA_MODES",
    "flow_matching_loss",
    "gradient_scale",
    "make_scheduler",
    "noise_levels",
    "noisy_sample",
    "ode_step",
    "sample_training_sigmas",
    "sampling_sigmas",
    "sde_mean_std",
    "sde_step",
    "shift_sigmas",
    "transition_kl",
    "transition_log_prob",
    "velocity_target",
]
