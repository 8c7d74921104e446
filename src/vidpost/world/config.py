"""Config of a ShapeWorld dataset: `vidpost world make` and `vidpost world prompts` read it."""

from typing import Literal

from pydantic import Field

from vidpost.config import Config
from vidpost.world.spec import MAX_OBJECTS


class WorldConfig(Config):
    frames: int = Field(8, ge=3, description="frames per clip (T)")
    height: int = Field(24, ge=16, description="frame height in pixels (H)")
    width: int = Field(24, ge=16, description="frame width in pixels (W)")
    max_objects: int = Field(2, ge=1, le=MAX_OBJECTS, description="objects per scene: 1 to this")
    p_still: float = Field(0.2, ge=0, le=1, description="probability that an object stays still")
    min_gap_px: int = Field(2, ge=1, description="empty pixels kept between any two objects in every frame")


class WebConfig(Config):
    p_defect: float = Field(
        0.5, ge=0, le=1, description="fraction of web clips with one or two visual defects (see world/defects.py)"
    )
    p_wrong_attribute: float = Field(0.1, ge=0, le=1, description="fraction of web captions with one wrong attribute")


class DatasetConfig(Config):
    n: int = Field(64, ge=1, description="number of clips")
    seed: int = Field(0, description="clip i is a pure function of (seed, split, i)")
    style: Literal["curated", "web"] = Field(
        "curated", description="curated: clean clips, canonical captions; web: scraped-style captions and defects"
    )
    split: Literal["train", "eval", "heldout"] = Field("train", description="prompt split (see world/sampling.py)")
    world: WorldConfig = Field(default_factory=WorldConfig, description="scene and video geometry")
    web: WebConfig = Field(default_factory=WebConfig, description="corruption of the web style")
