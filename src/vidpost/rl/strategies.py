"""Which sampling steps are stochastic and which are trained: the only thing GRPO strategies decide.

- flash (Flash-GRPO, the default): each prompt's group draws one step k from [k_min, k_max]; all its
  samples take their one SDE step at k (iso-temporal grouping), ODE elsewhere, and train only on k.
  Groups may draw different k; the draw comes from (seed, iteration), so every rank draws the same k.
- full (Flow-GRPO, DanceGRPO): SDE at every step; each sample trains on floor(N·train_fraction) of them:
  the first ones in order (`steps: first`, Flow-GRPO's rule) or a random subset drawn per sample
  (`steps: random`, DanceGRPO's rule).
- window (MixGRPO): SDE on a window of `size` steps that starts at the noisiest step and moves `stride`
  steps later every `advance_every` iterations (stopping at `max_start`); train on the window.
- nft (DiffusionNFT): rollouts by the ODE (or the SDE at every step); nothing of the trajectory is trained.
  Each clean sample is re-noised at floor(N·train_fraction) grid σ drawn per sample, where the
  negative-aware flow-matching loss trains (rl/nft.py).

A plan is a pair of (B, N) boolean masks over the rollout batch in group order (B = P·G): the steps taken
stochastically, and the steps trained (for nft: the grid σ each clean sample is re-noised at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from pydantic import Field, model_validator

from vidpost.config import Config


class FlashConfig(Config):
    k_min: int = Field(0, ge=0, description="first step index a group may take its SDE step at")
    k_max: int | None = Field(None, ge=0, description="last step index (inclusive); null = the first half, N/2 - 1")
    rectify: bool = Field(
        True, description="temporal gradient rectification: weight each sample by c(sigma_k)^-1 / batch mean"
    )
    shared_prefix: bool = Field(
        True,
        description="a group shares its initial noise and ODE prefix and branches at k, so the one SDE step is the "
        "only difference the advantage credits (false: independent noise per member, the paper's setting)",
    )
    suffix_steps: int | None = Field(
        None, ge=1, description="ODE steps after k on a coarser grid (null = the rollout grid)"
    )


class FullConfig(Config):
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="fraction of each sample's steps trained: floor(N·f), at least 1"
    )
    steps: Literal["first", "random"] = Field(
        "random",
        description="which steps are trained: the first floor(N·f) in order (Flow-GRPO) "
        "| a random subset per sample (DanceGRPO)",
    )


class WindowConfig(Config):
    size: int = Field(4, ge=1, description="number of consecutive SDE (and trained) steps")
    advance_every: int = Field(25, ge=1, description="iterations between moves of the window")
    stride: int = Field(1, ge=1, description="steps the window moves each time")
    max_start: int | None = Field(None, ge=0, description="last start index of the window (null = N - size)")


class NFTConfig(Config):
    beta: float = Field(
        1.0, gt=0, description="how far the implicit positive and negative policies sit from the old one"
    )
    train_fraction: float = Field(
        0.99,
        gt=0,
        le=1,
        description="each sample is re-noised at floor(N·f) grid σ, drawn per sample (the reference's 9 of 10)",
    )
    sampler: Literal["ode", "sde"] = Field(
        "ode", description="rollouts by the ODE (the reference) or by the SDE at every step (rollout.noise)"
    )


Settings = FlashConfig | FullConfig | WindowConfig | NFTConfig
SECTIONS: dict[str, type[Settings]] = {
    "flash": FlashConfig,
    "full": FullConfig,
    "window": WindowConfig,
    "nft": NFTConfig,
}
STRATEGIES = tuple(SECTIONS)
_Section = TypeVar("_Section", FlashConfig, FullConfig, WindowConfig, NFTConfig)


class StrategyConfig(Config):
    name: Literal["flash", "full", "window", "nft"] = Field("flash", description="flash | full | window | nft")
    flash: FlashConfig | None = Field(None, description="settings of the flash strategy (defaults when null)")
    full: FullConfig | None = Field(None, description="settings of the full-trajectory strategy (defaults when null)")
    window: WindowConfig | None = Field(
        None, description="settings of the sliding-window strategy (defaults when null)"
    )
    nft: NFTConfig | None = Field(None, description="settings of DiffusionNFT (defaults when null)")

    @model_validator(mode="after")
    def _only_the_chosen_settings(self) -> StrategyConfig:
        for other in STRATEGIES:
            if other != self.name and getattr(self, other) is not None:
                raise ValueError(f"settings for strategy '{other}' are given but strategy.name is '{self.name}'")
        return self

    @property
    def settings(self) -> Settings:
        """The chosen strategy's settings (its defaults when the section is left out)."""
        return getattr(self, self.name) or SECTIONS[self.name]()

    def section(self, kind: type[_Section]) -> _Section:
        """The settings of the strategy `kind` configures: its section, or its defaults when left out."""
        value = getattr(self, next(name for name, k in SECTIONS.items() if k is kind))
        return value if value is not None else kind()

    def trained_steps(self, num_steps: int) -> int:
        """How many of a sample's `num_steps` steps are trained."""
        if self.name == "flash":
            return 1
        if self.name == "full":
            return full_train_count(self.section(FullConfig), num_steps)
        if self.name == "nft":
            return full_train_count(self.section(NFTConfig), num_steps)
        return min(self.section(WindowConfig).size, num_steps)


@dataclass
class StepPlan:
    sde: torch.Tensor  # (B, N) bool: the steps each sample takes stochastically
    train: torch.Tensor  # (B, N) bool: the steps each sample is trained on (a subset of sde)
    k: torch.Tensor | None = None  # (P,) long: flash's step per group


def flash_range(cfg: FlashConfig, num_steps: int) -> tuple[int, int]:
    """[k_min, k_max] checked against the grid."""
    k_max = max(num_steps // 2 - 1, cfg.k_min) if cfg.k_max is None else cfg.k_max
    if k_max < cfg.k_min:
        raise ValueError(f"flash k_max {k_max} is below k_min {cfg.k_min}")
    if k_max >= num_steps:
        raise ValueError(f"flash k_max {k_max} must be below the number of sampling steps {num_steps}")
    return cfg.k_min, k_max


def _random_steps(batch: int, num_steps: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, num_steps) bool: `count` steps per row, a random subset drawn per row."""
    order = torch.rand(batch, num_steps, generator=generator).argsort(dim=1)  # a random order per sample
    return torch.zeros(batch, num_steps, dtype=torch.bool).scatter_(1, order[:, :count], True)


def full_train_count(cfg: FullConfig | NFTConfig, num_steps: int) -> int:
    """floor(N·train_fraction), at least 1: the anchors' int(num_steps * timestep_fraction)."""
    return max(1, int(num_steps * cfg.train_fraction + 1e-9))  # 1e-9: 0.6·20 is 11.999… in binary


def window_start(cfg: WindowConfig, num_steps: int, iteration: int) -> int:
    """The window's first step at `iteration` (0-based)."""
    if cfg.size > num_steps:
        raise ValueError(f"window size {cfg.size} exceeds the {num_steps} sampling steps")
    last = num_steps - cfg.size if cfg.max_start is None else min(cfg.max_start, num_steps - cfg.size)
    return min((iteration // cfg.advance_every) * cfg.stride, last)


def plan_steps(
    strategy: StrategyConfig,
    num_prompts: int,
    group_size: int,
    num_steps: int,
    iteration: int,
    generator: torch.Generator,
) -> StepPlan:
    """The SDE and training masks of one rollout batch of num_prompts groups of group_size samples."""
    batch = num_prompts * group_size
    if strategy.name == "flash":
        k_min, k_max = flash_range(strategy.section(FlashConfig), num_steps)
        k = torch.randint(k_min, k_max + 1, (num_prompts,), generator=generator)  # (P,)
        sde = torch.zeros(batch, num_steps, dtype=torch.bool)
        sde[torch.arange(batch), k.repeat_interleave(group_size)] = True
        return StepPlan(sde=sde, train=sde.clone(), k=k)
    if strategy.name == "full":
        sde = torch.ones(batch, num_steps, dtype=torch.bool)
        full = strategy.section(FullConfig)
        n_train = full_train_count(full, num_steps)
        if full.steps == "first":
            train = torch.zeros_like(sde)
            train[:, :n_train] = True
            return StepPlan(sde=sde, train=train)
        return StepPlan(sde=sde, train=_random_steps(batch, num_steps, n_train, generator))
    if strategy.name == "nft":
        nft = strategy.section(NFTConfig)
        sde = torch.full((batch, num_steps), nft.sampler == "sde", dtype=torch.bool)
        return StepPlan(sde=sde, train=_random_steps(batch, num_steps, full_train_count(nft, num_steps), generator))
    window = strategy.section(WindowConfig)
    start = window_start(window, num_steps, iteration)
    sde = torch.zeros(batch, num_steps, dtype=torch.bool)
    sde[:, start : start + window.size] = True
    return StepPlan(sde=sde, train=sde.clone())


__all__ = [
    "STRATEGIES",
    "FlashConfig",
    "FullConfig",
    "NFTConfig",
    "StepPlan",
    "StrategyConfig",
    "WindowConfig",
    "flash_range",
    "full_train_count",
    "plan_steps",
    "window_start",
]
