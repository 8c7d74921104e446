"""The recipes `vidpost run` can chain, and how it drives each: its config class, its train function, the key that
names the model it starts from, and what it produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vidpost.config import Config, load_config
from vidpost.errors import VidpostError
from vidpost.pipeline.config import StageConfig, resolve_stage_config


@dataclass(frozen=True)
class Stage:
    """How the pipeline drives one recipe: its config class, its train function, and what it produces."""

    config_class: Callable[[], type[Config]]
    train: Callable[[], Callable[..., Path | None]]
    model_key: str | None  # the config key that names the video model it starts from (None: it starts from none)
    produces: str  # "video" (a model directory that later stages start from) or "enhancer"


def _sft() -> Stage:
    from vidpost.recipes import sft

    return Stage(lambda: sft.SFTConfig, lambda: sft.train, "model.path", "video")


def _grpo() -> Stage:
    from vidpost.recipes import grpo

    return Stage(lambda: grpo.GRPOConfig, lambda: grpo.train, "model.path", "video")


def _enhance() -> Stage:
    from vidpost.recipes import enhance

    # its GRPO stage scores rewrites with the pipeline's latest video model, the one it will serve
    return Stage(lambda: enhance.EnhanceConfig, lambda: enhance.train, "grpo.video_model", "enhancer")


def _distill() -> Stage:
    from vidpost.recipes import distill

    return Stage(lambda: distill.DistillConfig, lambda: distill.train, "model.path", "video")


STAGES: dict[str, Callable[[], Stage]] = {"sft": _sft, "grpo": _grpo, "enhance": _enhance, "distill": _distill}


def stage_recipe(name: str) -> Stage:
    if name not in STAGES:
        raise VidpostError(f"stage {name!r} has no recipe in this version of vidpost (available: {', '.join(STAGES)})")
    return STAGES[name]()


def stage_config(stage: StageConfig, recipe: Stage, start_model: str, pipeline_file: str | Path | None) -> Config:
    path = resolve_stage_config(stage, pipeline_file)
    if not path.is_file():
        raise VidpostError(f"stage {stage.name}: config file not found: {path}")
    start = [f"{recipe.model_key}={start_model}"] if recipe.model_key is not None else []
    return load_config(recipe.config_class(), path, [*start, *stage.overrides])
