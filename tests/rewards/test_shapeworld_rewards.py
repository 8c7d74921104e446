"""The ShapeWorld rewards: truth scores ~1, every cheat <= 0.25, degradations fall monotonically."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from vidpost.errors import CaptionError
from vidpost.rewards.registry import compute_rewards
from vidpost.rewards.shapeworld import score_clip, shapeworld_rewards
from vidpost.world.grammar import caption, parse_caption
from vidpost.world.render import render_scene, shape_mask
from vidpost.world.sampling import random_spec
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


def _truth(spec: SceneSpec, seed: int = 0) -> np.ndarray:
    return render_scene(spec, np.random.default_rng(seed))


def _moving_scenes(n: int, seed: int = 0) -> list[tuple[SceneSpec, np.ndarray]]:
    """Random feasible scenes in which every object moves (a still object is its own frozen copy)."""
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < n:
        spec = random_spec(rng, p_still=0.0)
        try:
            scenes.append((spec, render_scene(spec, rng)))
        except Exception:
            continue
    return scenes


def test_ground_truth_scores_one_for_every_single_object_combination():
    totals, success = [], []
    for colour, shape, size, background in itertools.product(COLOURS, SHAPES, SIZES, BACKGROUNDS):
        for motion, speed in [(STILL, None), *itertools.product(DIRECTIONS, SPEEDS)]:
            spec = SceneSpec((ObjectSpec(colour, shape, size, motion, speed),), background)
            scores = score_clip(_truth(spec), spec)
            totals.append(
                min(scores[k] for k in ("total", "instruction_graded", "instruction_additive", "instruction_checks"))
            )
            success.append(scores["success"])
    assert len(totals) == 972
    assert min(totals) >= 0.99 and min(success) == 1.0


def test_ground_truth_scores_one_for_random_multi_object_scenes_after_uint8_storage():
    rng = np.random.default_rng(1)
    for _ in range(100):
        spec = random_spec(rng)
        try:
            video = render_scene(spec, rng)
        except Exception:
            continue
        stored = np.round(video * 255).astype(np.uint8).astype(np.float32) / 255
        scores = score_clip(stored, spec)
        assert scores["total"] >= 0.99 and scores["success"] == 1.0, caption(spec)
        assert scores["instruction_graded"] >= 0.99, caption(spec)
        assert scores["instruction_additive"] >= 0.99, caption(spec)
        assert scores["instruction_checks"] >= 0.99, caption(spec)
        assert scores["blobs_per_frame"] == len(spec.objects), caption(spec)


def test_partial_captions_check_only_what_they_state():
    spec = parse_caption(
        "a large red circle moving right quickly and a small blue square staying still on a white background"
    )
    video = _truth(spec)
    for partial in [
        "a red circle and a blue square",
        "a red circle moving right and a blue square on a white background",
        "a large red circle and a small blue square staying still",
    ]:
        assert score_clip(video, parse_caption(partial))["total"] >= 0.99, partial
    for wrong in [
        "a red circle moving left and a blue square",
        "a small red circle and a blue square",
        "a red square and a blue circle",
        "a red circle",
    ]:
        assert score_clip(video, parse_caption(wrong))["total"] <= 0.25, wrong


def test_attributes_are_bound_per_object():
    """Swapping shapes or motions between the objects keeps every attribute 'present' but must fail."""
    truth = parse_caption(
        "a small red circle moving right slowly and a small green square staying still on a black background"
    )
    video = _truth(truth)
    swapped_shapes = parse_caption(
        "a small red square moving right slowly and a small green circle staying still on a black background"
    )
    swapped_motion = parse_caption(
        "a small red circle staying still and a small green square moving right slowly on a black background"
    )
    assert score_clip(video, swapped_shapes)["instruction"] == 0.0
    assert score_clip(video, swapped_motion)["instruction"] < 0.05


def _extra_copy(spec: SceneSpec, seed: int) -> np.ndarray:
    """Render the scene plus a twin of object 0 (same shape, size, motion, colour) placed apart."""
    spare = next(c for c in COLOURS if c not in {o.colour for o in spec.objects})
    twin = ObjectSpec(spare, spec.objects[0].shape, spec.objects[0].size, spec.objects[0].motion, spec.objects[0].speed)
    video = render_scene(SceneSpec((*spec.objects, twin), spec.background), np.random.default_rng(seed))
    video[(video == COLOURS[spare]).all(-1)] = COLOURS[spec.objects[0].colour]
    return video


def _wrong_colour(video: np.ndarray, spec: SceneSpec) -> np.ndarray:
    spare = next(c for c in COLOURS if c not in {o.colour for o in spec.objects})
    out = video.copy()
    out[(video == COLOURS[spec.objects[0].colour]).all(-1)] = COLOURS[spare]
    return out


CHEATS = {
    "empty": lambda v, s, i: np.broadcast_to(v[0, 0, 0], v.shape).copy(),
    "frozen first frame": lambda v, s, i: np.repeat(v[:1], len(v), axis=0),
    "time-reversed": lambda v, s, i: v[::-1].copy(),
    "shuffled frames": lambda v, s, i: v[np.random.default_rng(i).permutation(len(v))],
    "3x3 blur": lambda v, s, i: ndimage.uniform_filter(v, size=(1, 3, 3, 1), mode="nearest"),
    "extra copy": lambda v, s, i: _extra_copy(s, i),
    "wrong colour": lambda v, s, i: _wrong_colour(v, s),
}


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_each_cheat_scores_at_most_a_quarter(cheat):
    scored = 0
    for i, (spec, video) in enumerate(_moving_scenes(30)):
        if cheat == "extra copy" and len(spec.objects) == 3:
            spec = SceneSpec(spec.objects[:2], spec.background)
        try:
            fake = CHEATS[cheat](video, spec, i)
        except Exception:
            continue  # no room for the extra copy
        scores = score_clip(fake.astype(np.float32), spec)
        assert scores["total"] <= 0.25, (cheat, caption(spec), scores)
        assert scores["instruction_graded"] <= 0.3, (cheat, caption(spec), scores)
        assert scores["success"] == 0.0
        scored += 1
    assert scored >= 20


def _falls(values: list[float]) -> bool:
    """Strictly falling while positive; once the instruction gate closes it stays at 0."""
    return (
        all(a > b or a == b == 0.0 for a, b in zip(values, values[1:], strict=False)) and values[0] >= 0.99 > values[-1]
    )


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_total_falls_monotonically_with_noise_and_blur(background):
    scenes = [
        (s, _truth(s, i))
        for i, (x, _) in enumerate(_moving_scenes(6, seed=3))
        for s in [SceneSpec(x.objects, background)]
    ]
    rng = np.random.default_rng(0)
    noise = [rng.normal(size=v.shape).astype(np.float32) for _, v in scenes]
    noisy = [
        np.mean([score_clip(np.clip(v + std * z, 0, 1), s)["total"] for (s, v), z in zip(scenes, noise, strict=True)])
        for std in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    ]
    assert _falls(noisy) and noisy[3] > 0.5, noisy  # mild noise costs quality, not instruction following
    blurred = [
        np.mean([score_clip(ndimage.gaussian_filter(v, sigma=(0, b, b, 0)), s)["total"] for s, v in scenes])
        for b in (0.0, 0.3, 0.5, 0.8, 1.2)
    ]
    assert _falls(blurred), blurred


def test_family_is_batched_and_rejects_bad_captions():
    spec = parse_caption("a small magenta triangle moving up slowly on a gray background")
    video = _truth(spec)
    out = shapeworld_rewards(np.stack([video, np.zeros_like(video)]), [caption(spec)] * 2)
    assert set(out) == {
        "instruction",
        "coherence",
        "quality",
        "total",
        "success",
        "instruction_graded",
        "instruction_additive",
        "instruction_checks",
        "heading",
    }
    assert out["total"][0] >= 0.99 and out["total"][1] == 0.0
    assert all(((v >= 0) & (v <= 1)).all() for v in out.values())
    with pytest.raises(CaptionError, match="a purple blob"):
        shapeworld_rewards(video[None], ["a purple blob"])


def test_check_shares_say_which_check_fails():
    spec = parse_caption(
        "a small red square moving right slowly and a large blue circle staying still on a black background"
    )
    truth = _truth(spec)
    assert {k: score_clip(truth, spec)[k] for k in ("count", "presence", "size_shape", "motion")} == {
        "count": 1.0,
        "presence": 1.0,
        "size_shape": 1.0,
        "motion": 1.0,
    }
    # the same video judged against a caption that states the blue circle small: present, wrong size, right motion
    wrong_size = parse_caption("a small red square moving right slowly and a small blue circle staying still")
    scores = score_clip(truth, wrong_size)
    assert scores["presence"] == 1.0 and scores["size_shape"] == 0.5 and scores["motion"] == 1.0
    # instruction_checks averages the strict factors: the count, and per object size-and-shape and motion
    assert scores["instruction_checks"] == pytest.approx((1 + 1 + 1 + 0 + 1) / 5)
    assert scores["instruction"] == 0.0
    # ... and one that states it moving left: size and shape hold, the motion score falls
    wrong_motion = parse_caption("a small red square moving left slowly and a large blue circle staying still")
    scores = score_clip(truth, wrong_motion)
    assert scores["size_shape"] == 1.0 and scores["motion"] < 0.6
    # a frame without the blue circle: presence and count fall for that frame only
    missing = truth.copy()
    missing[3][np.all(missing[3] == COLOURS["blue"], axis=-1)] = BACKGROUNDS["black"]
    scores = score_clip(missing, spec)
    assert scores["presence"] == pytest.approx(1 - 0.5 / 8) and scores["count"] == pytest.approx(7 / 8)


# ---- instruction_graded and instruction_additive: partial credit that rises as a sample moves towards its caption ----


def _drawn(side: int, xs, ys, shape: str = "square", colour: str = "red", background: str = "black") -> np.ndarray:
    """A single object drawn by hand: `side` px raster of `shape` with its top-left at (xs[t], ys[t])."""
    video = np.broadcast_to(np.array(BACKGROUNDS[background], np.float32), (len(xs), 24, 24, 3)).copy()
    raster = shape_mask(shape, side)
    for t, (x, y) in enumerate(zip(xs, ys, strict=True)):
        video[t, y : y + side, x : x + side][raster] = COLOURS[colour]
    return video


def _graded(video: np.ndarray, text: str, reward: str = "instruction_graded") -> float:
    return score_clip(video, parse_caption(text))[reward]


GRADED = ["instruction_graded", "instruction_additive"]


@pytest.mark.parametrize("reward", GRADED)
def test_graded_credit_rises_as_the_size_approaches_the_caption(reward):
    text = "a large red square moving right slowly on a black background"  # 9 px, 1 px per frame
    scores = [_graded(_drawn(side, range(2, 10), [4] * 8), text, reward) for side in (3, 5, 7, 9)]
    assert all(a < b for a, b in itertools.pairwise(scores)) and scores[-1] >= 0.99, scores
    assert scores[0] > 0  # far off, yet a signal (group-relative advantages need an order, not a scale)
    too_big = [_graded(_drawn(side, range(1, 9), [2] * 8), text, reward) for side in (15, 13, 11, 9)]
    assert all(a < b for a, b in itertools.pairwise(too_big)), too_big


@pytest.mark.parametrize("reward", GRADED)
def test_graded_credit_rises_as_the_speed_and_path_approach_the_caption(reward):
    text = "a small blue circle moving right quickly on a white background"  # 2 px per frame
    speeds = [
        _graded(_drawn(5, [10 + v * (t - 4) for t in range(8)], [9] * 8, "circle", "blue", "white"), text, reward)
        for v in (-2, -1, 0, 1, 2)
    ]
    assert all(a < b for a, b in itertools.pairwise(speeds)) and speeds[-1] >= 0.99, speeds
    jitter = [
        _graded(
            _drawn(
                5,
                [2 + 2 * t for t in range(8)],
                [9 + (k if t % 2 else -k) for t in range(8)],
                "circle",
                "blue",
                "white",
            ),
            text,
            reward,
        )
        for k in (3, 2, 1, 0)
    ]
    assert all(a < b for a, b in itertools.pairwise(jitter)) and jitter[-1] >= 0.99, jitter


def test_graded_credit_rewards_the_stated_shape_and_binds_it_per_object():
    text = "a large green triangle staying still on a gray background"
    by_shape = {k: _graded(_drawn(9, [6] * 8, [6] * 8, k, "green", "gray"), text) for k in SHAPES}
    assert by_shape["triangle"] >= 0.99 and by_shape["circle"] < by_shape["triangle"] and by_shape["square"] < 0.7
    assert _graded(_drawn(9, [6] * 8, [6] * 8, "triangle", "yellow", "gray"), text) == 0.0  # wrong colour: absent


def test_additive_credit_ranks_samples_the_product_scores_zero():
    """Where a weak model's graded products tie at 0 for a whole group, the additive parts still order them."""
    text = "a large red square moving right slowly on a black background"
    once = _drawn(9, [2] * 8, [4] * 8)
    once[1:] = BACKGROUNDS["black"]  # present in one frame only: no fitted motion, so the product is 0
    absent = np.broadcast_to(np.array(BACKGROUNDS["black"], np.float32), once.shape).copy()
    frozen = _drawn(9, [5] * 8, [4] * 8)
    right = _drawn(9, range(2, 10), [4] * 8)
    assert _graded(once, text) == _graded(absent, text) == 0.0
    additive = [_graded(v, text, "instruction_additive") for v in (absent, once, frozen, right)]
    assert all(a < b for a, b in itertools.pairwise(additive)) and additive[-1] >= 0.99, additive
    # the mean of the soft count and six parts, by hand: a frozen object of the stated shape and size loses only
    # its speed part, exp(-(1 / 0.8)^2); an absent object keeps only the soft count's exp(-1)
    assert additive[2] == pytest.approx((6 + np.exp(-((1 / 0.8) ** 2))) / 7, abs=1e-6)
    assert additive[0] == pytest.approx(np.exp(-1) / 7, abs=1e-6)


def test_additive_credit_prefers_the_stated_shape_and_colour():
    text = "a large green triangle staying still on a gray background"
    by_shape = {
        k: _graded(_drawn(9, [6] * 8, [6] * 8, k, "green", "gray"), text, "instruction_additive") for k in SHAPES
    }
    assert by_shape["triangle"] >= 0.99 and max(by_shape["circle"], by_shape["square"]) < by_shape["triangle"]
    wrong_colour = _graded(_drawn(9, [6] * 8, [6] * 8, "triangle", "yellow", "gray"), text, "instruction_additive")
    # the count holds (one blob); all six parts of the absent object (a stated stillness is checked too) are 0
    assert wrong_colour == pytest.approx(1 / 7)


def test_additive_credit_charges_a_blob_drawn_larger_than_stated():
    """Averaged, a coverage capped at 1 paid an oversized blob more than the size part charged it (RL grew
    objects); the additive coverage charges excess area as it charges missing area."""
    small = SIZES["small"]
    text = "a small red square staying still on a black background"
    for side in (small + 2, small + 4, small + 6):
        share = small**2 / side**2  # the stated square's area over the drawn one's: coverage, and the centred IoU
        by_hand = (4 + 2 * share + np.exp(-(side - small) / 3)) / 7  # count, presence, speed, path: 1 each
        assert _graded(_drawn(side, [6] * 8, [6] * 8), text, "instruction_additive") == pytest.approx(by_hand)


# ---- instruction_checks: the strict instruction's factors averaged; the object-area diagnostic ----


def test_check_credit_pays_for_passing_not_for_being_near():
    """The additive size part rises as a side nears the caption's; the strict size check passes within
    SIZE_TOL_PX, so instruction_checks moves only when it does."""
    text = "a large red square moving right slowly on a black background"  # 9 px, 1 px per frame
    checks = [_graded(_drawn(side, range(2, 10), [4] * 8), text, "instruction_checks") for side in (5, 7, 8, 9)]
    # the count always; motion once the object is present (at least half the stated area: not 5 px); size from 8 px
    assert checks == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    additive = [_graded(_drawn(side, range(2, 10), [4] * 8), text, "instruction_additive") for side in (7, 8)]
    assert additive[0] < additive[1] < 0.99  # near is paid, a little, at every pixel


def test_check_credit_of_a_frozen_object_by_hand():
    """A still square of the stated size, captioned moving right at 1 px a frame: its fitted start leaves the
    centroid |t - 3.5| px off the path, and every step is 1 px off."""
    text = "a large red square moving right slowly on a black background"
    residual = np.abs(np.arange(8) - 3.5)
    motion = np.exp(-((residual / 0.5) ** 2)).mean() * np.exp(-((1 / 0.5) ** 2))
    assert _graded(_drawn(9, [5] * 8, [4] * 8), text, "instruction_checks") == pytest.approx((1 + 1 + motion) / 3)


def test_area_ratio_shows_an_object_drawn_larger_than_stated():
    text = "a small red square staying still on a black background"  # 5 px: 25 px of area
    for side in (3, 5, 7):
        scores = score_clip(_drawn(side, [6] * 8, [6] * 8), parse_caption(text))
        assert scores["area_ratio"] == pytest.approx(side**2 / 25)
    absent = np.broadcast_to(np.array(BACKGROUNDS["black"], np.float32), (8, 24, 24, 3)).copy()
    assert score_clip(absent, parse_caption(text))["area_ratio"] == 0.0


def test_fragmented_counts_frames_where_a_stray_speck_widens_the_measured_extent():
    """A square of the stated size passes the size check in every frame until a one-pixel speck of its colour
    appears far from it: those frames are fragmented and fail the check, the others pass."""
    text = "a large red square moving right slowly on a black background"
    video = _drawn(9, range(2, 10), [4] * 8)
    clean = score_clip(video, parse_caption(text))
    assert clean["fragmented"] == 0.0 and clean["size_shape"] == 1.0
    video[::2, 20, 20] = COLOURS["red"]  # frames 0, 2, 4, 6
    specked = score_clip(video, parse_caption(text))
    assert specked["fragmented"] == pytest.approx(0.5)
    assert specked["size_shape"] == pytest.approx(0.5)
    assert specked["count"] == 1.0  # a speck is not a blob, so only the extent shows it


@pytest.mark.parametrize(
    ("xs", "ys", "heading"),
    [
        (range(2, 10), [4] * 8, 1.0),  # right, as stated
        (range(9, 1, -1), [4] * 8, 0.0),  # left: the reverse of what is stated
        (range(2, 18, 2), range(2, 10), 1.0),  # quickly right and slowly down: 27 degrees off
        ([2, 3, 3, 4, 4, 5, 5, 6], range(2, 18, 2), 0.0),  # mostly down: 75 degrees off
        ([5] * 8, [4] * 8, 0.0),  # frozen
    ],
)
def test_heading_says_whether_an_object_goes_the_stated_way(xs, ys, heading):
    """The fitted velocity's direction against the caption's, whatever the speed or the path's fit."""
    video = _drawn(5, xs, ys)
    text = "a small red square moving right slowly"
    assert score_clip(video, parse_caption(text))["heading"] == heading
    assert compute_rewards(["heading"], video[None], [text])["heading"].tolist() == [heading]  # a training reward


def test_heading_of_a_still_object_and_of_a_caption_without_motion():
    still = _drawn(5, [5] * 8, [4] * 8)
    moving = _drawn(5, range(2, 10), [4] * 8)
    assert score_clip(still, parse_caption("a small red square staying still"))["heading"] == 1.0
    assert score_clip(moving, parse_caption("a small red square staying still"))["heading"] == 0.0
    assert score_clip(moving, parse_caption("a small red square"))["heading"] == 1.0  # nothing stated to follow
    two = parse_caption("a small red square moving right slowly and a small green circle moving left slowly")
    video = _drawn(5, range(2, 10), [4] * 8)
    video = np.maximum(video, _drawn(5, range(2, 10), [14] * 8, shape="circle", colour="green"))
    assert score_clip(video, two)["heading"] == 0.5  # the green circle goes right where left was stated
