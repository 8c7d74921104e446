"""Spec -> video. Hard-edged rasters (no anti-aliasing), whole paths inside the canvas, objects never touch.

The layout search filters every start position of each object at once (vectorised over candidates and
frames) and backtracks over a few random choices per object; the second-to-last object tries all its
choices, so a scene of one or two objects is laid out whenever it fits at all (`fits`), uniformly over
the first object's starts that leave room for the second. A scene that cannot fit gets a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from vidpost.errors import VidpostError
from vidpost.world.spec import BACKGROUNDS, COLOURS, SIZES, ObjectSpec, SceneSpec


@cache
def shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) bool raster: a disc, a full square, or an upward isosceles triangle."""
    offsets = np.arange(side) - (side - 1) / 2
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    if shape == "circle":
        mask = dx**2 + dy**2 <= (side / 2) ** 2
    elif shape == "square":
        mask = np.ones((side, side), bool)
    elif shape == "triangle":
        half_width = np.arange(side)[:, None] // 2  # row i spans 2*(i//2)+1 pixels, apex on top
        mask = np.abs(dx) <= half_width
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class Placement:
    """Top-left corner of an object's bounding box at frame 0."""

    x: int
    y: int


@cache
def _candidates(
    side: int, velocity: tuple[int, int], frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every start corner whose whole path stays inside the canvas, (K, 2), and its bounding boxes
    (x0, y0, x1, y1), end-exclusive, over time, (K, T, 4); read-only, shared by every scene that asks."""
    vx, vy = velocity
    travel_x, travel_y = vx * (frames - 1), vy * (frames - 1)
    xs = np.arange(max(0, -travel_x), width - side - max(0, travel_x) + 1)
    ys = np.arange(max(0, -travel_y), height - side - max(0, travel_y) + 1)
    starts = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    t = np.arange(frames)
    x0, y0 = starts[:, :1] + vx * t, starts[:, 1:] + vy * t
    boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=-1)
    starts.setflags(write=False)
    boxes.setflags(write=False)
    return starts, boxes


def _apart(boxes: np.ndarray, other: np.ndarray, min_gap: int) -> np.ndarray:
    """(K,) True where every frame keeps at least `min_gap` empty pixels between the boxes."""
    gap_x = np.maximum(other[None, :, 0] - boxes[..., 2], boxes[..., 0] - other[None, :, 2])
    gap_y = np.maximum(other[None, :, 1] - boxes[..., 3], boxes[..., 1] - other[None, :, 3])
    return (np.maximum(gap_x, gap_y) >= min_gap).all(axis=1)


@cache
def _pair_fits(
    a: tuple[int, tuple[int, int]], b: tuple[int, tuple[int, int]], frames: int, height: int, width: int, min_gap: int
) -> bool:
    """Whether objects of (side, velocity) `a` and `b` have any pair of paths that stay `min_gap` apart."""
    _, boxes_a = _candidates(*a, frames, height, width)
    _, boxes_b = _candidates(*b, frames, height, width)
    return any(_apart(boxes_b, box, min_gap).any() for box in boxes_a)


def _side(obj: ObjectSpec) -> int:
    """The object's side in pixels; only defined once its size is stated."""
    assert obj.size is not None, f"size of a partial object {obj}"
    return SIZES[obj.size]


def fits(spec: SceneSpec, frames: int, height: int, width: int, min_gap: int = 2) -> bool:
    """Every object's path fits the canvas alone and every pair of objects can pass each other.

    Exact for one or two objects (the default world); for three it is necessary, and `layout` decides.
    On the default 24x24, 8-frame canvas it rules out one family of scenes: two large objects that both
    move quickly, one along x and one along y, since each path sweeps 23 of the 24 pixels.
    """
    kinds = [(_side(o), o.velocity) for o in spec.objects]
    if any(len(_candidates(*k, frames, height, width)[0]) == 0 for k in kinds):
        return False
    return all(_pair_fits(a, b, frames, height, width, min_gap) for i, a in enumerate(kinds) for b in kinds[i + 1 :])


def layout(
    spec: SceneSpec,
    rng: np.random.Generator,
    frames: int,
    height: int,
    width: int,
    min_gap: int = 2,
    tries: int = 16,
) -> list[Placement]:
    """Random start corners for every object: depth-first, `tries` random valid choices per object (all of
    them for the second-to-last object, whose test is whether the last one still has a start)."""
    if not spec.is_complete:
        raise ValueError(f"layout needs a complete spec (every size and motion stated), got {spec}")
    candidates = [_candidates(_side(o), o.velocity, frames, height, width) for o in spec.objects]

    def place(index: int, placed_boxes: list[np.ndarray]) -> list[Placement] | None:
        if index == len(spec.objects):
            return []
        starts, boxes = candidates[index]  # (K, 2), (K, T, 4)
        ok = np.ones(len(starts), bool)
        for other in placed_boxes:
            ok &= _apart(boxes, other, min_gap)
        limit = tries if index < len(spec.objects) - 2 else None
        for k in rng.permutation(np.flatnonzero(ok))[:limit]:
            rest = place(index + 1, [*placed_boxes, boxes[k]])
            if rest is not None:
                return [Placement(int(starts[k, 0]), int(starts[k, 1])), *rest]
        return None

    result = place(0, [])
    if result is None:
        raise VidpostError(
            f"no layout fits the scene in {height}x{width} pixels over {frames} frames "
            f"with {min_gap} px between objects: {spec}"
        )
    return result


def render(spec: SceneSpec, placements: list[Placement], frames: int, height: int, width: int) -> np.ndarray:
    """Float32 video (T, H, W, 3) in [0, 1] with exactly the palette colours."""
    video = np.empty((frames, height, width, 3), np.float32)
    assert spec.background is not None, f"render needs a complete spec, got {spec}"
    video[:] = BACKGROUNDS[spec.background]
    for obj, place in zip(spec.objects, placements, strict=True):
        mask = shape_mask(obj.shape, _side(obj))
        side = mask.shape[0]
        vx, vy = obj.velocity
        for t in range(frames):
            x, y = place.x + vx * t, place.y + vy * t
            video[t, y : y + side, x : x + side][mask] = COLOURS[obj.colour]
    return video


def render_scene(
    spec: SceneSpec, rng: np.random.Generator, frames: int = 8, height: int = 24, width: int = 24, min_gap: int = 2
) -> np.ndarray:
    """Lay out and render a complete spec: (T, H, W, 3) float32."""
    return render(spec, layout(spec, rng, frames, height, width, min_gap), frames, height, width)
