"""The rewards of an enhancer's rewrites: each is made into a video by a frozen video model, as it would be in
use, and the video is scored against what the user asked for."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidpost.data.video_io import to_float
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.enhance.base import check_rewrite, normalise
from vidpost.enhance.config import CheckConfig
from vidpost.generation import generate
from vidpost.rewards.registry import compute_rewards


def prompts_used(
    prompts: Sequence[str], rewrites: Sequence[str], shapeworld: bool = True
) -> tuple[list[str], np.ndarray]:
    """What the video model is given for each rewrite, and (B,) bool: which rewrites pass the enhancer's check.

    A rewrite that fails the check (empty, too long, not a canonical ShapeWorld caption) is replaced by its
    prompt, as `Enhancer.rewrite` does in use, so it is rewarded with what a user would get from it: the video
    of the terse prompt. A fixed penalty instead would score an outcome no user ever sees.
    """
    max_words = CheckConfig().max_words
    passed = np.array([check_rewrite(text, max_words, shapeworld=shapeworld) is None for text in rewrites])
    used = [normalise(text) if ok else prompt for prompt, text, ok in zip(prompts, rewrites, passed, strict=True)]
    return used, passed


def rewrite_rewards(
    video_model,
    prompts: Sequence[str],
    intents: Sequence[str],
    rewrites: Sequence[str],
    group_size: int,
    sampling: SamplingConfig,
    video: VideoConfig,
    seed: int,
    precision: str,
    names: Sequence[str],
    shapeworld: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The rewards of the videos made from P·G rewrites (group order), scored against the user's intents.

    A video is scored against the intent, what the user asked for, never against the rewrite: a rewrite that
    changes the request (another colour) would otherwise be paid for a video that matches the change. The G
    videos of group p all start from the noise of seed `seed + p`, so within a group the rewrite is the only
    difference and the advantages compare rewrites, not noise draws. Returns ({name: (P·G,)}, passed (P·G,)).
    `shapeworld`: rewrites must be canonical captions to be used (prompts_used).
    """
    used, passed = prompts_used(prompts, rewrites, shapeworld)
    videos: list[np.ndarray | None] = [None] * len(used)
    for member in range(group_size):  # member j of every group, group p from seed + p (generate's convention)
        made = generate(
            video_model, used[member::group_size], sampling, video, seed=seed, precision=precision, progress=False
        ).videos
        videos[member::group_size] = list(made)
    made_all = [v for v in videos if v is not None]
    assert len(made_all) == len(videos)  # every member's slice is filled
    return compute_rewards(names, to_float(np.stack(made_all)), intents), passed
