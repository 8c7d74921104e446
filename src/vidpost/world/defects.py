"""Visual defects of scraped video, applied to part of the `web` clips.

Each defect is a pure function of (video, rng) -> video on float (T, H, W, 3) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Defect = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def flicker(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-frame brightness gain, like auto-exposure pumping."""
    gain = 1.0 + rng.uniform(-0.25, 0.25, size=(len(video), 1, 1, 1))
    offset = rng.uniform(-0.08, 0.08, size=(len(video), 1, 1, 1))
    return np.clip(video * gain + offset, 0.0, 1.0)


def jitter(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: some frames shifted by one pixel, edges replicated."""
    out = video.copy()
    for t in range(len(video)):
        if rng.random() < 0.4:
            dy, dx = rng.integers(-1, 2, size=2)
            padded = np.pad(video[t], ((1, 1), (1, 1), (0, 0)), mode="edge")
            out[t] = padded[1 + dy : 1 + dy + video.shape[1], 1 + dx : 1 + dx + video.shape[2]]
    return out


def blur(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus or upscaled footage: a 3x3 box blur on every frame."""
    return ndimage.uniform_filter(video, size=(1, 3, 3, 1), mode="nearest")


def noise(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor or compression noise."""
    std = rng.uniform(0.03, 0.1)
    return np.clip(video + rng.normal(0.0, std, size=video.shape), 0.0, 1.0).astype(video.dtype)


def dropped_frames(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A frame-rate conversion that repeats the previous frame in place of one or two others."""
    out = video.copy()
    for t in sorted(rng.choice(np.arange(1, len(video)), size=min(2, len(video) - 1), replace=False)):
        out[t] = out[t - 1]
    return out


DEFECTS: dict[str, Defect] = {
    "flicker": flicker,
    "jitter": jitter,
    "blur": blur,
    "noise": noise,
    "dropped_frames": dropped_frames,
}


def apply_random_defects(video: np.ndarray, rng: np.random.Generator, p_defect: float) -> tuple[np.ndarray, list[str]]:
    """With probability p_defect apply one or two distinct defects; returns the names applied."""
    if rng.random() >= p_defect:
        return video, []
    names = list(rng.choice(list(DEFECTS), size=int(rng.integers(1, 3)), replace=False))
    for name in names:
        video = DEFECTS[name](video, rng)
    return video.astype(np.float32), [str(n) for n in names]
