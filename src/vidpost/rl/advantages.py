"""Group-relative advantages (GRPO) and the ways several rewards are combined into them.

A rollout batch holds P prompts x G samples in group order: samples j·G … j·G + G − 1 answer prompt j.
Advantages are A = (r − mean_group(r)) / (std + eps), the std taken per group or over the whole batch
(Flow-GRPO's global_std), then clipped to |A| <= clip. These functions see the *global* batch: under
torch.distributed the recipe gathers every rank's rewards first, so a group may span ranks and its
statistics are still those of the whole group (the per-GPU statistics of public code are a known bug).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from vidpost.rewards.registry import weighted_sum

STD_SCOPES = ("group", "batch")
REWARD_MODES = ("weighted_sum", "per_reward")

StdScope = Literal["group", "batch"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, std_scope: StdScope = "group", clip: float = 5.0, eps: float = 1e-4
) -> torch.Tensor:
    """(P·G,) rewards in group order -> (P·G,) clipped group-relative advantages, float64."""
    if std_scope not in STD_SCOPES:
        raise ValueError(f"unknown std scope {std_scope!r}; expected one of {', '.join(STD_SCOPES)}")
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"expected (P·G,) rewards with G = {group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float64).view(-1, group_size)  # (P, G)
    centred = r - r.mean(dim=1, keepdim=True)
    # population std (unbiased=False): a group of identical rewards gets A = 0, never a division by ~0
    std = r.std(dim=1, unbiased=False, keepdim=True) if std_scope == "group" else r.std(unbiased=False)
    return (centred / (std + eps)).clamp(-clip, clip).flatten()


def combine_advantages(
    rewards: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    group_size: int,
    mode: str = "weighted_sum",
    std_scope: StdScope = "group",
    clip: float = 5.0,
) -> torch.Tensor:
    """Advantages from several rewards: of their weighted sum, or the weighted sum of per-reward advantages.

    "per_reward" normalises each reward within its groups first, so a reward with a small spread still
    moves the policy as much as its weight says (at the price of amplifying its noise).
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}; expected one of {', '.join(REWARD_MODES)}")
    if mode == "weighted_sum":
        return group_advantages(torch.as_tensor(weighted_sum(rewards, weights)), group_size, std_scope, clip)
    per_reward = sum(
        (float(w) * group_advantages(rewards[name], group_size, std_scope, clip) for name, w in weights.items()),
        torch.zeros(()),
    )
    return per_reward.clamp(-clip, clip)


def advantage_stats(advantages: torch.Tensor, group_size: int) -> dict[str, float]:
    """Mean, std and largest |A|, and the fraction of groups whose samples all tie (they teach nothing)."""
    groups = advantages.view(-1, group_size)
    return {
        "mean": advantages.mean().item(),
        "std": advantages.std(unbiased=False).item(),
        "abs_max": advantages.abs().max().item(),
        "tied_group_fraction": (groups.abs().amax(dim=1) == 0).double().mean().item(),
    }


__all__ = ["REWARD_MODES", "STD_SCOPES", "advantage_stats", "combine_advantages", "group_advantages"]
