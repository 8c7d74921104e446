"""The sampler against stock diffusers WanPipeline (ODE path) and against its own step functions (SDE path)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

from vidpost.diffusion.sampler import GuidedVelocity, branch, run_steps, solve_ode
from vidpost.diffusion.schedule import make_scheduler, sampling_sigmas
from vidpost.diffusion.sde import noise_levels, sde_mean_std, transition_log_prob
from vidpost.models.wan import WanVideoModel

PROMPTS = ["a red circle moving left", "a small blue square staying still on a white background"]
SHAPE = (3, 3, 8, 8)  # (C, T, H, W) of the tiny pixel model


@pytest.fixture(scope="module")
def model():
    return WanVideoModel.build_tiny("pixel", seed=1)


def _noise(batch, seed=0):
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("steps,shift", [(4, 1.0), (6, 3.0)])
def test_ode_path_reproduces_stock_wan_pipeline(model, guidance, steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=None,
        scheduler=scheduler,
        transformer=model.transformer,
    )
    noise = _noise(len(PROMPTS))
    expected = pipe(
        prompt=PROMPTS,
        negative_prompt="",
        height=16,
        width=16,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise.clone(),
        max_sequence_length=model.max_sequence_length,
        output_type="latent",
    ).frames

    velocity = GuidedVelocity(model, model.encode_prompts(PROMPTS), model.encode_prompts([""]), guidance)
    with torch.no_grad():
        out = run_steps(velocity, noise, sampling_sigmas(steps, shift))
    torch.testing.assert_close(out.final, expected, rtol=1e-5, atol=1e-5)
    assert velocity.nfe == steps * (2 if guidance > 1 else 1)
    assert out.states == {} and not out.sde.any() and not out.log_probs.any()


@pytest.mark.parametrize("scheduler,steps,shift", [("unipc", 5, 3.0), ("unipc", 8, 5.0), ("flow_match_euler", 6, 3.0)])
def test_solve_ode_reproduces_stock_wan_pipeline_with_its_scheduler(model, scheduler, steps, shift):
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=None,
        scheduler=make_scheduler(scheduler, shift),
        transformer=model.transformer,
    )
    noise = _noise(len(PROMPTS), seed=3)
    expected = pipe(
        prompt=PROMPTS,
        negative_prompt="",
        height=16,
        width=16,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=3.0,
        latents=noise.clone(),
        max_sequence_length=model.max_sequence_length,
        output_type="latent",
    ).frames
    velocity = GuidedVelocity(model, model.encode_prompts(PROMPTS), model.encode_prompts([""]), 3.0)
    with torch.no_grad():
        final = solve_ode(velocity, noise, steps, shift, scheduler)
    torch.testing.assert_close(final, expected, rtol=1e-5, atol=1e-5)
    assert velocity.nfe == 2 * steps
    if scheduler == "unipc":  # UniPC's multistep update is not the Euler path on the same grid
        with torch.no_grad():
            euler = run_steps(velocity, noise, sampling_sigmas(steps, shift, scheduler)).final
        assert (euler - expected).abs().max() > 1e-3


def test_guidance_changes_the_sample(model):
    noise, sigmas = _noise(2), sampling_sigmas(4, 1.0)
    c, u = model.encode_prompts(PROMPTS), model.encode_prompts([""])
    with torch.no_grad():
        plain = run_steps(GuidedVelocity(model, c, u, 1.0), noise, sigmas).final
        guided = run_steps(GuidedVelocity(model, c, u, 4.0), noise, sigmas).final
    assert (plain - guided).abs().max() > 1e-3


def test_mixed_sde_flags_match_hand_stepping(model):
    """Row 0 takes its SDE step at 1, row 1 at 3: each row equals stepping it by hand with the step functions."""
    steps, batch = 5, 2
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flash")
    flags = torch.zeros(batch, steps, dtype=torch.bool)
    flags[0, 1] = flags[1, 3] = True
    embeds, noise = model.encode_prompts(PROMPTS), _noise(batch)
    velocity = GuidedVelocity(model, embeds)
    with torch.no_grad():
        out = run_steps(velocity, noise, sigmas, sde=flags, g=g, generator=torch.Generator().manual_seed(7))

    # by hand: the sampler draws one (B, ...) noise tensor per step that has any SDE row, in step order
    gen = torch.Generator().manual_seed(7)
    draws = {1: torch.randn(batch, *SHAPE, generator=gen), 3: torch.randn(batch, *SHAPE, generator=gen)}
    for row in range(batch):
        x = noise[row : row + 1]
        for i in range(steps):
            with torch.no_grad():
                v = model.velocity(x, sigmas[i].float().expand(1), embeds[row : row + 1])
            if flags[row, i]:
                mean, std = sde_mean_std(x.double(), v.double(), sigmas[i].item(), sigmas[i + 1].item(), g[i].item())
                x_next = mean + std * draws[i][row : row + 1].double()
                torch.testing.assert_close(out.states[i][row], x[0].float(), rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(out.states[i + 1][row], x_next[0].float(), rtol=1e-4, atol=1e-5)
                lp = transition_log_prob(x_next, mean, std)
                torch.testing.assert_close(out.log_probs[row, i].double(), lp[0], rtol=1e-4, atol=1e-4)
                x = x_next.float()
            else:
                x = x + (sigmas[i + 1] - sigmas[i]).float() * v
        torch.testing.assert_close(out.final[row], x[0], rtol=1e-4, atol=1e-5)
    assert out.log_probs[0, 1] != 0 and out.log_probs[1, 3] != 0
    assert int((out.log_probs != 0).sum()) == 2
    assert sorted(out.states) == [1, 2, 3, 4]


def test_recomputed_log_prob_equals_the_recorded_one(model):
    """Training recomputes log π(x_{i+1} | x_i) from the stored states; with unchanged weights it agrees."""
    steps = 4
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flow_grpo")
    embeds = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        out = run_steps(
            GuidedVelocity(model, embeds),
            _noise(2),
            sigmas,
            sde=torch.ones(steps, dtype=torch.bool),
            g=g,
            generator=torch.Generator().manual_seed(0),
        )
        for i in range(steps):
            v = model.velocity(out.states[i], sigmas[i].float().expand(2), embeds)
            mean, std = sde_mean_std(out.states[i], v, sigmas[i].item(), sigmas[i + 1].item(), g[i].item())
            torch.testing.assert_close(transition_log_prob(out.states[i + 1], mean, std), out.log_probs[:, i])


def test_branching_from_a_shared_prefix_equals_a_full_run(model):
    """Prefix to k once, branch G copies, continue: the ODE prefix is shared and every copy follows its own noise."""
    steps, k, group = 5, 2, 3
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flash")
    embeds = model.encode_prompts(PROMPTS[:1])
    noise = _noise(1)
    flags = torch.zeros(steps, dtype=torch.bool)
    flags[k] = True
    with torch.no_grad():
        prefix_velocity, suffix_velocity = GuidedVelocity(model, embeds), GuidedVelocity(model, branch(embeds, group))
        prefix = run_steps(prefix_velocity, noise, sigmas, stop=k)
        suffix = run_steps(
            suffix_velocity,
            branch(prefix.final, group),
            sigmas,
            sde=flags,
            g=g,
            generator=torch.Generator().manual_seed(3),
            start=k,
        )
        full = run_steps(
            GuidedVelocity(model, branch(embeds, group)),
            branch(noise, group),
            sigmas,
            sde=flags,
            g=g,
            generator=torch.Generator().manual_seed(3),
        )
    assert prefix_velocity.nfe == k and suffix_velocity.nfe == steps - k  # the prefix runs once per group
    torch.testing.assert_close(suffix.final, full.final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(suffix.log_probs, full.log_probs)
    # the copies share x_k but not x_{k+1}
    assert torch.equal(suffix.states[k][0], suffix.states[k][2])
    assert not torch.allclose(suffix.states[k + 1][0], suffix.states[k + 1][1])


def test_branch_is_consecutive():
    x = torch.arange(2).view(2, 1)
    assert branch(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_bad_arguments_are_named(model):
    velocity = GuidedVelocity(model, model.encode_prompts(PROMPTS))
    sigmas = sampling_sigmas(3, 1.0)
    with pytest.raises(ValueError, match="needs uncond_embeds"):
        GuidedVelocity(model, model.encode_prompts(PROMPTS), None, 2.0)
    with pytest.raises(ValueError, match="noise levels"):
        run_steps(velocity, _noise(2), sigmas, sde=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sde flags must have shape"):
        run_steps(velocity, _noise(2), sigmas, sde=torch.ones(4, dtype=torch.bool), g=torch.ones(3))
    with pytest.raises(ValueError, match="start <= stop"):
        run_steps(velocity, _noise(2), sigmas, start=2, stop=1)


def test_per_row_generators_give_a_row_the_same_noise_in_any_batch(model):
    steps = 4
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flash")
    flags = torch.zeros(2, steps, dtype=torch.bool)
    flags[0, 1] = flags[1, 2] = True  # row 1 draws nothing at step 1, where row 0 takes its SDE step

    def generators():
        return [torch.Generator().manual_seed(s) for s in (3, 4)]

    embeds, noise = model.encode_prompts(PROMPTS), _noise(2)
    with torch.no_grad():
        both = run_steps(GuidedVelocity(model, embeds), noise, sigmas, sde=flags, g=g, generator=generators())
        alone = [
            run_steps(
                GuidedVelocity(model, embeds[r : r + 1]),
                noise[r : r + 1],
                sigmas,
                sde=flags[r : r + 1],
                g=g,
                generator=generators()[r : r + 1],
            )
            for r in range(2)
        ]
    torch.testing.assert_close(both.final, torch.cat([a.final for a in alone]), rtol=1e-5, atol=1e-6)
