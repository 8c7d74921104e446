"""Weight-free video metrics that apply to any real video (no ShapeWorld assumption).

Every metric takes float32 videos (B, T, H, W, 3) in [0, 1] and returns float64 scores (B,) in [0, 1],
higher is better. They need no model weights, so they run anywhere and cannot be gamed by a model's blind
spots; they measure motion quality, not prompt faithfulness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

HIST_BINS = 8  # per channel; the joint RGB histogram has 8**3 = 512 cells
TOP_FRACTION = 0.05  # VBench's dynamic degree averages the top 5% of flow magnitudes
VBENCH_THRESHOLD_AT_256 = 6.0  # VBench's "static" flow threshold in pixels for a 256-pixel short side
# OpenCV's Farneback treats the last row and column as outside the image when sampling the second frame,
# which invents flow there that spreads inward: identical 32x32 noise frames got up to 0.4 px. A black
# border this wide moves that artefact into the padding (measured: max flow 0 at 32 px, ~1e-5 px at 256 px).
FLOW_PAD = 8
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


def _check_videos(videos: np.ndarray) -> None:
    if not isinstance(videos, np.ndarray):
        raise ValueError(f"videos must be a numpy array, got {type(videos).__name__}")
    if not np.issubdtype(videos.dtype, np.floating):
        raise ValueError(f"videos must be floating in [0, 1], got {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must have shape (B, T, H, W, 3), got {videos.shape}")
    if videos.shape[1] < 2:
        raise ValueError(f"video metrics compare consecutive frames and need T >= 2, got T={videos.shape[1]}")
    lo, hi = videos.min(), videos.max()
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        raise ValueError(f"videos must lie in [0, 1], got values in [{lo}, {hi}]")


def temporal_flicker(videos: np.ndarray) -> np.ndarray:
    """VBench temporal flickering: (255 - mean |frame_t+1 - frame_t| on the 0..255 scale) / 255.

    The mean runs over pixels, channels and consecutive pairs, so 1.0 means perfectly still and 0.0 means
    every pixel swings between black and white each frame.
    """
    _check_videos(videos)
    diff = np.abs(np.diff(videos, axis=1))  # (B, T-1, H, W, 3)
    mean_abs = diff.mean(axis=(1, 2, 3, 4), dtype=np.float64) * 255.0  # (B,)
    return np.clip((255.0 - mean_abs) / 255.0, 0.0, 1.0)


def _to_gray_uint8(videos: np.ndarray) -> np.ndarray:
    gray = videos @ _GRAY_WEIGHTS  # (B, T, H, W)
    return np.rint(gray * 255.0).clip(0, 255).astype(np.uint8)


def _farneback_params(height: int, width: int) -> dict:
    """Scale the pyramid and window with the frame, so 32x32 test clips and 480p videos both work.

    At most enough pyramid levels to bring the short side to 16 px (OpenCV itself stops before a side drops
    under 32 px); the averaging window is about 1/8 of the short side (odd, at least 5).
    """
    short = min(height, width)
    levels = 1 + math.floor(math.log2(short / 16)) if short >= 16 else 1
    winsize = max(5, (short // 8) | 1)
    return dict(pyr_scale=0.5, levels=levels, winsize=winsize, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _pad(frame: np.ndarray) -> np.ndarray:
    p = FLOW_PAD
    return cv2.copyMakeBorder(frame, p, p, p, p, cv2.BORDER_CONSTANT, value=0)


def _top_flow(prev: np.ndarray, nxt: np.ndarray, params: dict) -> float:
    """Mean of the largest 5% flow magnitudes between two gray frames, in pixels."""
    flow = cv2.calcOpticalFlowFarneback(_pad(prev), _pad(nxt), None, **params)  # (H + 2 pad, W + 2 pad, 2)
    flow = flow[FLOW_PAD:-FLOW_PAD, FLOW_PAD:-FLOW_PAD]  # (H, W, 2)
    mag = np.hypot(flow[..., 0], flow[..., 1]).ravel()  # (H*W,)
    k = max(1, math.ceil(TOP_FRACTION * mag.size))
    return float(np.partition(mag, mag.size - k)[-k:].mean())


def dynamic_degree(videos: np.ndarray) -> np.ndarray:
    """How much the video moves: VBench's dynamic degree with Farneback flow in place of RAFT.

    Per consecutive pair, the mean of the top 5% Farneback flow magnitudes (pixels); averaged over pairs
    to m; score = min(1, m / thr) with VBench's static threshold scaled to the frame,
    thr = 6.0 * min(H, W) / 256 (0.75 px at 32x32, 11.25 px at 480p). VBench thresholds each pair and
    counts; a continuous score is kinder to optimisation. A still video scores ~0; at 32x32 a 5x5 square
    moving 1 px per frame scores 1.0.
    """
    _check_videos(videos)
    gray = _to_gray_uint8(videos)  # (B, T, H, W)
    height, width = gray.shape[2:]
    params = _farneback_params(height, width)
    thr = VBENCH_THRESHOLD_AT_256 * min(height, width) / 256.0
    scores = np.empty(len(gray), dtype=np.float64)
    for i, clip in enumerate(gray):
        m = np.mean([_top_flow(a, b, params) for a, b in zip(clip[:-1], clip[1:], strict=True)])
        scores[i] = min(1.0, m / thr)
    return scores


def _joint_histograms(video: np.ndarray) -> np.ndarray:
    """Integer joint RGB histogram per frame, (T, 512); integers keep the static case exactly 1.0."""
    q = np.minimum(video * HIST_BINS, HIST_BINS - 1).astype(np.int64)  # (T, H, W, 3) bin per channel
    cell = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]  # (T, H, W)
    n_cells = HIST_BINS**3
    t = video.shape[0]
    offsets = np.arange(t, dtype=np.int64)[:, None, None] * n_cells
    return np.bincount((cell + offsets).ravel(), minlength=t * n_cells).reshape(t, n_cells)


def frame_consistency(videos: np.ndarray) -> np.ndarray:
    """Mean colour-histogram intersection of consecutive frames (8 bins per channel, joint RGB).

    Histograms ignore where colours are, so motion barely lowers the score while content appearing,
    vanishing or changing colour does.
    """
    _check_videos(videos)
    n_pixels = videos.shape[2] * videos.shape[3]
    scores = np.empty(len(videos), dtype=np.float64)
    # One video at a time: the int64 bin indices are 8x the size of the float32 input.
    for i, video in enumerate(videos):
        hist = _joint_histograms(video)  # (T, 512)
        inter = np.minimum(hist[1:], hist[:-1]).sum(axis=1) / n_pixels  # (T-1,)
        scores[i] = inter.mean()
    return scores


def video_metrics(videos: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """All weight-free metrics; `prompts` is the common reward signature and only checked for length."""
    _check_videos(videos)
    if len(prompts) != len(videos):
        raise ValueError(f"got {len(prompts)} prompts for {len(videos)} videos")
    return {
        "flicker": temporal_flicker(videos),
        "dynamic_degree": dynamic_degree(videos),
        "frame_consistency": frame_consistency(videos),
    }
