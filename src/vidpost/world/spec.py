"""ShapeWorld's vocabulary and the scene spec, the single source of truth behind captions, videos and rewards.

A spec may be *partial*: an attribute left as None was not stated. Canonical captions of the full
spec drive the curated data; partial specs are what a terse user prompt actually asks for (its
intent), and the rewards only check what a spec states.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "white": (1.0, 1.0, 1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 5, "large": 9}  # bounding-box side in pixels
# (dx, dy) in image coordinates: x grows to the right, y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL = "still"
MOTIONS: tuple[str, ...] = (*DIRECTIONS, STILL)
SPEEDS: dict[str, int] = {"slowly": 1, "quickly": 2}  # pixels per frame
MAX_OBJECTS = 3


@dataclass(frozen=True)
class ObjectSpec:
    """One object. `motion` is a direction or "still"; `speed` only goes with a direction."""

    colour: str
    shape: str
    size: str | None = None
    motion: str | None = None
    speed: str | None = None

    def __post_init__(self) -> None:
        _check_in("colour", self.colour, COLOURS)
        _check_in("shape", self.shape, SHAPES)
        if self.size is not None:
            _check_in("size", self.size, SIZES)
        if self.motion is not None:
            _check_in("motion", self.motion, MOTIONS)
        if self.speed is not None:
            _check_in("speed", self.speed, SPEEDS)
            if self.motion not in DIRECTIONS:
                raise ValueError(f"speed {self.speed!r} needs a direction, got motion {self.motion!r}")

    @property
    def is_complete(self) -> bool:
        return self.size is not None and self.motion is not None and (self.motion == STILL or self.speed is not None)

    @property
    def velocity(self) -> tuple[int, int]:
        """Pixels per frame (dx, dy); only defined for a complete object."""
        if not self.is_complete:
            raise ValueError(f"velocity of a partial object {self}")
        if self.motion == STILL:
            return (0, 0)
        assert self.motion is not None and self.speed is not None  # is_complete
        dx, dy = DIRECTIONS[self.motion]
        step = SPEEDS[self.speed]
        return (dx * step, dy * step)


@dataclass(frozen=True)
class SceneSpec:
    """1 to MAX_OBJECTS objects of distinct colours on a background (None: not stated)."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"object colours must be distinct, got {colours}")
        if self.background is not None:
            _check_in("background", self.background, BACKGROUNDS)

    @property
    def is_complete(self) -> bool:
        return self.background is not None and all(o.is_complete for o in self.objects)

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        return cls(tuple(ObjectSpec(**o) for o in data["objects"]), data.get("background"))


def _check_in(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
