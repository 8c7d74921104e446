"""Pixel and Wan-VAE codecs: shapes, exact round trips, and decoding exactly as WanPipeline does."""

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from vidpost.errors import VidpostError
from vidpost.models.codecs import PixelCodec, WanVAECodec, build_tiny_vae
from vidpost.models.wan import WanVideoModel
from vidpost.world.grammar import parse_caption
from vidpost.world.render import render_scene


@pytest.fixture(scope="module")
def vae_codec():
    torch.manual_seed(0)
    return WanVAECodec(build_tiny_vae())


def test_pixel_codec_round_trip_is_exact_on_shapeworld_and_8_bit_values():
    codec = PixelCodec()
    clip = render_scene(
        parse_caption("a large red circle moving right quickly on a gray background"), np.random.default_rng(0)
    )
    frames = torch.from_numpy(np.stack([clip, clip[::-1]])).float()  # (2, T, H, W, 3)
    latents = codec.encode(frames)
    assert latents.shape == (2, 3, *frames.shape[1:4]) == (2, *codec.latent_shape(*frames.shape[1:4]))
    assert latents.min() == -1 and latents.max() == 1
    assert torch.equal(codec.decode(latents), frames)
    eight_bit = torch.randint(0, 257, (1, 3, 4, 5, 3)) / 256
    assert torch.equal(codec.decode(codec.encode(eight_bit)), eight_bit)


def test_pixel_codec_decode_clamps_to_valid_frames():
    frames = PixelCodec().decode(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1))
    assert frames[0, :, 0, 0, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_vae_latent_shape_and_its_errors(vae_codec):
    assert vae_codec.latent_shape(9, 16, 32) == (16, 3, 2, 4)
    assert vae_codec.latent_shape(1, 8, 8) == (16, 1, 1, 1)
    with pytest.raises(VidpostError, match="frames = 4k \\+ 1"):
        vae_codec.latent_shape(10, 16, 16)
    with pytest.raises(VidpostError, match="multiples of 8"):
        vae_codec.latent_shape(9, 12, 16)


def test_vae_encode_is_the_normalised_posterior_mode(vae_codec):
    frames = torch.rand(2, 5, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    latents = vae_codec.encode(frames)
    assert latents.shape == (2, *vae_codec.latent_shape(5, 16, 16))
    vae = vae_codec.vae
    with torch.no_grad():
        mode = vae.encode(frames.permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents, (mode - mean) / std)
    assert torch.equal(vae_codec.encode(frames), latents)  # the mode, not a sample
    decoded = vae_codec.decode(latents)
    assert decoded.shape == frames.shape and decoded.min() >= 0 and decoded.max() <= 1


def test_vae_decode_equals_wan_pipeline_output():
    model = WanVideoModel.build_tiny("vae")
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=model.codec.vae,
        scheduler=model.scheduler,
        transformer=model.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    embeds = model.encode_prompts(["a red circle moving left"])
    common = dict(prompt_embeds=embeds, guidance_scale=1.0, height=16, width=16, num_frames=9, num_inference_steps=2)
    latents = pipe(**common, generator=torch.Generator().manual_seed(0), output_type="latent").frames
    video = pipe(**common, generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert video.shape == (1, 9, 16, 16, 3)
    np.testing.assert_array_equal(model.decode(latents).numpy(), video)
