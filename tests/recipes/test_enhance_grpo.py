"""`vidpost enhance train`, stage 2 (GRPO of the toy enhancer on video rewards): a tiny run on the shipped video
model that logs its metrics and resumes exactly (its loss and rewards: tests/enhance/test_losses.py,
test_rewards.py)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from vidpost.enhance.resolve import load_enhancer
from vidpost.errors import VidpostError
from vidpost.recipes.enhance import EnhanceConfig, train
from vidpost.runlog import read_metrics

SFT_STEPS = 30


def _config(reward: dict | None = None, validation: dict | None = None, **grpo) -> EnhanceConfig:
    return EnhanceConfig.model_validate(
        {
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
            "data": {"eval_n": 4},
            "sft": {"steps": SFT_STEPS, "pairs_per_step": 16, "optim": {"learning_rate": 1e-2}},  # parses most prompts
            "grpo": {
                "steps": 2,
                "prompts_per_step": 2,
                "samples_per_prompt": 3,
                "sampling": {"steps": 2},
                "optim": {"learning_rate": 3e-3},
                **grpo,
            },
            **({"reward": reward} if reward is not None else {}),
            "validation": {"videos": 2, **(validation or {})},
            "max_new_tokens": 24,
            "checkpoint": {"every_steps": 100, "keep_last": 5},
            "log": {"every_steps": 10},
        }
    )


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
        assert {
            "grpo/reward_total",
            "grpo/reward_coherence",
            "grpo/reward_quality",
            "grpo/parse",
            "grpo/loss",
            "grpo/kl",
            "grpo/clip_frac",
            "grpo/seconds_per_step",
        } <= set(r)
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
        return [
            {k: v for k, v in r.items() if k != "grpo/seconds_per_step"}
            for r in read_metrics(run)
            if any(k.startswith("grpo/") for k in r)
        ]

    assert grpo_rows(tmp_path) == grpo_rows(finished_run)  # the resumed log reads as one run, baseline once


def test_bad_reward_names_and_too_many_validation_videos_fail_before_training(tmp_path):
    with pytest.raises(VidpostError, match="unknown reward 'sharpness'"):
        train(_config(reward={"weights": {"sharpness": 1.0}}), tmp_path, progress=False)
    assert not (tmp_path / "sft").exists()
    with pytest.raises(ValueError, match="validation.videos 5 exceeds data.eval_n 4"):
        _config(validation={"videos": 5})
