"""ShapeWorld rewards: exact checks of a video against the caption it was generated for.

Rewards read only the caption (a canonical, possibly partial, caption), never hidden metadata, so they
score any model's output. Unstated attributes are not checked. Each reward is in [0, 1].

Detection. The background colour is the caption's (or, unstated, the palette background nearest the
clip's median colour). An object is found by its colour alone (colours are distinct within a scene):
a pixel belongs to the object when its *coverage* alpha, the projection of (pixel - background) onto
(colour - background), is at least ALPHA_MIN and the remainder off that line is small. Coverage is
contrast-invariant, so a blurred edge (alpha 2/3 for a 3x3 blur) never counts, on any background.

- instruction: count x prod over objects of [fraction of frames where the object is present with the
  right size and shape] x [motion score]. Combined per object and multiplied over objects, so the red
  object must itself be the circle and itself move right; one wrong object fails the scene.
  count is the fraction of frames with exactly as many blobs as objects (blobs >= MIN_BLOB_PX).
  motion score is [mean over frames of exp(-(r / MOTION_SCALE_PX)^2)] x [the same over frame-to-frame
  steps], r the distance of the object's centroid from start + v t (start fitted, v the stated
  velocity) and of each step from v: a frozen, reversed or shuffled clip fails both.
- coherence: mean of background flicker, object identity (area stable over time under the colour
  mask, so colour drift shows as area loss) and trajectory smoothness (centroid acceleration).
- quality: mean of crispness (pixels near objects are close to the background or a prompted colour)
  and background cleanliness (pixels away from objects are close to the background colour).
- total: instruction x (0.5 + 0.25 coherence + 0.25 quality): quality only pays when instructions hold.
- success: GenEval-style strict flag: the count, presence, size and shape checks pass in every frame
  and every centroid and every step is within MOTION_TOL_PX of its stated trajectory.
- instruction_graded: partial credit where `instruction` is all or nothing, a signal for RL from a weak
  model. Per object and frame: colour coverage (the object's area over the stated shape's, at most 1) x
  size exp(-|extent error| / GRADED_SIZE_PX) x shape IoU (the stated raster centred on the object's box);
  per object: the frames' mean x motion exp(-(|v_fit - v| / GRADED_SPEED_PX)^2) x mean over frames of
  exp(-(r / GRADED_PATH_PX)^2), v_fit the least-squares velocity of the centroid, r its residual; combined
  over objects and with a soft count (mean of exp(-|blobs - objects|)) as `instruction` is. A frozen slow
  object keeps exp(-(1/0.8)^2) = 0.21 of its motion credit.
- instruction_additive: the same parts averaged instead of multiplied: the soft count and, per object, the
  fraction of frames present, coverage, size and shape IoU (means over the present frames), speed and path.
  Its coverage also charges excess area (the smaller of area / stated area and its inverse): averaged, a capped
  coverage paid a blob drawn larger than stated more than the size part charged it, and RL grew objects.
  Where a weak model's products are 0 for whole groups of samples, this still ranks them; it is not
  cheat-proof (a still object of the stated shape keeps most of it), so it is a training signal to be judged
  by held-out `total` and `success`, never a figure to report as success.
- instruction_checks: the strict `instruction`'s own factors averaged instead of multiplied: the share of frames
  with the right count and, per object, the share of frames present with the stated size and shape (extents
  within SIZE_TOL_PX) and the motion score. Where the additive parts pay for being near, this pays only for
  passing, frame by frame; like them it is a training signal (a still object of the stated size keeps 2/3 of
  it), not a figure to report.
- heading: per object with a stated motion, whether its least-squares velocity goes the stated way (within
  HEADING_MAX_DEG of the stated direction at HEADING_MIN_PX per frame or more, or slower than that for a still
  object), averaged over those objects; 1.0 when no motion is stated. The checks above fail a wrong heading
  and a wrong path alike; this isolates the direction, the attribute that models which draw the stated
  speed in a random direction miss. A training signal alongside the others (any blob of the colour going the
  stated way earns it), never a figure to report as success.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TypedDict

import numpy as np
from scipy import ndimage

from vidpost.world.grammar import parse_caption
from vidpost.world.render import shape_mask
from vidpost.world.spec import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    STILL,
    ObjectSpec,
    SceneSpec,
)

ALPHA_MIN = 0.75  # coverage above which a pixel is the object's (a 3x3-blurred edge has 2/3)
ALPHA_MAX = 1.25
OFF_LINE_MAX = 0.2  # max channel distance from the background->colour line
FOREGROUND_MIN = 0.3  # max channel distance from the background for a pixel to be foreground
MIN_BLOB_PX = 5  # smaller foreground blobs are specks, not objects
SIZE_TOL_PX = 1
FILL_TOL = 0.12
MOTION_SCALE_PX = 0.5
MOTION_TOL_PX = 0.5
FLICKER_TOL = 0.1  # mean background change per frame that scores 0
AREA_CV_TOL = 0.25
ACCEL_TOL_PX = 1.0
PIXEL_TOL = 0.3  # colour distance that scores 0 for crispness and cleanliness
NEAR_OBJECT_PX = 2
GRADED_SIZE_PX = 3.0  # a side off by 3 px keeps 1/e of the size credit
GRADED_SPEED_PX = 0.8  # px per frame of velocity error that keeps 1/e of the motion credit
GRADED_PATH_PX = 1.5  # centroid residual from the fitted line that keeps 1/e
HEADING_MIN_PX = 0.5  # fitted px per frame below which an object counts as still
HEADING_MAX_DEG = 45.0  # widest angle between the fitted and the stated direction that counts as the stated way

REWARD_KEYS = (
    "instruction",
    "coherence",
    "quality",
    "total",
    "success",
    "instruction_graded",
    "instruction_additive",
    "instruction_checks",
    "heading",
)
_IN_FRAME = np.zeros((3, 3, 3), bool)
_IN_FRAME[1] = ndimage.generate_binary_structure(2, 1)  # 4-connectivity within a frame, never across frames
_NEAR = np.ones((1, 2 * NEAR_OBJECT_PX + 1, 2 * NEAR_OBJECT_PX + 1), bool)


def _channel_max(x: np.ndarray) -> np.ndarray:
    """max over the last axis of size 3; numpy's reduce over a tiny last axis is ~10x slower."""
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


@cache
def _fill(shape: str, side: int) -> float:
    return float(shape_mask(shape, side).mean())


def _background(video: np.ndarray, spec: SceneSpec) -> np.ndarray:
    if spec.background is not None:
        return np.array(BACKGROUNDS[spec.background], np.float32)
    median = np.median(video.reshape(-1, 3), axis=0)
    palette = np.array(list(BACKGROUNDS.values()), np.float32)
    return palette[np.abs(palette - median).max(-1).argmin()]


def _object_mask(rel: np.ndarray, background: np.ndarray, colour: str) -> np.ndarray:
    """(T, H, W) pixels whose coverage by `colour` over the background is high; rel = video - background."""
    direction = np.array(COLOURS[colour], np.float32) - background  # (3,)
    alpha = rel @ direction / float(direction @ direction)
    off_line = _channel_max(np.abs(rel - alpha[..., None] * direction))
    return (alpha >= ALPHA_MIN) & (alpha <= ALPHA_MAX) & (off_line <= OFF_LINE_MAX)


def _pieces_per_frame(mask: np.ndarray, min_area: int = 1) -> np.ndarray:
    """(T,) number of 4-connected pieces of at least `min_area` pixels in each frame of a (T, H, W) mask."""
    labels, n_labels = ndimage.label(mask, structure=_IN_FRAME)  # pieces never span frames
    area = np.bincount(labels.ravel(), minlength=n_labels + 1)
    frame = np.zeros(n_labels + 1, int)
    frame[labels] = np.arange(len(mask))[:, None, None]
    kept = area >= min_area
    kept[0] = False  # label 0 is the unmasked pixels
    return np.bincount(frame[kept], minlength=len(mask))


def _extent(any_along: np.ndarray) -> np.ndarray:
    """Length of the span of True per row of a (T, N) array (0 where none)."""
    n = any_along.shape[1]
    first = any_along.argmax(1)
    last = n - 1 - any_along[:, ::-1].argmax(1)
    return np.where(any_along.any(1), last - first + 1, 0)


def _closeness(distance_px: np.ndarray) -> np.ndarray:
    return np.exp(-((distance_px / MOTION_SCALE_PX) ** 2))


def _allowed_velocities(obj: ObjectSpec) -> np.ndarray | None:
    """(K, 2) velocities the caption allows, or None when motion is unstated."""
    if obj.motion is None:
        return None
    if obj.motion == STILL:
        return np.zeros((1, 2))
    speeds = [SPEEDS[obj.speed]] if obj.speed else list(SPEEDS.values())
    return np.array([[DIRECTIONS[obj.motion][0] * s, DIRECTIONS[obj.motion][1] * s] for s in speeds], float)


def _frame_checks(mask: np.ndarray, obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """(present, present with the stated size and shape), each (T,), from the object's mask (T, H, W)."""
    area = mask.sum((1, 2))
    h, w = _extent(np.asarray(mask.any(2))), _extent(np.asarray(mask.any(1)))
    sides = [SIZES[obj.size]] if obj.size else list(SIZES.values())
    side = np.array(sides)[np.abs(np.array(sides)[:, None] - (h + w) / 2).argmin(0)]  # (T,) nearest allowed
    present = area >= 0.5 * min(shape_mask(obj.shape, s).sum() for s in sides)
    size_ok = (np.abs(h - side) <= SIZE_TOL_PX) & (np.abs(w - side) <= SIZE_TOL_PX)
    fill = area / np.maximum(h * w, 1)
    expected_fill = np.array([[_fill(k, int(s)) for s in side] for k in SHAPES])  # (3, T)
    distances = np.abs(fill - expected_fill)
    shape_ok = (distances.argmin(0) == SHAPES.index(obj.shape)) & (distances.min(0) <= FILL_TOL)
    return present, present & size_ok & shape_ok


def _motion(centroid: np.ndarray, present: np.ndarray, obj: ObjectSpec) -> tuple[float, np.ndarray]:
    """(motion score, per-frame strict pass (T,)) of a centroid track (T, 2) against the stated motion."""
    velocities = _allowed_velocities(obj)
    if velocities is None:
        return 1.0, np.ones_like(present)
    if not present.any():
        return 0.0, present
    # Residual of the centroid from start + v t, the start fitted on the present frames: a frozen,
    # reversed or shuffled clip leaves large residuals in almost every frame.
    expected = np.arange(len(centroid))[:, None, None] * velocities[None]  # (T, K, 2)
    start = (centroid[:, None] - expected)[present].mean(0)  # (K, 2)
    residual = np.linalg.norm(centroid[:, None] - expected - start, axis=-1)  # (T, K)
    on_path = np.where(present[:, None], _closeness(residual), 0.0)
    # ... and each frame-to-frame step must be v too, so frames that happen to sit on the path
    # (a shuffle's fixed points) earn little when their neighbours do not follow.
    step_error = np.linalg.norm(np.diff(centroid, axis=0)[:, None] - velocities[None], axis=-1)  # (T-1, K)
    steps = np.where((present[1:] & present[:-1])[:, None], _closeness(step_error), 0.0)
    scores = on_path.mean(0) * steps.mean(0)  # (K,)
    best = scores.argmax()
    strict = present & (residual[:, best] <= MOTION_TOL_PX)
    strict[1:] &= step_error[:, best] <= MOTION_TOL_PX
    return float(scores[best]), strict


def _stability(area: np.ndarray, centroid: np.ndarray, present: np.ndarray) -> tuple[float, float]:
    """(identity, smoothness): area stable over time; centroid acceleration small."""
    mean_area = area.mean()
    identity = float(np.clip(1 - area.std() / mean_area / AREA_CV_TOL, 0, 1)) if mean_area > 0 else 0.0
    triple = present[2:] & present[1:-1] & present[:-2]
    if not triple.any():
        return identity, 0.0
    accel = np.linalg.norm(centroid[2:] - 2 * centroid[1:-1] + centroid[:-2], axis=-1)[triple].mean()
    return identity, float(np.clip(1 - accel / ACCEL_TOL_PX, 0, 1)) * triple.mean()


def _shape_iou(mask: np.ndarray, shape: str, side: np.ndarray) -> np.ndarray:
    """(T,) IoU of each frame's mask (T, H, W) with the stated shape's raster of `side` (T,), centred on the mask's
    box."""
    _, height, width = mask.shape
    ious = np.zeros(len(mask))
    for t, frame in enumerate(mask):
        rows, cols = np.flatnonzero(frame.any(1)), np.flatnonzero(frame.any(0))
        if not len(rows):
            continue
        raster = shape_mask(shape, int(side[t]))
        top = int(round((rows[0] + rows[-1] - raster.shape[0] + 1) / 2))
        left = int(round((cols[0] + cols[-1] - raster.shape[1] + 1) / 2))
        placed = np.zeros((height + 2 * raster.shape[0], width + 2 * raster.shape[1]), bool)  # room off the edges
        placed[
            top + raster.shape[0] : top + 2 * raster.shape[0], left + raster.shape[1] : left + 2 * raster.shape[1]
        ] = raster
        placed = placed[raster.shape[0] : raster.shape[0] + height, raster.shape[1] : raster.shape[1] + width]
        ious[t] = (frame & placed).sum() / max((frame | placed).sum(), 1)
    return ious


def _fit_track(centroid: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(velocity (2,), residuals over the present frames) of centroid = start + v t fitted by least squares over
    the present frames of a track (T, 2); None when fewer than two frames are present."""
    t = np.flatnonzero(present)
    if len(t) < 2:
        return None
    design = np.stack([np.ones(len(t)), t], 1)
    coef = np.linalg.lstsq(design, centroid[t], rcond=None)[0]  # (2, 2): start, v
    return coef[1], np.linalg.norm(design @ coef - centroid[t], axis=1)


def _heading(centroid: np.ndarray, present: np.ndarray, obj: ObjectSpec) -> float | None:
    """1.0 when the fitted velocity goes the stated way: within HEADING_MAX_DEG of a stated direction at
    HEADING_MIN_PX per frame or more, or below that speed for a still object; None when motion is unstated."""
    if obj.motion is None:
        return None
    fit = _fit_track(centroid, present)
    if fit is None:
        return 0.0
    velocity = fit[0]
    speed = float(np.linalg.norm(velocity))
    if obj.motion == STILL:
        return float(speed < HEADING_MIN_PX)
    cosine = velocity @ np.array(DIRECTIONS[obj.motion], float) / max(speed, 1e-9)
    return float(speed >= HEADING_MIN_PX and cosine >= np.cos(np.radians(HEADING_MAX_DEG)))


def _graded_object(mask: np.ndarray, centroid: np.ndarray, obj: ObjectSpec) -> tuple[float, list[float], float]:
    """One object's graded credit (module docstring) from its mask (T, H, W) and centroids (T, 2): the product
    `instruction_graded` multiplies, the parts `instruction_additive` averages (presence, coverage, size and
    shape IoU over the present frames, then speed and path for a moving object), and the mean ratio of its area
    to the stated shape's over the present frames (above 1: drawn larger than stated)."""
    area = mask.sum((1, 2))
    present = area > 0
    velocities = _allowed_velocities(obj)
    n_parts = 4 if velocities is None else 6
    if not present.any():
        return 0.0, [0.0] * n_parts, 0.0
    h, w = _extent(np.asarray(mask.any(2))), _extent(np.asarray(mask.any(1)))
    sides = [SIZES[obj.size]] if obj.size else list(SIZES.values())
    side = np.array(sides)[np.abs(np.array(sides)[:, None] - (h + w) / 2).argmin(0)]  # (T,) nearest allowed
    ratio = area / np.array([shape_mask(obj.shape, int(s)).sum() for s in side])
    coverage = np.minimum(ratio, 1.0)
    size = np.exp(-(np.abs(h - side) + np.abs(w - side)) / 2 / GRADED_SIZE_PX)
    iou = _shape_iou(mask, obj.shape, side)
    frames = float(np.where(present, coverage * size * iou, 0.0).mean())
    both_ways = np.minimum(ratio, 1.0 / np.maximum(ratio, 1e-9))  # excess area costs as much as missing area
    parts = [float(present.mean())] + [float(x[present].mean()) for x in (both_ways, size, iou)]
    area_ratio = float(ratio[present].mean())
    if velocities is None:
        return frames, parts, area_ratio
    fit = _fit_track(centroid, present)
    if fit is None:
        return 0.0, parts + [0.0, 0.0], area_ratio
    velocity, residual = fit
    path = float(np.exp(-((residual / GRADED_PATH_PX) ** 2)).sum() / len(present))  # absent frames earn nothing
    speed = float(np.exp(-((np.linalg.norm(velocity - velocities, axis=1) / GRADED_SPEED_PX) ** 2)).max())
    return frames * speed * path, parts + [speed, path], area_ratio


class _ObjectChecks(TypedDict):
    """One stated object's checks: per-frame arrays (T,) and per-clip scores."""

    present: np.ndarray
    frame_ok: np.ndarray
    motion_score: float
    motion_ok: np.ndarray
    identity: float
    smoothness: float
    graded: float
    graded_parts: list[float]
    area_ratio: float
    fragmented: float
    heading: float | None


def _check_object(rel: np.ndarray, background: np.ndarray, obj: ObjectSpec) -> _ObjectChecks:
    """Per-frame and per-clip checks of one stated object; rel = video - background (T, H, W, 3)."""
    mask = _object_mask(rel, background, obj.colour)  # (T, H, W)
    _, height, width = mask.shape
    area = mask.sum((1, 2))  # (T,)
    present, frame_ok = _frame_checks(mask, obj)
    safe_area = np.maximum(area, 1)
    centroid = np.stack(
        [(mask.sum(1) * np.arange(width)).sum(1) / safe_area, (mask.sum(2) * np.arange(height)).sum(1) / safe_area], -1
    )  # (T, 2) as (x, y)
    motion_score, motion_ok = _motion(centroid, present, obj)
    identity, smoothness = _stability(area, centroid, present)
    graded, graded_parts, area_ratio = _graded_object(mask, centroid, obj)
    pieces = _pieces_per_frame(mask)
    return {
        "present": present,
        "frame_ok": frame_ok,
        "motion_score": motion_score,
        "motion_ok": motion_ok,
        "identity": identity,
        "smoothness": smoothness,
        "graded": graded,
        "graded_parts": graded_parts,
        "area_ratio": area_ratio,
        "fragmented": float((pieces[present] > 1).mean()) if present.any() else 0.0,
        "heading": _heading(centroid, present, obj),
    }


def score_clip(video: np.ndarray, spec: SceneSpec) -> dict[str, float]:
    """All ShapeWorld rewards (and their parts) for one float video (T, H, W, 3) in [0, 1]."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 3:
        raise ValueError(f"expected a video (T>=3, H, W, 3), got shape {video.shape}")
    video = video.astype(np.float32, copy=False)
    background = _background(video, spec)
    rel = video - background  # (T, H, W, 3), shared by every object's coverage test
    bg_distance = _channel_max(np.abs(rel))  # (T, H, W)
    foreground = bg_distance > FOREGROUND_MIN

    blobs_per_frame = _pieces_per_frame(foreground, MIN_BLOB_PX)
    count_ok = blobs_per_frame == len(spec.objects)  # (T,)

    checks = [_check_object(rel, background, obj) for obj in spec.objects]
    # the strict instruction's factors: the count share, then per object its size-and-shape share and motion score
    factors = [count_ok.mean(), *(x for c in checks for x in (c["frame_ok"].mean(), c["motion_score"]))]
    instruction = np.prod(factors)
    soft_count = np.exp(-np.abs(blobs_per_frame - len(spec.objects))).mean()
    instruction_graded = soft_count * np.prod([c["graded"] for c in checks])
    instruction_additive = np.mean([soft_count, *(part for c in checks for part in c["graded_parts"])])
    instruction_checks = np.mean(factors)

    near = ndimage.binary_dilation(foreground, structure=_NEAR)
    away = ~near
    bg_pixels = np.maximum(away.sum((1, 2)), 1)
    bg_mean = (video * away[..., None]).sum((1, 2)) / bg_pixels[:, None]  # (T, 3)
    flicker = np.abs(np.diff(bg_mean, axis=0)).max(-1).mean()
    coherence = np.mean(
        [
            np.clip(1 - flicker / FLICKER_TOL, 0, 1),
            np.mean([c["identity"] for c in checks]),
            np.mean([c["smoothness"] for c in checks]),
        ]
    )

    palette_distance = bg_distance
    for obj in spec.objects:
        colour = np.array(COLOURS[obj.colour], np.float32)
        palette_distance = np.minimum(palette_distance, _channel_max(np.abs(video - colour)))  # (T, H, W)
    crisp_region = near if near.any() else np.ones_like(near)
    crispness = np.clip(1 - palette_distance[crisp_region] / PIXEL_TOL, 0, 1).mean()
    cleanliness = np.clip(1 - bg_distance[away] / PIXEL_TOL, 0, 1).mean() if away.any() else 0.0
    quality = (crispness + cleanliness) / 2

    headings = [c["heading"] for c in checks if c["heading"] is not None]
    success = bool(count_ok.all() and all(c["frame_ok"].all() and c["motion_ok"].all() for c in checks))
    return {
        "instruction": float(instruction),
        "coherence": float(coherence),
        "quality": float(quality),
        "total": float(instruction * (0.5 + 0.25 * coherence + 0.25 * quality)),
        "success": float(success),
        "instruction_graded": float(instruction_graded),
        "instruction_additive": float(instruction_additive),
        "instruction_checks": float(instruction_checks),
        "count": float(count_ok.mean()),
        # where instruction following fails, per stated object (mean over objects): frames present,
        # frames present with the stated size and shape, motion score
        "presence": float(np.mean([c["present"].mean() for c in checks])),
        "size_shape": float(np.mean([c["frame_ok"].mean() for c in checks])),
        "motion": float(np.mean([c["motion_score"] for c in checks])),
        # mean over objects of area / stated shape's area where present: growth that a reward pays for shows here
        "area_ratio": float(np.mean([c["area_ratio"] for c in checks])),
        # mean over objects of the share of present frames where the object's colour lies in more than one piece:
        # a stray speck anywhere widens the extent the size check measures
        "fragmented": float(np.mean([c["fragmented"] for c in checks])),
        # a reward as well (module docstring): the motion score fails a wrong heading and a wrong path alike
        "heading": float(np.mean(headings)) if headings else 1.0,
        "blobs_per_frame": float(blobs_per_frame.mean()),
        "flicker": float(flicker),
        "crispness": float(crispness),
        "cleanliness": float(cleanliness),
    }


def shapeworld_rewards(videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Reward family: videos (B, T, H, W, 3) in [0, 1] and their canonical captions -> name -> (B,)."""
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    rows = [score_clip(np.asarray(v), parse_caption(p)) for v, p in zip(videos, prompts, strict=True)]
    return {key: np.array([row[key] for row in rows]) for key in REWARD_KEYS}
