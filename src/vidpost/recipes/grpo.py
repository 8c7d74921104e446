"""RL for flow-matching video models: Flash-GRPO by default; full-trajectory and sliding-window GRPO and
DiffusionNFT in the same loop.

    vidpost grpo configs/shapeworld/grpo_flash.yaml --out runs/grpo [key=value ...]
    vidpost grpo configs/shapeworld/grpo_nft.yaml --out runs/nft
    torchrun --nproc_per_node 8 -m vidpost.cli grpo CONFIG --out RUN    # FSDP2 over 8 GPUs (docs/guide/)

Each iteration is a chain of named, timed phases:
    rollout    P prompts x G samples along the strategy's plan of SDE steps (rl/strategies.py), with the
               Flow-GRPO or the coefficient-preserving SDE step (rollout.noise.schedule: cps)
    reward     the configured rewards of the decoded videos
    advantage  group-relative advantages over the whole batch (all ranks); the points to train: the plan's
               SDE transitions, or for nft the clean samples re-noised at the plan's σ (rl/nft.py); samples
               of advantage 0 left out where the strategy's reference leaves them out
    old        log π_old (nft: v_old), and the reference's SDE means (velocities) when kl_beta > 0, of every
               point, computed with the very function and micro-batches of the update, so ρ = 1 exactly at first
    update     PPO-clip on each transition's ratio (x the rectification weight under flash), or nft's
               negative-aware flow-matching loss, over minibatches (one optimizer step each)
Strategies decide which steps are stochastic and trained; the loop is the same for all four.

The run directory is laid out as SFT's (recipes/sft.py): config.yaml, checkpoints/, logs/ (JSONL and
TensorBoard), samples/step_N/ (held-out evaluation videos), and the final lora/ or model/ with its
card, which `vidpost sample --model RUN_DIR` loads. Every iteration's randomness (prompts, k, noise) is
drawn from (seed, iteration), so a killed run resumes from its last checkpoint exactly.

Under torchrun each rank rolls out and trains its share of the groups (`dist.local_slice`), with the full
weights held for the rollout (`dist.unsharded`) and FSDP2-sharded weights for the update; rewards, advantages
and the rectification mean of each optimizer step are computed over all ranks, k and every row's noise come from (seed,
iteration, row), minibatches take the same part of every group, and each loss is divided by the global
minibatch size (FSDP2 sums gradients), so an iteration gives the one-process update at any world size.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from vidpost import dist
from vidpost.config import Config
from vidpost.data.video_io import to_float, to_uint8
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.diffusion.sde import (
    NOISE_SCHEDULES,
    gradient_scale,
    noise_levels,
    step_coefficients,
    step_kind,
    transition_kl,
)
from vidpost.generation import recommended_video
from vidpost.metric_names import EVAL, REWARD_WEIGHTED, TRAIN, TRAIN_APPROX_KL, series
from vidpost.models.config import ModelConfig
from vidpost.models.wan import WanVideoModel
from vidpost.precision import PRECISIONS
from vidpost.recipes.common import (
    CheckpointConfig,
    LogConfig,
    OptimConfig,
    RewardConfig,
    StopFlag,
    ValidationConfig,
    derive_seed,
    ema_checkpointed,
    ema_weights,
    learning_rate,
    make_ema,
    register_rewards,
    save_final,
    start_run,
    validate,
)
from vidpost.recipes.loop import Loop, cadence
from vidpost.recipes.prompts import PromptsConfig, rewrite_prompts, training_prompts, validation_prompts
from vidpost.rewards.registry import compute_rewards, weighted_sum
from vidpost.rl.advantages import REWARD_MODES, STD_SCOPES, advantage_stats, combine_advantages
from vidpost.rl.losses import policy_loss, rectification_weights
from vidpost.rl.nft import Renoised, nft_loss, renoise, velocity_kl
from vidpost.rl.rollout import Transitions, guided_velocity, rollout, transition_log_probs
from vidpost.rl.strategies import FlashConfig, NFTConfig, StepPlan, StrategyConfig, plan_steps
from vidpost.runlog import samples_dir

log = logging.getLogger("vidpost")


# ------------------------------------------------------------------------------------------------ config


class NoiseConfig(Config):
    schedule: Literal[tuple(NOISE_SCHEDULES)] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "flash",
        description="SDE noise level g(σ): flash (linear) | flow_grpo (a·sqrt(σ/(1-σ))) | dance (constant eta) "
        "| cps (the coefficient-preserving step, noise share eta)",
    )
    params: dict[str, float] = Field(default_factory=dict, description="the schedule's parameters, e.g. {a: 0.7}")


class RolloutConfig(Config):
    prompts_per_step: int = Field(8, ge=1, description="P: prompts (groups) per iteration, over all ranks")
    samples_per_prompt: int = Field(8, ge=2, description="G: samples per prompt, the group size")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="grid, shift and guidance of rollouts, training and evaluation"
    )
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="noise level of the SDE steps")


class GRPORewardConfig(RewardConfig):
    mode: Literal[REWARD_MODES] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "weighted_sum", description="advantages of the weighted sum, or the weighted sum of per-reward advantages"
    )
    std_scope: Literal[STD_SCOPES] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "group", description="advantage std per group or over the batch"
    )
    clip: float = Field(5.0, gt=0, description="advantages are clipped to [-clip, clip]")


class GRPOTrainConfig(Config):
    steps: int = Field(100, ge=1, description="iterations (rollout + update)")
    clip_range: float = Field(1e-3, gt=0, description="PPO ratio clip epsilon")
    kl_beta: float = Field(0.0, ge=0, description="weight of the closed-form KL to the reference (0: off)")
    minibatches: int = Field(
        1, ge=1, description="optimizer steps per iteration (each group's transitions split evenly)"
    )
    drop_zero_advantage: bool | None = Field(
        None,
        description="leave out of the update the samples whose advantage is exactly 0 (tied groups), which "
        "teach a policy gradient nothing and would dilute its loss; null: as each strategy's reference does "
        "(Flow-GRPO and Flash-GRPO drop them, DiffusionNFT keeps them: r = 1/2 holds v_θ near v_old)",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="transitions per forward/backward on each rank; null = its whole minibatch"
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "auto", description="autocast of rollouts and training: auto (bf16 where the hardware has it) | bf16 | float32"
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the trained weights, used for validation and the final model (0: off)"
    )
    seed: int = Field(0, description="every iteration's randomness is drawn from (seed, iteration)")
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="stop the run after this many iterations in a row with a non-finite loss or gradient"
    )


class GRPOConfig(Config):
    renamed_keys = {
        **{f"train.{key}": f"optim.{key}" for key in ("learning_rate", "weight_decay", "betas", "grad_clip")},
        "rollout.precision": "train.precision",
        "prompts.prompts": "prompts.wording",
        "evaluation.prompts": "validation.wording",  # before the section's rename, which would name the old key
        "evaluation": "validation",
        "validation.prompts": "validation.wording",
        "log_every_steps": "log.every_steps",
    }

    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(path="shapeworld-sft"), description="the policy to train"
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="training prompts")
    video: VideoConfig | None = Field(None, description="frames and size of the videos; null = the model card's")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="group sampling")
    strategy: StrategyConfig = Field(
        default_factory=StrategyConfig, description="which steps are stochastic and trained"
    )
    reward: GRPORewardConfig = Field(default_factory=GRPORewardConfig, description="rewards and advantages")
    train: GRPOTrainConfig = Field(
        default_factory=GRPOTrainConfig, description="iterations, PPO clip, KL, minibatches, precision, seed"
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule")
    validation: ValidationConfig = Field(
        default_factory=lambda: ValidationConfig(every_steps=10, split="heldout", n=32),
        description="held-out evaluation: deterministic ODE sampling with fixed seeds",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=lambda: CheckpointConfig(every_steps=10), description="checkpointing"
    )
    log: LogConfig = Field(default_factory=lambda: LogConfig(every_steps=1), description="training metrics")

    @model_validator(mode="after")
    def _minibatches_fit(self) -> GRPOConfig:
        G = self.rollout.samples_per_prompt
        per_sample = self.strategy.trained_steps(self.rollout.sampling.steps)
        if self.train.minibatches > G * per_sample:
            raise ValueError(
                f"train.minibatches {self.train.minibatches} exceeds the {G * per_sample} transitions each group "
                f"trains ({G} samples x {per_sample} steps): some minibatches would be empty"
            )
        return self

    @model_validator(mode="after")
    def _trainable(self) -> GRPOConfig:
        self.model.require_float32_for_full_training()
        if self.model.lora.enabled and self.model.lora.dropout > 0:
            raise ValueError(
                f"model.lora.dropout {self.model.lora.dropout}: GRPO needs the old and the current log-probabilities "
                "from the same function (ratio 1 at the first update), and dropout makes them differ; set it to 0"
            )
        return self


# ------------------------------------------------------------------------------------------------ pieces


def _reference(model: WanVideoModel):
    """A context giving the reference policy: the model with its LoRA disabled, or a frozen copy made now."""
    if model.lora_config is not None:

        @contextmanager
        def without_lora():
            model.transformer.disable_adapters()
            try:
                yield model
            finally:
                model.transformer.enable_adapters()

        return without_lora
    frozen = copy.copy(model)
    frozen.transformer = copy.deepcopy(model.transformer).requires_grad_(False)  # before the policy is sharded
    dist.shard_model(frozen.transformer, frozen.transformer.blocks)

    @contextmanager
    def copy_of_start():
        yield frozen

    return copy_of_start


class _Phases:
    """Seconds spent in each named phase of an iteration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        tick = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tick


# ------------------------------------------------------------------------------------------------ the recipe


def train(
    cfg: GRPOConfig,
    out: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
    stop_after_seconds: float | None = None,
) -> Path | None:
    """Run (or resume) GRPO in `out`; return the final lora/ or model/ folder, or None if stopped early (a signal,
    `stop_after` iterations, or `stop_after_seconds` of training over all resumes, validation not counted)."""
    dist.require_divisible({"rollout.prompts_per_step": cfg.rollout.prompts_per_step})
    out = Path(out)
    final = start_run(cfg, out)
    if final is not None:
        return final
    progress = progress and dist.is_main()
    register_rewards(cfg.reward)

    torch.manual_seed(cfg.train.seed)
    model = WanVideoModel.from_config(cfg.model).to(dist.device())
    video = cfg.video or recommended_video(model)
    shape = model.latent_shape(video.frames, video.height, video.width)
    sampling = cfg.rollout.sampling
    sigmas = sampling_sigmas(sampling.steps, sampling.shift, sampling.scheduler)  # (N + 1,)
    noise = cfg.rollout.noise
    g = noise_levels(sigmas, noise.schedule, **noise.params)  # (N,)
    strategy = cfg.strategy
    rectify = strategy.name == "flash" and strategy.section(FlashConfig).rectify
    scales = gradient_scale(sigmas, noise.schedule, **noise.params) if rectify else None  # (N,) c(σ_i)
    pool_asked, pool = training_prompts(cfg.prompts)
    # once: rewrites are fixed for the run, and the enhancers' fallback counts open its log
    pool_used, rewrite_metrics = rewrite_prompts(pool_asked, cfg.prompts.enhancer, "enhance/train/")
    eval_asked, eval_prompts, scorable = validation_prompts(cfg.validation)
    eval_used, eval_rewrite_metrics = rewrite_prompts(eval_asked, cfg.validation.enhancer, "enhance/eval/")
    rewrite_metrics.update(eval_rewrite_metrics)
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    uncond = model.encode_prompts([sampling.negative_prompt]) if sampling.guidance > 1 else None
    reference = _reference(model) if cfg.train.kl_beta > 0 else None
    dist.shard_model(model.transformer, model.transformer.blocks)  # FSDP2 under torchrun; nothing in one process

    params = {name: p for name, p in model.transformer.named_parameters() if p.requires_grad}
    t, o = cfg.train, cfg.optim
    optimizer = o.adamw(params.values())
    ema = make_ema(params, t.ema_decay)

    def evaluate(step: int) -> dict[str, float]:  # every rank samples its share; rank 0 writes and scores
        with ema_weights(ema, params):
            return validate(
                model,
                eval_prompts,
                scorable,
                sampling,
                video,
                cfg.validation.seed,
                t.precision,
                samples_dir(out, step),
                prefix=EVAL,
                acceleration=cfg.validation.acceleration,
                used=eval_used,
                progress=progress,
            )

    loop = Loop(
        out=out,
        steps=t.steps,
        params=params,
        optimizer=optimizer,
        checkpoints=out / "checkpoints",
        checkpointed=ema_checkpointed(params, ema),
        validation=evaluate,
        summary_series=f"{EVAL}/",
        **cadence(cfg),
        progress=progress,
        desc=f"grpo {strategy.name}",
        postfix=lambda row: {"reward": f"{row.get(REWARD_WEIGHTED, float('nan')):.3f}"},
        state={"nonfinite_steps": 0, "ema_steps": 0},
        learning_rate=lambda step: learning_rate(o, step, t.steps),
        ema=ema,
        timed=False,  # an iteration logs its phases' seconds instead
        unit="iteration",
    )
    if loop.resume(rewrite_metrics) == 0:
        log.info(
            "GRPO (%s) on %.2fM trained parameters: %d prompts x %d samples per iteration, %d steps",
            strategy.name,
            sum(p.numel() for p in params.values()) / 1e6,
            P,
            G,
            sampling.steps,
        )
        loop.validate(0)  # the policy before training: the baseline

    def step(n: int) -> tuple[dict[str, float], bool]:
        torch.manual_seed(derive_seed(t.seed, 4, n))  # global-RNG draws (a stochastic reward) resume exactly
        row = iteration(model, cfg, n, pool, pool_used, shape, sigmas, g, scales, uncond, reference, params, optimizer)
        nonfinite = row.pop("nonfinite")
        return row, not nonfinite

    def finish() -> Path:
        with ema_weights(ema, params):
            return save_final(model, cfg.model, sampling, video, out)

    return loop.run(
        step,
        stop=StopFlag(),
        finish=finish,
        summary=lambda: {"iterations": t.steps, **loop.state},
        stop_after=stop_after,
        stop_after_seconds=stop_after_seconds,
    )


def iteration(
    model: WanVideoModel,
    cfg: GRPOConfig,
    step: int,
    pool: list[str],
    pool_used: list[str],
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    g: torch.Tensor,
    scales: torch.Tensor | None,
    uncond: torch.Tensor | None,
    reference,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """One GRPO iteration (1-based `step`): rollout, reward, advantage, old log-probs, update. Returns its metrics."""
    phase = _Phases()
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    sampling, precision, t = cfg.rollout.sampling, cfg.train.precision, cfg.train
    nft, kind = cfg.strategy.name == "nft", step_kind(cfg.rollout.noise.schedule)
    generator = torch.Generator().manual_seed(derive_seed(t.seed, 1, step))
    prompt_ids = torch.randint(len(pool), (P,), generator=generator)  # same draw on every rank
    plan = plan_steps(cfg.strategy, P, G, sampling.steps, step - 1, generator)
    if not nft:  # a step without noise (cps's last) has no log-probability: it runs as an ODE step, untrained
        stochastic = step_coefficients(sigmas[:-1], sigmas[1:], g, kind)[2] > 0  # (N,)
        plan.sde &= stochastic
        plan.train &= stochastic
    local = dist.local_slice(P)  # this rank's groups
    groups = torch.arange(P)[local]
    rows = (groups[:, None] * G + torch.arange(G)).flatten()  # this rank's rows of the global batch
    prompts = [pool[int(i)] for i in prompt_ids[local]]  # what the rewards check
    used = [pool_used[int(i)] for i in prompt_ids[local]]  # what the model is given
    # one SDE noise stream per row of the global batch: a row's noise does not depend on the rank it runs on
    sde_generators = [torch.Generator().manual_seed(derive_seed(t.seed, 2, step, int(r))) for r in rows]
    seeds = torch.tensor([derive_seed(t.seed, 3, step, int(r)) & 0x7FFFFFFF for r in rows])

    with phase("rollout"), dist.unsharded(model.transformer):  # full weights: no collective per forward
        model.transformer.eval()
        embeds = model.encode_prompts(used)  # (p, L, D)
        trajectory_trained = torch.zeros_like(plan.train[rows]) if nft else plan.train[rows]
        local_plan = StepPlan(sde=plan.sde[rows], train=trajectory_trained, k=None if plan.k is None else plan.k[local])
        batch = rollout(
            model,
            shape,
            embeds,
            uncond,
            local_plan,
            sigmas,
            g,
            sampling.guidance,
            seeds,
            sde_generators,
            precision,
            flash=cfg.strategy.section(FlashConfig) if cfg.strategy.name == "flash" else None,
            kind=kind,
        )
    with phase("reward"):
        decoded = model.decode(batch.final).cpu().numpy()
        finite = np.isfinite(decoded.reshape(len(decoded), -1)).all(1)
        bad = int(dist.sum_over_ranks(torch.tensor([float((~finite).sum())]))[0])
    if bad:  # a diverged rollout: no reward to learn from; counted as a non-finite iteration (the streak stops it)
        log.warning("iteration %d: %d rollout videos are not finite (NaN or inf); update skipped", step, bad)
        return {"train/nonfinite_videos": float(bad), "nonfinite": True}
    with phase("reward"):
        videos = to_float(to_uint8(decoded))  # scored as a saved clip would be
        prompt_of_row = [p for p in prompts for _ in range(G)]
        local_rewards = compute_rewards(list(cfg.reward.weights), videos, prompt_of_row)
        rewards = {
            name: dist.all_gather_cat(torch.as_tensor(r, dtype=torch.float64)) for name, r in local_rewards.items()
        }  # (B,) global, group order
    with phase("advantage"):
        advantages = combine_advantages(
            rewards, cfg.reward.weights, G, cfg.reward.mode, cfg.reward.std_scope, cfg.reward.clip
        )  # (B,) global
        local_advantages = advantages[rows]  # points.sample indexes this rank's rows
        tr = batch.transitions
        points: Renoised | Transitions  # what is trained on: the re-noised clean samples, or the transitions
        if nft:  # the clean samples re-noised at the plan's σ, each row's ε from its own stream
            renoise_generators = [torch.Generator().manual_seed(derive_seed(t.seed, 5, step, int(r))) for r in rows]
            points = renoise(batch.final, plan.train[rows], sigmas, torch.arange(len(rows)), renoise_generators)
        else:
            points = tr
        drop = t.drop_zero_advantage if t.drop_zero_advantage is not None else not nft  # as each reference does
        keep = local_advantages[points.sample] != 0 if drop else torch.ones(len(points), dtype=torch.bool)

    def forward(policy, sub):  # what the objective needs of `policy` at `sub`, with their prompts
        if nft:  # the velocity at the re-noised points
            return (
                guided_velocity(
                    policy, sub.x, sub.sigma, embeds[sub.sample // G], uncond, sampling.guidance, precision
                ),
            )
        return transition_log_probs(policy, sub, embeds[sub.sample // G], uncond, sampling.guidance, precision, kind)

    # Minibatches (one optimizer step each) of micro-batches (one forward/backward each); the old
    # log-probabilities (velocities) are computed on exactly these micro-batches, so the first update sees ρ = 1.
    minibatches = micro_batches(keep, len(groups), t.minibatches, t.micro_batch_size)
    with phase("old"), torch.no_grad():
        old_lp = tr.rollout_log_prob.clone()  # overwritten for every trained transition
        old_v: list[list[torch.Tensor]] = [[] for _ in minibatches]  # nft's v_old
        ref: list[list[torch.Tensor]] = [[] for _ in minibatches]  # the reference's SDE mean (velocity for nft)
        for n, chunks in enumerate(minibatches):
            for chunk in chunks:
                sub = points.select(_stand_in(chunk))
                out = forward(model, sub)
                if nft:
                    old_v[n].append(out[0])
                else:
                    old_lp[chunk] = out[0][: len(chunk)].float()
                if reference is not None:
                    with reference() as ref_model:
                        ref[n].append(forward(ref_model, sub)[0 if nft else 1])

    with phase("update"):
        model.transformer.train()
        stats: dict[str, list[float]] = {
            "ratio": [],
            "clipped": [],
            "approx_kl": [],
            "kl": [],
            "loss": [],
            "nft_positive": [],
            "nft_negative": [],
        }
        grad_norms, nonfinite = [], False
        for n, chunks in enumerate(minibatches):
            trained = torch.cat([*chunks, torch.empty(0, dtype=torch.long)])
            inverse = 1.0 / scales[points.step[trained]] if scales is not None else torch.zeros(0, dtype=torch.float64)
            size, inverse_sum = dist.sum_over_ranks(
                torch.tensor([float(len(trained)), float(inverse.sum())], dtype=torch.float64)
            ).tolist()
            if size == 0:  # every sample of this minibatch tied, on every rank: nothing to learn from
                continue
            finite = True
            for m, chunk in enumerate(chunks):
                rows_run = _stand_in(chunk)
                sub = points.select(rows_run)
                out = forward(model, sub)
                advantage = local_advantages[sub.sample].to(out[0].device)
                if nft:
                    assert isinstance(sub, Renoised)  # nft trains on the re-noised points
                    nft_terms = nft_loss(
                        out[0], old_v[n][m], sub, advantage, cfg.strategy.section(NFTConfig).beta, cfg.reward.clip
                    )
                    kl = velocity_kl(out[0], ref[n][m]) if reference is not None else None
                    loss = nft_terms.loss + (t.kl_beta * kl if kl is not None else 0)
                    batch_stats = {"nft_positive": nft_terms.positive, "nft_negative": nft_terms.negative}
                else:
                    lp, mean, std = out
                    kl = transition_kl(mean, ref[n][m], std) if reference is not None else None
                    weights = None
                    if scales is not None:  # the mean of c⁻¹ over this optimizer step's transitions on all ranks
                        weights = rectification_weights(scales[sub.step], inverse_sum / size).to(lp.device)
                    pg_terms = policy_loss(
                        lp, old_lp[rows_run].to(lp.device), advantage, t.clip_range, weights, kl, t.kl_beta
                    )
                    loss = pg_terms.loss
                    batch_stats = {
                        "ratio": pg_terms.ratio,
                        "clipped": pg_terms.clipped.float(),
                        "approx_kl": pg_terms.approx_kl,
                    }
                loss = loss[: len(chunk)]  # a stand-in's pass (empty loss) only keeps FSDP2's collectives in step
                (loss.sum() / size).backward()  # FSDP2 sums over ranks: the global minibatch mean
                finite = finite and bool(torch.isfinite(loss).all())
                batch_stats["loss"] = loss.detach()
                if kl is not None:
                    batch_stats["kl"] = kl.detach()
                for key, value in batch_stats.items():
                    stats[key].extend(value[: len(chunk)].float().tolist())
            grad_norm = dist.clip_grad_norm_(params.values(), cfg.optim.grad_clip)  # over all ranks' shards
            skip = not (finite and bool(torch.isfinite(grad_norm)))
            if not dist.any_rank(skip):  # every rank steps, or none (their weights must stay equal)
                optimizer.step()
            else:  # a bad batch must not poison the weights: skip the update, count it
                nonfinite = True
                log.warning("iteration %d: non-finite loss or gradient; update skipped", step)
            optimizer.zero_grad(set_to_none=True)
            grad_norms.append(grad_norm.item())

    row: dict[str, float] = {}
    for name, values in rewards.items():
        row[f"reward/{name}"] = values.mean().item()
        row[f"reward/{name}_std"] = values.std(unbiased=False).item()
    row[REWARD_WEIGHTED] = float(weighted_sum(rewards, cfg.reward.weights).mean())
    row.update({f"advantage/{k}": v for k, v in advantage_stats(advantages, G).items()})
    gathered = {
        k: dist.all_gather_cat(torch.tensor(v, dtype=torch.float64)).numpy() for k, v in stats.items()
    }  # all ranks
    total, trained = dist.sum_over_ranks(
        torch.tensor([float(len(points)), float(keep.sum())], dtype=torch.float64)
    ).tolist()
    ratio = gathered["ratio"]
    if len(ratio):  # none when every sample of the iteration tied
        row.update(
            {
                "train/ratio_mean": float(ratio.mean()),
                "train/ratio_min": float(ratio.min()),
                "train/ratio_max": float(ratio.max()),
                "train/clip_fraction": float(np.mean(gathered["clipped"])),
                TRAIN_APPROX_KL: float(np.mean(gathered["approx_kl"])),
            }
        )
    row.update(
        {
            "train/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "train/transitions": trained,
            "train/dropped_fraction": 1 - trained / total,
            "train/rollout_logprob_gap": float(
                dist.all_gather_cat(
                    (old_lp - tr.rollout_log_prob).abs().amax(dim=0, keepdim=True) if len(tr) else torch.zeros(1)
                ).max()
            ),
            "nfe/rollout_per_video": float(
                dist.all_gather_cat(torch.tensor([batch.passes_per_video])).mean()
            ),  # equal rows per rank
            "nfe/train_per_video": (2 if sampling.guidance > 1 else 1) * trained / (len(rows) * dist.world_size()),
        }
    )
    for key in ("kl", "loss", "nft_positive", "nft_negative"):
        if len(gathered[key]):
            row[series(TRAIN, key)] = float(np.mean(gathered[key]))  # TRAIN_LOSS among them
    row.update({f"time/{name}_s": seconds for name, seconds in phase.seconds.items()})
    row["nonfinite"] = nonfinite
    return row


def micro_batches(
    keep: torch.Tensor, num_groups: int, minibatches: int, micro_batch_size: int | None
) -> list[list[torch.Tensor]]:
    """This rank's kept transitions (keep (M,) bool) in each minibatch (`minibatch_indices`), split in micro-batches.

    Ranks keep different numbers of transitions (dropped samples), but FSDP2 needs every rank to run the same
    number of forwards: a rank with fewer micro-batches than another gets empty ones (see `_stand_in`).
    """
    out = []
    for part in minibatch_indices(len(keep), num_groups, minibatches):
        kept = part[keep[part]]
        chunks = list(kept.split(micro_batch_size or len(kept))) if len(kept) else []
        chunks += [kept[:0]] * (dist.max_over_ranks(len(chunks)) - len(chunks))
        out.append(chunks)
    return out


def _stand_in(chunk: torch.Tensor) -> torch.Tensor:
    """The rows a micro-batch runs: its own, or for an empty one transition 0, whose result is discarded."""
    return chunk if len(chunk) else torch.zeros(1, dtype=torch.long)


def minibatch_indices(num_transitions: int, num_groups: int, minibatches: int) -> list[torch.Tensor]:
    """This rank's transitions (sample-major, groups in order) in each minibatch: the n-th part of every group's.

    Every group holds the same number of transitions, so each rank holds an equal share of every minibatch
    (the same number of forwards on every rank), and a minibatch is the same set of transitions at any world size.
    """
    if num_transitions % num_groups:
        raise ValueError(f"{num_transitions} transitions do not split evenly over {num_groups} groups")
    per_group = num_transitions // num_groups
    offsets = torch.arange(num_groups)[:, None] * per_group  # (p, 1)
    return [(offsets + part).flatten() for part in torch.arange(per_group).tensor_split(minibatches)]


__all__ = ["GRPOConfig", "iteration", "micro_batches", "minibatch_indices", "train"]
