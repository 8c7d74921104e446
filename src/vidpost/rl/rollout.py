"""GRPO rollouts: sample a batch of groups along a step plan, and (re)compute transition log-probabilities.

    batch = rollout(model, embeds, uncond, plan, sigmas, g, group_size, guidance, seeds, generator, precision)
    lp, mean, std = transition_log_probs(model, batch.transitions[rows], embeds_rows, uncond, guidance, precision)

The rollout keeps, for every trained (sample, step) pair, the transition (x_i, x_{i+1}) the policy
gradient needs. Training recomputes the log-probability of each transition with `transition_log_probs`,
the single function used for old, reference and current log-probabilities alike, so that the ratio at
the first update after a rollout is exactly 1 (same dtype, micro-batches and guidance in both passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpost.diffusion.sampler import GuidedVelocity, branch, initial_noise, run_steps
from vidpost.diffusion.sde import sde_mean_std, transition_log_prob
from vidpost.precision import autocast
from vidpost.rl.strategies import FlashConfig, StepPlan


@dataclass
class Transitions:
    """M trained transitions of a rollout batch, in (sample, step) order."""

    x: torch.Tensor  # (M, C, T, H, W) x_i
    x_next: torch.Tensor  # (M, C, T, H, W) x_{i+1}, the sampled next state
    sample: torch.Tensor  # (M,) long: the batch row (group order) the transition belongs to
    step: torch.Tensor  # (M,) long: i
    sigma: torch.Tensor  # (M,) float64 σ_i
    sigma_next: torch.Tensor  # (M,) float64 σ_{i+1}
    g: torch.Tensor  # (M,) float64 noise level g_i
    rollout_log_prob: torch.Tensor  # (M,) float32, as recorded while sampling

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Transitions:
        return Transitions(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})


@dataclass
class RolloutBatch:
    final: torch.Tensor  # (B, C, T, H, W) clean latents, group order
    transitions: Transitions
    passes_per_video: float  # transformer forward passes per video (CFG counts 2 per step)


def _passes(velocity: GuidedVelocity, rows: int) -> int:
    """Forward passes over single videos: each call of `velocity` ran every one of its `rows` once."""
    return velocity.nfe * rows


def _transitions(
    states: dict[int, torch.Tensor],
    log_probs: torch.Tensor,
    train: torch.Tensor,
    sigmas: torch.Tensor,
    g: torch.Tensor,
    rows: torch.Tensor,
) -> Transitions:
    """The trained transitions of one sampler run over batch rows `rows` (train (b, N) for those rows)."""
    local, step = train.nonzero(as_tuple=True)  # (M,), (M,): sample-major order
    if not len(local):  # nothing of the trajectory is trained (nft)
        return Transitions(**{name: torch.empty(0) for name in Transitions.__dataclass_fields__})
    x = torch.stack([states[int(i)][j] for j, i in zip(local, step, strict=True)])
    x_next = torch.stack([states[int(i) + 1][j] for j, i in zip(local, step, strict=True)])
    return Transitions(
        x=x,
        x_next=x_next,
        sample=rows[local],
        step=step,
        sigma=sigmas[step],
        sigma_next=sigmas[step + 1],
        g=g[step],
        rollout_log_prob=log_probs[local, step],
    )


def _concat(parts: list[Transitions]) -> Transitions:
    merged = Transitions(
        **{name: torch.cat([getattr(p, name) for p in parts]) for name in Transitions.__dataclass_fields__}
    )
    order = torch.argsort(merged.sample * (merged.step.max() + 1) + merged.step)  # back to (sample, step) order
    return merged.select(order)


def _suffix_grid(sigmas: torch.Tensor, start: int, steps: int | None) -> torch.Tensor:
    """The grid from σ_start down to 0: the rollout grid's, or `steps` of its points spread evenly."""
    tail = sigmas[start:]
    if steps is None or steps >= tail.shape[0] - 1:
        return tail
    picks = torch.linspace(0, tail.shape[0] - 1, steps + 1).round().long().unique()
    return tail[picks]


@torch.no_grad()
def rollout(
    model,
    shape: tuple[int, ...],
    embeds: torch.Tensor,
    uncond: torch.Tensor | None,
    plan: StepPlan,
    sigmas: torch.Tensor,
    g: torch.Tensor,
    guidance: float,
    seeds: torch.Tensor,
    generator: torch.Generator | list[torch.Generator],
    precision: str,
    flash: FlashConfig | None = None,
    kind: str = "flow",
) -> RolloutBatch:
    """Sample P groups of G videos along `plan`. shape (C, T, H, W) latents; embeds (P, L, D) one row per
    prompt; seeds (B,) of each video's initial noise (a shared prefix uses its group's first seed); generator:
    the SDE noise's, or one per row (B,) so that each row's noise is the same in any batch (`run_steps`);
    kind: the SDE step g belongs to ("flow" or "cps"). ODE steps are Euler steps on any grid, as the anchors take.

    With flash's `shared_prefix` or `suffix_steps`, groups run in buckets of equal k (each group's prefix
    once, then G branches; a coarser ODE grid after k); otherwise the whole batch runs as one, each row
    taking its SDE steps where its plan says.
    """
    batch = plan.sde.shape[0]
    group_size = batch // embeds.shape[0]
    bucketed = plan.k is not None and flash is not None and (flash.shared_prefix or flash.suffix_steps is not None)
    with autocast(precision, model.device):
        if not bucketed:
            velocity = GuidedVelocity(model, embeds.repeat_interleave(group_size, dim=0), uncond, guidance)
            x = initial_noise(shape, seeds.tolist(), model.device)
            out = run_steps(velocity, x, sigmas, sde=plan.sde, g=g, generator=generator, kind=kind)
            rows = torch.arange(batch)
            transitions = _transitions(out.states, out.log_probs.cpu(), plan.train, sigmas, g, rows)
            return RolloutBatch(out.final, transitions, _passes(velocity, batch) / batch)
        assert plan.k is not None and flash is not None  # bucketed
        final = torch.empty(batch, *shape, device=model.device)
        parts, passes = [], 0
        for k in plan.k.unique().tolist():
            groups = (plan.k == k).nonzero().flatten()  # (p,)
            rows = (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # (p·G,)
            velocity = GuidedVelocity(model, embeds[groups].repeat_interleave(group_size, dim=0), uncond, guidance)
            if flash.shared_prefix:  # the prefix once per group, then G branches at k
                prefix = GuidedVelocity(model, embeds[groups], uncond, guidance)
                x = initial_noise(shape, seeds[groups * group_size].tolist(), model.device)
                x = branch(run_steps(prefix, x, sigmas, stop=k).final, group_size)
                passes += _passes(prefix, len(groups))
            else:
                x = run_steps(velocity, initial_noise(shape, seeds[rows].tolist(), model.device), sigmas, stop=k).final
            gen = [generator[r] for r in rows.tolist()] if isinstance(generator, list) else generator
            step = run_steps(
                velocity, x, sigmas, sde=plan.sde[rows], g=g, generator=gen, start=k, stop=k + 1, kind=kind
            )
            parts.append(_transitions(step.states, step.log_probs.cpu(), plan.train[rows], sigmas, g, rows))
            final[rows] = run_steps(velocity, step.final, _suffix_grid(sigmas, k + 1, flash.suffix_steps)).final
            passes += _passes(velocity, len(rows))
    return RolloutBatch(final, _concat(parts), passes / batch)


def transition_log_probs(
    model,
    transitions: Transitions,
    embeds: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float,
    precision: str,
    kind: str = "flow",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(x_{i+1} | x_i) (M,), the SDE mean μ (M, C, T, H, W) and std (M, 1, 1, 1, 1) under the model now.

    embeds (M, L, D): each transition's prompt embedding. Gradients flow unless called under no_grad.
    """
    x = transitions.x.to(model.device)
    v = guided_velocity(model, x, transitions.sigma, embeds, uncond, guidance, precision)
    mean, std = sde_mean_std(x, v, transitions.sigma, transitions.sigma_next, transitions.g, kind)
    return transition_log_prob(transitions.x_next.to(model.device), mean, std), mean, std


def guided_velocity(
    model,
    x: torch.Tensor,
    sigma: torch.Tensor,
    embeds: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float,
    precision: str,
) -> torch.Tensor:
    """The velocity (M, ...) the rollouts followed, at x (M, ...) and σ (M,), under `precision`'s autocast."""
    device = model.device
    with autocast(precision, device):
        return GuidedVelocity(model, embeds.to(device), uncond, guidance)(
            x.to(device), sigma.to(device=device, dtype=torch.float32)
        )


__all__ = ["RolloutBatch", "Transitions", "guided_velocity", "rollout", "transition_log_probs"]
