"""`vidpost enhance train`, stage 1 (SFT of the toy enhancer): a few real steps, exact resume, and the metrics."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vidpost.enhance.intent import rewrite_metrics, states_intent
from vidpost.enhance.pairs import training_pair
from vidpost.enhance.resolve import load_enhancer
from vidpost.enhance.toy import ToyEnhancer
from vidpost.errors import VidpostError
from vidpost.recipes.enhance import EnhanceConfig, train
from vidpost.runlog import read_metrics
from vidpost.world.grammar import parse_caption
from vidpost.world.sampling import split_of


def _config(model: dict | None = None, every_steps: int = 2, **sft) -> EnhanceConfig:
    return EnhanceConfig.model_validate(
        {
            "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, **(model or {})},
            "data": {"eval_n": 4},
            "sft": {"steps": 4, "pairs_per_step": 8, "optim": {"learning_rate": 3e-3}, **sft},
            "max_new_tokens": 12,
            "validation": {"every_steps": every_steps},
            "checkpoint": {"every_steps": 1, "keep_last": 5},
            "log": {"every_steps": 1},
        }
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("enhance_run")
    assert train(_config(), out, progress=False) == out / "sft"
    return out


def test_a_run_writes_a_loadable_enhancer_logs_and_summary(finished_run):
    enhancer = load_enhancer(str(finished_run))
    assert isinstance(enhancer, ToyEnhancer) and enhancer.cfg.path == str(finished_run / "sft")
    assert len(enhancer.rewrite(["red ball", "blue box"])) == 2
    metrics = read_metrics(finished_run)
    losses = [m["sft/loss"] for m in metrics if "sft/loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert {"sft/val_parse", "sft/val_complete", "sft/val_intent"} <= set(metrics[-1])
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["sft/val_parse"] <= 1
    card = json.loads((finished_run / "sft" / "enhancer.json").read_text())
    assert card["backend"] == "toy" and card["stage"] == "sft"
    assert train(_config(), finished_run, progress=False) == finished_run / "sft"  # finished: nothing to do


def test_a_killed_and_resumed_run_ends_with_the_same_weights(finished_run, tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=2) is None
    assert not (tmp_path / "sft").exists()
    train(_config(), tmp_path, progress=False)
    a = load_file(finished_run / "sft" / "model.safetensors")
    b = load_file(tmp_path / "sft" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [m["step"] for m in read_metrics(tmp_path) if "sft/loss" in m]
    assert steps == [1, 2, 3, 4]  # the resumed log reads as one run


def test_a_run_stopped_after_its_last_step_finishes_with_its_scores(tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=4) is None  # checkpoint 4 written, no sft/ yet
    assert train(_config(), tmp_path, progress=False) == tmp_path / "sft"
    card = json.loads((tmp_path / "sft" / "enhancer.json").read_text())
    assert card["steps"] == 4 and 0 <= card["sft/val_intent"] <= 1
    assert [m["step"] for m in read_metrics(tmp_path) if "sft/val_intent" in m][-1] == 4  # logged at its step


def test_a_run_directory_refuses_another_config(finished_run):
    with pytest.raises(VidpostError, match="another config"):
        train(_config(steps=5), finished_run, progress=False)


def test_pairs_are_train_split_terse_prompts_and_full_canonical_captions():
    for index in range(20):
        terse, canonical = training_pair(0, index)
        spec = parse_caption(canonical)
        assert spec.is_complete and split_of(spec) == "train" and terse != canonical
    assert training_pair(0, 7) == training_pair(0, 7) and training_pair(0, 7) != training_pair(1, 7)


def test_states_intent_and_rewrite_metrics():
    intent = parse_caption("a red circle moving left and a small blue square on a white background")
    good = parse_caption(
        "a small blue square staying still and a large red circle moving left quickly on a white background"
    )
    assert states_intent(good, intent)  # order free, unstated attributes free
    for wrong in (
        "a large red circle moving right quickly and a small blue square staying still on a white background",
        "a large red circle moving left quickly and a large blue square staying still on a white background",
        "a large red circle moving left quickly and a small blue square staying still on a black background",
        "a large red triangle moving left quickly and a small blue square staying still on a white background",
        "a large red circle moving left quickly on a white background",
    ):
        assert not states_intent(parse_caption(wrong), intent), wrong
    intents = ["a red circle", "a red circle", "a blue square"]
    metrics = rewrite_metrics(
        ["a large red circle staying still on a black background", "a red circle", "not a caption"], intents
    )
    assert metrics == {"parse": 2 / 3, "complete": 1 / 3, "intent": 2 / 3}


def test_sft_starts_from_model_init_and_zero_steps_keeps_its_weights(finished_run, tmp_path):
    init = {"init": str(finished_run)}  # a run directory resolves to its finished enhancer, as --enhancer does
    assert train(_config(init, steps=0), tmp_path / "kept", progress=False) == tmp_path / "kept" / "sft"
    start = load_file(finished_run / "sft" / "model.safetensors")
    kept = load_file(tmp_path / "kept" / "sft" / "model.safetensors")
    assert start.keys() == kept.keys() and all(torch.equal(start[k], kept[k]) for k in start)
    card = json.loads((tmp_path / "kept" / "sft" / "enhancer.json").read_text())
    assert card["steps"] == 0 and 0 <= card["sft/val_intent"] <= 1  # the init's validation, logged at step 0
    assert [m["step"] for m in read_metrics(tmp_path / "kept") if "sft/val_intent" in m] == [0]

    def distance_from_start(run: str, **model) -> float:
        train(_config(model, steps=1, every_steps=0), tmp_path / run, progress=False)
        end = load_file(tmp_path / run / "sft" / "model.safetensors")
        return max(float((end[k] - start[k]).abs().max()) for k in start)

    # one step moves the init's weights by about the learning rate; another random start is far from them
    assert 0 < distance_from_start("continued", **init) < 0.01 < distance_from_start("fresh", seed=1)


def test_a_bad_model_init_fails_before_the_run_directory_records_the_config(finished_run, random_toy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(VidpostError, match=r"model.init .*: model.\* must match .*hidden_size 48 \(init: 32\)"):
        train(_config({"init": str(finished_run), "hidden_size": 48}), out, progress=False)
    with pytest.raises(VidpostError, match="enhancer not found"):
        train(_config({"init": str(tmp_path / "nowhere")}), out, progress=False)
    hf_model = tmp_path / "hf"  # a language model folder that is not a toy enhancer
    shutil.copytree(random_toy, hf_model, ignore=shutil.ignore_patterns("enhancer.json"))
    with pytest.raises(VidpostError, match="not a toy enhancer"):
        train(_config({"init": str(hf_model)}), out, progress=False)
    assert not (out / "config.yaml").exists()  # so the corrected command is not refused as another config
    with pytest.raises(ValueError, match="sft.steps 0 needs model.init"):
        _config(steps=0)
