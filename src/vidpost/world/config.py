"""Config of a ShapeWorld dataset: `vidpost world make` and `vidpost world prompts` read it."""

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from vidpost.config import Config
from vidpost.world.sampling import WHOLE_WORLD, Vocabulary
from vidpost.world.spec import MAX_OBJECTS

_ALL_VALUES: dict[str, tuple[str, ...]] = dataclasses.asdict(WHOLE_WORLD)


class WorldConfig(Config):
    frames: int = Field(8, ge=3, description="frames per clip (T)")
    height: int = Field(24, ge=16, description="frame height in pixels (H)")
    width: int = Field(24, ge=16, description="frame width in pixels (W)")
    max_objects: int = Field(2, ge=1, le=MAX_OBJECTS, description="objects per scene: 1 to this")
    p_still: float = Field(0.2, ge=0, le=1, description="probability that an object stays still")
    min_gap_px: int = Field(2, ge=1, description="empty pixels kept between any two objects in every frame")
    # A smaller world to start a curriculum in: each list keeps only those values (null: all of them).
    colours: list[str] | None = Field(None, description="colours drawn (null: all six)")
    shapes: list[str] | None = Field(None, description="shapes drawn (null: all three)")
    sizes: list[str] | None = Field(None, description="sizes drawn (null: small and large)")
    directions: list[str] | None = Field(None, description="directions of moving objects (null: all four)")
    speeds: list[str] | None = Field(None, description="speeds of moving objects (null: slowly and quickly)")
    backgrounds: list[str] | None = Field(None, description="backgrounds drawn (null: all three)")

    @model_validator(mode="after")
    def _known_values(self) -> "WorldConfig":
        for name, allowed in _ALL_VALUES.items():
            values = getattr(self, name)
            if values is None:
                continue
            if not values:
                raise ValueError(f"{name} is empty; leave it null for all of {', '.join(allowed)}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(
                    f"unknown {name} {', '.join(map(repr, unknown))}; expected some of {', '.join(allowed)}"
                )
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        if self.colours is not None and len(self.colours) < self.max_objects:
            raise ValueError(
                f"max_objects {self.max_objects} needs as many colours (a scene's are distinct), got {self.colours}"
            )
        return self

    def vocabulary(self) -> Vocabulary:
        """The values its scenes draw from, in the world's own order whatever order the lists give."""
        return Vocabulary(
            **{
                name: tuple(v for v in allowed if getattr(self, name) is None or v in getattr(self, name))
                for name, allowed in _ALL_VALUES.items()
            }
        )


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
