"""Text to video with a model: prompts in, frames out; the engine of `vidpost sample`, validation and benchmarks.

    sampling, video = recommended_sampling(model), recommended_video(model)   # its card's, else Wan's defaults
    out = generate(model, prompts, sampling, video, seed=0)   # out.videos: uint8 (N, T, H, W, 3)

Video j starts from noise drawn with seed `seed + j`, so a prompt's video does not depend on the batch it
ran in, and the same (model, prompt, seed) gives the same video in every stage and benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vidpost.data.video_io import to_uint8
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.diffusion.sampler import GuidedVelocity, initial_noise, solve_ode
from vidpost.errors import VidpostError
from vidpost.inference.acceleration import Acceleration, AccelerationConfig, accelerated
from vidpost.precision import autocast

log = logging.getLogger("vidpost")

# WanPipeline's defaults, for a Wan checkpoint that has no vidpost model card
WAN_VIDEO = VideoConfig(frames=81, height=480, width=832)
WAN_SAMPLING = SamplingConfig(steps=50, shift=3.0, guidance=5.0, scheduler="unipc")


def recommended_sampling(model) -> SamplingConfig:
    """The sampling settings recorded in the model's card, else Wan's defaults."""
    card = model.card.get("sampling")
    return SamplingConfig.model_validate(card) if card else WAN_SAMPLING


def recommended_video(model) -> VideoConfig:
    """The video geometry the model was trained on (its card), else Wan's defaults."""
    card = model.card.get("video")
    return VideoConfig.model_validate(card) if card else WAN_VIDEO


@dataclass
class Generated:
    videos: np.ndarray  # uint8 (N, T, H, W, 3)
    nfe_per_video: int  # transformer evaluations per video (a batched pass counts once per video it holds)
    acceleration: dict  # what `accelerated` applied (AccelerationConfig, plus measured MagCache ratios)
    nonfinite: int = 0  # videos that came out NaN or infinite, written as black frames (and scored as such)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    video: VideoConfig,
    seed: int = 0,
    batch_size: int = 16,
    precision: str = "float32",
    progress: bool = True,
    acceleration: AccelerationConfig | None = None,
    desc: str = "generate",
    leave: bool = True,
) -> Generated:
    """Sample one video per prompt by the all-ODE path (stock WanPipeline's), in batches.

    `acceleration` (a feature cache, compiled blocks, an attention backend) holds for this call only. A
    MagCache to calibrate first samples prompts[0] from seed `seed` once, uncached, and discards it.
    """
    if not prompts:
        raise VidpostError("no prompts to generate from")
    shape = model.latent_shape(video.frames, video.height, video.width)
    uncond = model.encode_prompts([sampling.negative_prompt]) if sampling.guidance > 1 else None

    def denoise(batch: list[str], first_seed: int, acc: Acceleration) -> tuple[torch.Tensor, int]:
        acc.new_run()  # a cache's features and step counters belong to one pass over the grid
        velocity = GuidedVelocity(
            model, model.encode_prompts(batch), uncond, sampling.guidance, contexts=acc.context, batch_cfg=acc.batch_cfg
        )
        noise = initial_noise(shape, range(first_seed, first_seed + len(batch)), model.device)
        with autocast(precision, model.device):
            return solve_ode(velocity, noise, sampling.steps, sampling.shift, sampling.scheduler), velocity.nfe

    videos, nfe_per_video, nonfinite = [], 0, 0
    with accelerated(model, acceleration, sampling.steps) as acc:
        if acc.needs_calibration:
            acc.calibrate(lambda: denoise(list(prompts[:1]), seed, acc)[1])
        bar = tqdm(total=len(prompts), desc=desc, unit="video", disable=not progress, leave=leave)
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            latents, nfe_per_video = denoise(batch, seed + start, acc)  # the same for every batch
            frames = model.decode(latents).cpu().numpy()
            bad = ~np.isfinite(frames.reshape(len(frames), -1)).all(1)
            for i in np.flatnonzero(bad):
                log.warning("video %d (%r) came out NaN or infinite; written as black frames", start + i, batch[i])
            frames[bad] = 0.0
            nonfinite += int(bad.sum())
            videos.append(to_uint8(frames))
            bar.update(len(batch))
        bar.close()
    return Generated(np.concatenate(videos), nfe_per_video, acc.report(), nonfinite)
