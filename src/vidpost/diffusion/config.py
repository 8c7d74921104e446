"""Config of sampling: the grid, guidance and geometry every stage samples with (and records with a model)."""

from typing import Literal

from pydantic import Field

from vidpost.config import Config
from vidpost.diffusion.schedule import SCHEDULERS


class SamplingConfig(Config):
    steps: int = Field(20, ge=1, description="denoising steps N (one or two forward passes each)")
    shift: float = Field(3.0, gt=0, description="timestep shift of the sigma grid (Wan2.1 uses 3.0 at 480p)")
    guidance: float = Field(5.0, ge=1, description="classifier-free guidance scale w; 1 = off (one pass per step)")
    scheduler: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "flow_match_euler", description="diffusers scheduler whose sigma grid is used: flow_match_euler | unipc"
    )
    negative_prompt: str = Field("", description="the unconditional prompt of guidance (Wan's default: empty)")


class SamplingOverrides(Config):
    """Changes to a model card's sampling: each non-null field replaces the card's."""

    steps: int | None = Field(None, ge=1, description="sampling steps; null: the model card's")
    shift: float | None = Field(None, gt=0, description="timestep shift of the sigma grid; null: the card's")
    guidance: float | None = Field(None, ge=1, description="classifier-free guidance scale; null: the card's")

    def resolve(self, card: SamplingConfig) -> SamplingConfig:
        """The card's sampling with this config's non-null fields put in (scheduler, negative prompt: the card's)."""
        return SamplingConfig.model_validate({**card.model_dump(), **self.model_dump(exclude_none=True)})


class VideoConfig(Config):
    frames: int = Field(8, ge=1, description="frames per video (VAE models: 4k + 1)")
    height: int = Field(24, ge=8, description="frame height in pixels")
    width: int = Field(24, ge=8, description="frame width in pixels")
