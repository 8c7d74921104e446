"""The prompts the recipes train and validate on: the training pool (a file or ShapeWorld's requests), the
validation prompts, and an enhancer's rewrites of either. Shared by every recipe and the pipeline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vidpost import dist
from vidpost.config import Config
from vidpost.data.prompts import read_prompts
from vidpost.evaluation import shapeworld_requests
from vidpost.recipes.common import ValidationConfig
from vidpost.world.config import WorldConfig


class PromptsConfig(Config):
    file: str | None = Field(None, description="text file of training prompts; null: ShapeWorld prompts (`wording`)")
    split: Literal["train", "eval", "heldout"] = Field("train", description="ShapeWorld split of the training prompts")
    wording: Literal["canonical", "terse"] = Field(
        "canonical",
        description="ShapeWorld prompts: canonical captions, or terse user prompts (for an enhancer) "
        "whose rollouts are rewarded against their intent",
    )
    n: int = Field(4096, ge=1, description="size of the training prompt pool")
    seed: int = Field(0, description="seed of the ShapeWorld prompt pool")
    world: WorldConfig = Field(
        default_factory=WorldConfig, description="canvas and object count of the ShapeWorld scenes the prompts describe"
    )
    enhancer: str | None = Field(
        None, description="prompt enhancer: rollouts are generated from its rewrites, rewarded against the prompts"
    )


def training_prompts(cfg: PromptsConfig) -> tuple[list[str], list[str]]:
    """The pool: (what each prompt asks, what its rollouts are rewarded against), in the same order.

    A file's prompts are both; ShapeWorld's are captions twice, or terse prompts and their intents
    (`shapeworld_requests`).
    """
    if cfg.file is not None:
        prompts = read_prompts(cfg.file)
        return prompts, prompts
    return shapeworld_requests(cfg.split, cfg.n, cfg.seed, cfg.wording, cfg.world)


def validation_prompts(cfg: ValidationConfig) -> tuple[list[str], list[str], bool]:
    """(the first n prompts as asked, what their videos are scored against, whether the rewards can score them).

    A prompts file is asked and kept as it is (not scorable); ShapeWorld prompts are `shapeworld_requests`'.
    """
    if cfg.prompts_file is None:
        return *shapeworld_requests(cfg.split, cfg.n, cfg.seed, cfg.wording, cfg.world), True
    prompts = read_prompts(cfg.prompts_file)[: cfg.n]
    return prompts, prompts, False


def rewrite_prompts(
    prompts: list[str], enhancer: str | None, prefix: str = "enhance/"
) -> tuple[list[str], dict[str, int]]:
    """What the video model is given for each prompt (its rewrite by `enhancer`, enhance/, or the prompt itself),
    and the enhancer's counts as run-log metrics under `prefix` (`RewriteCounts.as_metrics`: prompts, rewritten,
    fallbacks by reason; {} without an enhancer and on ranks other than 0).

    Rank 0 rewrites (a failed rewrite falls back to its prompt) and sends the texts to the other ranks, so every
    rank uses the same ones even when the enhancer samples.
    """
    if enhancer is None:
        return list(prompts), {}
    rewrites, metrics = None, {}
    if dist.is_main():
        from vidpost.enhance.resolve import load_enhancer

        loaded = load_enhancer(enhancer)
        rewrites = loaded.rewrite(prompts)
        metrics = loaded.counts.as_metrics(prefix)
    return dist.broadcast_object(rewrites), metrics
