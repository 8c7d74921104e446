"""Codecs map videos to the latents a diffusion transformer denoises, and back.

Frames are `(B, T, H, W, 3)` floats in [0, 1] (what the rewards score); latents are `(B, C, T', H', W')`.
Both codecs share one small interface: `encode(frames)`, `decode(latents)`, `latent_shape(frames, height,
width)`, `channels`, `to(device)`.

- `PixelCodec`: latents are the frames themselves, rescaled to [-1, 1] (ShapeWorld: 24x24 clips are small
  enough to denoise in pixel space). Decoding maps back with diffusers' own post-processing formula,
  `clamp(x / 2 + 1/2, 0, 1)`.
- `WanVAECodec`: `AutoencoderKLWan` with the per-channel normalisation WanPipeline applies: the model sees
  `z_norm = (z - latents_mean) / latents_std`; decoding computes `z = z_norm / (1 / latents_std) +
  latents_mean` with exactly WanPipeline's operations, then `vae.decode` and diffusers' post-processing.
  Encoding takes the posterior *mode* (the mean), not a sample: deterministic, so cached latents are
  reproducible; diffusers' Wan video-to-video pipelines also default to the mode ("argmax").
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import AutoencoderKLWan

from vidpost.errors import VidpostError


class VideoCodec(Protocol):
    channels: int

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def to(self, device: torch.device | str) -> VideoCodec: ...


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) in [0, 1] -> (B, 3, T, H, W) in [-1, 1]."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (B, T, H, W, 3), got {tuple(frames.shape)}")
    return frames.permute(0, 4, 1, 2, 3) * 2.0 - 1.0


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) in [0, 1] (diffusers' VaeImageProcessor.denormalize)."""
    return (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)


class PixelCodec:
    """Identity latents: (B, T, H, W, 3) in [0, 1] <-> (B, 3, T, H, W) in [-1, 1].

    The round trip is exact for ShapeWorld's pixel values (0, 0.5, 1), for any multiple of 1/256 and for
    every value >= 0.25; other float32 values below 0.25 may lose their last bits to the shift by 1.
    """

    channels = 3

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames_to_video(frames.float())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return video_to_frames(latents.float())

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.channels, frames, height, width)

    def to(self, device: torch.device | str) -> PixelCodec:
        return self


class WanVAECodec:
    """Wan's causal 3D VAE: 4x temporal (frames = 4k + 1) and 8x spatial compression in the public model.

    The VAE is frozen and kept in the dtype it was loaded with (float32 is what the diffusers Wan example
    recommends even when the transformer runs in bf16); inputs are cast to it, outputs returned as float32.
    """

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.channels = config.z_dim
        self.temporal_factor = config.scale_factor_temporal
        self.spatial_factor = config.scale_factor_spatial

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents_mean, 1 / latents_std), shaped (1, C, 1, 1, 1), as WanPipeline builds them."""
        z_dim = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) in [0, 1] -> normalised latents (B, C, T', H', W') (posterior mode)."""
        _, t, h, w, _ = frames.shape
        self.latent_shape(t, h, w)
        video = frames_to_video(frames.to(self.vae.device, self.vae.dtype))
        z = self.vae.encode(video).latent_dist.mode()
        mean, inv_std = self._stats(z)
        return ((z - mean) * inv_std).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, T', H', W') -> (B, T, H, W, 3) in [0, 1], as WanPipeline decodes them."""
        latents = latents.to(self.vae.device, self.vae.dtype)
        mean, inv_std = self._stats(latents)
        latents = latents / inv_std + mean
        video = self.vae.decode(latents, return_dict=False)[0]
        return video_to_frames(video).float()

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        if (frames - 1) % self.temporal_factor or height % self.spatial_factor or width % self.spatial_factor:
            raise VidpostError(
                f"Wan VAE needs frames = {self.temporal_factor}k + 1 and height, width multiples of "
                f"{self.spatial_factor}; got frames={frames}, height={height}, width={width}"
            )
        return (
            self.channels,
            (frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def to(self, device: torch.device | str) -> WanVAECodec:
        self.vae.to(device)
        return self


def build_tiny_vae() -> AutoencoderKLWan:
    """The tiny AutoencoderKLWan diffusers' Wan pipeline tests use (z_dim 16, 4x temporal, 8x spatial).

    Randomly initialised: seed with torch.manual_seed before calling. Keeps Wan2.1's latents_mean/std.
    """
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
