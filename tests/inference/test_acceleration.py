"""Feature caches, compile and attention backends on the tiny real Wan: each cache is the diffusers one as stock
WanPipeline runs it, state is per branch and per run, and leaving the context restores the model exactly."""

import copy
import re

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.hooks import (
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from vidpost.config import load_config, save_config
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.diffusion.sampler import GuidedVelocity, run_steps
from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.errors import ConfigError, VidpostError
from vidpost.generation import generate
from vidpost.inference.acceleration import AccelerationConfig, CacheConfig, accelerated
from vidpost.models.wan import WanVideoModel

PROMPTS = ["a red circle moving left", "a small blue square staying still", "a green triangle moving up"]
SHAPE = (3, 3, 8, 8)  # (C, T, H, W) of the tiny pixel model at 3 x 16 x 16
STEPS, SHIFT = 6, 3.0
VIDEO = VideoConfig(frames=3, height=16, width=16)
RATIOS = [1.0] * STEPS  # a flat MagCache schedule: skips as soon as retention allows
CACHES = {  # ours, and the same diffusers config for stock WanPipeline (None: built in the test)
    "first_block": ({"name": "first_block", "threshold": 0.3}, FirstBlockCacheConfig(threshold=0.3)),
    "mag": ({"name": "mag", "mag_ratios": RATIOS}, MagCacheConfig(mag_ratios=RATIOS, num_inference_steps=STEPS)),
    "taylorseer": (
        {"name": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2},
        TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=2, cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"]
        ),
    ),
    "taylorseer_lite": (
        {"name": "taylorseer", "lite": True, "cache_interval": 2, "disable_cache_before_step": 2},
        TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2, use_lite_mode=True),
    ),
    "pab": ({"name": "pab"}, None),
}


@pytest.fixture(scope="module")
def model():
    return WanVideoModel.build_tiny("pixel", seed=1, num_layers=3)  # 3 blocks: head, middle, tail


def _noise(batch, seed=0):
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _sample(model, guidance, acc=None, prompts=PROMPTS[:2]):
    velocity = GuidedVelocity(
        model,
        model.encode_prompts(prompts),
        model.encode_prompts([""]),
        guidance,
        contexts=acc.context if acc else None,
        batch_cfg=acc.batch_cfg if acc else False,
    )
    if acc:
        acc.new_run()
    return run_steps(velocity, _noise(len(prompts)), sampling_sigmas(STEPS, SHIFT)).final


def _hook_state(transformer):
    return {
        name: sorted(k for k in ("forward", "_diffusers_hook", "_compiled_call_impl") if k in m.__dict__)
        for name, m in transformer.named_modules()
    }


def _config(cache=None, **kw):
    return AccelerationConfig(cache=cache, **kw)


# ------------------------------------------------------------------------------------------------ config


def test_cache_config_fills_the_named_caches_defaults_and_rejects_the_others_keys(tmp_path):
    assert CacheConfig(name="first_block").threshold == 0.05
    taylor = CacheConfig(name="taylorseer")
    assert (taylor.cache_interval, taylor.disable_cache_before_step, taylor.threshold) == (5, 3, None)
    with pytest.raises(ValueError, match="threshold: not a key of cache 'pab'"):
        CacheConfig(name="pab", threshold=0.1)
    with pytest.raises(ValueError, match="needs either mag_ratios .* or calibrate: true"):
        CacheConfig(name="mag")
    with pytest.raises(ValueError, match="needs either"):
        CacheConfig(name="mag", calibrate=True, mag_ratios=[1.0])
    cfg = _config({"name": "pab", "spatial_attention_block_skip_range": 3}, compile=True)
    save_config(cfg, tmp_path / "a.yaml")  # every field is written, the other caches' keys as null
    assert load_config(AccelerationConfig, tmp_path / "a.yaml") == cfg
    with pytest.raises(
        ConfigError, match="cache: Value error, max_order: not a key of cache 'first_block' \\(its keys: threshold\\)"
    ):
        load_config(AccelerationConfig, overrides=["cache.name=first_block", "cache.max_order=2"])


def test_attention_backends_unknown_unavailable_and_working(model):
    with pytest.raises(ValueError, match="unknown attention backend 'nope' \\(known: flash, "):
        _config(attention_backend="nope")
    with pytest.raises(VidpostError) as error, accelerated(model, _config(attention_backend="sage"), STEPS):
        pass
    assert "attention backend 'sage' is not available here: " in str(error.value)
    assert "\n" not in str(error.value)

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry.get_active_backend()[0]
    expected = _sample(model, 3.0)
    with accelerated(model, _config(attention_backend="_native_math"), STEPS):
        assert _AttentionBackendRegistry.get_active_backend()[0].value == "_native_math"
        torch.testing.assert_close(_sample(model, 3.0), expected, rtol=1e-5, atol=1e-5)
    assert _AttentionBackendRegistry.get_active_backend()[0] == before  # the process-wide default is back


# ------------------------------------------------------------------------ each cache is the diffusers cache


@pytest.mark.parametrize("name", sorted(CACHES))
def test_each_cache_reproduces_stock_wan_pipeline_with_the_same_diffusers_cache(model, name):
    ours, theirs = CACHES[name]
    # PAB keeps one state for all calls, so stock WanPipeline with guidance lets uncond reuse cond's attention;
    # it is compared here without guidance, and against per-branch copies below
    guidance = 1.0 if name == "pab" else 3.0
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
        transformer=model.transformer,
    )
    if theirs is None:
        theirs = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, current_timestep_callback=lambda: pipe.current_timestep
        )
    uncached = _sample(model, guidance)
    model.transformer.enable_cache(theirs)
    try:
        expected = pipe(
            prompt=PROMPTS[:2],
            negative_prompt="",
            height=16,
            width=16,
            num_frames=9,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            latents=_noise(2),
            max_sequence_length=model.max_sequence_length,
            output_type="latent",
        ).frames
    finally:
        model.transformer.disable_cache()
    with accelerated(model, _config(ours), STEPS) as acc:
        got = _sample(model, guidance, acc)
        again = _sample(model, guidance, acc)  # a second run starts from a reset state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    assert (got - uncached).abs().max() > 1e-3  # the cache did skip work, so the comparison means something


def test_pab_with_guidance_reuses_each_branchs_own_attention(model):
    # reference: one transformer copy per branch, so each PAB hook only ever sees one branch
    copies = {b: copy.deepcopy(model.transformer) for b in ("cond", "uncond")}
    timestep = [None]
    for t in copies.values():
        t.enable_cache(
            PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2, current_timestep_callback=lambda: timestep[0]
            )
        )
    c, u = model.encode_prompts(PROMPTS[:2]), model.encode_prompts([""]).expand(2, -1, -1)

    def velocity(x, sigma):
        timestep[0] = float(sigma[0]) * 1000
        v = {
            b: copies[b](hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=e, return_dict=False)[0]
            for b, e in (("cond", c), ("uncond", u))
        }
        return v["uncond"] + 3.0 * (v["cond"] - v["uncond"])

    with torch.no_grad():
        expected = run_steps(velocity, _noise(2), sampling_sigmas(STEPS, SHIFT)).final
    with accelerated(model, _config({"name": "pab"}), STEPS) as acc:
        assert acc.batch_cfg
        got = _sample(model, 3.0, acc)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - _sample(model, 3.0)).abs().max() > 1e-3


def test_batched_guidance_equals_two_passes(model):
    c, u = model.encode_prompts(PROMPTS[:2]), model.encode_prompts([""])
    x, sigma = _noise(2), torch.full((2,), 0.7)
    separate, batched = GuidedVelocity(model, c, u, 4.0), GuidedVelocity(model, c, u, 4.0, batch_cfg=True)
    with torch.no_grad():
        torch.testing.assert_close(batched(x, sigma), separate(x, sigma), rtol=1e-5, atol=1e-5)
    assert batched.nfe == separate.nfe == 2


def test_mag_calibration_measures_diffusers_calibration_ratios(model, capsys):
    model.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    try:  # diffusers prints the ratios it measured at the end of a run (one branch: no guidance)
        velocity = GuidedVelocity(
            model,
            model.encode_prompts(PROMPTS[:2]),
            contexts=lambda branch, sigma: model.transformer.cache_context(branch),
        )
        with torch.no_grad():
            run_steps(velocity, _noise(2), sampling_sigmas(STEPS, SHIFT))
    finally:
        model.transformer.disable_cache()
    printed = re.findall(r"\[1\.0, [^\]]*\]", capsys.readouterr().out)
    expected = [float(r) for r in printed[-1].strip("[]").split(",")]
    with accelerated(model, _config({"name": "mag", "calibrate": True}), STEPS) as acc:
        assert acc.needs_calibration
        with pytest.raises(VidpostError, match="call calibrate"):
            acc.new_run()
        acc.calibrate(lambda: _nfe_of_run(model, acc))
        assert not acc.needs_calibration and model.transformer.is_cache_enabled
        report = acc.report()["cache"]
    np.testing.assert_allclose(report["mag_ratios"], expected, rtol=1e-5)
    assert report["calibration_nfe"] == STEPS


def _nfe_of_run(model, acc):
    velocity = GuidedVelocity(model, model.encode_prompts(PROMPTS[:2]), contexts=acc.context)
    with torch.no_grad():
        run_steps(velocity, _noise(2), sampling_sigmas(STEPS, SHIFT))
    return velocity.nfe


# ------------------------------------------------------------------------------ through generate()


def _generate(model, prompts, cache=None, batch_size=16, seed=0, **kw):
    sampling = SamplingConfig(steps=STEPS, shift=SHIFT, guidance=3.0)
    return generate(
        model,
        prompts,
        sampling,
        VIDEO,
        seed=seed,
        batch_size=batch_size,
        progress=False,
        acceleration=_config(cache, **kw),
    )


def test_first_block_threshold_zero_is_the_uncached_video_and_a_large_one_is_not(model):
    plain = _generate(model, PROMPTS[:2])
    assert plain.acceleration == {"cache": None, "compile": False, "attention_backend": None}
    exact = _generate(model, PROMPTS[:2], {"name": "first_block", "threshold": 0.0})
    np.testing.assert_array_equal(exact.videos, plain.videos)
    coarse = _generate(model, PROMPTS[:2], {"name": "first_block", "threshold": 1.0})
    assert np.abs(coarse.videos.astype(int) - plain.videos).max() > 2
    assert coarse.nfe_per_video == plain.nfe_per_video == 2 * STEPS  # skipped blocks still count as calls
    assert coarse.acceleration["cache"] == {"name": "first_block", "threshold": 1.0}


@pytest.mark.parametrize("name", sorted(CACHES))
def test_state_is_reset_between_batches(model, name):
    # without a reset the second, smaller batch would meet the first batch's (B = 2) cached features
    cache = CACHES[name][0]
    together = _generate(model, PROMPTS, cache, batch_size=2, seed=5)
    alone = _generate(model, PROMPTS[2:], cache, seed=7)
    np.testing.assert_array_equal(together.videos[2], alone.videos[0])


@pytest.mark.parametrize("name", sorted(CACHES))
def test_the_model_is_exactly_as_before_after_the_context(name):
    model = WanVideoModel.build_tiny("pixel", seed=1, num_layers=3)  # fresh: diffusers' own disable_cache leaves traces
    before_state, before = _hook_state(model.transformer), _sample(model, 3.0)
    assert not any(before_state.values())
    weights = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    with accelerated(model, _config(CACHES[name][0]), STEPS) as acc:
        assert model.transformer.is_cache_enabled
        _sample(model, 3.0, acc)
    assert not model.transformer.is_cache_enabled
    assert _hook_state(model.transformer) == before_state  # no registries, no patched forwards left
    assert all(torch.equal(v, weights[k]) for k, v in model.transformer.state_dict().items())
    torch.testing.assert_close(_sample(model, 3.0), before, rtol=0, atol=0)


def test_a_second_cache_after_the_first_and_not_on_top_of_another(model):
    for cache in (CACHES["first_block"][0], CACHES["taylorseer"][0], CACHES["first_block"][0]):
        with accelerated(model, _config(cache), STEPS) as acc:
            _sample(model, 3.0, acc)
    model.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    try:
        with (
            pytest.raises(VidpostError, match="already has a diffusers cache enabled"),
            accelerated(model, _config(CACHES["mag"][0]), STEPS),
        ):
            pass
    finally:
        model.transformer.disable_cache()


def test_mag_calibration_through_generate_is_recorded(model):
    out = _generate(model, PROMPTS[:2], {"name": "mag", "calibrate": True})
    cache = out.acceleration["cache"]
    assert len(cache["mag_ratios"]) == STEPS and cache["mag_ratios"][0] == 1.0
    assert cache["calibration_nfe"] == 2 * STEPS and out.nfe_per_video == 2 * STEPS


def test_compile_with_a_cache_matches_eager_and_is_removed():
    model = WanVideoModel.build_tiny("pixel", seed=1, num_layers=3)
    before_state = _hook_state(model.transformer)
    cache = CACHES["first_block"][0]
    eager = _generate(model, PROMPTS[:2], cache)
    compiled = _generate(model, PROMPTS[:2], cache, compile=True)
    assert np.abs(compiled.videos.astype(int) - eager.videos).max() <= 1  # fused kernels round differently
    assert compiled.acceleration["compile"] is True
    assert _hook_state(model.transformer) == before_state


def test_training_validation_takes_its_acceleration_from_the_config(model, tmp_path):
    from vidpost.recipes.common import validate
    from vidpost.recipes.sft import SFTConfig

    cfg = load_config(
        SFTConfig,
        overrides=["validation.acceleration.cache.name=first_block", "validation.acceleration.cache.threshold=1.0"],
    )
    assert cfg.validation.acceleration.cache == CacheConfig(name="first_block", threshold=1.0)
    sampling = SamplingConfig(steps=STEPS, shift=SHIFT, guidance=3.0)
    for name, acceleration in (("plain", None), ("cached", cfg.validation.acceleration)):
        validate(model, PROMPTS[:2], False, sampling, VIDEO, 0, "float32", tmp_path / name, acceleration=acceleration)
    plain, cached = (np.load(tmp_path / name / "clips" / "000000.npy") for name in ("plain", "cached"))
    assert np.abs(cached.astype(int) - plain).max() > 2
