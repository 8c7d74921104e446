"""Weight-free video metrics on hand-built clips with known answers."""

import numpy as np
import pytest

from vidpost.rewards.video import dynamic_degree, frame_consistency, temporal_flicker, video_metrics


def static_clip(t: int = 10, size: int = 32, seed: int = 0) -> np.ndarray:
    frame = np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)
    return np.repeat(frame[None], t, axis=0)  # (T, H, W, 3)


def moving_square(t: int = 10, size: int = 32, step: int = 1, side: int = 5) -> np.ndarray:
    clip = np.zeros((t, size, size, 3), dtype=np.float32)  # (T, H, W, 3)
    for i in range(t):
        clip[i, 12 : 12 + side, 2 + i * step : 2 + i * step + side] = 1.0
    return clip


def alternating(t: int = 6, size: int = 8) -> np.ndarray:
    clip = np.zeros((t, size, size, 3), dtype=np.float32)
    clip[1::2] = 1.0
    return clip


def test_flicker_extremes_are_exact() -> None:
    scores = temporal_flicker(np.stack([static_clip(size=8), alternating(t=10, size=8)]))
    assert scores.dtype == np.float64 and scores.shape == (2,)
    assert scores[0] == 1.0
    assert scores[1] == 0.0


def test_flicker_hand_worked_two_frames() -> None:
    # 2x1 frames: pixel 0 goes 0 -> 51/255 in every channel, pixel 1 stays; mean |diff| = 25.5 on 0..255.
    clip = np.zeros((1, 2, 2, 1, 3), dtype=np.float32)
    clip[0, 1, 0] = 51 / 255
    assert temporal_flicker(clip)[0] == pytest.approx((255 - 25.5) / 255, abs=1e-6)


def test_dynamic_degree_static_vs_moving() -> None:
    scores = dynamic_degree(np.stack([static_clip(), moving_square()]))
    assert scores[0] < 0.1
    assert scores[1] > 0.5


def test_identical_frames_give_no_flow_even_at_the_border() -> None:
    """Guards the padding around OpenCV's Farneback, whose last row/column otherwise invent ~0.4 px."""
    assert dynamic_degree(static_clip(t=3, size=32)[None])[0] < 1e-3


def test_dynamic_degree_grows_with_speed_on_a_large_frame() -> None:
    """At 128x128 the threshold is 3 px/frame, so 1 px/frame is partial and 4 px/frame saturates."""
    slow = moving_square(t=6, size=128, step=1, side=20)
    fast = moving_square(t=6, size=128, step=4, side=20)
    still, slow_score, fast_score = dynamic_degree(np.stack([static_clip(t=6, size=128), slow, fast]))
    assert still < 0.05 < slow_score < fast_score
    assert slow_score == pytest.approx(1 / 3, abs=0.1) and fast_score == 1.0


def test_frame_consistency_static_is_one_and_colour_change_is_lower() -> None:
    changing = static_clip() * 0.5
    changing[5:] += 0.5  # every colour moves to the upper half of its range halfway through
    static, moving, changed = frame_consistency(np.stack([static_clip(), moving_square(), changing]))
    assert static == 1.0
    assert moving == 1.0  # a same-coloured object moving keeps the histogram
    assert changed == pytest.approx(8 / 9)  # 1 of 9 pairs shares no bin


def test_frame_consistency_matches_histogramdd_on_one_pair() -> None:
    rng = np.random.default_rng(1)
    pair = rng.random((2, 16, 16, 3), dtype=np.float32)
    pair[1, :8] = pair[0, :8]  # half the pixels shared, so the intersection is well above zero
    pair[0, 0, 0] = [1.0, 0.125, 0.0]  # bin edges: 1.0 lands in the last bin, 0.125 in the second
    hists = [np.histogramdd(f.reshape(-1, 3), bins=8, range=[(0, 1)] * 3)[0] / 256 for f in pair]
    expected = np.minimum(*hists).sum()
    assert frame_consistency(pair[None])[0] == pytest.approx(expected, abs=1e-12)


def test_video_metrics_returns_all_families() -> None:
    videos = np.stack([static_clip(), moving_square()])
    out = video_metrics(videos, ["a", "b"])
    assert set(out) == {"flicker", "dynamic_degree", "frame_consistency"}
    for scores in out.values():
        assert scores.shape == (2,) and scores.dtype == np.float64
        assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize(
    ("videos", "match"),
    [
        (np.zeros((10, 32, 32, 3), np.float32), "shape"),
        (np.zeros((1, 10, 32, 32, 4), np.float32), "shape"),
        (np.zeros((1, 1, 32, 32, 3), np.float32), "T >= 2"),
        (np.full((1, 2, 8, 8, 3), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((1, 2, 8, 8, 3), np.nan, np.float32), r"\[0, 1\]"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), "floating"),
    ],
)
def test_bad_input_is_rejected(videos: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        video_metrics(videos, ["p"] * len(videos))


def test_prompt_count_must_match() -> None:
    with pytest.raises(ValueError, match="prompts"):
        video_metrics(np.stack([static_clip()]), ["a", "b"])
