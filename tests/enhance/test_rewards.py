"""The rewards of rewrites: videos scored against the user's intent, one noise per group, a failed rewrite
replaced by its prompt."""

from types import SimpleNamespace

import numpy as np

from vidpost.data.video_io import to_uint8
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.enhance import rewards as rewards_module
from vidpost.enhance.rewards import rewrite_rewards
from vidpost.errors import CaptionError
from vidpost.world.grammar import parse_caption
from vidpost.world.render import render_scene


def _parses(text: str) -> bool:
    try:
        return parse_caption(text).is_complete
    except CaptionError:
        return False


def test_rewards_score_the_videos_against_the_intent_from_one_noise_per_group(monkeypatch):
    calls = []

    def render_exactly(model, prompts, sampling, video, seed=0, precision="float32", progress=True):
        """A perfect video model: video j shows exactly what prompt j says (a black clip if it is no caption)."""
        calls.append((list(prompts), seed))
        videos = [
            render_scene(parse_caption(p), np.random.default_rng(seed + j))
            if _parses(p)
            else np.zeros((8, 24, 24, 3), np.float32)
            for j, p in enumerate(prompts)
        ]
        return SimpleNamespace(videos=to_uint8(np.stack(videos)))

    monkeypatch.setattr(rewards_module, "generate", render_exactly)
    prompts = ["red ball going left"] * 3 + ["blue box"] * 3
    intents = ["a red circle moving left"] * 3 + ["a blue square"] * 3
    rewrites = [
        "a large red circle moving left slowly on a black background",
        "a large green circle moving left slowly on a black background",  # another colour
        "red red red",  # no caption: the terse prompt is used instead
        "a small blue square staying still on a black background",
        "a small blue triangle staying still on a black background",  # another shape
        "a large blue square moving up quickly on a white background",
    ]
    args = (SamplingConfig(), VideoConfig(), 7, "float32", ["total"])
    rewards, passed = rewrite_rewards(None, prompts, intents, rewrites, 3, *args)
    assert passed.tolist() == [True, True, False, True, True, True]
    # member j of each group in one call, from seed 7, so group p's videos all start from the noise of 7 + p
    assert calls == [
        ([rewrites[0], rewrites[3]], 7),
        ([rewrites[1], rewrites[4]], 7),
        (["red ball going left", rewrites[5]], 7),
    ]
    total = rewards["total"]
    assert total[0] > 0.9 and total[3] > 0.9 and total[5] > 0.9  # kept what the user asked, filled in the rest
    assert total[1] == 0 and total[4] == 0 and total[2] == 0
    # scored against the rewrites instead, the changed ones would be paid as well as the faithful ones
    stated = [r if _parses(r) else i for r, i in zip(rewrites, intents, strict=True)]
    against_rewrites, _ = rewrite_rewards(None, prompts, stated, rewrites, 3, *args)
    assert against_rewrites["total"][1] > 0.9 and against_rewrites["total"][4] > 0.9
