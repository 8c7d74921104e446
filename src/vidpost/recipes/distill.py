"""Distillation of a flow-matching video model into a student that needs one forward pass per step and few steps.

    vidpost distill configs/shapeworld/distill.yaml --out runs/distill [key=value ...]
    vidpost sample --model runs/distill --prompts prompts.txt --out samples/distilled   # the student's defaults

`mode` says what is distilled:
    cfg    guidance: the student keeps the teacher's grid and reproduces its guided velocity v_u + w·(v_c − v_u)
           (one fixed w, the teacher's) in one forward pass per step.
    steps  steps: the student samples in `student_steps[-1]` steps (4 by default) and keeps the teacher's guidance.
    both   both at once: few steps, one pass each (what LightX2V ships for Wan2.1 as a 4-step, CFG-free LoRA).

Method: progressive trajectory distillation (Salimans & Ho 2022, adapted to flow matching and Euler steps). Each
step draws P prompts and runs the frozen teacher, guided, on its own sampling grid from fresh noise. On the
teacher's path it reads, for every interval j of the student's grid, the state at the interval's start and the
teacher's average velocity over the interval; the student's velocity at that state regresses on it, so one
student Euler step lands where the teacher's steps land (distill/losses.py has the maths and both special cases:
the same grid is CFG distillation, a grid of every other point is one progressive halving). `student_steps` may
list several rounds, e.g. [8, 4]: each round's student becomes the next round's teacher, as in progressive
distillation, so no round has to bridge more than a few teacher steps; in mode both, a first entry equal to the
teacher's steps is a guidance-only round (Meng et al. 2023's first stage). The student starts as a copy of the
teacher and trains all its weights or a LoRA (`model.lora`): a 4-step LoRA for Wan is `mode: both` with LoRA on.

Why this and not DMD2 (FastVideo, LightX2V): distribution matching trains a second, "fake score" model on the
student's samples next to it, with its own optimizer and several critic updates per student update (and, in
DMD2, a GAN head), and samples the student's own few-step videos every step: three transformers in memory and
the most compute of the options, with a balance to tune. Trajectory distillation needs only the frozen teacher's
no-grad passes and one regression, asks something exact (land where the teacher lands from the same noise), has
nothing adversarial to balance, and fits ShapeWorld's 2-core, 20-minute budget. Its known limit is that the
student learns on the teacher's states, not its own (progressive rounds narrow the gap); DMD2 is the next method
for 1-2 steps.

The run directory is laid out as SFT's (recipes/sft.py): config.yaml, checkpoints/ (the student's trained weights,
the round's teacher weights and the optimizer), logs/, samples/step_N/ (validation videos at the student's own
sampling) and samples/teacher/ (the teacher's videos of the same prompts and noise, which `val/mse_to_teacher`
compares against), and the final model/ or lora/ whose card records the student's steps, shift and guidance.
Every step's randomness (prompts, noise) is drawn from (seed, step), so a killed run resumes exactly.

Under torchrun every rank draws the step's P prompts and their noise from (seed, step), runs the teacher on its
share of them (`train.prompts_per_step` counts over all ranks and must divide by the world size) and trains the
student on its share of the pairs; the student and the round's teacher are sharded with FSDP2 as in SFT, each rank
divides its loss by the global number of pairs, so a step is the one-process step. Rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from vidpost import dist
from vidpost.config import Config
from vidpost.data.dataset import iter_clips
from vidpost.diffusion.config import SamplingConfig, SamplingOverrides, VideoConfig
from vidpost.diffusion.sampler import GuidedVelocity, initial_noise
from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.distill.losses import distillation_loss, teacher_targets
from vidpost.errors import VidpostError
from vidpost.evaluation import score_videos
from vidpost.generation import recommended_sampling, recommended_video
from vidpost.metric_names import TRAIN_LOSS, VAL, VAL_MSE_TO_TEACHER
from vidpost.models.config import ModelConfig
from vidpost.models.wan import WanVideoModel
from vidpost.precision import PRECISIONS, autocast
from vidpost.recipes.common import (
    CheckpointConfig,
    LogConfig,
    OptimConfig,
    StopFlag,
    ValidationConfig,
    derive_seed,
    learning_rate,
    save_final,
    start_run,
    validate,
)
from vidpost.recipes.loop import Loop, cadence
from vidpost.recipes.prompts import PromptsConfig, rewrite_prompts, training_prompts, validation_prompts
from vidpost.runlog import samples_dir

log = logging.getLogger("vidpost")


MODES = ("cfg", "steps", "both")
DEFAULT_STUDENT_STEPS = 4


# ------------------------------------------------------------------------------------------------ config


class DistillTrainConfig(Config):
    steps_per_round: int = Field(100, ge=1, description="optimizer steps of each round (student_steps entry)")
    prompts_per_step: int = Field(
        8,
        ge=1,
        description="teacher trajectories per optimizer step over all ranks, each one training pair per student step",
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="training pairs per forward/backward on each rank (accumulation); null = all of its share",
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "auto", description="autocast of teacher and student: auto (bf16 where the hardware has it) | bf16 | float32"
    )
    seed: int = Field(0, description="every step's randomness (prompts, noise) is drawn from (seed, step)")
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="stop the run after this many steps in a row with a non-finite loss or gradient"
    )


class TeacherConfig(SamplingOverrides):
    steps: int | None = Field(None, ge=1, description="the teacher's sampling steps; null: its card's")
    shift: float | None = Field(
        None, gt=0, description="shift of the teacher's and the student's grids; null: the card's"
    )
    guidance: float | None = Field(
        None, ge=1, description="the teacher's guidance scale w (distilled); null: the card's"
    )


class DistillConfig(Config):
    renamed_keys = {
        "log_every_steps": "log.every_steps",
        "prompts.prompts": "prompts.wording",
        "validation.prompts": "validation.wording",
    }

    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(path="shapeworld-sft"),
        description="the teacher; the student starts as its copy (model.lora.enabled: a LoRA student)",
    )
    mode: Literal[MODES] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "both", description="cfg: one pass per step | steps: few steps | both"
    )
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="the teacher's sampling (null: its card's)"
    )
    student_steps: list[int] | None = Field(
        None, description="steps of each round's student, e.g. [8, 4]; null: [4], in mode cfg the teacher's steps"
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="prompts of the teacher trajectories")
    video: VideoConfig | None = Field(None, description="frames and size of the videos; null = the teacher card's")
    train: DistillTrainConfig = Field(default_factory=DistillTrainConfig, description="rounds, batch, precision")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule (per round)")
    validation: ValidationConfig = Field(
        default_factory=lambda: ValidationConfig(every_steps=50, n=32),
        description="videos at the student's sampling, compared with the teacher's (also at each round's end)",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=lambda: CheckpointConfig(every_steps=50), description="checkpointing"
    )
    log: LogConfig = Field(default_factory=LogConfig, description="training metrics")

    @model_validator(mode="after")
    def _trainable(self) -> DistillConfig:
        self.model.require_float32_for_full_training()
        return self

    @model_validator(mode="after")
    def _steps_fit_the_mode(self) -> DistillConfig:
        if self.student_steps is None:
            return self
        if self.mode == "cfg":
            raise ValueError(
                "mode cfg keeps the teacher's steps: leave student_steps null (mode both distils steps too)"
            )
        if not self.student_steps or any(n < 1 for n in self.student_steps):
            raise ValueError(f"student_steps must list step counts >= 1, got {self.student_steps}")
        if any(b >= a for a, b in itertools.pairwise(self.student_steps)):
            raise ValueError(f"student_steps must decrease from round to round, got {self.student_steps}")
        return self


# ------------------------------------------------------------------------------------------------ rounds


@dataclass(frozen=True)
class Round:
    """One round: a teacher sampled on its grid with its guidance, and the student grid it is distilled into."""

    index: int  # 0-based
    teacher: SamplingConfig
    student: SamplingConfig

    @functools.cached_property
    def teacher_sigmas(self) -> torch.Tensor:
        return sampling_sigmas(self.teacher.steps, self.teacher.shift, self.teacher.scheduler)

    @functools.cached_property
    def student_sigmas(self) -> torch.Tensor:
        return sampling_sigmas(self.student.steps, self.student.shift, self.student.scheduler)


def plan_rounds(mode: str, teacher: SamplingConfig, student_steps: list[int] | None) -> list[Round]:
    """The rounds of a run: round 0's teacher is the model; each later round's teacher is the previous student.

    The student samples with guidance 1 in modes cfg and both (one pass per step) and keeps the teacher's in mode
    steps; every grid has the teacher's shift and scheduler.
    """
    if mode not in MODES:
        raise VidpostError(f"unknown distillation mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "cfg":
        if teacher.guidance <= 1:
            raise VidpostError("mode cfg distils guidance, but the teacher's guidance is 1; set teacher.guidance")
        ladder = [teacher.steps]
    else:
        ladder = list(student_steps or [DEFAULT_STUDENT_STEPS])
        # mode both may open with a guidance-only round at the teacher's steps (Meng et al. 2023's first stage)
        cfg_round = mode == "both" and teacher.guidance > 1 and ladder[0] == teacher.steps
        if ladder[0] >= teacher.steps and not cfg_round:
            raise VidpostError(
                f"student_steps {ladder} must start below the teacher's {teacher.steps} steps (mode {mode}"
                + (", or at them to distil guidance first)" if mode == "both" else ")")
            )
    guidance = teacher.guidance if mode == "steps" else 1.0
    rounds, current = [], teacher
    for index, steps in enumerate(ladder):
        student = teacher.model_copy(update={"steps": steps, "guidance": guidance})
        rounds.append(Round(index, current, student))
        current = student
    return rounds


def round_of(step: int, steps_per_round: int) -> tuple[int, int]:
    """(round index, 1-based step within the round) of global step `step` (1-based)."""
    return (step - 1) // steps_per_round, (step - 1) % steps_per_round + 1


def _frozen_copy(model: WanVideoModel) -> WanVideoModel:
    frozen = copy.copy(model)
    frozen.transformer = copy.deepcopy(model.transformer).requires_grad_(False).eval()
    return frozen


# ------------------------------------------------------------------------------------------------ one step


def distill_step(
    student: WanVideoModel,
    teacher: WanVideoModel,
    rnd: Round,
    pool: list[str],
    shape: tuple[int, ...],
    uncond: torch.Tensor | None,
    step: int,
    cfg: DistillTrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Backpropagate this rank's share of one step's distillation loss; return its per-pair losses and phase seconds.

    All randomness (prompts, noise) is drawn from (seed, step) before the pairs are split into micro-batches, so
    the gradient does not depend on micro_batch_size (up to float rounding).
    """
    P = cfg.prompts_per_step
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 1, step))
    prompts = [pool[int(i)] for i in torch.randint(len(pool), (P,), generator=generator)]
    seeds = [derive_seed(cfg.seed, 2, step, row) & 0x7FFFFFFF for row in range(P)]
    local = dist.local_slice(P)  # this rank's prompts; every rank drew all P, so the split changes nothing else
    prompts, seeds = prompts[local], seeds[local]
    device = student.device

    tick = time.perf_counter()
    embeds = student.encode_prompts(prompts)  # (P, L, D): teacher and student share the frozen text encoder
    noise = initial_noise(shape, seeds, device)  # (P, C, T, H, W) at σ = 1
    with torch.no_grad(), autocast(cfg.precision, device):
        velocity = GuidedVelocity(teacher, embeds, uncond, rnd.teacher.guidance, batch_cfg=True)
        states, targets = teacher_targets(velocity, noise, rnd.teacher_sigmas, rnd.student_sigmas)  # (K, P, ...)
    seconds = {"teacher": time.perf_counter() - tick}

    tick = time.perf_counter()
    K, local_p = states.shape[:2]
    x, target = states.flatten(0, 1), targets.flatten(0, 1)  # (K·p, C, T, H, W); row j·p + i (p: this rank's)
    sigma = rnd.student_sigmas[:-1].to(torch.float32).repeat_interleave(local_p).to(device)  # (K·p,) σˢ_j
    cond = embeds.repeat(K, 1, 1)  # (K·p, L, D)
    total, pairs = K * P, K * local_p  # the loss is a mean over all ranks' pairs
    losses = []
    for rows in torch.arange(pairs).split(cfg.micro_batch_size or pairs):
        guided = GuidedVelocity(student, cond[rows], uncond, rnd.student.guidance)
        with autocast(cfg.precision, device):
            v = guided(x[rows], sigma[rows])
        loss = distillation_loss(v, target[rows])  # (b,)
        (loss.sum() / total).backward()
        losses.append(loss.detach().cpu())
    seconds["student"] = time.perf_counter() - tick
    return torch.cat(losses), seconds


# ------------------------------------------------------------------------------------------------ the recipe


def _teacher_videos(
    teacher: WanVideoModel,
    prompts: list[str],
    used: list[str],
    sampling: SamplingConfig,
    video: VideoConfig,
    cfg: DistillConfig,
    folder: Path,
) -> np.ndarray | None:
    """The teacher's validation videos, uint8 (N, T, H, W, 3) on rank 0 (None on the others): generated once into
    `folder` (every rank samples its share), read back after.

    `used` is what the teacher is given for each prompt (the validation enhancer's rewrites, or the prompts).
    """

    def read() -> np.ndarray | None:
        clips = list(iter_clips(folder)) if (folder / "metadata.jsonl").is_file() else []
        return np.stack([clip.frames for clip in clips]) if len(clips) == len(prompts) else None

    if dist.broadcast_object(read() is not None if dist.is_main() else None):
        return read() if dist.is_main() else None
    validate(
        teacher,
        prompts,
        False,
        sampling,
        video,
        cfg.validation.seed,
        cfg.train.precision,
        folder,
        acceleration=cfg.validation.acceleration,
        used=used if used != prompts else None,
    )
    return read() if dist.is_main() else None


def _mse_to_teacher(folder: Path, teacher_videos: np.ndarray) -> float:
    """Mean squared pixel difference in [0, 1] between the videos in `folder` and the teacher's (same noise)."""
    student = np.stack([clip.frames for clip in iter_clips(folder)]).astype(np.float64) / 255
    return float(np.mean((student - teacher_videos.astype(np.float64) / 255) ** 2))


def train(cfg: DistillConfig, out: str | Path, progress: bool = True, stop_after: int | None = None) -> Path | None:
    """Run (or resume) the distillation in `out`; return the final model/ or lora/, or None if stopped early.

    stop_after: stop (as SIGINT would) once this step is done; tests use it to interrupt a run.
    """
    dist.require_divisible({"train.prompts_per_step": cfg.train.prompts_per_step})
    out = Path(out)
    final = start_run(cfg, out)
    if final is not None:
        return final
    progress = progress and dist.is_main()

    torch.manual_seed(cfg.train.seed)
    model = WanVideoModel.from_config(cfg.model).to(dist.device())  # this rank's GPU under torchrun, else the CPU
    teacher_sampling = cfg.teacher.resolve(recommended_sampling(model))
    rounds = plan_rounds(cfg.mode, teacher_sampling, cfg.student_steps)
    video = cfg.video or recommended_video(model)
    shape = model.latent_shape(video.frames, video.height, video.width)
    pool = training_prompts(cfg.prompts)[0]  # what the teacher is asked
    asked, prompts, scorable = validation_prompts(cfg.validation)
    used, rewrite_metrics = rewrite_prompts(asked, cfg.validation.enhancer, "enhance/val/")
    uses_cfg = any(r.teacher.guidance > 1 or r.student.guidance > 1 for r in rounds)
    uncond = model.encode_prompts([teacher_sampling.negative_prompt]) if uses_cfg else None

    # The round's teacher: a frozen copy of the student as the round began (round 0: the model itself; a LoRA
    # student starts with B = 0, so its copy is the base). Its trained tensors are checkpointed with the student's.
    teacher = _frozen_copy(model)
    dist.shard_model(model.transformer, model.transformer.blocks)  # FSDP2 under torchrun; nothing in one process
    dist.shard_model(teacher.transformer, teacher.transformer.blocks)  # sharded alike, so rounds copy shard to shard
    params = {name: p for name, p in model.transformer.named_parameters() if p.requires_grad}
    teacher_params = {name: p for name, p in teacher.transformer.named_parameters() if name in params}
    teacher_videos = _teacher_videos(teacher, prompts, used, teacher_sampling, video, cfg, out / "samples" / "teacher")
    t, o = cfg.train, cfg.optim
    optimizer = o.adamw(params.values())

    def evaluate(step: int) -> dict[str, float]:
        """The student's validation metrics on rank 0 ({} on the others, which sample their share)."""
        # step 0, the baseline: the teacher sampled as the final student
        sampling = rounds[round_of(step, t.steps_per_round)[0]].student if step else rounds[-1].student
        model.transformer.eval()
        folder = samples_dir(out, step)
        metrics = validate(
            model,
            prompts,
            scorable,
            sampling,
            video,
            cfg.validation.seed,
            t.precision,
            folder,
            acceleration=cfg.validation.acceleration,
            used=used,
            progress=progress,
        )
        model.transformer.train()
        if not dist.is_main():
            return {}
        assert teacher_videos is not None  # rank 0 reads them back
        return {**metrics, VAL_MSE_TO_TEACHER: _mse_to_teacher(folder, teacher_videos)}

    total_steps = len(rounds) * t.steps_per_round
    loop = Loop(
        out=out,
        steps=total_steps,
        params=params,
        optimizer=optimizer,
        checkpoints=out / "checkpoints",
        checkpointed=_checkpointed(params, teacher_params),
        validation=evaluate,
        summary_series=f"{VAL}/",
        **cadence(cfg),
        validate_at=range(t.steps_per_round, total_steps + 1, t.steps_per_round),  # each round's end
        progress=progress,
        desc=f"distill {cfg.mode}",
        postfix=lambda metrics: {"loss": f"{metrics[TRAIN_LOSS]:.4f}", "round": metrics["train/round"]},
        learning_rate=lambda step: learning_rate(o, round_of(step, t.steps_per_round)[1], t.steps_per_round),
        averaged=(TRAIN_LOSS, "train/grad_norm", "time/teacher_s", "time/student_s"),
    )
    if loop.resume(rewrite_metrics) == 0:
        log.info(
            "distilling (%s) %.2fM trained parameters: teacher %d steps at guidance %g -> student %s steps at "
            "guidance %g, %d steps per round",
            cfg.mode,
            sum(p.numel() for p in params.values()) / 1e6,
            teacher_sampling.steps,
            teacher_sampling.guidance,
            [r.student.steps for r in rounds],
            rounds[-1].student.guidance,
            t.steps_per_round,
        )
        if scorable and loop.runlog is not None:  # rank 0, which holds the teacher's videos
            assert teacher_videos is not None
            loop.runlog.write(0, {f"teacher/{k}": v for k, v in score_videos(teacher_videos, prompts).items()})
        loop.validate(0)  # the baseline

    def step(n: int) -> tuple[dict[str, float], bool]:
        index, step_in_round = round_of(n, t.steps_per_round)
        rnd = rounds[index]
        if step_in_round == 1 and index > 0:  # the previous round's student becomes the teacher
            with torch.no_grad():
                for name, p in teacher_params.items():
                    p.copy_(params[name])
            o.restart(optimizer)  # each round starts afresh: its student is a new problem
            log.info("round %d: teacher %d steps -> student %d steps", index + 1, rnd.teacher.steps, rnd.student.steps)
        torch.manual_seed(derive_seed(t.seed, 3, n))  # modules' own randomness (e.g. LoRA dropout)
        losses, seconds = distill_step(model, teacher, rnd, pool, shape, uncond, n, t)
        losses = dist.all_gather_cat(losses)  # all ranks' pairs
        grad_norm = dist.clip_grad_norm_(params.values(), o.grad_clip)  # over all ranks' shards
        finite = bool(torch.isfinite(losses).all() and torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
        else:  # a bad batch must not poison the weights: skip it (the loop counts it)
            log.warning("step %d: non-finite loss or gradient; update skipped", n)
        optimizer.zero_grad(set_to_none=True)
        return {
            TRAIN_LOSS: losses.mean().item(),
            "train/grad_norm": grad_norm.item(),
            "train/round": index + 1,
            "time/teacher_s": seconds["teacher"],
            "time/student_s": seconds["student"],
            "nfe/teacher_per_prompt": rnd.teacher.steps * (2 if rnd.teacher.guidance > 1 else 1),
        }, finite

    model.transformer.train()
    return loop.run(
        step,
        stop=StopFlag(),
        finish=lambda: save_final(model, cfg.model, rounds[-1].student, video, out),
        summary=lambda: {"steps": total_steps, "rounds": [r.student.steps for r in rounds], **loop.state},
        stop_after=stop_after,
    )


def _checkpointed(params: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a checkpoint holds besides the optimizer: the student's trained weights and the round teacher's."""
    return {**params, **{f"teacher.{name}": p for name, p in teacher.items()}}


__all__ = ["DistillConfig", "Round", "distill_step", "plan_rounds", "round_of", "train"]
