"""Flow-matching training of a video diffusion model on a captioned dataset: SFT, and pretraining from scratch.

    vidpost sft configs/shapeworld/sft.yaml --out runs/sft [key=value ...]
    vidpost pretrain configs/shapeworld/pretrain.yaml --out runs/base
    torchrun --nproc_per_node 8 -m vidpost.cli sft CONFIG --out RUN     # FSDP2 over 8 GPUs (docs/guide/)

Each step draws clips, a σ per clip and noise ε, forms x_σ = (1 − σ)·x₀ + σ·ε, and regresses the model's
velocity on ε − x₀; captions are dropped (replaced by the empty prompt) with probability caption_dropout,
which is what classifier-free guidance needs at sampling time.

The run directory:
    config.yaml                the resolved config (a rerun with a different config is refused)
    data/                      the generated ShapeWorld dataset (when data.path is null)
    cache/                     latents and text embeddings, encoded once (data/cache.py)
    checkpoints/step_NNNNNN/   trained weights + optimizer state, atomic; the newest is resumed
    logs/metrics.jsonl         loss, lr, grad norm, throughput; validation rewards (and TensorBoard)
    samples/step_NNNNNN/       validation videos as a dataset folder (`vidpost score` reads it)
    model/ or lora/            the final model (diffusers layout) or LoRA, with its model card

Every step's randomness (clip order, σ, ε, caption dropout) is drawn from (seed, step), so a run that is
killed and resumed from a checkpoint ends with exactly the weights of an uninterrupted run.

Under torchrun every rank draws the step's whole batch and trains its share of it (`dist.local_slice`), with
its loss divided by the global batch; FSDP2 sums the gradients, so a step's update is the one-process update
(up to float rounding) at any world size, and checkpoints (whole tensors) resume at any world size.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from vidpost import dist
from vidpost.config import Config, load_config
from vidpost.data.cache import CACHE_DTYPES, EncodedDataset, load_or_build_cache
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.diffusion.schedule import (
    TRAINING_SIGMA_MODES,
    flow_matching_loss,
    noisy_sample,
    sample_training_sigmas,
)
from vidpost.errors import VidpostError
from vidpost.metric_names import TRAIN_LOSS, VAL
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
    ema_checkpointed,
    ema_weights,
    learning_rate,
    make_ema,
    save_final,
    start_run,
    validate,
)
from vidpost.recipes.loop import Loop, cadence
from vidpost.recipes.prompts import rewrite_prompts, validation_prompts
from vidpost.runlog import samples_dir
from vidpost.world.config import DatasetConfig
from vidpost.world.dataset import make_dataset

log = logging.getLogger("vidpost")


class DataConfig(Config):
    path: str | None = Field(None, description="dataset folder (metadata.jsonl + clips); null: generate `shapeworld`")
    shapeworld: DatasetConfig | None = Field(
        None, description="ShapeWorld dataset generated into RUN_DIR/data when path is null"
    )
    caption_key: str = Field("caption", description="metadata field holding each clip's caption")
    cache_dtype: Literal[tuple(CACHE_DTYPES)] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "bfloat16", description="dtype of cached latents and embeddings (ShapeWorld pixels are exact in bf16)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.shapeworld is None):
            raise ValueError("set exactly one of data.path (a dataset folder) and data.shapeworld (generate one)")
        return self


class SigmaConfig(Config):
    mode: Literal[TRAINING_SIGMA_MODES] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "logit_normal", description="training σ distribution: uniform | logit_normal (SD3)"
    )
    shift: float = Field(1.0, gt=0, description="timestep shift applied to the drawn σ (1 = none)")
    logit_mean: float = Field(0.0, description="mean of the logit-normal")
    logit_std: float = Field(1.0, gt=0, description="std of the logit-normal")


class TrainConfig(Config):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="clips per optimizer step, over all ranks")
    micro_batch_size: int | None = Field(
        None, ge=1, description="clips per forward/backward on each rank (gradient accumulation); null = all of them"
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # Literal of a tuple: pydantic reads it
        "auto", description="autocast: auto (bf16 where the hardware has it natively, else float32) | bf16 | float32"
    )
    caption_dropout: float = Field(0.1, ge=0, le=1, description="probability of training a clip on the empty prompt")
    compile: bool = Field(
        False, description="torch.compile the transformer blocks (the first steps pay the compile; then faster steps)"
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the trained weights, used for validation and the final model (0: off)"
    )
    seed: int = Field(0, description="every step's randomness is drawn from (seed, step)")
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="stop the run after this many steps in a row with a non-finite loss or gradient"
    )
    sigma: SigmaConfig = Field(default_factory=SigmaConfig, description="training timestep distribution")

    @model_validator(mode="after")
    def _micro_divides(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of micro_batch_size {self.micro_batch_size}"
            )
        return self


class SFTConfig(Config):
    renamed_keys = {"log_every_steps": "log.every_steps", "validation.prompts": "validation.wording"}

    model: ModelConfig = Field(default_factory=ModelConfig, description="the model to train (path or tiny)")
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(shapeworld=DatasetConfig(n=1024)), description="training data"
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="batch, steps, precision, σ draws")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="validation sampling; recorded as the model's recommendation"
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="validation videos")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpointing")
    log: LogConfig = Field(default_factory=LogConfig, description="training metrics")

    @model_validator(mode="after")
    def _trainable(self) -> SFTConfig:
        self.model.require_float32_for_full_training()
        return self


# ------------------------------------------------------------------------------------------ pure helpers


@functools.lru_cache(maxsize=2)  # a step needs at most two epochs; each permutation is drawn once, not per step
def _epoch_permutation(num_clips: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_clips, generator=torch.Generator().manual_seed(derive_seed(seed, 1, epoch)))


def batch_indices(num_clips: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Clips of step `step` (1-based): consecutive slices of per-epoch permutations, each clip once per epoch."""
    positions = torch.arange((step - 1) * batch_size, step * batch_size)
    epochs, offsets = positions // num_clips, positions % num_clips
    out = torch.empty(batch_size, dtype=torch.int64)
    for epoch in epochs.unique().tolist():
        rows = epochs == epoch
        out[rows] = _epoch_permutation(num_clips, seed, epoch)[offsets[rows]]
    return out


def training_loss(
    model: WanVideoModel, data: EncodedDataset, indices: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """Backpropagate the flow-matching loss of this rank's share of one step's clips; return its per-clip losses.

    All randomness is drawn for the whole (global) batch before it is split over ranks and into micro-batches,
    and each loss is divided by the global batch size, so the gradient summed over ranks depends on neither
    the world size nor micro_batch_size (up to float rounding).
    """
    batch = indices.shape[0]
    x0 = data.latents[indices].float()  # (B, C, T, H, W)
    drop = torch.rand(batch, generator=generator) < cfg.caption_dropout
    caption_ids = torch.where(drop, torch.zeros_like(indices), data.caption_ids[indices])  # row 0 = ""
    sigma = sample_training_sigmas(
        batch, cfg.sigma.mode, cfg.sigma.shift, generator, cfg.sigma.logit_mean, cfg.sigma.logit_std
    )
    noise = torch.randn(x0.shape, generator=generator)
    micro = cfg.micro_batch_size or batch
    losses = []
    for rows in torch.arange(batch)[dist.local_slice(batch)].split(micro):
        x0_m, noise_m, sigma_m = x0[rows].to(model.device), noise[rows].to(model.device), sigma[rows].to(model.device)
        embeds = data.embeds[caption_ids[rows]].to(model.device)
        with autocast(cfg.precision, model.device):
            v = model.velocity(noisy_sample(x0_m, noise_m, sigma_m), sigma_m, embeds)
        loss = flow_matching_loss(v, x0_m, noise_m)  # (b,)
        (loss.sum() / batch).backward()
        losses.append(loss.detach().cpu())
    return torch.cat(losses)


# ------------------------------------------------------------------------------------------ the recipe


def _dataset_dir(cfg: DataConfig, out: Path) -> Path:
    if cfg.path is not None:
        return Path(cfg.path)
    assert cfg.shapeworld is not None  # DataConfig sets exactly one of path and shapeworld
    target = out / "data"
    if (target / "metadata.jsonl").is_file() and (target / "config.yaml").is_file():
        if load_config(DatasetConfig, target / "config.yaml") == cfg.shapeworld:
            return target
    return make_dataset(target, cfg.shapeworld, overwrite=True)


def train(cfg: SFTConfig, out: str | Path, progress: bool = True, stop_after: int | None = None) -> Path | None:
    """Run (or resume) the recipe in `out`; return the final model folder, or None if stopped early.

    stop_after: stop (as SIGINT would) once this step is done; tests use it to interrupt a run.
    """
    dist.require_divisible({"train.batch_size": cfg.train.batch_size})
    out = Path(out)
    final = start_run(cfg, out)
    if final is not None:
        return final
    progress = progress and dist.is_main()

    torch.manual_seed(cfg.train.seed)
    model = WanVideoModel.from_config(cfg.model).to(dist.device())  # this rank's GPU under torchrun, else the CPU
    with dist.main_first():
        data = load_or_build_cache(
            _dataset_dir(cfg.data, out),
            model,
            out / "cache",
            cfg.data.caption_key,
            model_key=cfg.model.model_dump_json(),
            dtype=cfg.data.cache_dtype,
            progress=progress,
        )
    if data.skipped:
        log.warning("%d clips of the dataset were skipped (see the warnings above)", data.skipped)
    video = VideoConfig(frames=data.frames, height=data.height, width=data.width)
    asked, prompts, scorable = validation_prompts(cfg.validation)  # once: the same prompts at every validation
    used, rewrite_metrics = rewrite_prompts(asked, cfg.validation.enhancer, "enhance/val/")
    if cfg.train.compile:  # before sharding, as torchtitan orders per-block compile and FSDP2
        model.compile_blocks()
    dist.shard_model(model.transformer, model.transformer.blocks)  # FSDP2 under torchrun; nothing in one process
    model.transformer.train()
    params = {name: p for name, p in model.transformer.named_parameters() if p.requires_grad}
    t, o = cfg.train, cfg.optim
    optimizer = o.adamw(params.values())
    ema = make_ema(params, t.ema_decay)

    def evaluate(step: int) -> dict[str, float]:
        model.transformer.eval()
        with ema_weights(ema, params):
            metrics = validate(
                model,
                prompts,
                scorable,
                cfg.sampling,
                video,
                cfg.validation.seed,
                t.precision,
                samples_dir(out, step),
                acceleration=cfg.validation.acceleration,
                used=used,
                progress=progress,
            )
        model.transformer.train()
        return metrics

    loop = Loop(
        out=out,
        steps=t.steps,
        params=params,
        optimizer=optimizer,
        checkpoints=out / "checkpoints",
        checkpointed=ema_checkpointed(params, ema),
        validation=evaluate,
        summary_series=f"{VAL}/",
        **cadence(cfg),
        progress=progress,
        desc="train",
        postfix=lambda metrics: {"loss": f"{metrics[TRAIN_LOSS]:.4f}"},
        state={"nonfinite_steps": 0, "ema_steps": 0},
        learning_rate=lambda step: learning_rate(o, step, t.steps),
        ema=ema,
        averaged=(TRAIN_LOSS, "train/grad_norm"),
        rates={"train/clips_per_second": t.batch_size},
    )
    if loop.resume(rewrite_metrics) == 0:
        log.info(
            "training %.2fM parameters on %d clips (%d captions)",
            sum(p.numel() for p in params.values()) / 1e6,
            len(data),
            len(data.captions) - 1,
        )

    def step(n: int) -> tuple[dict[str, float], bool]:
        generator = torch.Generator().manual_seed(derive_seed(t.seed, 2, n))
        torch.manual_seed(derive_seed(t.seed, 3, n))  # modules' own randomness (e.g. LoRA dropout)
        indices = batch_indices(len(data), t.batch_size, n, t.seed)
        losses = dist.all_gather_cat(training_loss(model, data, indices, t, generator))  # (B,)
        grad_norm = dist.clip_grad_norm_(params.values(), o.grad_clip)  # over all ranks' shards
        finite = bool(torch.isfinite(losses).all() and torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
        else:  # a bad batch must not poison the weights: skip it (the loop counts it)
            log.warning("step %d: non-finite loss or gradient; update skipped", n)
        optimizer.zero_grad(set_to_none=True)
        return {TRAIN_LOSS: losses.mean().item(), "train/grad_norm": grad_norm.item()}, finite

    def finish() -> Path:
        with ema_weights(ema, params):
            return save_final(model, cfg.model, cfg.sampling, video, out)

    return loop.run(
        step,
        stop=StopFlag(),
        finish=finish,
        summary=lambda: {"steps": t.steps, **loop.state},
        stop_after=stop_after,
    )


def pretrain(cfg: SFTConfig, out: str | Path, progress: bool = True) -> Path | None:
    """Pretraining is this recipe on a model built from scratch (model.path: null)."""
    if cfg.model.path is not None:
        raise VidpostError(
            f"pretrain builds a model from scratch, but model.path is {cfg.model.path!r}; "
            "set model.path: null, or fine-tune it with `vidpost sft`"
        )
    return train(cfg, out, progress=progress)
