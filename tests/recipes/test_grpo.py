"""The GRPO recipe: every strategy runs on the shipped ShapeWorld model and on the tiny Wan (real classes,
VAE codec); the ratio is exactly 1 at the first update; a killed run resumes exactly; a run of non-finite
iterations stops with its last good checkpoint; LoRA loads in diffusers."""

import json
import math

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from vidpost.checkpoint import list_checkpoints
from vidpost.config import load_config
from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.diffusion.sde import noise_levels
from vidpost.errors import ConfigError, VidpostError
from vidpost.models.wan import WanVideoModel
from vidpost.recipes import grpo
from vidpost.recipes.grpo import GRPOConfig, train
from vidpost.recipes.prompts import training_prompts, validation_prompts
from vidpost.rl.rollout import rollout
from vidpost.rl.strategies import FlashConfig, StrategyConfig, plan_steps
from vidpost.runlog import read_metrics

SHAPEWORLD = [
    "model.path=shapeworld-sft",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=2",
    "rollout.sampling.steps=4",
    "rollout.sampling.guidance=2.0",
    "reward.weights={quality: 1.0, coherence: 0.5, total: 1.0}",  # dense rewards: advantages are non-zero
    "train.steps=2",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "train.clip_range=0.2",
    "validation.n=2",
    "validation.every_steps=0",
    "checkpoint.every_steps=1",
]
STRATEGY = {
    "flash": ["strategy.name=flash", "strategy.flash.k_max=2", "strategy.flash.shared_prefix=false"],
    "flash-shared": ["strategy.name=flash", "strategy.flash.k_max=2"],  # the default: a group's prefix run once
    "full": ["strategy.name=full", "strategy.full.train_fraction=0.5", "rollout.noise.schedule=flow_grpo"],
    "window": [
        "strategy.name=window",
        "strategy.window.size=2",
        "strategy.window.advance_every=1",
        "rollout.noise.schedule=dance",
    ],
    "flash-cps": ["strategy.name=flash", "strategy.flash.k_max=2", "rollout.noise.schedule=cps"],
    "full-cps": [
        "strategy.name=full",
        "strategy.full.steps=first",
        "rollout.noise.schedule=cps",
    ],  # last step: no noise
    "nft": ["strategy.name=nft", "strategy.nft.train_fraction=0.5"],
}


def _config(*overrides):
    return load_config(GRPOConfig, None, [*SHAPEWORLD, *overrides])


def _trained(run_dir):
    return load_file(run_dir / "model" / "transformer" / "diffusion_pytorch_model.safetensors")


def _base_weights():
    model = WanVideoModel.from_config(_config().model)
    return {k: v.detach().clone() for k, v in model.transformer.state_dict().items()}


@pytest.mark.parametrize("strategy", ["flash", "flash-shared", "full", "window", "flash-cps", "full-cps"])
def test_each_strategy_trains_on_shapeworld(strategy, tmp_path):
    assert train(_config(*STRATEGY[strategy]), tmp_path, progress=False) == tmp_path / "model"
    rows = [r for r in read_metrics(tmp_path) if "train/ratio_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["train/ratio_min"] == r["train/ratio_max"] == 1.0  # one update per rollout: exactly on-policy
        assert all(math.isfinite(v) for v in r.values())
        assert r["train/rollout_logprob_gap"] < 1e-3  # float32 rollout and recomputation agree (other batching)
        if strategy in (
            "flash-shared",
            "flash-cps",
        ):  # the k prefix steps (2 passes each) are shared by the group's 2 videos
            assert r["nfe/rollout_per_video"] in (8 - k for k in (0, 0.5, 1, 1.5, 2))
        else:
            assert r["nfe/rollout_per_video"] == 8  # 4 steps x 2 passes (CFG)
    flags = {"flash": 1, "flash-shared": 1, "full": 2, "window": 2, "flash-cps": 1, "full-cps": 3}[strategy]
    assert rows[0]["train/transitions"] == 4 * flags
    before, after = _base_weights(), _trained(tmp_path)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    evals = [r for r in read_metrics(tmp_path) if "eval/total" in r]
    assert [r["step"] for r in evals] == [0, 2]  # before training and at the end
    card = json.loads((tmp_path / "model" / "vidpost.json").read_text())
    assert card["sampling"]["steps"] == 4


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    flash = STRATEGY["flash"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(_config(*flash, "train.steps=3"), straight, progress=False)
    assert train(_config(*flash, "train.steps=3"), resumed, progress=False, stop_after=2) is None
    train(_config(*flash, "train.steps=3"), resumed, progress=False)
    a, b = _trained(straight), _trained(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(resumed) if "train/ratio_mean" in r] == [1, 2, 3]


def test_a_run_of_nonfinite_iterations_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_iteration, real_loss, poisoned = grpo.iteration, grpo.policy_loss, {"from": 2}

    def iteration(model, cfg, step, *args):
        poisoned["now"] = step >= poisoned["from"]
        return real_iteration(model, cfg, step, *args)

    def policy_loss(*args, **kwargs):  # from iteration 2 on, a NaN loss (and so NaN gradients)
        terms = real_loss(*args, **kwargs)
        if poisoned["now"]:
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(grpo, "iteration", iteration)
    monkeypatch.setattr(grpo, "policy_loss", policy_loss)
    cfg = _config(*STRATEGY["flash"], "train.steps=3", "train.max_consecutive_nonfinite=2")  # checkpoints every step
    with pytest.raises(
        VidpostError, match=r"^iteration 3: 2 iterations in a row had a non-finite loss or gradient"
    ) as error:
        train(cfg, tmp_path, progress=False)
    assert f"the last good checkpoint is {tmp_path / 'checkpoints' / 'step_000001'};" in str(error.value)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_000001"]  # none at 2: it was NaN
    poisoned["from"] = 99  # the fault is gone: the rerun resumes from that checkpoint and finishes
    assert train(cfg, tmp_path, progress=False) == tmp_path / "model"
    rows = [r for r in read_metrics(tmp_path) if "train/ratio_mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["train/nonfinite_steps"] == 0


def test_lora_with_kl_and_ema_saves_adapters_that_stock_diffusers_loads(tmp_path):
    cfg = _config(
        *STRATEGY["flash"],
        "model.lora.enabled=true",
        "model.lora.rank=4",
        "train.kl_beta=0.01",
        "train.ema_decay=0.9",
        "train.minibatches=2",
        "train.micro_batch_size=1",
    )
    assert train(cfg, tmp_path, progress=False) == tmp_path / "lora"
    rows = [r for r in read_metrics(tmp_path) if "train/kl" in r]
    assert rows and rows[0]["train/kl"] >= 0
    assert not rows[0]["train/ratio_min"] == rows[0]["train/ratio_max"] == 1.0  # the 2nd minibatch is off-policy
    base = WanVideoModel.from_config(
        cfg.model.model_copy(update={"lora": cfg.model.lora.model_copy(update={"enabled": False})})
    )
    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=None,
        scheduler=base.scheduler,
        transformer=base.transformer,
    )
    pipe.load_lora_weights(tmp_path / "lora")
    assert any("lora" in name for name, _ in pipe.transformer.named_parameters())


def test_tiny_wan_with_vae_runs_every_strategy(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat surfing\na red ball rolling\n")
    tiny = [
        "model.path=null",
        "model.codec=vae",
        "model.tiny.patch_size=[1,2,2]",
        "video={frames: 5, height: 16, width: 16}",
        f"prompts.file={prompts}",
        "reward.weights={frame_consistency: 1.0, flicker: 1.0}",
        f"validation.prompts_file={prompts}",
    ]
    for name, overrides in STRATEGY.items():
        out = tmp_path / name
        train(_config(*overrides, *tiny, "train.steps=2"), out, progress=False)
        rows = [r for r in read_metrics(out) if "train/grad_norm" in r]
        assert len(rows) == 2 and all(r["train/grad_norm"] == r["train/grad_norm"] for r in rows), name


def test_rollout_log_probs_are_what_training_recomputes_and_shared_prefix_branches(tmp_path):
    model = WanVideoModel.from_config(_config().model)
    sigmas = sampling_sigmas(4, 5.0)
    g = noise_levels(sigmas, "flash")
    strategy = load_config(
        StrategyConfig, None, ["name=flash", "flash.k_max=2", "flash.shared_prefix=true", "flash.suffix_steps=1"]
    )
    plan = plan_steps(strategy, 2, 3, 4, 0, torch.Generator().manual_seed(0))
    embeds = model.encode_prompts(["a large red circle staying still", "a small blue square moving left slowly"])
    shape = model.latent_shape(8, 24, 24)
    seeds = torch.arange(6)
    shared = rollout(
        model,
        shape,
        embeds,
        None,
        plan,
        sigmas,
        g,
        1.0,
        seeds,
        torch.Generator().manual_seed(1),
        "float32",
        flash=strategy.settings,
    )
    tr = shared.transitions
    assert tr.sample.tolist() == list(range(6))
    for group in range(2):  # a group branches from one state at its k, then its members differ
        members = tr.x[group * 3 : group * 3 + 3]
        assert torch.equal(members[0], members[1]) and torch.equal(members[0], members[2])
        assert not torch.equal(tr.x_next[group * 3], tr.x_next[group * 3 + 1])
    k = plan.k.repeat_interleave(3)
    # passes per video: the prefix k once per group (/3 per member), 1 SDE step, a 1-step suffix
    assert shared.passes_per_video == pytest.approx(float((k / 3 + 1 + 1).mean()))
    plain = rollout(
        model,
        shape,
        embeds,
        None,
        plan,
        sigmas,
        g,
        1.0,
        seeds,
        torch.Generator().manual_seed(1),
        "float32",
        flash=FlashConfig(shared_prefix=False),
    )
    assert plain.passes_per_video == 4
    assert not torch.equal(plain.transitions.x[0], plain.transitions.x[1])  # independent noise per member


@pytest.fixture
def seen(monkeypatch):
    """(texts the model encodes, prompts the rewards score), recorded through a GRPO run."""
    encoded, rewarded = [], []
    real_encode, real_rewards = WanVideoModel.encode_prompts, grpo.compute_rewards

    def encode(self, texts):
        encoded.extend(texts)
        return real_encode(self, texts)

    def rewards(names, videos, prompts):
        rewarded.extend(prompts)
        return real_rewards(names, videos, prompts)

    monkeypatch.setattr(WanVideoModel, "encode_prompts", encode)
    monkeypatch.setattr(grpo, "compute_rewards", rewards)
    return encoded, rewarded


def test_terse_prompts_are_what_the_model_is_asked_and_their_intents_what_is_rewarded(tmp_path, seen):
    encoded, rewarded = seen
    cfg = _config("train.steps=1", "prompts.wording=terse", "prompts.n=8", "validation.wording=terse")
    train(cfg, tmp_path / "run", progress=False)
    terse, intents = training_prompts(cfg.prompts)
    eval_terse, eval_intents, _ = validation_prompts(cfg.validation)
    assert terse != intents and len(terse) == len(intents) == 8
    assert rewarded and set(rewarded) <= set(intents)  # a partial caption of what was asked: the rewards parse it
    assert set(encoded) - {""} <= set(terse) | set(eval_terse)
    clips = [json.loads(line) for line in (tmp_path / "run" / "samples" / "step_000000" / "metadata.jsonl").open()]
    assert [c["caption"] for c in clips] == eval_intents and [c["prompt_used"] for c in clips] == eval_terse


def test_an_enhancer_rewrites_what_the_model_is_given_but_rewards_check_the_prompts(
    parrot_caption, tmp_path, monkeypatch, seen
):
    (encoded, rewarded), asked = seen, []

    def rewrite(prompts, enhancer, prefix):  # every prompt -> one caption, so what the model is given is unmistakable
        asked.append(enhancer)
        return [parrot_caption] * len(prompts), {f"{prefix}prompts": len(prompts)}

    monkeypatch.setattr(grpo, "rewrite_prompts", rewrite)
    cfg = _config("train.steps=1", "prompts.enhancer=rollouts", "validation.enhancer=evaluation")
    train(cfg, tmp_path / "run", progress=False)
    assert asked == ["rollouts", "evaluation"]
    pool = training_prompts(cfg.prompts)[1]
    assert rewarded and set(rewarded) <= set(pool) and parrot_caption not in rewarded
    assert set(encoded) - {""} == {parrot_caption}  # the model never saw a prompt, only rewrites (and "")
    clips = [json.loads(line) for line in (tmp_path / "run" / "samples" / "step_000000" / "metadata.jsonl").open()]
    assert [c["prompt_used"] for c in clips] == [parrot_caption] * 2
    assert all(c["caption"] != parrot_caption for c in clips)  # kept, and scored, against the prompts
    first = read_metrics(tmp_path / "run")[0]  # the log opens with the enhancers' counts
    assert first == {"step": 0, "enhance/train/prompts": len(pool), "enhance/eval/prompts": cfg.validation.n}


def test_a_config_without_a_flash_section_rolls_out_with_the_default_settings(tmp_path, monkeypatch):
    given, real_rollout = [], grpo.rollout

    def rollout(*args, flash=None, **kwargs):
        given.append(flash)
        return real_rollout(*args, flash=flash, **kwargs)

    monkeypatch.setattr(grpo, "rollout", rollout)
    cfg = _config("train.steps=1")
    assert cfg.strategy.name == "flash" and cfg.strategy.flash is None
    train(cfg, tmp_path, progress=False)
    assert given == [FlashConfig()] and given[0].shared_prefix


def _tied_first_group(monkeypatch, k=None):
    """Rewards in which group 0 ties (advantages 0) and group 1 does not; optionally force flash's k per group."""
    real_plan = grpo.plan_steps

    def plan_steps(*args):
        plan = real_plan(*args)
        if k is not None:
            G = plan.sde.shape[0] // len(k)
            plan.k = torch.tensor(k)
            plan.sde[:] = False
            plan.sde[torch.arange(plan.sde.shape[0]), plan.k.repeat_interleave(G)] = True
            plan.train = plan.sde.clone()
        return plan

    def rewards(names, videos, prompts):
        return {name: torch.tensor([0.5, 0.5, 0.0, 1.0]).numpy() for name in names}

    monkeypatch.setattr(grpo, "plan_steps", plan_steps)
    monkeypatch.setattr(grpo, "compute_rewards", rewards)


def test_samples_with_zero_advantage_are_left_out_and_do_not_dilute_the_loss(tmp_path, monkeypatch):
    _tied_first_group(monkeypatch, k=[1, 1])  # one k: the rectification weights are 1 either way
    runs = {}
    for drop in ("true", "false"):
        train(
            _config(*STRATEGY["flash"], "train.steps=1", f"train.drop_zero_advantage={drop}"),
            tmp_path / drop,
            progress=False,
        )
        runs[drop] = next(r for r in read_metrics(tmp_path / drop) if "train/grad_norm" in r)
    assert runs["true"]["train/dropped_fraction"] == 0.5 and runs["true"]["train/transitions"] == 2
    assert runs["false"]["train/dropped_fraction"] == 0.0 and runs["false"]["train/transitions"] == 4
    # the same two informative samples, averaged over 2 transitions instead of 4: twice the gradient
    assert runs["true"]["train/grad_norm"] == pytest.approx(2 * runs["false"]["train/grad_norm"], rel=1e-4)


def test_rectification_averages_over_the_transitions_actually_trained(tmp_path, monkeypatch):
    _tied_first_group(monkeypatch, k=[0, 2])  # the dropped group stepped at k = 0, the trained one at k = 2
    weights, real_loss = [], grpo.policy_loss

    def policy_loss(*args):
        weights.append(args[4])
        return real_loss(*args)

    monkeypatch.setattr(grpo, "policy_loss", policy_loss)
    train(_config("strategy.name=flash", "strategy.flash.k_max=2", "train.steps=1"), tmp_path, progress=False)
    assert len(weights) == 1 and weights[0].shape == (2,)
    torch.testing.assert_close(weights[0], torch.ones(2, dtype=torch.float64))  # one k trained: the weights are 1


def test_an_iteration_where_every_group_ties_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(
        grpo, "compute_rewards", lambda names, videos, prompts: {n: torch.zeros(4).numpy() for n in names}
    )
    train(_config(*STRATEGY["flash"], "train.steps=1"), tmp_path, progress=False)
    row = next(r for r in read_metrics(tmp_path) if "train/dropped_fraction" in r)
    assert row["train/dropped_fraction"] == 1.0 and "train/ratio_mean" not in row
    before, after = _base_weights(), _trained(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_a_resumed_run_equals_an_uninterrupted_one_when_the_global_rng_is_drawn(tmp_path, monkeypatch):
    real_rewards = grpo.compute_rewards

    def noisy(names, videos, prompts):  # a stochastic reward drawing from the global generator
        return {k: v + torch.rand(len(v)).numpy() for k, v in real_rewards(names, videos, prompts).items()}

    monkeypatch.setattr(grpo, "compute_rewards", noisy)
    straight, resumed = tmp_path / "a", tmp_path / "b"
    cfg = _config(*STRATEGY["flash"], "train.steps=2")
    train(cfg, straight, progress=False)
    train(cfg, resumed, progress=False, stop_after=1)
    torch.rand(5)  # a process that resumes has drawn other numbers before
    train(cfg, resumed, progress=False)
    a, b = _trained(straight), _trained(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "override,message",
    [
        (["model.lora.enabled=true", "model.lora.dropout=0.1"], r"model.lora.dropout 0.1: GRPO needs"),
        (["model.dtype=bfloat16"], r"model.dtype bfloat16 with full fine-tuning"),
        (
            ["train.minibatches=5"],
            r"train.minibatches 5 exceeds the 4 transitions each group trains \(2 samples x 2 steps\)",
        ),
    ],
)
def test_configs_that_cannot_train_correctly_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        _config(*STRATEGY["window"], *override)


def test_nft_trains_on_re_noised_rollouts_with_v_old_from_the_same_pass(tmp_path):
    assert train(_config(*STRATEGY["nft"], "train.kl_beta=0.01"), tmp_path, progress=False) == tmp_path / "model"
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert "train/ratio_mean" not in r  # likelihood-free
        assert r["train/transitions"] == 8 and r["train/dropped_fraction"] == 0  # 4 samples x 2 σ; ties kept
        assert r["nfe/rollout_per_video"] == 8  # the 4-step ODE with CFG
        # one minibatch: v_θ = v_old at the update, so the positive and negative regressions are equal
        assert r["train/nft_positive"] == pytest.approx(r["train/nft_negative"], rel=1e-6)
    assert rows[0]["train/kl"] == 0 and rows[1]["train/kl"] > 0
    before, after = _base_weights(), _trained(tmp_path)
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_non_finite_rollout_videos_skip_the_update_and_count_as_a_non_finite_iteration(tmp_path, monkeypatch):
    real_decode, poisoned = WanVideoModel.decode, []

    def decode(
        self, latents
    ):  # the first rollout's 4 videos come out NaN; evaluations (2 videos) and later rollouts do not
        frames = real_decode(self, latents)
        if latents.shape[0] == 4 and not poisoned:
            poisoned.append(True)
            return frames * float("nan")
        return frames

    monkeypatch.setattr(WanVideoModel, "decode", decode)
    assert train(_config(*STRATEGY["flash"]), tmp_path, progress=False) == tmp_path / "model"
    rows = {r["step"]: r for r in read_metrics(tmp_path) if "train/nonfinite_steps" in r}
    assert rows[1]["train/nonfinite_videos"] == 4 and rows[1]["train/nonfinite_steps"] == 1
    assert "train/ratio_mean" in rows[2] and rows[2]["train/nonfinite_steps"] == 1
