"""One flow-matching sampler for every stage: any mix of ODE and SDE steps, CFG, log-probs, branching.

    velocity = GuidedVelocity(model, cond_embeds, uncond_embeds, guidance_scale=5.0)
    sigmas = sampling_sigmas(20, shift=3.0)                        # (N + 1,), from diffusers
    out = run_steps(velocity, noise, sigmas)                        # all ODE: stock WanPipeline's path
    out = run_steps(velocity, noise, sigmas, sde=flags, g=g)        # flags (N,) or (B, N) bool

Per-sample flags let one batch hold groups whose single SDE step sits at different indices (Flash-GRPO's
iso-temporal grouping): at step i the rows with flags[:, i] take the Flow-GRPO SDE step with noise level
g_i, the others the Euler ODE step, in the same forward pass. `start`/`stop` run part of the grid, so a
group can share an ODE prefix and branch at step k: `run_steps(..., stop=k)`, `branch(x, G)`, then
`run_steps(..., start=k)`.

The ODE step of `run_steps` is diffusers' FlowMatchEulerDiscreteScheduler.step (x + Δ·v) on any grid,
and the guidance formula is WanPipeline's `v_u + w·(v_c − v_u)`, applied only when w > 1 as WanPipeline
does. Stochastic rollouts (GRPO) and distillation integrate a UniPC grid with these Euler and SDE steps,
as the RL anchors do. Plain sampling goes through `solve_ode`, which takes the named scheduler's own
update: Euler for flow_match_euler, UniPC's multistep predictor-corrector with its int64 timesteps for
unipc. The tests check `solve_ode` against stock WanPipeline with either scheduler on the tiny Wan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from vidpost.diffusion.schedule import make_scheduler, sampling_sigmas
from vidpost.diffusion.sde import ode_step, sde_mean_std, transition_log_prob

# (x (B, C, T, H, W), sigma (B,)) -> v (B, C, T, H, W), float32
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Rollout:
    """What a run of the sampler returns.

    final: x at the `stop` index (x_N = the clean sample for a full run), float32 (B, C, T, H, W).
    states: {i: x_i} for every i where some row took an SDE step, plus {i + 1: x_{i+1}} after it; the
        inputs to recomputing that step's log-probability in training (all rows are stored, detached).
    log_probs: (B, N) float32, the averaged log-probability of each row's SDE transitions; 0 where the
        row took an ODE step (see `sde`).
    sde: (B, N) bool, which steps each row took stochastically.
    """

    final: torch.Tensor
    states: dict[int, torch.Tensor]
    log_probs: torch.Tensor
    sde: torch.Tensor


class GuidedVelocity:
    """v(x, σ) of `model` (a WanVideoModel) with classifier-free guidance; scale 1 (or less) is one pass.

    cond_embeds (B, L, D); uncond_embeds (B, L, D) or (1, L, D), needed only when guidance_scale > 1.
    `nfe` counts the transformer evaluations made so far (a batched cond + uncond call counts two).
    `contexts(branch, sigma)`, if given, wraps each transformer call: branch "cond", "uncond", or "cond+uncond"
    for a batched call (a feature cache keeps its state per branch, see inference/acceleration.py);
    `batch_cfg` makes the cond and uncond passes one call of batch 2B (for a cache whose state is not per branch).
    """

    def __init__(
        self,
        model,
        cond_embeds: torch.Tensor,
        uncond_embeds: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        contexts: Callable[[str, torch.Tensor], AbstractContextManager] | None = None,
        batch_cfg: bool = False,
    ) -> None:
        self.use_cfg = guidance_scale > 1.0  # WanPipeline's do_classifier_free_guidance
        if self.use_cfg and uncond_embeds is None:
            raise ValueError(f"guidance_scale {guidance_scale} > 1 needs uncond_embeds (the negative prompt's)")
        self.model = model
        self.cond_embeds = cond_embeds
        self.uncond_embeds = uncond_embeds
        self.guidance_scale = guidance_scale
        self.contexts = contexts or (lambda branch, sigma: nullcontext())
        self.batch_cfg = batch_cfg
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.use_cfg and self.batch_cfg:
            assert self.uncond_embeds is not None  # use_cfg needs them (__init__)
            uncond = self.uncond_embeds.expand(x.shape[0], -1, -1)
            with self.contexts("cond+uncond", sigma):
                both = self.model.velocity(
                    torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([self.cond_embeds, uncond])
                )
            self.nfe += 2
            v, v_uncond = both.chunk(2)
            return v_uncond + self.guidance_scale * (v - v_uncond)
        with self.contexts("cond", sigma):
            v = self.model.velocity(x, sigma, self.cond_embeds)
        self.nfe += 1
        if not self.use_cfg:
            return v
        assert self.uncond_embeds is not None  # use_cfg needs them (__init__)
        uncond = self.uncond_embeds
        if uncond.shape[0] == 1:
            uncond = uncond.expand(x.shape[0], -1, -1)
        with self.contexts("uncond", sigma):
            v_uncond = self.model.velocity(x, sigma, uncond)
        self.nfe += 1
        return v_uncond + self.guidance_scale * (v - v_uncond)


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """x at σ = 1: one float32 (C, T, H, W) draw per seed, stacked to (B, C, T, H, W).

    Each video's noise comes from its own seed, so a video does not depend on the batch it is drawn in.
    """
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(
        device
    )


def branch(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat each row `group_size` times, consecutively: (B, ...) -> (B·G, ...); group j is rows j·G … j·G+G−1."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return x.repeat_interleave(group_size, dim=0)


def _flags(sde: torch.Tensor | None, batch: int, num_steps: int, device: torch.device) -> torch.Tensor:
    if sde is None:
        return torch.zeros(batch, num_steps, dtype=torch.bool, device=device)
    sde = torch.as_tensor(sde, dtype=torch.bool, device=device)
    if sde.ndim == 1:
        sde = sde.expand(batch, -1)
    if sde.shape != (batch, num_steps):
        raise ValueError(f"sde flags must have shape ({num_steps},) or ({batch}, {num_steps}), got {tuple(sde.shape)}")
    return sde


def _sde_noise(mean: torch.Tensor, rows: torch.Tensor, generator) -> torch.Tensor:
    """ε of one SDE step shaped like mean (B, C, T, H, W): one draw from `generator`, or per row from its own."""
    if not isinstance(generator, Sequence):
        return torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    if len(generator) != mean.shape[0]:
        raise ValueError(f"need one generator per row ({mean.shape[0]}), got {len(generator)}")
    noise = torch.zeros_like(mean)
    for j in rows.nonzero().flatten().tolist():  # ODE rows draw nothing: their streams stay where they are
        g = generator[j]
        noise[j] = torch.randn(mean.shape[1:], generator=g, device=g.device, dtype=mean.dtype).to(mean.device)
    return noise


def run_steps(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sde: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: Callable[[int], None] | None = None,
    kind: str = "flow",
) -> Rollout:
    """Integrate from x = x_{start} at σ_start down to σ_stop (default: the end of the grid, σ_N = 0).

    sigmas (N + 1,) decreasing to 0; sde (N,) or (B, N) bool flags (None: all ODE); g (N,) noise levels,
    needed when any flag is set (from `noise_levels`). SDE noise is drawn from `generator`, one
    (B, C, T, H, W) draw per step that has any SDE row, so a run is reproducible from the generator's seed;
    or from a list of B generators, one per row, each drawn only at its row's SDE steps, so a row's noise does
    not depend on the batch it runs in (GRPO's rows split over ranks or buckets). `kind`: the SDE step, "flow"
    (Flow-GRPO's) or "cps" (coefficient-preserving), whose noise levels `g` are (diffusion/sde.py).
    Gradients flow through `velocity` unless the caller runs under torch.no_grad (rollouts do).
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    num_steps = sigmas.shape[0] - 1
    stop = num_steps if stop is None else stop
    if not 0 <= start <= stop <= num_steps:
        raise ValueError(f"need 0 <= start <= stop <= {num_steps}, got start={start}, stop={stop}")
    batch = x.shape[0]
    flags = _flags(sde, batch, num_steps, x.device)
    if bool(flags[:, start:stop].any()):
        if g is None:
            raise ValueError("SDE steps need noise levels g (N,)")
        g = torch.as_tensor(g, dtype=torch.float64)
        if g.shape != (num_steps,):
            raise ValueError(f"g must have shape ({num_steps},), got {tuple(g.shape)}")
    log_probs = torch.zeros(batch, num_steps, dtype=torch.float32, device=x.device)
    states: dict[int, torch.Tensor] = {}
    x = x.float()
    for i in range(start, stop):
        sigma = sigmas[i].expand(batch)
        v = velocity(x, sigma.to(torch.float32))
        rows = flags[:, i]
        if bool(rows.any()):
            assert g is not None  # checked above: some step in [start, stop) is SDE
            g_i = torch.where(rows.cpu(), g[i], torch.zeros((), dtype=torch.float64))  # g = 0: the ODE step
            mean, std = sde_mean_std(x, v, sigma, sigmas[i + 1].expand(batch), g_i, kind)
            noise = _sde_noise(mean, rows, generator)
            x_next = mean + std * noise
            safe_std = torch.where(std > 0, std, torch.ones_like(std))  # ODE rows have no density
            lp = transition_log_prob(x_next.detach(), mean, safe_std)
            log_probs[:, i] = torch.where(rows, lp.float(), torch.zeros_like(lp, dtype=torch.float32)).detach()
            states[i] = x.detach()
            states[i + 1] = x_next.detach()
        else:  # diffusers' FlowMatchEulerDiscreteScheduler.step: prev_sample = sample + (σ_next − σ)·v
            x_next = ode_step(x, v, sigmas[i], sigmas[i + 1])
        x = x_next.float()
        if progress is not None:
            progress(i + 1)
    return Rollout(final=x, states=states, log_probs=log_probs, sde=flags)


def solve_ode(
    velocity: VelocityFn,
    x: torch.Tensor,
    steps: int,
    shift: float,
    scheduler: str = "flow_match_euler",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Stock WanPipeline's all-ODE sampling from the noise x with diffusers' `scheduler`: the clean x (float32).

    flow_match_euler is `run_steps`' Euler path. unipc calls UniPCMultistepScheduler.step, a multistep update
    that keeps the previous velocities, and gives the model its int64 timesteps (σ·1000 rounded down), as
    WanPipeline does: a few hundredths of a step away from the float σ the Euler path passes.
    """
    if scheduler == "flow_match_euler":
        return run_steps(velocity, x, sampling_sigmas(steps, shift), progress=progress).final
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(steps, device=x.device)
    x = x.float()
    for i, t in enumerate(sched.timesteps):
        sigma = (t.to(torch.float64) / sched.config.num_train_timesteps).expand(x.shape[0])
        v = velocity(x, sigma.to(torch.float32))
        x = sched.step(v.float(), t, x, return_dict=False)[0].float()
        if progress is not None:
            progress(i + 1)
    return x


__all__ = ["GuidedVelocity", "Rollout", "VelocityFn", "branch", "run_steps", "solve_ode"]
