"""`vidpost enhance train`, stage 2 (GRPO of the toy enhancer on video rewards): the loss on a hand-worked
example, rewards against the user's intent, and a tiny run on the shipped video model that resumes exactly."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidpost.data.video_io import to_uint8
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.enhance.resolve import load_enhancer
from vidpost.errors import CaptionError, VidpostError
from vidpost.recipes import enhance
from vidpost.recipes.enhance import EnhanceConfig, enhancer_grpo_loss, rewrite_rewards, train
from vidpost.runlog import read_metrics
from vidpost.world.grammar import parse_caption
from vidpost.world.render import render_scene

SFT_STEPS = 30


def test_the_loss_on_a_hand_worked_example():
    # rewrite 0: 2 tokens, A = +1; its second token has ratio e^0.2 = 1.2214 > 1 + 0.2, so it is clipped
    # rewrite 1: 3 tokens, A = -0.5; ratios e^0.1 = 1.1052, 1, 1 (inside the clip range)
    logprobs = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -0.7, 0.0], [-2.1, -0.1, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -0.5], dtype=torch.float64)
    loss, metrics = enhancer_grpo_loss(logprobs, old, mask, advantages, clip_range=0.2)
    # token terms max(-A·ρ, -A·clip(ρ, 0.8, 1.2)): rewrite 0: -1, max(-1.2214, -1.2) = -1.2; mean -1.1
    # rewrite 1: 0.5 · 1.1052 = 0.55259, 0.5, 0.5; mean 1.55259 / 3 = 0.51753; over rewrites: (-1.1 + 0.51753) / 2
    rewrite_0 = (-1.0 + -1.2) / 2
    rewrite_1 = (0.5 * math.exp(0.1) + 0.5 + 0.5) / 3
    assert loss.item() == pytest.approx((rewrite_0 + rewrite_1) / 2, abs=1e-12)
    assert metrics["clip_frac"] == pytest.approx(1 / 5)
    loss.backward()
    # d loss / d log π = -A·ρ / (tokens of the rewrite · rewrites), and 0 for the clipped token and for padding:
    # descending it raises the log-probs of the positive-advantage rewrite and lowers the negative one's
    expected = torch.tensor([[-1.0 / (2 * 2), 0.0, 0.0],
                             [0.5 * math.exp(0.1) / (3 * 2), 0.5 / (3 * 2), 0.5 / (3 * 2)]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)


def test_the_kl_term_is_the_k3_estimate_per_token():
    logprobs = torch.tensor([[-0.5, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    mask, zero = torch.tensor([[1, 1]]), torch.zeros(1, dtype=torch.float64)
    loss, metrics = enhancer_grpo_loss(logprobs, logprobs, mask, zero, 0.2, ref_logprobs=ref, kl_beta=0.1)
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(r − l) − (r − l) − 1 with r − l = −0.5; the second token: 0
    assert metrics["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.1 * k3 / 2)  # A = 0: only β·KL, averaged over the 2 tokens


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
        videos = [render_scene(parse_caption(p), np.random.default_rng(seed + j)) if _parses(p)
                  else np.zeros((8, 24, 24, 3), np.float32) for j, p in enumerate(prompts)]
        return SimpleNamespace(videos=to_uint8(np.stack(videos)))

    monkeypatch.setattr(enhance, "generate", render_exactly)
    prompts = ["red ball going left"] * 3 + ["blue box"] * 3
    intents = ["a red circle moving left"] * 3 + ["a blue square"] * 3
    rewrites = ["a large red circle moving left slowly on a black background",
                "a large green circle moving left slowly on a black background",  # another colour
                "red red red",  # no caption: the terse prompt is used instead
                "a small blue square staying still on a black background",
                "a small blue triangle staying still on a black background",  # another shape
                "a large blue square moving up quickly on a white background"]
    args = (SamplingConfig(), VideoConfig(), 7, "float32", ["total"])
    rewards, passed = rewrite_rewards(None, prompts, intents, rewrites, 3, *args)
    assert passed.tolist() == [True, True, False, True, True, True]
    # member j of each group in one call, from seed 7, so group p's videos all start from the noise of 7 + p
    assert calls == [([rewrites[0], rewrites[3]], 7), ([rewrites[1], rewrites[4]], 7), (["red ball going left", rewrites[5]], 7)]
    total = rewards["total"]
    assert total[0] > 0.9 and total[3] > 0.9 and total[5] > 0.9  # kept what the user asked, filled in the rest
    assert total[1] == 0 and total[4] == 0 and total[2] == 0
    # scored against the rewrites instead, the changed ones would be paid as well as the faithful ones
    stated = [r if _parses(r) else i for r, i in zip(rewrites, intents, strict=True)]
    against_rewrites, _ = rewrite_rewards(None, prompts, stated, rewrites, 3, *args)
    assert against_rewrites["total"][1] > 0.9 and against_rewrites["total"][4] > 0.9


def _config(**grpo) -> EnhanceConfig:
    return EnhanceConfig.model_validate({
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "data": {"eval_n": 4},
        "sft": {"steps": SFT_STEPS, "batch_size": 16, "optim": {"learning_rate": 1e-2}},  # parses most prompts
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 3, "sampling": {"steps": 2}, "val_videos": 2,
                 "optim": {"learning_rate": 3e-3}, "checkpoint_every_steps": 1, **grpo},
        "max_new_tokens": 24, "checkpoint": {"every_steps": 100, "keep_last": 5}, "log_every_steps": 10,
    })


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("enhance_grpo_run")
    assert train(_config(), out, progress=False) == out / "grpo"
    return out


def test_a_run_writes_the_grpo_enhancer_and_logs_the_metrics(finished_run):
    enhancer = load_enhancer(str(finished_run))
    assert enhancer.cfg.path == str(finished_run / "grpo")
    card = json.loads((finished_run / "grpo" / "enhancer.json").read_text())
    assert card["stage"] == "grpo" and card["video_model"] == "shapeworld-sft" and "grpo/val_reward" in card
    rows = [r for r in read_metrics(finished_run) if "grpo/reward" in r]
    assert [r["step"] for r in rows] == [SFT_STEPS + 1, SFT_STEPS + 2]  # after SFT's steps: one run in the log
    for r in rows:
        assert {"grpo/reward_total", "grpo/reward_coherence", "grpo/reward_quality", "grpo/parse", "grpo/loss",
                "grpo/kl", "grpo/clip_frac", "grpo/seconds_per_step"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
        assert r["grpo/logprob_gap"] < 1e-4  # sampling and teacher forcing agree: the first ratio is 1
        assert r["grpo/clip_frac"] == 0  # one epoch: on-policy
    assert 0 < rows[0]["grpo/parse"] <= 1 and rows[0]["grpo/tied_groups"] < 1  # rewrites differ: advantages too
    vals = [r for r in read_metrics(finished_run) if "grpo/val_reward" in r]
    assert [r["step"] for r in vals] == [SFT_STEPS, SFT_STEPS + 2]  # the SFT enhancer's baseline, then the end
    assert {"grpo/val_parse", "grpo/val_complete", "grpo/val_intent", "grpo/val_reward_total"} <= set(vals[-1])
    sft = load_file(finished_run / "sft" / "model.safetensors")
    grpo = load_file(finished_run / "grpo" / "model.safetensors")
    assert any(not torch.equal(sft[k], grpo[k]) for k in sft)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == SFT_STEPS and summary["grpo/steps"] == 2 and "sft/val_parse" in summary
    assert train(_config(), finished_run, progress=False) == finished_run / "grpo"  # finished: nothing to do


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(finished_run, tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=SFT_STEPS + 1) is None  # after GRPO step 1
    assert (tmp_path / "sft").is_dir() and not (tmp_path / "grpo").exists()
    assert train(_config(), tmp_path, progress=False) == tmp_path / "grpo"
    a = load_file(finished_run / "grpo" / "model.safetensors")
    b = load_file(tmp_path / "grpo" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def grpo_rows(run):
        return [{k: v for k, v in r.items() if k != "grpo/seconds_per_step"}
                for r in read_metrics(run) if any(k.startswith("grpo/") for k in r)]

    assert grpo_rows(tmp_path) == grpo_rows(finished_run)  # the resumed log reads as one run, baseline once


def test_bad_reward_names_and_too_many_validation_videos_fail_before_training(tmp_path):
    with pytest.raises(VidpostError, match="unknown reward 'sharpness'"):
        train(_config(reward_weights={"sharpness": 1.0}), tmp_path, progress=False)
    assert not (tmp_path / "sft").exists()
    with pytest.raises(ValueError, match="val_videos 5 exceeds data.eval_n 4"):
        _config(val_videos=5)
