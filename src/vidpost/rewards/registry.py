"""Rewards by name. Later stages configure rewards as {name: weight}; nothing else needs to know where
a reward comes from.

A *family* computes several related rewards in one pass (the ShapeWorld rewards share one detection),
so each family runs once per batch however many of its rewards are asked for. Every family has the
signature `(videos (B, T, H, W, 3) float in [0, 1], prompts) -> {reward name: (B,) array}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from vidpost.errors import VidpostError
from vidpost.rewards.shapeworld import REWARD_KEYS as SHAPEWORLD_KEYS
from vidpost.rewards.shapeworld import shapeworld_rewards
from vidpost.rewards.video import video_metrics

RewardFamily = Callable[[np.ndarray, Sequence[str]], dict[str, np.ndarray]]

FAMILIES: dict[str, RewardFamily] = {}
REWARDS: dict[str, str] = {}  # reward name -> family name


def register_family(name: str, family: RewardFamily, rewards: Sequence[str]) -> None:
    """Add a family and the reward names it produces (names are global, so they must be new)."""
    taken = [r for r in rewards if r in REWARDS and REWARDS[r] != name]
    if taken:
        raise ValueError(f"reward names already registered by another family: {taken}")
    FAMILIES[name] = family
    REWARDS.update({r: name for r in rewards})


register_family("shapeworld", shapeworld_rewards, SHAPEWORLD_KEYS)
register_family("video", video_metrics, ("flicker", "dynamic_degree", "frame_consistency"))


def check_reward_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise VidpostError(f"unknown reward {unknown[0]!r}; registered: {', '.join(REWARDS)}")


def compute_rewards(names: Sequence[str], videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """The named rewards, each (B,), running every family involved exactly once."""
    check_reward_names(names)
    results: dict[str, np.ndarray] = {}
    for family in dict.fromkeys(REWARDS[n] for n in names):
        results.update(FAMILIES[family](videos, prompts))
    return {n: results[n] for n in names}


def weighted_sum(rewards: Mapping[str, ArrayLike], weights: Mapping[str, float]) -> np.ndarray:
    """sum_k w_k * r_k over the weighted rewards (B,): arrays, or CPU tensors."""
    return sum((float(w) * np.asarray(rewards[name], float) for name, w in weights.items()), np.zeros(()))
