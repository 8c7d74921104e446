"""Score a dataset folder against its captions: the `vidpost score` command and every held-out table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidpost.data.dataset import iter_clips
from vidpost.data.video_io import to_float
from vidpost.errors import CaptionError
from vidpost.rewards.registry import REWARDS, check_reward_names, compute_rewards
from vidpost.world.config import DatasetConfig, WorldConfig

log = logging.getLogger("vidpost")

CAPTION_FREE_FAMILIES = ("video",)  # reward families that read only the frames

DEFAULT_REWARDS = (
    "total",
    "instruction",
    "coherence",
    "quality",
    "success",
    "flicker",
    "dynamic_degree",
    "frame_consistency",
)


@dataclass
class FolderScore:
    """What `vidpost score` reports and writes as JSON."""

    dataset: str
    caption_key: str
    n: int = 0
    skipped: list[dict] = field(default_factory=list)
    per_clip: list[dict] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        """Each reward's mean over the clips that have it (a clip whose caption did not parse has only the
        caption-free metrics)."""
        names = dict.fromkeys(k for c in self.per_clip for k in c if k not in ("file", "caption"))
        return {name: float(np.mean([c[name] for c in self.per_clip if name in c])) for name in names}

    def to_json(self) -> dict:
        mean = self.mean
        return {
            "dataset": self.dataset,
            "caption_key": self.caption_key,
            "n": self.n,
            "skipped": len(self.skipped),
            "mean": mean,
            "success_rate": mean.get("success"),
            "skipped_clips": self.skipped,
            "per_clip": self.per_clip,
        }


def score_folder(
    root: str | Path, caption_key: str = "caption", rewards: Sequence[str] = DEFAULT_REWARDS, progress: bool = True
) -> FolderScore:
    """Score every readable clip; unreadable clips and unparsable captions are skipped and counted."""
    check_reward_names(rewards)
    reader = iter_clips(root, caption_key)
    result = FolderScore(dataset=str(root), caption_key=caption_key)
    bar = tqdm(total=len(reader), desc=f"score {Path(root).name}", unit="clip", disable=not progress)
    for clip in reader:
        bar.update(reader.n_read + len(reader.skipped) - bar.n)  # skipped clips count as done
        try:
            scores = compute_rewards(rewards, to_float(clip.frames)[None], [clip.caption])
        except CaptionError as err:
            free = [r for r in rewards if REWARDS[r] in CAPTION_FREE_FAMILIES]
            scored = f"; scored {', '.join(free)} only" if free else ""
            log.warning("clip %s: %s%s", clip.file, err, scored)
            result.skipped.append({"file": clip.file, "reason": f"{err}{scored}"})
            if free:
                scores = compute_rewards(free, to_float(clip.frames)[None], [clip.caption])
                result.per_clip.append(
                    {"file": clip.file, "caption": clip.caption, **{k: float(v[0]) for k, v in scores.items()}}
                )
            continue
        result.per_clip.append(
            {"file": clip.file, "caption": clip.caption, **{k: float(v[0]) for k, v in scores.items()}}
        )
    bar.update(len(reader) - bar.n)
    bar.close()
    unparsable = len(result.skipped)
    result.skipped = [{"file": what, "reason": why} for what, why in reader.problems + reader.skipped] + result.skipped
    result.n = len(result.per_clip)
    if reader.n_read and unparsable == reader.n_read:
        fields = sorted(
            {k for r in reader.records for k, v in r.items() if isinstance(v, str) and k not in ("file", caption_key)}
        )
        hint = (
            " e.g. --caption-key canonical"
            if "canonical" in fields
            else f" its string fields: {', '.join(fields)}"
            if fields
            else " it has none besides file"
        )
        log.warning(
            "no caption in %s parsed as a ShapeWorld caption (web-style captions never do); score "
            "against another metadata field (--caption-key):%s",
            root,
            hint,
        )
    return result


def format_table(scores: Sequence[FolderScore]) -> str:
    """Mean rewards of one or more folders side by side, one reward per row."""
    means = [s.mean for s in scores]  # each is a pass over every clip: once per folder, not per row
    names = list(dict.fromkeys(k for m in means for k in m))
    headers = [Path(s.dataset).name for s in scores]
    width = max([14, *(len(h) for h in headers)])
    lines = [f"{'reward':<20}" + "".join(f"{h:>{width}}" for h in headers)]
    lines.append("-" * len(lines[0]))
    for name in names:
        label = "success_rate" if name == "success" else name
        lines.append(f"{label:<20}" + "".join(f"{m.get(name, float('nan')):>{width}.3f}" for m in means))
    lines.append(f"{'clips scored':<20}" + "".join(f"{s.n:>{width}d}" for s in scores))
    lines.append(f"{'clips skipped':<20}" + "".join(f"{len(s.skipped):>{width}d}" for s in scores))
    return "\n".join(lines)


# instruction_graded: partial credit, so a model whose strict total is still 0 shows where it moves
SHAPEWORLD_SCORES = (
    "total",
    "instruction",
    "instruction_graded",
    "instruction_additive",
    "instruction_checks",
    "coherence",
    "quality",
    "success",
)


def shapeworld_records(split: str, n: int, seed: int = 0, world: WorldConfig | None = None) -> list[dict]:
    """The texts (canonical, terse, intent) of the first n clips of a ShapeWorld split: fixed evaluation prompts.
    `world`: the scenes' canvas and object count (null: the default world)."""
    from vidpost.world.dataset import prompt_record

    cfg = DatasetConfig(n=n, seed=seed, split=split, world=world or WorldConfig())
    return [prompt_record(cfg, i) for i in range(n)]


def shapeworld_prompts(split: str, n: int, seed: int = 0, world: WorldConfig | None = None) -> list[str]:
    """The canonical captions of the first n clips of a ShapeWorld split."""
    return [record["canonical"] for record in shapeworld_records(split, n, seed, world)]


def shapeworld_requests(
    split: str, n: int, seed: int = 0, wording: str = "canonical", world: WorldConfig | None = None
) -> tuple[list[str], list[str]]:
    """(what the model is asked, what its videos are scored against) for the first n clips of a split.

    wording "canonical": the canonical captions, twice. "terse": what a user types (an enhancer's input) and the
    intent behind it, a partial canonical caption, so a video is judged by what was asked for, not by the rewrite.
    """
    if wording == "canonical":
        captions = shapeworld_prompts(split, n, seed, world)
        return captions, captions
    if wording != "terse":
        raise ValueError(f"unknown prompt wording {wording!r}; expected canonical or terse")
    records = shapeworld_records(split, n, seed, world)
    return [r["terse"] for r in records], [r["intent"] for r in records]


def score_videos_per_clip(
    videos: np.ndarray, captions: Sequence[str], rewards: Sequence[str] = SHAPEWORLD_SCORES
) -> dict[str, np.ndarray]:
    """Each reward (N,) of videos (N, T, H, W, 3) scored against their captions."""
    return compute_rewards(rewards, to_float(videos), list(captions))


def score_videos(videos: np.ndarray, captions: Sequence[str], rewards: Sequence[str] = SHAPEWORLD_SCORES) -> dict:
    """Mean of each reward over videos (N, T, H, W, 3) scored against their captions."""
    return {name: float(np.mean(values)) for name, values in score_videos_per_clip(videos, captions, rewards).items()}
