"""Config of `vidpost run`: the post-training stages in order, each a recipe config file plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vidpost.config import Config
from vidpost.world.config import WorldConfig

StageName = Literal["sft", "grpo", "enhance", "distill"]
STAGE_ORDER: tuple[str, ...] = ("sft", "grpo", "enhance", "distill")


class StageConfig(Config):
    name: StageName = Field(description="the recipe: sft, grpo, enhance or distill; also the stage's subfolder")
    config: str = Field(description="the recipe's config file (relative paths: from the pipeline file's folder)")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the recipe's config")


class HeldoutConfig(Config):
    split: Literal["train", "eval", "heldout"] = Field("heldout", description="ShapeWorld prompt split of the table")
    wording: Literal["terse", "canonical"] = Field(
        "terse",
        description="what the videos are made from: terse user prompts (scored against their intent; an enhance "
        "stage's enhancer rewrites them) or full canonical captions (scored against themselves; no rewriting)",
    )
    n: int = Field(32, ge=1, description="prompts (one video each, the same seeds for every stage)")
    seed: int = Field(0, description="prompt and noise seed")
    world: WorldConfig = Field(
        default_factory=WorldConfig, description="canvas and object count of the ShapeWorld scenes the prompts describe"
    )
    grid: int = Field(4, ge=0, description="prompts shown as animations across stages in the report")


class PipelineConfig(Config):
    renamed_keys = {"heldout.prompts": "heldout.wording"}

    base: str = Field("shapeworld-base", description="the model the first stage starts from (name or directory)")
    stages: list[StageConfig] = Field(description="stages in order; each starts from the latest video model")
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig, description="the held-out table after each stage")

    @model_validator(mode="after")
    def _stages_in_order(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"each stage may appear once, got {names}")
        if names != sorted(names, key=STAGE_ORDER.index):
            raise ValueError(f"stages must keep the order {', '.join(STAGE_ORDER)}; got {', '.join(names)}")
        return self


def resolve_stage_config(stage: StageConfig, pipeline_file: str | Path | None) -> Path:
    """The stage's config file; a relative path is taken from the pipeline file's folder, then the cwd."""
    path = Path(stage.config)
    if not path.is_absolute() and pipeline_file is not None:
        beside = Path(pipeline_file).resolve().parent / path
        if beside.is_file():
            return beside
    return path
