"""Training a prompt enhancer: the toy ShapeWorld enhancer (`enhance/toy.py`), or any local Hugging Face causal LM
(`enhance/chat.py`, LoRA or full fine-tuning) with model.path.

    vidpost enhance train configs/shapeworld/enhance.yaml --out runs/enhance [key=value ...]
    vidpost enhance train configs/shapeworld/enhance_hf.yaml model.path=models/Qwen2.5-0.5B-Instruct --out runs/qwen
    torchrun --nproc_per_node 4 -m vidpost.cli enhance train CONFIG model.path=DIR --out RUN   # data-parallel (LM only)
    vidpost enhance apply --enhancer runs/enhance < prompts.txt

Both kinds train through the same loop: a `TextFormat` (enhance/lm.py) turns prompts and rewrites into the
model's token ids, the toy's `<s> terse <sep>` -> `canonical </s>`, or a chat model's template with the system
prompt of `instruction` (the conversation the hf backend sends at apply time) -> the rewrite and its end-of-turn
token. Pairs come from ShapeWorld or from `data.pairs_file` (JSONL of prompt and rewrite; enhance/pairs.py).
Under torchrun (Hugging Face LMs only) each rank takes its share of every step's pairs or groups and the
gradients are summed over ranks, so a step is the one-process step.

Stage 1, SFT: teacher-forced cross-entropy on (terse prompt -> canonical caption) pairs from the world's
train split: the prompt's ids are the context and the rewrite's the target (the loss sees only those). Pair i is a
pure function of
(data.seed, i) and step s trains on pairs (s-1)·B .. s·B-1, so the stream never repeats and a resumed run
ends with exactly the weights of an uninterrupted one. It starts from a seeded random model, or from the
weights of `model.init` (a shipped enhancer, a folder or a run; sft.steps 0 keeps them as they are, so GRPO
alone can specialise an enhancer to another video model). The canonical caption states the whole scene, so
the enhancer learns to keep what the prompt states and to fill in the rest (size, motion, background) as
the curated data does. Validation decodes eval-split terse prompts greedily and reports how many rewrites
parse as canonical captions, are complete, and state everything the prompt's intent states.

Stage 2, GRPO (when grpo.steps > 0), from the SFT enhancer's weights: each step takes P fresh train-split
terse prompts (the records after the SFT stage's, so a pure function of the step), samples G rewrites of
each, generates a video from each rewrite with the frozen video model (all G from the same noise, so the
rewrite is the only difference within a group), and scores the videos against the user's *intent* (the spec
behind the terse prompt), never against the rewrite. A rewrite that fails the enhancer's check (not a
canonical caption) gets what it would get in use: the video of the terse prompt it falls back to. The
group-relative advantage of a rewrite weights the PPO-clip loss on each of its tokens (`enhancer_grpo_loss`),
with a k3 estimate of the KL to the frozen SFT enhancer. Validation adds the mean reward of videos made from
the greedy rewrites of the first eval-split prompts; it runs once before the first step, as the baseline.

The run directory:
    config.yaml              the resolved config
    checkpoints/sft/         step_NNNNNN/ (weights, optimizer, counters); the newest is resumed
    checkpoints/grpo/        the same for stage 2 (step 0: the SFT weights, written after the baseline)
    logs/metrics.jsonl       sft/loss, sft/lr, sft/grad_norm, sft/val_*; then grpo/reward, grpo/reward_<name>,
                             grpo/parse, grpo/loss, grpo/kl, grpo/clip_frac, grpo/val_*, logged at step
                             sft.steps + s for GRPO step s, so the log reads as one run (and TensorBoard)
    sft/                     the SFT enhancer (Hugging Face layout + enhancer.json; an LM's LoRA merged in)
    grpo/                    the GRPO enhancer, when the stage runs; `--enhancer runs/enhance` takes the last
    summary.json             the final validation metrics of each stage
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from vidpost import dist
from vidpost.config import Config
from vidpost.diffusion.config import SamplingConfig, SamplingOverrides, VideoConfig
from vidpost.enhance.config import InstructionConfig
from vidpost.enhance.intent import rewrite_metrics
from vidpost.enhance.lm import completion_logprobs, pairs_nll, sample_rollout
from vidpost.enhance.losses import enhancer_grpo_loss
from vidpost.enhance.pairs import PairsConfig, PairSource
from vidpost.enhance.rewards import rewrite_rewards
from vidpost.enhance.toy import CARD_NAME
from vidpost.enhance.trainable import (
    EnhancerLM,
    EnhancerModelConfig,
    init_dir,
    initial_lm,
    needs_reference_copy,
    reference_model,
    save_lm,
    stage_lm,
)
from vidpost.errors import VidpostError
from vidpost.generation import recommended_sampling, recommended_video
from vidpost.metric_names import ENHANCE_GRPO, ENHANCE_GRPO_REWARD, ENHANCE_SFT, ENHANCE_SFT_LOSS
from vidpost.models.load import load_model
from vidpost.precision import PRECISIONS
from vidpost.recipes.common import (
    CheckpointConfig,
    LogConfig,
    OptimConfig,
    RewardConfig,
    StopFlag,
    derive_seed,
    learning_rate,
    register_rewards,
    start_run,
)
from vidpost.recipes.loop import Loop, cadence
from vidpost.rewards.registry import weighted_sum
from vidpost.rl.advantages import advantage_stats, combine_advantages

log = logging.getLogger("vidpost")

STAGE_SFT = ENHANCE_SFT  # a stage's folders and the group of its logged series share its name
STAGE_GRPO = ENHANCE_GRPO


class EnhanceTrainConfig(Config):
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "float32",
        description="model.path: autocast of the LM's every forward: auto (bf16 where the hardware has it) | bf16 "
        "| float32 (the toy: float32)",
    )
    seed: int = Field(
        0, description="GRPO step s draws its rewrites and video noise from (seed, s); validation noise: seed"
    )
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="stop a stage after this many steps in a row with a non-finite loss or gradient"
    )


class SFTStageConfig(Config):
    steps: int = Field(8000, ge=0, description="optimizer steps (0: model.init's weights as they are)")
    pairs_per_step: int = Field(64, ge=1, description="(prompt, rewrite) pairs per optimizer step, over all ranks")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule")


class GRPOStageConfig(Config):
    steps: int = Field(0, ge=0, description="GRPO steps after SFT, from the SFT enhancer (0: the stage is off)")
    prompts_per_step: int = Field(4, ge=1, description="P: terse prompts (groups) per step, over all ranks")
    samples_per_prompt: int = Field(8, ge=2, description="G: rewrites sampled per prompt, each made into a video")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rewrites (and the trained policy's)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus mass of the rewrites; below 1, ratios start below 1")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip epsilon")
    kl_beta: float = Field(0.04, ge=0, description="weight of the per-token k3 KL to the frozen SFT enhancer")
    epochs: int = Field(1, ge=1, description="optimizer steps on each batch of rewrites (PPO epochs)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule")
    video_model: str = Field("shapeworld-sft", description="the frozen video model: a shipped name, model or run dir")
    video_dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights of the frozen video model")
    video_precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "auto", description="autocast of the video model: auto (bf16 where the hardware has it) | bf16 | float32"
    )
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides, description="changes to the card's sampling")
    video: VideoConfig | None = Field(None, description="frames, height and width of the videos; null: the card's")


class EnhanceValidationConfig(Config):
    every_steps: int = Field(
        0, ge=0, description="validate every N steps of either stage (0: only at the end, and GRPO's before step 1)"
    )
    videos: int = Field(16, ge=1, description="GRPO: videos made from the first rewrites (<= data.eval_n)")


class EnhanceConfig(Config):
    renamed_keys = {
        "model.precision": "train.precision",
        "sft.max_consecutive_nonfinite": "train.max_consecutive_nonfinite",
        "grpo.max_consecutive_nonfinite": "train.max_consecutive_nonfinite",
        "grpo.seed": "train.seed",
        "grpo.precision": "grpo.video_precision",
        "grpo.reward_weights": "reward.weights",
        "grpo.remote": "reward.remote",
        "grpo.group_size": "grpo.samples_per_prompt",
        "grpo.checkpoint_every_steps": "checkpoint.every_steps",
        "sft.eval_every_steps": "validation.every_steps",
        "grpo.eval_every_steps": "validation.every_steps",
        "grpo.val_videos": "validation.videos",
        "sft.batch_size": "sft.pairs_per_step",
        "log_every_steps": "log.every_steps",
    }

    model: EnhancerModelConfig = Field(
        default_factory=EnhancerModelConfig, description="the LM trained: the toy's architecture, or model.path's LM"
    )
    instruction: InstructionConfig = Field(
        default_factory=InstructionConfig,
        description="model.path: the system prompt the LM is trained and applied with",
    )
    data: PairsConfig = Field(
        default_factory=PairsConfig, description="(prompt, rewrite) pairs: ShapeWorld's or a file"
    )
    train: EnhanceTrainConfig = Field(
        default_factory=EnhanceTrainConfig, description="both stages: precision, seed, non-finite limit"
    )
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig, description="stage 1: supervised fine-tuning")
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig, description="stage 2: GRPO on video rewards")
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(weights={"total": 1.0, "coherence": 0.5, "quality": 0.5}),
        description="GRPO: the rewards of the videos (advantages of their weighted sum)",
    )
    max_new_tokens: int = Field(48, ge=1, description="most tokens of a rewrite (GRPO rollouts and validation)")
    validation: EnhanceValidationConfig = Field(
        default_factory=EnhanceValidationConfig, description="held-out rewrites (and GRPO: their videos)"
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpointing of both stages")
    log: LogConfig = Field(
        default_factory=lambda: LogConfig(every_steps=20), description="SFT's training metrics (GRPO: every step)"
    )

    @model_validator(mode="after")
    def _videos_fit(self) -> EnhanceConfig:
        self.model.check(self.instruction)
        if self.model.path is None and self.train.precision != "float32":
            raise ValueError(
                "train.precision: only for a Hugging Face LM (model.path); the toy enhancer trains in float32"
            )
        if self.sft.steps == 0 and self.model.init is None and self.model.path is None:
            raise ValueError("sft.steps 0 needs model.init (an enhancer to start from)")
        if self.grpo.steps and self.validation.videos > self.data.eval_n:
            raise ValueError(
                f"validation.videos {self.validation.videos} exceeds data.eval_n {self.data.eval_n} "
                "(the videos are made from the first validation rewrites)"
            )
        return self


# ------------------------------------------------------------------------------------------ the recipe


def _greedy_rewrites(lm: EnhancerLM, prompts: list[str], max_new_tokens: int) -> list[str]:
    lm.model.eval()
    rewrites = []
    with lm.autocast():
        for start in range(0, len(prompts), 64):
            rewrites += sample_rollout(lm.model, lm.rollout_fmt, prompts[start : start + 64], max_new_tokens).texts
    lm.model.train()
    return rewrites


def _validate(
    lm: EnhancerLM, source: PairSource, held_out: list[tuple[str, str]], max_new_tokens: int
) -> dict[str, float]:
    """ShapeWorld: rewrite_metrics of greedy rewrites of the eval prompts; a pairs file: the held-out pairs' loss."""
    if source.shapeworld:
        prompts, intents = [p for p, _ in held_out], [i for _, i in held_out]
        metrics = rewrite_metrics(_greedy_rewrites(lm, prompts, max_new_tokens), intents)
        return {f"{STAGE_SFT}/val_{k}": v for k, v in metrics.items()}
    nll, tokens = 0.0, 0
    lm.model.eval()
    with torch.no_grad(), lm.autocast():
        for start in range(0, len(held_out), 64):
            part, n = pairs_nll(lm.model, lm.pairs_fmt, held_out[start : start + 64])
            nll, tokens = nll + part.item(), tokens + n
    lm.model.train()
    return {f"{STAGE_SFT}/val_loss": nll / tokens}


def train(cfg: EnhanceConfig, out: str | Path, progress: bool = True, stop_after: int | None = None) -> Path | None:
    """Run (or resume) the enhancer's training in `out`; return the final enhancer folder, or None if stopped.

    SFT, then GRPO from the SFT enhancer when grpo.steps > 0; a finished stage is not run again.
    stop_after: stop (as SIGINT would) once this step is done, counting GRPO step s as step sft.steps + s;
    tests use it to interrupt a run.
    """
    if cfg.model.path is None and dist.world_size() > 1:  # 0.14M parameters: more processes would only race on `out`
        raise VidpostError("vidpost enhance train trains the toy enhancer in one process; launch it without torchrun")
    dist.require_divisible(
        {"sft.pairs_per_step": cfg.sft.pairs_per_step, "grpo.prompts_per_step": cfg.grpo.prompts_per_step}
    )
    out = Path(out)
    sft = out / STAGE_SFT
    final = out / STAGE_GRPO if cfg.grpo.steps else sft
    if cfg.grpo.steps:
        register_rewards(cfg.reward)  # now, not after the SFT stage's minutes
    init = init_dir(cfg.model) if cfg.model.init is not None else None  # before the run directory records cfg
    if start_run(cfg, out, finished=lambda run: final if (final / CARD_NAME).is_file() else None) is not None:
        return final
    progress = progress and dist.is_main()
    if not (sft / CARD_NAME).is_file() and _train_sft(cfg, out, init, progress, stop_after) is None:
        return None
    return _train_grpo(cfg, out, progress, stop_after) if cfg.grpo.steps else sft


def _sum_gradients(params: dict[str, torch.nn.Parameter]) -> None:
    """Sum every gradient over the ranks (each rank's loss is already divided by the global count)."""
    if dist.is_distributed():
        for p in params.values():
            if p.grad is not None:
                p.grad.copy_(dist.sum_over_ranks(p.grad))


def _update(
    loss: torch.Tensor, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, grad_clip: float
) -> tuple[float, float, bool]:
    """Backward, gradients summed over ranks, clip, step unless non-finite; (global loss, grad norm, finite)."""
    loss.backward()
    _sum_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), grad_clip)
    total = dist.sum_over_ranks(loss.detach())  # each rank's share of the global loss
    finite = bool(torch.isfinite(total) and torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item(), grad_norm.item(), finite


def _save_stage(lm: EnhancerLM, out: Path, stage: str, card: dict, shapeworld: bool) -> Path:
    """`out/stage` written by rank 0 through a temporary folder; the other ranks wait for it."""
    final, tmp = out / stage, out / f".{stage}.tmp"
    with dist.main_first():
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            save_lm(lm, tmp, card, shapeworld)
            tmp.rename(final)
    return final


def _train_sft(cfg: EnhanceConfig, out: Path, init: Path | None, progress: bool, stop_after: int | None) -> Path | None:
    """Stage 1 from `initial_lm(cfg.model, ...)`; returns sft/, or None if stopped."""
    s = cfg.sft
    lm = initial_lm(
        cfg.model, cfg.train.precision, cfg.instruction, cfg.data.max_prompt_tokens, cfg.max_new_tokens, init
    )
    model = lm.model.train()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}  # tied embeddings appear once
    optimizer = s.optim.adamw(params.values())
    source = PairSource(cfg.data)
    held_out = source.held_out()
    share = dist.local_slice(s.pairs_per_step)
    loop = Loop(
        out=out,
        steps=s.steps,
        params=params,
        optimizer=optimizer,
        checkpoints=out / "checkpoints" / STAGE_SFT,
        checkpointed=params,
        validation=lambda step: _validate(lm, source, held_out, cfg.max_new_tokens) if dist.is_main() else {},
        summary_series=f"{STAGE_SFT}/val_",
        **cadence(cfg),
        progress=progress,
        desc="enhance sft",
        postfix=lambda metrics: {"loss": f"{metrics[ENHANCE_SFT_LOSS]:.4f}"},
        learning_rate=lambda step: learning_rate(s.optim, step, s.steps),
        group=STAGE_SFT,
        averaged=(ENHANCE_SFT_LOSS, f"{STAGE_SFT}/grad_norm"),
    )
    loop.resume()
    if not loop.resumed and progress:
        log.info(
            "training a %.2fM-parameter enhancer from %s",
            sum(p.numel() for p in params.values()) / 1e6,
            cfg.model.path or cfg.model.init or "a random initialisation",
        )

    def step(n: int) -> tuple[dict[str, float], bool]:
        first = (n - 1) * s.pairs_per_step
        pairs = [source.pair(i) for i in range(first + share.start, first + share.stop)]
        with lm.autocast():
            nll, tokens = pairs_nll(model, lm.pairs_fmt, pairs)
        # over the global batch's target tokens, so the summed gradients are the one-process gradient
        loss, grad_norm, finite = _update(
            nll / int(dist.sum_over_ranks(torch.tensor(tokens))), params, optimizer, s.optim.grad_clip
        )
        if not finite:
            log.warning("step %d: non-finite loss or gradient; update skipped", n)
        return {ENHANCE_SFT_LOSS: loss, f"{STAGE_SFT}/grad_norm": grad_norm}, finite

    def finish() -> Path:
        # no step ran here (sft.steps 0, or resumed at the last step): validate now, so sft/ records its scores
        metrics = loop.metrics if loop.metrics is not None else loop.validate(s.steps)
        return _save_stage(lm, out, STAGE_SFT, {"stage": STAGE_SFT, "steps": s.steps, **metrics}, source.shapeworld)

    return loop.run(
        step,
        stop=StopFlag(),
        finish=finish,
        summary=lambda: {"steps": s.steps, **loop.state},
        stop_after=stop_after,
    )


def _train_grpo(cfg: EnhanceConfig, out: Path, progress: bool, stop_after: int | None) -> Path | None:
    """Stage 2, from sft/; returns grpo/, or None if stopped. GRPO step s is logged as step sft.steps + s."""
    g = cfg.grpo
    lm_args = (
        cfg.model,
        cfg.train.precision,
        out / STAGE_SFT,
        cfg.instruction,
        cfg.data.max_prompt_tokens,
        cfg.max_new_tokens,
    )
    policy = stage_lm(*lm_args, trainable=True)
    policy.model.train()
    # the KL's anchor, and grpo/kl's: a frozen copy, or (LoRA) the policy with its adapters off
    reference = stage_lm(*lm_args, trainable=False) if needs_reference_copy(cfg.model) else None
    video_model = load_model(g.video_model, g.video_dtype)
    if cfg.model.path is not None:  # the toy's rollouts stay where they always ran, on the CPU
        video_model = video_model.to(policy.device)
    sampling, video = g.sampling.resolve(recommended_sampling(video_model)), g.video or recommended_video(video_model)
    params = {name: p for name, p in policy.model.named_parameters() if p.requires_grad}
    optimizer = g.optim.adamw(params.values())
    source = PairSource(cfg.data)
    held_out = source.held_out()

    def evaluate(step: int) -> dict[str, float]:
        return _validate_grpo(policy, video_model, cfg, source, held_out, sampling, video) if dist.is_main() else {}

    loop = Loop(
        out=out,
        steps=g.steps,
        params=params,
        optimizer=optimizer,
        checkpoints=out / "checkpoints" / STAGE_GRPO,
        checkpointed=params,
        validation=evaluate,
        summary_series=f"{STAGE_GRPO}/val_",
        **cadence(cfg, log_every=1),
        progress=progress,
        desc="enhance grpo",
        postfix=lambda row: {"reward": f"{row[ENHANCE_GRPO_REWARD]:.3f}"},
        learning_rate=lambda step: learning_rate(g.optim, step, g.steps),
        group=STAGE_GRPO,
        offset=cfg.sft.steps,  # the log reads as one run
        last_step_finishes=True,  # so the final validation, which grpo/ records, is this process's
    )
    loop.resume()
    if not loop.resumed and progress:
        log.info(
            "GRPO of the enhancer on %s's video rewards: %d prompts x %d rewrites per step, %d sampling steps",
            g.video_model,
            g.prompts_per_step,
            g.samples_per_prompt,
            sampling.steps,
        )

    def baseline() -> None:  # the SFT enhancer's scores; checkpoint 0 keeps a resumed run from logging them twice
        if not loop.resumed:
            loop.validate(0)
            loop.save(0)

    def finish() -> Path:
        card = {"stage": STAGE_GRPO, "steps": g.steps, "video_model": g.video_model, **(loop.metrics or {})}
        return _save_stage(policy, out, STAGE_GRPO, card, source.shapeworld)

    def summary() -> dict[str, Any]:  # added to the SFT stage's
        earlier = out / "summary.json"
        return {
            **(json.loads(earlier.read_text()) if earlier.is_file() else {}),
            f"{STAGE_GRPO}/steps": g.steps,
            f"{STAGE_GRPO}/nonfinite_steps": loop.state["nonfinite_steps"],
        }

    return loop.run(
        lambda n: _grpo_step(policy, reference, video_model, cfg, source, n, params, optimizer, sampling, video),
        stop=StopFlag(),
        finish=finish,
        summary=summary,
        stop_after=stop_after,
        before=baseline,
    )


def _rollout_generators(cfg: EnhanceConfig, step: int, groups: range) -> torch.Generator | list[torch.Generator]:
    """The toy's one stream per step (kept so its runs reproduce), or an LM's stream per group shared by the
    group's rows: a rewrite then does not depend on how the groups are split over ranks."""
    seed = cfg.train.seed
    if cfg.model.path is None:
        return torch.Generator().manual_seed(derive_seed(seed, 1, step))
    streams = [torch.Generator().manual_seed(derive_seed(seed, 1, step, p)) for p in groups]
    return [stream for stream in streams for _ in range(cfg.grpo.samples_per_prompt)]


def _grpo_step(
    policy: EnhancerLM,
    reference: EnhancerLM | None,
    video_model,
    cfg: EnhanceConfig,
    source: PairSource,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    sampling: SamplingConfig,
    video: VideoConfig,
) -> tuple[dict[str, float], bool]:
    """GRPO step `step` (1-based): rewrites, videos, rewards, advantages, update(s); (its metrics, all finite).
    Under torchrun each rank takes whole groups, so the group advantages are those of one process."""
    g = cfg.grpo
    P, G = g.prompts_per_step, g.samples_per_prompt
    groups = range(P)[dist.local_slice(P)]
    first = cfg.sft.steps * cfg.sft.pairs_per_step + (step - 1) * P  # the records after SFT's pairs: unseen prompts
    users = [source.request(first + p) for p in groups]
    prompts = [terse for terse, _ in users for _ in range(G)]  # group order
    intents = [intent for _, intent in users for _ in range(G)]
    policy.model.eval()  # rollouts without dropout, as teacher forcing below is compared with them
    with policy.autocast():
        rollout = sample_rollout(
            policy.model,
            policy.rollout_fmt,
            prompts,
            cfg.max_new_tokens,
            g.temperature,
            g.top_p,
            _rollout_generators(cfg, step, groups),
        )
    policy.model.train()
    seed = (derive_seed(cfg.train.seed, 2, step) & 0x7FFFFFFF) + groups.start  # group p from seed + p on every rank
    scores, passed = rewrite_rewards(
        video_model,
        prompts,
        intents,
        rollout.texts,
        G,
        sampling,
        video,
        seed,
        g.video_precision,
        list(cfg.reward.weights),
        source.shapeworld,
    )
    rewards = {name: torch.as_tensor(r, dtype=torch.float64) for name, r in scores.items()}
    advantages = combine_advantages(rewards, cfg.reward.weights, G)  # (P·G / world size,): whole groups

    pad = policy.rollout_fmt.pad_id
    drawn = torch.nn.utils.rnn.pad_sequence(rollout.logprobs, batch_first=True).to(policy.device)  # (B, L)
    with torch.no_grad(), policy.autocast():
        with reference_model(policy, reference) as ref_model:
            ref, _ = completion_logprobs(ref_model, rollout.prompt_ids, rollout.completion_ids, pad, g.temperature)
        # PPO's old policy: the toy keeps the log-probs its tokens were drawn with (its runs reproduce); an LM
        # takes the training forward's, so the first update's ratio is exactly 1 whatever the decoding kernels
        old = (
            drawn
            if cfg.model.path is None
            else completion_logprobs(policy.model, rollout.prompt_ids, rollout.completion_ids, pad, g.temperature)[0]
        )
    stats: dict[str, list[float]] = {"loss": [], "grad_norm": [], "clip_frac": [], "approx_kl": [], "kl": []}
    finite, gap = True, 0.0
    share = len(prompts) / (P * G)  # this rank's rewrites: its mean times its share sums to the global mean
    for epoch in range(g.epochs):
        with policy.autocast():
            logp, mask = completion_logprobs(
                policy.model, rollout.prompt_ids, rollout.completion_ids, pad, g.temperature
            )
        if epoch == 0:  # the same policy as the rollout's: teacher forcing must give its log-probs back (top_p = 1)
            gap = float((logp.detach() - drawn).abs().max())
        loss, terms = enhancer_grpo_loss(logp, old, mask, advantages.to(policy.device), g.clip_range, ref, g.kl_beta)
        loss_value, grad_norm, ok = _update(loss * share, params, optimizer, g.optim.grad_clip)
        if not ok:
            finite = False
            log.warning("GRPO step %d: non-finite loss or gradient; update skipped", step)
        terms = {k: v * share for k, v in terms.items()}  # token means of this rank, weighted to a global mean
        for key, value in {
            "loss": loss_value,
            "grad_norm": grad_norm,
            **{k: dist.sum_over_ranks(torch.tensor(v, dtype=torch.float64)).item() for k, v in terms.items()},
        }.items():
            stats[key].append(value)
    everyone = {name: dist.all_gather_cat(r) for name, r in rewards.items()}  # (P·G,) in group order
    row = {
        ENHANCE_GRPO_REWARD: float(weighted_sum(everyone, cfg.reward.weights).mean()),
        **{f"{STAGE_GRPO}/reward_{name}": r.mean().item() for name, r in everyone.items()},
        f"{STAGE_GRPO}/parse": float(dist.all_gather_cat(torch.as_tensor(passed, dtype=torch.float64)).mean()),
        **{f"{STAGE_GRPO}/{key}": float(np.mean(values)) for key, values in stats.items()},
        f"{STAGE_GRPO}/tied_groups": advantage_stats(dist.all_gather_cat(advantages), G)["tied_group_fraction"],
        f"{STAGE_GRPO}/logprob_gap": dist.all_gather_cat(torch.tensor([gap], dtype=torch.float64)).max().item(),
    }
    return row, finite


def _validate_grpo(
    policy: EnhancerLM,
    video_model,
    cfg: EnhanceConfig,
    source: PairSource,
    held_out: list[tuple[str, str]],
    sampling: SamplingConfig,
    video: VideoConfig,
) -> dict[str, float]:
    """Greedy rewrites of the validation prompts: rewrite_metrics (ShapeWorld), and the rewards of the first
    validation.videos' videos (video j from the noise of seed train.seed + j at every validation)."""
    prompts, intents = [p for p, _ in held_out], [i for _, i in held_out]
    if not source.shapeworld:  # a file's held-out requests are scored against themselves
        intents = prompts
    rewrites = _greedy_rewrites(policy, prompts, cfg.max_new_tokens)
    n = cfg.validation.videos
    rewards, passed = rewrite_rewards(
        video_model,
        prompts[:n],
        intents[:n],
        rewrites[:n],
        1,
        sampling,
        video,
        cfg.train.seed,
        cfg.grpo.video_precision,
        list(cfg.reward.weights),
        source.shapeworld,
    )
    metrics = rewrite_metrics(rewrites, intents) if source.shapeworld else {"parse": float(passed.mean())}
    metrics.update(
        {
            "reward": float(weighted_sum(rewards, cfg.reward.weights).mean()),
            **{f"reward_{name}": float(r.mean()) for name, r in rewards.items()},
        }
    )
    return {f"{STAGE_GRPO}/val_{k}": v for k, v in metrics.items()}
