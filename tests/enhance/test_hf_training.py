"""`vidpost enhance train` with model.path: a tiny Qwen2 with a byte-level BPE tokenizer and a chat template
(conftest.py) trained as the enhancer, LoRA or full. SFT's loss sees only the rewrite's tokens and falls; GRPO's
first ratio is exactly 1; a resumed run ends with the weights of an uninterrupted one; the saved folder is a plain
transformers model that `--enhancer` applies with the instruction it was trained with; two ranks take the step of
one."""

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from vidpost import dist
from vidpost.cli import main
from vidpost.config import load_config
from vidpost.enhance.chat import ChatFormat
from vidpost.enhance.config import InstructionConfig
from vidpost.enhance.hf import HFEnhancer, load_causal_lm
from vidpost.enhance.lm import pairs_nll
from vidpost.enhance.pairs import training_pair
from vidpost.enhance.resolve import load_enhancer
from vidpost.errors import ConfigError
from vidpost.recipes import enhance
from vidpost.runlog import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "shapeworld"
CONFIG = CONFIGS / "enhance_hf.yaml"
SYSTEM_PROMPT = "Rewrite the prompt as one exact caption."  # in the fixture's BPE corpus (conftest.py)
SMALL = [
    "model.dtype=float32",
    "train.precision=float32",
    f"instruction.system_prompt='{SYSTEM_PROMPT}'",
    "data.eval_n=4",
    "max_new_tokens=12",
    "log.every_steps=1",
    "checkpoint.every_steps=1",
]


def _pairs_file(tmp_path, n: int = 40):
    """A user's pairs file: ShapeWorld pairs, so the rewrites are used as written (no caption check)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p, "rewrite": r}) + "\n" for p, r in map(lambda i: training_pair(5, i), range(n)))
    )
    return path


def _grpo(chat_lm, video_model, pairs, *more):
    """SFT then GRPO on dense video metrics (rewrites differ, so do their videos and rewards: no tied groups)."""
    return [
        f"model.path={chat_lm}",
        *SMALL,
        f"data.pairs_file={pairs}",
        "sft.steps=2",
        "sft.pairs_per_step=4",
        "grpo.steps=2",
        "grpo.prompts_per_step=2",
        "grpo.samples_per_prompt=3",
        "grpo.temperature=1.5",
        f"grpo.video_model={video_model}",
        "validation.videos=2",
        "grpo.video_precision=float32",
        "reward.weights={frame_consistency: 1.0, flicker: 1.0}",
        "grpo.optim.learning_rate=1e-2",
        *more,
    ]


def _train(overrides, out, **kw):
    return enhance.train(load_config(enhance.EnhanceConfig, CONFIG, overrides), out, progress=False, **kw)


def test_the_prompt_is_context_only_and_the_rewrite_ends_its_turn(chat_lm):
    model, tokenizer = load_causal_lm(chat_lm)
    fmt = ChatFormat(tokenizer, InstructionConfig(few_shot=False, system_prompt=SYSTEM_PROMPT), 64)
    prompt, target = fmt.prompt("red ball going left"), fmt.target("a large red circle moving left")
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nred ball going left<|im_end|>\n<|im_start|>assistant\n")
    assert (
        target[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        and fmt.decode(target) == "a large red circle moving left"
    )
    # the loss is the rewrite's tokens' alone: the NLL of the whole sequence's last len(target) predictions
    nll, tokens = pairs_nll(model, fmt, [("red ball going left", "a large red circle moving left")])
    ids = torch.tensor([prompt + target])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
    assert tokens == len(target)
    torch.testing.assert_close(nll, -logp[-len(target) :].sum())
    assert not torch.allclose(nll, -logp.sum())  # a loss over the prompt as well would differ


def test_sft_lowers_the_loss(chat_lm, tmp_path):
    overrides = [
        f"model.path={chat_lm}",
        *SMALL,
        "model.lora.enabled=false",
        "sft.steps=10",
        "sft.pairs_per_step=8",
        "validation.every_steps=10",
        "sft.optim.learning_rate=1e-2",
        "sft.optim.warmup_steps=0",
        "grpo.steps=0",
    ]
    assert _train(overrides, tmp_path) == tmp_path / "sft"
    losses = [m["sft/loss"] for m in read_metrics(tmp_path) if "sft/loss" in m]
    assert len(losses) == 10 and losses[-1] < losses[0] - 1.0
    assert {"sft/val_parse", "sft/val_intent"} <= {k for m in read_metrics(tmp_path) for k in m}


def test_a_lora_run_saves_a_plain_transformers_folder_that_enhancer_applies(chat_lm, tmp_path, monkeypatch, capsys):
    overrides = [
        f"model.path={chat_lm}",
        *SMALL,
        "sft.steps=3",
        "sft.pairs_per_step=4",
        "sft.optim.learning_rate=1e-2",
        "grpo.steps=0",
        "model.lora.rank=4",
    ]
    assert _train(overrides, tmp_path) == tmp_path / "sft"
    weights = load_file(tmp_path / "sft" / "model.safetensors")
    assert not [k for k in weights if "lora" in k]  # merged
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", local_files_only=True, use_safetensors=True)
    base = dict(AutoModelForCausalLM.from_pretrained(chat_lm, local_files_only=True).named_parameters())
    moved = [n for n, p in plain.named_parameters() if not torch.equal(p, base[n])]
    assert moved and all("proj" in n for n in moved)  # LoRA changed the projections it targets, nothing else
    enhancer = load_enhancer(str(tmp_path))
    assert isinstance(enhancer, HFEnhancer) and enhancer.cfg.path == str(tmp_path / "sft")
    assert enhancer.cfg.instruction.system_prompt == SYSTEM_PROMPT and not enhancer.cfg.instruction.few_shot
    assert enhancer.cfg.checks_shapeworld  # trained on ShapeWorld's captions: checked as such
    assert enhancer.model.generation_config.eos_token_id == [enhancer.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    capsys.readouterr()  # the run's validation lines
    monkeypatch.setattr(sys, "stdin", io.StringIO("red ball\nblue box going up\n"))
    # a barely trained LM's rewrites may all fall back, which `apply` reports (exit 2) after printing the prompts
    assert main(["enhance", "apply", "--enhancer", str(tmp_path), "check.shapeworld=false"]) in (0, 2)
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_grpo_ratio_is_exactly_one_at_the_first_update(chat_lm, video_model, tmp_path, monkeypatch):
    seen = []

    def spy(logprobs, old_logprobs, mask, advantages, *args, **kw):
        seen.append((logprobs.detach().clone(), old_logprobs.clone(), mask.bool(), advantages.clone()))
        return loss_fn(logprobs, old_logprobs, mask, advantages, *args, **kw)

    loss_fn = enhance.enhancer_grpo_loss
    monkeypatch.setattr(enhance, "enhancer_grpo_loss", spy)
    _train(_grpo(chat_lm, video_model, _pairs_file(tmp_path), "grpo.epochs=2", "grpo.steps=1"), tmp_path / "run")
    (logp, old, mask, advantages), (logp2, old2, _, _) = seen
    assert advantages.abs().max() > 0  # the rewrites were told apart
    assert torch.equal(torch.exp(logp - old)[mask], torch.ones(int(mask.sum())))
    assert not torch.equal(logp2, old2)  # the second epoch's policy has moved: its ratio is no longer 1
    row = next(m for m in read_metrics(tmp_path / "run") if "grpo/clip_frac" in m)
    assert row["grpo/logprob_gap"] < 1e-4  # decoding with the KV cache drew with the teacher-forced log-probs


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(chat_lm, video_model, tmp_path):
    overrides = _grpo(chat_lm, video_model, _pairs_file(tmp_path), "model.lora.rank=4")
    _train(overrides, tmp_path / "whole")
    assert _train(overrides, tmp_path / "cut", stop_after=1) is None  # in SFT
    assert _train(overrides, tmp_path / "cut", stop_after=3) is None  # after GRPO step 1
    assert _train(overrides, tmp_path / "cut") == tmp_path / "cut" / "grpo"
    whole, cut = (
        load_file(tmp_path / "whole/grpo/model.safetensors"),
        load_file(tmp_path / "cut/grpo/model.safetensors"),
    )
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    sft = load_file(tmp_path / "whole/sft/model.safetensors")
    assert any(not torch.equal(sft[k], whole[k]) for k in whole)  # GRPO changed the weights
    rows = [m for m in read_metrics(tmp_path / "cut") if "grpo/reward" in m]
    assert [m["step"] for m in rows] == [3, 4]  # the log reads as one run


def test_a_bad_combination_of_model_keys_is_one_line(chat_lm):
    with pytest.raises(ConfigError, match="model.hidden_size describe the toy enhancer"):
        load_config(enhance.EnhanceConfig, CONFIG, [f"model.path={chat_lm}", "model.hidden_size=32"])
    with pytest.raises(ConfigError, match="model.lora: only for a Hugging Face LM"):
        load_config(enhance.EnhanceConfig, CONFIGS / "enhance.yaml", ["model.lora.enabled=true"])
    with pytest.raises(ConfigError, match="instruction: only for a Hugging Face LM"):
        load_config(enhance.EnhanceConfig, CONFIGS / "enhance.yaml", ["instruction.words=30"])
    with pytest.raises(ConfigError, match="train.precision: only for a Hugging Face LM"):
        load_config(enhance.EnhanceConfig, CONFIGS / "enhance.yaml", ["train.precision=auto"])
    with pytest.raises(ConfigError, match="full fine-tuning"):
        load_config(enhance.EnhanceConfig, CONFIG, [f"model.path={chat_lm}", "model.lora.enabled=false"])


# ------------------------------------------------------------------------------------------ 2 processes


def _sft_step(rank, store, overrides, out, results):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with dist.leave_at_end():
        enhance.train(load_config(enhance.EnhanceConfig, CONFIG, overrides), out, progress=False, stop_after=1)
    results.put((rank, None))


def test_an_sft_step_at_world_size_2_is_world_size_1(chat_lm, tmp_path, run_ranks):
    # full fine-tuning: every weight gets a gradient; clipping off, so Adam's moments show a gradient off by the
    # world size (its first update is nearly sign(g) and would hide it)
    overrides = [
        f"model.path={chat_lm}",
        *SMALL,
        "model.lora.enabled=false",
        "sft.steps=2",
        "sft.pairs_per_step=4",
        "sft.optim.learning_rate=1e-3",
        "sft.optim.grad_clip=1e6",
        "grpo.steps=0",
    ]
    _train(overrides, tmp_path / "one", stop_after=1)
    run_ranks(_sft_step, tmp_path / "store", overrides, tmp_path / "two")
    one, two = (tmp_path / run / "checkpoints/sft/step_000001" for run in ("one", "two"))
    for name in ("optimizer.safetensors", "trainable.safetensors"):
        got, want = load_file(two / name), load_file(one / name)
        assert got.keys() == want.keys() and any(k.endswith("exp_avg") for k in want) == (name.startswith("opt"))
        for key, w in want.items():
            torch.testing.assert_close(got[key], w, rtol=1e-4, atol=1e-3 * float(w.abs().max()) + 1e-12)
    loss = [next(m["sft/loss"] for m in read_metrics(tmp_path / run) if "sft/loss" in m) for run in ("one", "two")]
    assert math.isclose(loss[0], loss[1], rel_tol=1e-5)
