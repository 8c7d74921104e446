"""WanVideoModel against stock diffusers: save/load layouts, prompt embeddings, velocity, LoRA files."""

import json
import shutil
from pathlib import Path

import pydantic
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from vidpost.config import load_config
from vidpost.errors import VidpostError
from vidpost.models.config import ModelConfig, TinyModelConfig
from vidpost.models.wan import WanVideoModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPTS = [
    "a large red circle moving right quickly and a small blue triangle staying still on a black background",
    "teal disc  falling slowly, white background",
    "a red circle &amp; " + "a green square and " * 20,  # html entity (cleaned as WanPipeline does) and truncation
]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _inputs(model, batch=3, frames=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, *model.latent_shape(frames, size, size), generator=g)
    return latents, torch.rand(batch, generator=g), model.encode_prompts(PROMPTS[:batch])


def _perturb_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.2)


def _transformer_out(transformer, latents, sigma, embeds):
    with torch.no_grad():
        return transformer(
            hidden_states=latents, timestep=sigma * 1000, encoder_hidden_states=embeds, return_dict=False
        )[0]


def _public(config):
    return {key: value for key, value in config.items() if not key.startswith("_")}


@pytest.fixture(scope="module")
def model():
    return WanVideoModel.build_tiny("pixel")


@pytest.fixture(scope="module")
def saved_pixel(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pixel")
    model.save(directory)
    return directory


def test_build_tiny_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = WanVideoModel.build_tiny("pixel", seed=3), WanVideoModel.build_tiny("pixel", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for one, two in ((a.transformer, b.transformer), (a.text_encoder, b.text_encoder)):
        assert all(torch.equal(x, y) for x, y in zip(one.state_dict().values(), two.state_dict().values(), strict=True))
    c = WanVideoModel.build_tiny("pixel", seed=4)
    assert not torch.equal(c.transformer.proj_out.weight, a.transformer.proj_out.weight)


def test_pixel_model_saves_a_stock_diffusers_layout(model, saved_pixel):
    index = json.loads((saved_pixel / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["vae"] == [None, None]
    weights = {p.suffix for p in saved_pixel.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")}
    assert weights == {".safetensors"}

    latents, sigma, embeds = _inputs(model)
    expected = model.velocity(latents, sigma, embeds)
    stock = WanTransformer3DModel.from_pretrained(saved_pixel, subfolder="transformer", local_files_only=True)
    assert torch.equal(_transformer_out(stock, latents, sigma, embeds), expected)
    reloaded = WanVideoModel.from_pretrained(saved_pixel, codec="pixel", max_sequence_length=model.max_sequence_length)
    assert torch.equal(reloaded.encode_prompts(PROMPTS), model.encode_prompts(PROMPTS))
    assert torch.equal(reloaded.velocity(latents, sigma, embeds), expected)


def test_vae_model_round_trips_through_a_stock_wan_pipeline(tmp_path):
    model = WanVideoModel.build_tiny("vae")
    model.save(tmp_path)
    pipe = WanPipeline.from_pretrained(tmp_path, local_files_only=True)
    ours = WanVideoModel.from_pretrained(tmp_path, codec="vae", max_sequence_length=model.max_sequence_length)
    embeds = ours.encode_prompts(PROMPTS)
    with torch.no_grad():  # as in WanPipeline.__call__ (with autograd on, SDPA may pick other CPU kernels)
        stock_embeds, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=model.max_sequence_length
        )
    assert torch.equal(embeds, stock_embeds)
    latents, sigma, _ = _inputs(ours, frames=5, size=16)
    assert torch.equal(
        _transformer_out(pipe.transformer, latents, sigma, embeds), ours.velocity(latents, sigma, embeds)
    )
    assert _public(pipe.vae.config) == _public(model.codec.vae.config)
    assert torch.equal(ours.decode(latents[:1]), model.decode(latents[:1]))


def test_missing_directory_or_component_is_a_one_line_error(saved_pixel, tmp_path):
    with pytest.raises(VidpostError, match="model directory not found"):
        WanVideoModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(VidpostError, match="missing component folder 'vae/'"):
        WanVideoModel.from_pretrained(saved_pixel, codec="vae")
    broken = tmp_path / "broken"
    shutil.copytree(saved_pixel, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(VidpostError, match="missing component folder 'transformer/'"):
        WanVideoModel.from_pretrained(broken, codec="pixel")
    shutil.copytree(saved_pixel / "transformer", broken / "transformer")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(VidpostError, match="transformer: cannot load"):
        WanVideoModel.from_pretrained(broken, codec="pixel")


def test_encode_prompts_equals_wan_pipeline_encode_prompt(model):
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=None,
        scheduler=model.scheduler,
        transformer=model.transformer,
    )
    embeds = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        stock, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, max_sequence_length=model.max_sequence_length
        )
    assert embeds.shape == (3, model.max_sequence_length, 32)
    assert torch.equal(embeds, stock)
    lengths = model.tokenizer(PROMPTS, truncation=True, max_length=model.max_sequence_length, return_length=True)[
        "length"
    ]
    assert lengths[2] == model.max_sequence_length  # the long prompt is truncated, keeping its </s>
    for row, n in zip(embeds, lengths, strict=True):
        assert (row[:n] != 0).any(dim=-1).all() and (row[n:] == 0).all()


def test_velocity_is_the_transformer_at_timestep_sigma_times_1000(model):
    latents, sigma, embeds = _inputs(model)
    v = model.velocity(latents, sigma, embeds)
    assert v.shape == latents.shape and v.dtype == torch.float32
    assert torch.equal(v, _transformer_out(model.transformer, latents, sigma, embeds))
    with pytest.raises(ValueError, match="sigma must have shape"):
        model.velocity(latents, sigma[:1], embeds)


def test_velocity_sign_and_timestep_match_the_flow_match_euler_step(model):
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    latents, _, embeds = _inputs(model, batch=1)
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        assert t == sigma * 1000  # what WanPipeline hands the transformer
        v = model.velocity(latents, sigma.view(1), embeds)
        assert torch.equal(v, _transformer_out(model.transformer, latents, t.view(1) / 1000, embeds))
        stepped = scheduler.step(v, t, latents, return_dict=False)[0]
        torch.testing.assert_close(stepped, latents + (sigma_next - sigma) * v)
        latents = stepped


def test_latent_shape_checks_the_patch_size(model):
    assert model.latent_shape(10, 32, 32) == (3, 10, 32, 32)
    with pytest.raises(VidpostError, match="not divisible by the transformer's patch"):
        model.latent_shape(10, 31, 32)


def test_lora_trains_only_adapters_and_its_file_loads_into_a_stock_pipeline(saved_pixel, tmp_path):
    model = WanVideoModel.build_tiny("pixel")
    latents, sigma, embeds = _inputs(model)
    base = model.velocity(latents, sigma, embeds)
    model.enable_lora(rank=4, alpha=8, target_modules=TARGETS)
    params = dict(model.transformer.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert len(model.trainable_parameters()) == len(trainable) == 2 * 2 * 2 * len(TARGETS)  # A, B x layers x attn
    assert torch.equal(model.velocity(latents, sigma, embeds), base)  # B = 0 at the start
    _perturb_lora(model)
    ours = model.velocity(latents, sigma, embeds)
    assert not torch.allclose(ours, base)

    model.save_lora(tmp_path)
    state = WanPipeline.lora_state_dict(tmp_path)
    assert state and all(key.startswith("transformer.blocks.") and ".lora_" in key for key in state)
    pipe = WanPipeline.from_pretrained(saved_pixel, vae=None, local_files_only=True)  # same base weights
    pipe.load_lora_weights(tmp_path)
    torch.testing.assert_close(_transformer_out(pipe.transformer, latents, sigma, embeds), ours, atol=1e-5, rtol=0)

    again = WanVideoModel.build_tiny("pixel")
    again.load_lora(tmp_path)
    assert {n for n, p in again.transformer.named_parameters() if p.requires_grad} == trainable
    torch.testing.assert_close(again.velocity(latents, sigma, embeds), ours, atol=1e-6, rtol=0)


def test_save_needs_merged_lora_and_merging_keeps_outputs(tmp_path):
    model = WanVideoModel.build_tiny("pixel")
    model.enable_lora(rank=4, alpha=4, target_modules=["to_q", "to_v"])
    _perturb_lora(model)
    latents, sigma, embeds = _inputs(model)
    expected = model.velocity(latents, sigma, embeds)
    with pytest.raises(VidpostError, match="save_lora"):
        model.save(tmp_path)
    with pytest.raises(VidpostError, match="already enabled"):
        model.enable_lora(rank=4, alpha=4, target_modules=["to_q"])
    model.merge_lora()
    assert all(p.requires_grad for p in model.transformer.parameters())
    torch.testing.assert_close(model.velocity(latents, sigma, embeds), expected, atol=1e-5, rtol=0)
    model.save(tmp_path)
    stock = WanTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer", local_files_only=True)
    torch.testing.assert_close(_transformer_out(stock, latents, sigma, embeds), expected, atol=1e-5, rtol=0)


def test_lora_with_unknown_targets_is_an_error():
    with pytest.raises(VidpostError, match="target_modules"):
        WanVideoModel.build_tiny("pixel").enable_lora(rank=4, alpha=4, target_modules=["no_such_layer"])


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = WanVideoModel.build_tiny("pixel")
        if checkpointing:
            model.enable_gradient_checkpointing()
        latents, sigma, embeds = _inputs(model)
        model.velocity(latents, sigma, embeds).square().mean().backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    assert model.transformer.gradient_checkpointing
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_keeps_diffusers_fp32_modules_and_float32_adapters():
    model = WanVideoModel.build_tiny("pixel", dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.transformer.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["scale_shift_table"] == dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    model.enable_lora(rank=2, alpha=2, target_modules=TARGETS)
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
    latents, sigma, embeds = _inputs(model)
    assert embeds.dtype == torch.bfloat16 and model.velocity(latents, sigma, embeds).dtype == torch.float32


def test_from_config_builds_tiny_or_loads_a_path(saved_pixel):
    model = WanVideoModel.from_config(
        ModelConfig.model_validate(
            {
                "tiny": {"num_layers": 1},
                "lora": {"enabled": True, "rank": 2, "alpha": 2},
                "gradient_checkpointing": True,
            }
        )
    )
    assert len(model.transformer.blocks) == 1 and model.lora_config.r == 2
    assert all("lora_" in n for n, p in model.transformer.named_parameters() if p.requires_grad)
    loaded = WanVideoModel.from_config(ModelConfig(path=str(saved_pixel), codec="pixel"))
    assert loaded.max_sequence_length == ModelConfig().max_sequence_length
    with pytest.raises(pydantic.ValidationError, match="tiny describes a model built from scratch"):
        ModelConfig(path=str(saved_pixel), tiny=TinyModelConfig(num_layers=3))


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_shipped_wan_model_configs_load(name):
    cfg = load_config(ModelConfig, CONFIGS / name / "model.yaml")
    assert cfg.path == f"models/{'Wan2.1-T2V-1.3B' if '1.3b' in name else 'Wan2.1-T2V-14B'}-Diffusers"
    assert (cfg.codec, cfg.dtype, cfg.max_sequence_length) == ("vae", "bfloat16", 512)
    assert cfg.lora.enabled and cfg.lora.target_modules == TARGETS


def test_identity_init_makes_the_untrained_velocity_its_input_and_saves_as_a_stock_model(tmp_path):
    kwargs = dict(
        num_layers=2, num_attention_heads=2, attention_head_dim=32, ffn_dim=64, patch_size=(2, 4, 4), text_dim=32
    )  # 96 values per token; width 2 x 32 = 64 is too narrow
    with pytest.raises(
        VidpostError, match=r"identity_init needs the transformer width \(64\) above the values per token \(96"
    ):
        WanVideoModel.build_tiny("pixel", identity_init=True, **kwargs)
    kwargs["attention_head_dim"] = 64  # width 128 > 96
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    corr = {}
    for identity in (False, True):
        model = WanVideoModel.build_tiny("pixel", identity_init=identity, seed=3, **kwargs)
        with torch.no_grad():
            v = model.velocity(x, torch.ones(2), model.encode_prompts(PROMPTS[:2]))
        corr[identity] = torch.corrcoef(torch.stack([v.flatten(), x.flatten()]))[0, 1].item()
    assert corr[True] > 0.9 and abs(corr[False]) < 0.2, corr
    model.save(tmp_path)  # only the initial weights differ: a stock WanTransformer3DModel loads it unchanged
    stock = WanTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer")
    assert torch.equal(stock.proj_out.weight, model.transformer.proj_out.weight)


def test_a_preconditioned_model_returns_the_velocity_of_its_edm_estimate_and_keeps_it_in_its_card(tmp_path):
    from vidpost.models.resolve import write_card

    model = WanVideoModel.build_tiny("pixel", prediction="preconditioned", sigma_data=0.7, seed=5)
    latents, _, embeds = _inputs(model)
    sigma = torch.tensor([1.0, 0.6, 0.02], dtype=torch.float64)
    # EDM for x = a x0 + sigma eps (a = 1 - sigma), in float64: the transformer sees c_in x, x0_hat = c_skip x + c_out F
    a, sd = 1 - sigma, 0.7
    c_in, c_skip, c_out = [
        t.view(-1, 1, 1, 1, 1)
        for t in (
            1 / (a**2 * sd**2 + sigma**2).sqrt(),
            a * sd**2 / (a**2 * sd**2 + sigma**2),
            sigma * sd / (a**2 * sd**2 + sigma**2).sqrt(),
        )
    ]
    f = _transformer_out(model.transformer, (latents.double() * c_in).float(), sigma.float(), embeds).double()
    x0_hat = c_skip * latents.double() + c_out * f
    expected = (latents.double() - x0_hat) / sigma.view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        v = model.velocity(latents, sigma.float(), embeds)
    torch.testing.assert_close(v.double(), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # finite at sigma = 0, where x0_hat = x
        assert torch.isfinite(model.velocity(latents, torch.zeros(3), embeds)).all()

    model.save(tmp_path)
    assert WanVideoModel.from_pretrained(tmp_path, codec="pixel").prediction == "velocity"  # no card: Wan's
    write_card(tmp_path, {"prediction": "preconditioned", "sigma_data": 0.7})
    loaded = WanVideoModel.from_pretrained(tmp_path, codec="pixel", max_sequence_length=64)
    assert (loaded.prediction, loaded.sigma_data) == ("preconditioned", 0.7)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.velocity(latents, sigma.float(), embeds), model.velocity(latents, sigma.float(), embeds)
        )
    with pytest.raises(VidpostError, match="unknown prediction 'eps'"):
        WanVideoModel.build_tiny("pixel", prediction="eps")


def test_saving_and_loading_print_no_bars_or_missing_vae_warning(tmp_path, capfd, caplog):
    WanVideoModel.build_tiny("pixel").save(tmp_path)
    WanVideoModel.from_pretrained(tmp_path, codec="pixel")
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err
    assert "cannot be saved" not in err + caplog.text
