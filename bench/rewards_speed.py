"""Per-clip cost of the ShapeWorld reward family and of the weight-free video metrics, single thread.

Renders N_CLIPS random scenes of the default ShapeWorld (24x24, 8 frames, curated style, canonical captions), then times
`shapeworld_rewards` and `video_metrics` over all of them in batches of BATCH clips, best of REPEATS passes.
Rewards run inside every RL step, so the target is TARGET_MS per clip for each family.

    .venv/bin/python bench/rewards_speed.py

Writes bench/results/rewards_speed.json and bench/results/rewards_speed.png.
"""

from __future__ import annotations

import os

# Single thread, set before numpy / OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import datetime  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from results_file import RESULTS, machine, write_results  # noqa: E402

from vidpost.data.video_io import to_float  # noqa: E402
from vidpost.rewards.shapeworld import shapeworld_rewards  # noqa: E402
from vidpost.rewards.video import video_metrics  # noqa: E402
from vidpost.world.config import DatasetConfig  # noqa: E402
from vidpost.world.dataset import make_clip  # noqa: E402

N_CLIPS = 200
BATCH = 20
REPEATS = 3
TARGET_MS = 5.0
SEED = 0

Family = Callable[[np.ndarray, Sequence[str]], dict[str, np.ndarray]]


def render_clips(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(float32 videos (n, T, H, W, 3) in [0, 1], canonical captions) of n random train-split scenes."""
    cfg = DatasetConfig(n=n, seed=seed, split="train", style="curated")
    videos, captions = [], []
    for index in range(n):
        video, meta = make_clip(cfg, index)
        videos.append(to_float(video))
        captions.append(meta["caption"])
    return np.stack(videos), captions


def best_ms_per_clip(family: Family, videos: np.ndarray, captions: list[str]) -> tuple[float, list[float]]:
    """Best (and every) pass over all clips in batches of BATCH, in milliseconds per clip."""
    family(videos[:BATCH], captions[:BATCH])  # warm-up: caches, lazy imports
    passes = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(0, len(videos), BATCH):
            family(videos[i : i + BATCH], captions[i : i + BATCH])
        passes.append((time.perf_counter() - start) * 1000 / len(videos))
    return min(passes), passes


def plot(ms: dict[str, float], clip_shape: tuple[int, ...], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    names = list(ms)
    bars = ax.bar(names, [ms[n] for n in names], color=["tab:blue", "tab:orange"], width=0.55)
    ax.bar_label(bars, labels=[f"{ms[n]:.2f} ms" for n in names], padding=3)
    ax.axhline(TARGET_MS, color="tab:red", linestyle="--", linewidth=1, label=f"target {TARGET_MS:g} ms")
    ax.set_ylabel("ms per clip (best of 3, single thread)")
    ax.set_ylim(0, max(TARGET_MS, *ms.values()) * 1.25)
    frames, height, width, _ = clip_shape
    ax.set_title(f"Reward cost on {N_CLIPS} ShapeWorld clips ({frames}x{height}x{width})")
    ax.legend(loc="upper right")
    fig.text(
        0.01,
        0.01,
        f"{machine()}, {datetime.date.today().isoformat()}",
        fontsize=7,
        color="gray",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    cv2.setNumThreads(1)
    videos, captions = render_clips(N_CLIPS, SEED)
    ms, passes = {}, {}
    for name, family in (("shapeworld", shapeworld_rewards), ("video_metrics", video_metrics)):
        ms[name], passes[name] = best_ms_per_clip(family, videos, captions)
    write_results(
        "rewards_speed",
        ms_per_clip={k: round(v, 4) for k, v in ms.items()},
        all_passes_ms_per_clip={k: [round(p, 4) for p in v] for k, v in passes.items()},
        n_clips=N_CLIPS,
        clip_shape=list(videos.shape[1:]),
        batch_size=BATCH,
        repeats=REPEATS,
        target_ms=TARGET_MS,
        versions={"numpy": np.__version__, "opencv": cv2.__version__},
    )
    plot(ms, videos.shape[1:], RESULTS / "rewards_speed.png")
    for name, value in ms.items():
        verdict = "ok" if value <= TARGET_MS else "OVER TARGET"
        print(f"{name:<14} {value:8.3f} ms/clip  ({verdict}, target {TARGET_MS:g} ms)")
    print(f"wrote {RESULTS / 'rewards_speed.json'} and {RESULTS / 'rewards_speed.png'}")


if __name__ == "__main__":
    main()
