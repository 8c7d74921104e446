"""ODE and SDE sampling steps, transition log-probabilities, KL and the gradient scale c(σ).

Notation (docs: /work/shared/algorithms.md): grid σ_0 > … > σ_N, Δ_i = σ_{i+1} − σ_i < 0, velocity v,
noise level g_i. The Flow-GRPO SDE step, which keeps the marginals of the flow ODE, is

    μ_i = x_i + Δ_i·[v + g_i²/(2σ_i)·(x_i + (1 − σ_i)·v)] = a_x·x_i + a_v·v,
    a_x = 1 + g_i²·Δ_i/(2σ_i),   a_v = Δ_i·(1 + g_i²·(1 − σ_i)/(2σ_i)),
    x_{i+1} = μ_i + s_i·ξ,   s_i = g_i·√(−Δ_i),   ξ ~ N(0, I).

With g = 0 it is the Euler ODE step x + Δ·v. The coefficient-preserving step (CPS, flow_grpo's
sde_type "cps") keeps the next state's clean and noise coefficients at their flow values instead: with
x̂₀ = x_i − σ_i·v, ε̂ = x_i + (1 − σ_i)·v and its noise level g_i = sin(η·π/2) (η: the share of fresh noise),

    s_i = σ_{i+1}·g_i,   μ_i = (1 − σ_{i+1})·x̂₀ + √(σ_{i+1}² − s_i²)·ε̂ = a_x·x_i + a_v·v,
    a_x = 1 − σ_{i+1} + r_i,   a_v = −σ_i·(1 − σ_{i+1}) + (1 − σ_i)·r_i,   r_i = √(σ_{i+1}² − s_i²).

Both are Gaussian steps μ = a_x·x + a_v·v, x_{i+1} = μ + s·ξ, so their log-probability, KL and gradient scale
|a_v|/s are one code. Log-probabilities are the Gaussian log density *averaged* over all non-batch dims (as
Flow-GRPO, DanceGRPO and Flash-GRPO do); the KL is averaged the same way. (flow_grpo's CPS code keeps only
−(x − μ)², dropping the 1/(2s²) and log s of the density: its ratios and clip ranges are on another scale.)

Step functions take σ, σ_next and g as python floats, 0-dim tensors or per-sample (B,) tensors (broadcast
over the other dims). The scalar coefficients are formed in float64; tensors are computed in float32, or in
float64 when an input is float64, so bf16 model outputs are cast up and results are float32.
"""

from __future__ import annotations

import math

import torch

from vidpost.diffusion.batching import broadcast_over, per_sample

# Flow-GRPO's schedule divides by 1 − σ. At pure noise it uses the grid's next σ there instead; we treat
# σ within this distance of 1 as pure noise, because diffusers' UniPC grid starts at 1 − 1e-6, not at 1.
PURE_NOISE_TOL = 1e-5

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# schedule -> its parameters and their defaults (None: taken from the grid).
NOISE_SCHEDULES: dict[str, dict[str, float | None]] = {
    "flow_grpo": {"a": 0.7},
    "flash": {"sigma_max": None, "sigma_min": None},
    "dance": {"eta": 0.3},
    "cps": {"eta": 0.8},
}

# The step each schedule's noise levels belong to: the Flow-GRPO SDE step, or the coefficient-preserving one.
STEP_KINDS = ("flow", "cps")


def step_kind(schedule: str) -> str:
    """ "cps" for the coefficient-preserving schedule, "flow" (the Flow-GRPO SDE step) for the others."""
    if schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; valid schedules: {', '.join(NOISE_SCHEDULES)}")
    return "cps" if schedule == "cps" else "flow"


def _check_grid(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas).to(torch.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    if not (sigmas[0] <= 1 and sigmas[-1] >= 0):
        raise ValueError(f"sigmas must lie in [0, 1], got {sigmas[0].item()} ... {sigmas[-1].item()}")
    return sigmas


def noise_levels(sigmas, schedule: str, **params) -> torch.Tensor:
    """Noise level g_i of each step i = 0 … N−1 of the grid `sigmas` (N + 1,); float64 (N,).

    - "flow_grpo": g_i = a·√(σ_i / (1 − σ'_i)), a = 0.7 by default. σ'_i = σ_i, except at pure noise
      (σ_i ≥ 1 − PURE_NOISE_TOL, which only step 0 can be) where σ'_0 = σ_1, the grid's next σ: this is
      Flow-GRPO's `torch.where(sigma == 1, sigmas[1], sigma)` in the denominator only (the numerator keeps
      σ_0), extended to diffusers' UniPC grid whose σ_0 is 1 − 1e-6 (there Flow-GRPO's exact test would
      give g_0 = a·1000).
    - "flash": g_i = σ_min + (σ_max − σ_min)·σ_i, linear in σ, with σ_max = sigmas[1] and
      σ_min = sigmas[-1] by default (as Flash-GRPO's Wan code takes them from the scheduler's sigmas; on a
      grid ending at 0 this is g_i = σ_1·σ_i). Override with sigma_max=…, sigma_min=….
    - "dance": constant g_i = eta, 0.3 by default.
    - "cps": constant g_i = sin(eta·π/2), eta = 0.8 by default (flow_grpo's recommended noise_level); the
      step's std is σ_{i+1}·g_i, so the last step (σ_N = 0) is deterministic.

    Unknown schedules or parameters, and negative or non-finite g, raise ValueError.
    """
    if schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; valid schedules: {', '.join(NOISE_SCHEDULES)}")
    known = NOISE_SCHEDULES[schedule]
    for name in params:
        if name not in known:
            raise ValueError(
                f"unknown parameter {name!r} for noise schedule {schedule!r}; its parameters: {', '.join(known)}"
            )
    p = {**known, **params}
    sigmas = _check_grid(sigmas)
    sigma = sigmas[:-1]  # σ_i of each step, (N,)
    if schedule == "flow_grpo":
        denom_sigma = sigma.clone()
        if sigma[0] >= 1 - PURE_NOISE_TOL:
            denom_sigma[0] = sigmas[1]
        g = p["a"] * torch.sqrt(sigma / (1 - denom_sigma))
    elif schedule == "flash":
        sigma_max = sigmas[1].item() if p["sigma_max"] is None else float(p["sigma_max"])
        sigma_min = sigmas[-1].item() if p["sigma_min"] is None else float(p["sigma_min"])
        g = sigma_min + (sigma_max - sigma_min) * sigma
    elif schedule == "cps":
        if not 0 <= float(p["eta"]) < 1:
            raise ValueError(f"the cps noise share eta must be in [0, 1), got {p['eta']}")
        g = torch.full_like(sigma, math.sin(float(p["eta"]) * math.pi / 2))
    else:
        g = torch.full_like(sigma, float(p["eta"]))
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
        raise ValueError(f"noise schedule {schedule!r} with {params} gives invalid noise levels {g.tolist()}")
    return g


def gradient_scale(sigmas, schedule: str, **params) -> torch.Tensor:
    """c(σ_i) = |a_v|/s_i for each step of the grid; float64 (N,). For the Flow-GRPO step this is
    √(−Δ_i)/g_i + g_i·√(−Δ_i)·(1 − σ_i)/(2σ_i).

    For a transition x_{i+1} = μ_i + s_i·ξ, |∂ log π/∂v| = |ξ|·c(σ_i) per element (log π the summed log
    density). Flash-GRPO's temporal gradient rectification weights a step-k sample by c(σ_k)⁻¹. g from
    noise_levels(sigmas, schedule, **params); a deterministic step (s = 0: g = 0, or cps's last step) has
    c = ∞ (it has no log-probability to train).
    """
    g = noise_levels(sigmas, schedule, **params)
    sigmas = _check_grid(sigmas)
    _, a_v, std = step_coefficients(sigmas[:-1], sigmas[1:], g, step_kind(schedule))
    return torch.where(std > 0, a_v.abs() / std.clamp(min=1e-300), torch.inf)


def step_coefficients(sigma, sigma_next, g, kind: str = "flow") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a_x, a_v, s) of the Gaussian step μ = a_x·x + a_v·v, x_next = μ + s·ξ (module docstring), float64.

    σ, σ_next, g: floats or tensors of one shape. Needs σ > 0, σ_next < σ and g >= 0 (cps: g < 1).
    """
    s, s_next, g = (torch.as_tensor(t, dtype=torch.float64) for t in (sigma, sigma_next, g))
    if not bool((s > 0).all()) or not bool((s_next < s).all()):
        raise ValueError("an SDE step needs sigma > 0 and sigma_next < sigma")
    if not bool((g >= 0).all()):
        raise ValueError("the noise level g must be >= 0")
    if kind == "flow":
        delta = s_next - s
        a_x = 1 + g**2 * delta / (2 * s)
        a_v = delta * (1 + g**2 * (1 - s) / (2 * s))
        return a_x, a_v, g * torch.sqrt(-delta)
    if kind == "cps":
        if not bool((g < 1).all()):
            raise ValueError("the cps noise level g = sin(eta·π/2) must be < 1")
        std = s_next * g
        rest = torch.sqrt(s_next**2 - std**2)  # the share of ε̂ kept in the next state
        return 1 - s_next + rest, -s * (1 - s_next) + (1 - s) * rest, std
    raise ValueError(f"unknown step kind {kind!r}; expected one of {', '.join(STEP_KINDS)}")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_pair(x: torch.Tensor, v: torch.Tensor) -> None:
    if x.shape != v.shape:
        raise ValueError(f"x and v shapes differ: {tuple(x.shape)} vs {tuple(v.shape)}")
    if x.ndim < 2:
        raise ValueError(f"expected a batch (B, ...) with at least one non-batch dim, got shape {tuple(x.shape)}")


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Euler step of the flow ODE: x + Δ·v, Δ = σ_next − σ. Float32 (float64 if an input is float64)."""
    _check_pair(x, v)
    dtype = _compute_dtype(x, v)
    delta = per_sample(sigma_next, x) - per_sample(sigma, x)
    return x.to(dtype) + broadcast_over(delta, x, dtype) * v.to(dtype)


def sde_mean_std(
    x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, g, kind: str = "flow"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ and std s of the SDE transition x_{i+1} | x_i: the Flow-GRPO step (s = g·√(−Δ)) or, with
    kind "cps", the coefficient-preserving one (s = σ_next·g) (module docstring).

    Returns μ like x and s shaped (B, 1, …, 1) (or 0-dim when σ, σ_next, g are all scalars), both float32
    (float64 if an input is float64). Needs σ > 0, Δ < 0 and g ≥ 0; g = 0 gives the ODE step exactly (for cps,
    DDIM's deterministic step, which on a flow grid is the Euler step).
    """
    _check_pair(x, v)
    a_x, a_v, std = step_coefficients(per_sample(sigma, x), per_sample(sigma_next, x), per_sample(g, x), kind)
    dtype = _compute_dtype(x, v)
    mean = broadcast_over(a_x, x, dtype) * x.to(dtype) + broadcast_over(a_v, x, dtype) * v.to(dtype)
    return mean, broadcast_over(std, x, dtype)


def transition_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """Gaussian log density of x_next under N(mean, std²), averaged over non-batch dims: (B,).

    mean_dims[−(x − μ)²/(2s²) − log s − ½·log 2π]; std a float, 0-dim, (B,) or (B, 1, …, 1) tensor, > 0.
    """
    if x_next.shape != mean.shape:
        raise ValueError(f"x_next and mean shapes differ: {tuple(x_next.shape)} vs {tuple(mean.shape)}")
    dtype = _compute_dtype(x_next, mean)
    s = _std_like(std, mean, dtype)
    if not bool((s > 0).all()):
        raise ValueError("the transition std must be > 0 (g = 0 is a deterministic step without a density)")
    z = (x_next.to(dtype) - mean.to(dtype)) / s
    log_density = -0.5 * z.square() - torch.log(s) - _HALF_LOG_2PI
    return log_density.mean(dim=tuple(range(1, mean.ndim)))


def transition_kl(mean_a: torch.Tensor, mean_b: torch.Tensor, std) -> torch.Tensor:
    """KL(N(μ_a, s²) ‖ N(μ_b, s²)) averaged over non-batch dims: mean_dims[(μ_a − μ_b)²/(2s²)], (B,)."""
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"mean shapes differ: {tuple(mean_a.shape)} vs {tuple(mean_b.shape)}")
    dtype = _compute_dtype(mean_a, mean_b)
    s = _std_like(std, mean_a, dtype)
    if not bool((s > 0).all()):
        raise ValueError("the transition std must be > 0")
    kl = (mean_a.to(dtype) - mean_b.to(dtype)).square() / (2 * s.square())
    return kl.mean(dim=tuple(range(1, mean_a.ndim)))


def _std_like(std, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if like.ndim < 2:
        raise ValueError(f"expected a batch (B, ...) with at least one non-batch dim, got shape {tuple(like.shape)}")
    s = (
        std.to(like.device)
        if isinstance(std, torch.Tensor)
        else torch.tensor(float(std), dtype=torch.float64, device=like.device)
    )
    if s.ndim == 1:
        return broadcast_over(per_sample(s, like), like, dtype)
    if s.ndim not in (0, like.ndim) or (s.ndim == like.ndim and s.shape[1:] != (1,) * (like.ndim - 1)):
        raise ValueError(f"std must be a float, (B,) or (B, 1, ..., 1), got shape {tuple(s.shape)}")
    return s.to(dtype)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    g,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    kind: str = "flow",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic step: x_next = μ + s·ξ, and its log-probability (B,) (averaged over dims).

    ξ is `noise` if given, else drawn from `generator`. The log-probability treats x_next as given
    (computed on x_next.detach()), as a later recomputation with the same x_next does. g must be > 0.
    """
    if generator is not None and noise is not None:
        raise ValueError("pass either generator or noise, not both")
    mean, std = sde_mean_std(x, v, sigma, sigma_next, g, kind)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    elif noise.shape != mean.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x shape {tuple(mean.shape)}")
    x_next = mean + std * noise.to(mean.dtype)
    return x_next, transition_log_prob(x_next.detach(), mean, std)


__all__ = [
    "NOISE_SCHEDULES",
    "PURE_NOISE_TOL",
    "STEP_KINDS",
    "gradient_scale",
    "noise_levels",
    "ode_step",
    "sde_mean_std",
    "sde_step",
    "step_coefficients",
    "step_kind",
    "transition_kl",
    "transition_log_prob",
]
