"""Sampling grids match diffusers and an independent float64 formula; training draws and the SFT loss."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vidpost.diffusion import (
    flow_matching_loss,
    make_scheduler,
    noisy_sample,
    sample_training_sigmas,
    sampling_sigmas,
    shift_sigmas,
    velocity_target,
)

F32_ATOL = 2e-7  # diffusers computes its grids in float32


def _shift(sigma, s):
    return s * sigma / (1 + (s - 1) * sigma)


def _euler_reference(n: int, s: float) -> np.ndarray:
    """diffusers' FlowMatchEuler grid in float64: its training table ends at shift(1/1000), and
    set_timesteps interpolates linearly between the table's ends and shifts the result again."""
    lo = _shift(1 / 1000, s)
    return np.append(_shift(np.linspace(1.0, lo, n), s), 0.0)


def _unipc_reference(n: int, s: float) -> np.ndarray:
    sig = _shift(np.linspace(1.0, 1 / 1000, n + 1)[:-1], s)
    sig[0] -= 1e-6  # diffusers keeps σ_0 off 1 (log(1 − σ) in the UniPC update)
    return np.append(sig, 0.0)


@pytest.mark.parametrize(
    "name, n, shift",
    [
        ("flow_match_euler", 20, 3.0),
        ("flow_match_euler", 10, 5.0),
        ("flow_match_euler", 1, 1.0),
        ("unipc", 20, 3.0),
        ("unipc", 16, 8.0),
        ("unipc", 50, 5.0),
    ],
)
def test_sampling_sigmas_match_diffusers_and_formula(name, n, shift):
    sig = sampling_sigmas(n, shift, name)
    assert sig.dtype == torch.float64 and sig.shape == (n + 1,)
    if name == "flow_match_euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        ref = _euler_reference(n, shift)
    else:
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
        ref = _unipc_reference(n, shift)
    sched.set_timesteps(n)
    torch.testing.assert_close(sig, sched.sigmas.double(), rtol=0, atol=0)
    np.testing.assert_allclose(sig.numpy(), ref, rtol=0, atol=F32_ATOL)
    assert bool((sig[1:] < sig[:-1]).all()) and sig[-1] == 0


def test_wan_grpo_grid_by_hand():
    """20 steps, shift 3 (Flow-GRPO/Flash-GRPO's Wan grid), a few entries worked out by hand."""
    sig = sampling_sigmas(20, 3.0, "flow_match_euler").numpy()
    lo = 3 * 0.001 / (1 + 2 * 0.001)  # diffusers' training table ends at shift(1/1000) = 0.0029940...
    assert sig[0] == 1.0
    u1 = 1 - (1 - lo) / 19
    assert abs(sig[1] - 3 * u1 / (1 + 2 * u1)) < F32_ATOL  # 0.98187...
    u10 = 1 - 10 * (1 - lo) / 19
    assert abs(sig[10] - 3 * u10 / (1 + 2 * u10)) < F32_ATOL
    assert abs(sig[19] - 3 * lo / (1 + 2 * lo)) < F32_ATOL  # 0.0089285...
    assert abs(sig[19] - 0.0089285714) < 1e-8
    assert sig[20] == 0.0


def test_shift_formula():
    assert shift_sigmas(0.5, 3.0) == pytest.approx(0.75)
    assert shift_sigmas(1.0, 5.0) == 1.0 and shift_sigmas(0.0, 5.0) == 0.0
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(x, 1.0), x)
    np.testing.assert_allclose(shift_sigmas(x.numpy(), 8.0), 8 * x.numpy() / (1 + 7 * x.numpy()))
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(0.5, 0.0)


def test_unknown_scheduler_lists_valid_names():
    with pytest.raises(ValueError, match="'ddim'.*flow_match_euler, unipc"):
        sampling_sigmas(10, 3.0, "ddim")
    with pytest.raises(ValueError, match="num_steps"):
        sampling_sigmas(0, 3.0)


def test_make_scheduler_is_stock_diffusers():
    sched = make_scheduler("unipc", 3.0)
    assert isinstance(sched, UniPCMultistepScheduler)
    assert sched.config.use_flow_sigmas and sched.config.flow_shift == 3.0
    assert sched.config.prediction_type == "flow_prediction"
    assert isinstance(make_scheduler("flow_match_euler", 5.0), FlowMatchEulerDiscreteScheduler)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return torch.log(p) - torch.log1p(-p)


def test_logit_normal_draws():
    n = 100_000
    sig = sample_training_sigmas(n, "logit_normal", generator=torch.Generator().manual_seed(0))
    assert sig.shape == (n,) and sig.dtype == torch.float32
    assert bool(((sig > 0) & (sig < 1)).all())
    z = _logit(sig)
    se = 1 / n**0.5
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.std().item() - 1) < 5 * se / 2**0.5
    z2 = _logit(
        sample_training_sigmas(
            n, "logit_normal", generator=torch.Generator().manual_seed(1), logit_mean=-0.5, logit_std=2.0
        )
    )
    assert abs(z2.mean().item() + 0.5) < 5 * 2 * se
    assert abs(z2.std().item() - 2) < 5 * 2 * se / 2**0.5


def test_uniform_draws():
    n = 100_000
    sig = sample_training_sigmas(n, "uniform", generator=torch.Generator().manual_seed(0))
    assert bool(((sig > 0) & (sig < 1)).all())
    assert abs(sig.double().mean().item() - 0.5) < 5 * (1 / 12 / n) ** 0.5
    hist = torch.histc(sig, bins=10, min=0, max=1) / n
    assert bool(((hist - 0.1).abs() < 0.005).all())


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_training_draws_are_shifted(mode):
    base = sample_training_sigmas(1000, mode, generator=torch.Generator().manual_seed(3))
    shifted = sample_training_sigmas(1000, mode, shift=3.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shifted.double(), _shift(base.double(), 3.0), rtol=0, atol=1e-6)
    assert bool((shifted > base).all())  # a shift > 1 moves every draw toward noise


def test_shifted_logit_normal_median():
    sig = sample_training_sigmas(100_000, "logit_normal", shift=3.0, generator=torch.Generator().manual_seed(4))
    assert abs(sig.median().item() - 0.75) < 0.01  # median of sigmoid(N(0, 1)) is 0.5 -> shift(0.5) = 0.75


def test_training_draw_errors():
    with pytest.raises(ValueError, match="'cosine'.*uniform, logit_normal"):
        sample_training_sigmas(4, "cosine")
    with pytest.raises(ValueError, match="logit_std"):
        sample_training_sigmas(4, "logit_normal", logit_std=0.0)


def test_noisy_sample_and_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    sigma = torch.tensor([0.0, 0.3, 1.0])
    xs = noisy_sample(x0, noise, sigma)
    torch.testing.assert_close(xs[0], x0[0])
    torch.testing.assert_close(xs[1], 0.7 * x0[1] + 0.3 * noise[1])
    torch.testing.assert_close(xs[2], noise[2])
    torch.testing.assert_close(noisy_sample(x0, noise, 0.25), 0.75 * x0 + 0.25 * noise)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    # the target velocity carries x_σ to the data: x̂₀ = x_σ − σ·v
    torch.testing.assert_close(xs - sigma.view(-1, 1, 1, 1) * v, x0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="batch has 3"):
        noisy_sample(x0, noise, torch.tensor([0.1, 0.2]))


def test_flow_matching_loss():
    g = torch.Generator().manual_seed(1)
    x0, noise, v = (torch.randn(4, 3, 5, generator=g) for _ in range(3))
    loss = flow_matching_loss(v, x0, noise)
    assert loss.shape == (4,) and loss.dtype == torch.float32
    ref = ((v.double() - (noise.double() - x0.double())) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)
    assert bool((flow_matching_loss(noise - x0, x0, noise) == 0).all())
    assert flow_matching_loss(v.bfloat16(), x0, noise).dtype == torch.float32
