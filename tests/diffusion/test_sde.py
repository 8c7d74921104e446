"""ODE/SDE steps, log-probabilities, KL and the gradient scale c(σ), against independent float64 references."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vidpost.diffusion import (
    gradient_scale,
    noise_levels,
    ode_step,
    sampling_sigmas,
    sde_mean_std,
    sde_step,
    transition_kl,
    transition_log_prob,
)

SCHEDULES = ("flow_grpo", "flash", "dance")
GRIDS = {  # (scheduler, steps, shift)
    "euler-20-s3": ("flow_match_euler", 20, 3.0),  # Wan's GRPO grid
    "euler-10-s5": ("flow_match_euler", 10, 5.0),
    "unipc-16-s8": ("unipc", 16, 8.0),
}


def _grid(name: str) -> torch.Tensor:
    scheduler, steps, shift = GRIDS[name]
    return sampling_sigmas(steps, shift, scheduler)


# ---- independent float64 numpy references (written from algorithms.md, not from the module) ----


def _np_mean_std(x, v, sigma, sigma_next, g):
    """μ = x + Δ[v + g²/(2σ)(x + (1 − σ)v)], s = g√(−Δ): the first form of the formula."""
    d = sigma_next - sigma
    mean = x + d * (v + g**2 / (2 * sigma) * (x + (1 - sigma) * v))
    return mean, g * np.sqrt(-d)


def _np_noise_levels(sig: np.ndarray, schedule: str, **p) -> np.ndarray:
    s = sig[:-1]
    if schedule == "flow_grpo":
        a = p.get("a", 0.7)
        g = np.empty_like(s)
        for i, si in enumerate(s):
            pure_noise = i == 0 and si > 1 - 1e-5  # exactly 1 (FlowMatchEuler) or 1 - 1e-6 (UniPC)
            g[i] = a * math.sqrt(si / (1 - (sig[1] if pure_noise else si)))
        return g
    if schedule == "flash":
        hi, lo = p.get("sigma_max", sig[1]), p.get("sigma_min", sig[-1])
        return lo + (hi - lo) * s
    return np.full_like(s, p.get("eta", 0.3))


def _np_c(sig: np.ndarray, g: np.ndarray) -> np.ndarray:
    s, s_next = sig[:-1], sig[1:]
    # |∂ log π / ∂v| / |ξ| = |∂μ/∂v| / std, with ∂μ/∂v = Δ(1 + g²(1 − σ)/(2σ)) and std = g√(−Δ)
    dmu_dv = (s_next - s) * (1 + g**2 * (1 - s) / (2 * s))
    return np.abs(dmu_dv) / (g * np.sqrt(s - s_next))


# ---- the SDE step ----


@pytest.mark.parametrize(
    "sigma, sigma_next, g", [(1.0, 0.98, 0.7), (0.75, 0.6, 0.3), (0.3, 0.25, 1.4), (0.05, 0.0, 0.05)]
)
def test_mean_std_match_float64_reference(sigma, sigma_next, g):
    rng = np.random.default_rng(0)
    x, v = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    ref_mean, ref_std = _np_mean_std(x, v, sigma, sigma_next, g)
    mean, std = sde_mean_std(torch.from_numpy(x), torch.from_numpy(v), sigma, sigma_next, g)
    assert mean.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-12)
    mean32, std32 = sde_mean_std(torch.from_numpy(x).float(), torch.from_numpy(v).float(), sigma, sigma_next, g)
    assert mean32.dtype == torch.float32 and std32.dtype == torch.float32
    np.testing.assert_allclose(mean32.numpy(), ref_mean, rtol=1e-5, atol=1e-5)


def test_per_sample_sigmas_equal_scalar_calls():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.1], dtype=torch.float64)
    sigma_next = torch.tensor([0.9, 0.7, 0.45, 0.0], dtype=torch.float64)
    noise_g = torch.tensor([0.3, 0.5, 0.7, 0.2], dtype=torch.float64)
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_g)
    assert std.shape == (4, 1, 1, 1)
    for b in range(4):
        m, s = sde_mean_std(x[b : b + 1], v[b : b + 1], sigma[b].item(), sigma_next[b].item(), noise_g[b].item())
        torch.testing.assert_close(mean[b : b + 1], m, rtol=0, atol=0)
        torch.testing.assert_close(std[b].flatten(), s.flatten(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch has 4"):
        sde_mean_std(x, v, sigma[:3], 0.0, 0.3)


def test_zero_noise_is_the_ode_step_exactly():
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    for sigma, sigma_next in [(1.0, 0.95), (0.6, 0.41), (0.2, 0.0)]:
        mean, std = sde_mean_std(x, v, sigma, sigma_next, 0.0)
        assert torch.equal(mean, ode_step(x, v, sigma, sigma_next))
        assert float(std) == 0.0
    torch.testing.assert_close(ode_step(x, v, 0.6, 0.41), x + (0.41 - 0.6) * v)


def test_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(5, 3, 8, generator=g), torch.randn(5, 3, 8, generator=g)
    sigma = torch.linspace(0.9, 0.2, 5, dtype=torch.float64)
    x_next, log_prob = sde_step(x, v, sigma, sigma - 0.05, torch.full((5,), 0.6), generator=g)
    mean, std = sde_mean_std(x, v, sigma, sigma - 0.05, torch.full((5,), 0.6))
    ref = Normal(mean.double(), std.double()).log_prob(x_next.double()).mean(dim=(1, 2))
    assert log_prob.shape == (5,) and log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(transition_log_prob(x_next, mean, std), log_prob, rtol=0, atol=0)
    # std given as (B,) or as a float is the same density
    torch.testing.assert_close(transition_log_prob(x_next, mean, std.flatten()), log_prob, rtol=0, atol=0)
    s0 = std.flatten()[0].item()
    ref0 = Normal(mean[:1].double(), s0).log_prob(x_next[:1].double()).mean()
    torch.testing.assert_close(transition_log_prob(x_next[:1], mean[:1], s0).double(), ref0.view(1))


def test_sde_step_uses_given_noise_and_generator():
    g = torch.Generator().manual_seed(4)
    x, v, xi = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    mean, std = sde_mean_std(x, v, 0.7, 0.6, 0.5)
    x_next, _ = sde_step(x, v, 0.7, 0.6, 0.5, noise=xi)
    torch.testing.assert_close(x_next, mean + std * xi, rtol=0, atol=0)
    a, _ = sde_step(x, v, 0.7, 0.6, 0.5, generator=torch.Generator().manual_seed(9))
    b, _ = sde_step(x, v, 0.7, 0.6, 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="either generator or noise"):
        sde_step(x, v, 0.7, 0.6, 0.5, generator=g, noise=xi)
    with pytest.raises(ValueError, match="std must be > 0"):
        sde_step(x, v, 0.7, 0.6, 0.0)
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_mean_std(x, v, 0.6, 0.7, 0.5)
    with pytest.raises(ValueError, match="g must be >= 0"):
        sde_mean_std(x, v, 0.7, 0.6, -0.5)


def test_empirical_moments_of_many_draws():
    n = 200_000
    sigma = torch.tensor([0.8, 0.4], dtype=torch.float64)
    sigma_next = torch.tensor([0.7, 0.3], dtype=torch.float64)
    g = torch.tensor([0.9, 0.5], dtype=torch.float64)
    x = torch.tensor([0.3, -1.0]).view(2, 1).expand(2, n).contiguous()
    v = torch.tensor([-0.5, 0.2]).view(2, 1).expand(2, n).contiguous()
    x_next, _ = sde_step(x, v, sigma, sigma_next, g, generator=torch.Generator().manual_seed(5))
    for b in range(2):
        mu, s = _np_mean_std(x[b, 0].item(), v[b, 0].item(), sigma[b].item(), sigma_next[b].item(), g[b].item())
        row = x_next[b].double()
        assert abs(row.mean().item() - mu) < 5 * s / n**0.5
        assert abs(row.std().item() - s) < 5 * s / (2 * n) ** 0.5


def test_kl_closed_form_monte_carlo_and_torch():
    gen = torch.Generator().manual_seed(6)
    b, d, m = 3, 64, 4000
    std = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    mean_a = torch.randn(b, d, generator=gen, dtype=torch.float64)
    mean_b = mean_a + 0.3 * std.view(-1, 1) * torch.randn(b, d, generator=gen, dtype=torch.float64)
    kl = transition_kl(mean_a, mean_b, std)
    assert kl.shape == (b,)
    ref = kl_divergence(Normal(mean_a, std.view(-1, 1)), Normal(mean_b, std.view(-1, 1))).mean(dim=1)
    torch.testing.assert_close(kl, ref, rtol=1e-12, atol=0)
    # Monte Carlo: E_{x ~ π_a}[log π_a(x) − log π_b(x)] with the dims-averaged log-probs gives the dims-averaged KL
    xi = torch.randn(m, b, d, generator=gen, dtype=torch.float64)
    x = (mean_a + std.view(-1, 1) * xi).reshape(m * b, d)
    rep = lambda t: t.expand(m, *t.shape).reshape(m * b, *t.shape[1:])  # noqa: E731
    diff = (transition_log_prob(x, rep(mean_a), rep(std)) - transition_log_prob(x, rep(mean_b), rep(std))).view(m, b)
    se = diff.std(dim=0) / m**0.5
    assert bool(((diff.mean(dim=0) - kl).abs() < 5 * se).all())
    # at x = μ_a exactly the log-prob difference is the KL
    torch.testing.assert_close(transition_log_prob(mean_a, mean_a, std) - transition_log_prob(mean_a, mean_b, std), kl)


# ---- noise schedules and the gradient scale ----


def test_flow_grpo_noise_at_pure_noise_uses_next_sigma():
    for grid in ("euler-20-s3", "unipc-16-s8"):
        sig = _grid(grid)
        g = noise_levels(sig, "flow_grpo")
        s1 = sig[1].item()
        # Flow-GRPO: std_dev_t = a·sqrt(σ / (1 − where(σ == 1, sigmas[1], σ))), numerator σ_0 kept
        assert g[0].item() == pytest.approx(0.7 * math.sqrt(sig[0].item() / (1 - s1)), rel=1e-12)
        assert g[1].item() == pytest.approx(0.7 * math.sqrt(s1 / (1 - s1)), rel=1e-12)
        assert bool(torch.isfinite(g).all())
    g = noise_levels(sampling_sigmas(20, 3.0), "flow_grpo", a=0.8)
    assert g[5].item() == pytest.approx(
        0.8 * math.sqrt(sampling_sigmas(20, 3.0)[5].item() / (1 - sampling_sigmas(20, 3.0)[5].item()))
    )
    # a grid that starts below pure noise keeps the plain formula at step 0
    g = noise_levels(torch.tensor([0.8, 0.5, 0.0]), "flow_grpo")
    assert g[0].item() == pytest.approx(0.7 * 2.0)


def test_flash_and_dance_noise_levels():
    sig = _grid("euler-20-s3")
    torch.testing.assert_close(noise_levels(sig, "flash"), sig[1] * sig[:-1])  # σ_min = σ_N = 0
    torch.testing.assert_close(noise_levels(sig, "flash", sigma_max=0.5, sigma_min=0.1), 0.1 + 0.4 * sig[:-1])
    torch.testing.assert_close(noise_levels(sig, "dance"), torch.full((20,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(noise_levels(sig, "dance", eta=0.25), torch.full((20,), 0.25, dtype=torch.float64))


def test_noise_level_errors():
    sig = _grid("euler-10-s5")
    with pytest.raises(ValueError, match="'ddim'.*flow_grpo, flash, dance, cps"):
        noise_levels(sig, "ddim")
    with pytest.raises(ValueError, match="cps noise share eta must be in"):
        noise_levels(sig, "cps", eta=1.0)
    with pytest.raises(ValueError, match="'eta'.*'flow_grpo'"):
        noise_levels(sig, "flow_grpo", eta=0.3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        noise_levels(torch.tensor([1.0, 1.0, 0.0]), "dance")
    with pytest.raises(ValueError, match="invalid noise levels"):
        noise_levels(sig, "dance", eta=-0.1)
    assert torch.isinf(gradient_scale(sig, "dance", eta=0.0)).all()  # deterministic steps: nothing to train


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradient_scale_matches_float64_reference(grid, schedule):
    sig = _grid(grid)
    c = gradient_scale(sig, schedule)
    assert c.dtype == torch.float64 and c.shape == (len(sig) - 1,)
    g_ref = _np_noise_levels(sig.numpy(), schedule)
    np.testing.assert_allclose(noise_levels(sig, schedule).numpy(), g_ref, rtol=1e-13)
    np.testing.assert_allclose(c.numpy(), _np_c(sig.numpy(), g_ref), rtol=1e-12)


def test_gradient_scale_with_params():
    sig = _grid("unipc-16-s8")
    for schedule, params in [
        ("flow_grpo", {"a": 0.8}),
        ("flash", {"sigma_max": 0.9, "sigma_min": 0.05}),
        ("dance", {"eta": 0.25}),
    ]:
        ref = _np_c(sig.numpy(), _np_noise_levels(sig.numpy(), schedule, **params))
        np.testing.assert_allclose(gradient_scale(sig, schedule, **params).numpy(), ref, rtol=1e-12)


def test_gradient_scale_reproduces_flash_grpo_constants():
    """Flash-GRPO (github.com/Shredded-Pork/Flash-GRPO, scripts/train_wanx2_1_flash.py) hard-codes c(σ)⁻¹ for
    the first 10 steps of Wan's 20-step, flow_shift-3 UniPC grid under its linear schedule. Its grid is the
    one older diffusers built (1 − linspace(1, 1/1000, N + 1), shifted, reversed, last dropped; 0 appended),
    which is why its timesteps read 999, 982, 963, ... where diffusers 0.42 gives 999, 982, 964, ..."""
    published = [7.4770, 7.0414, 6.6112, 6.1867, 5.7682, 5.3559, 4.9502, 4.5513, 4.1596, 3.7754]
    t = 1 - np.linspace(1, 1 / 1000, 21)
    old_grid = np.append(np.flip(3 * t / (1 + 2 * t))[:-1], 0.0)
    inv_c = 1 / gradient_scale(torch.from_numpy(old_grid.copy()), "flash")
    np.testing.assert_allclose(inv_c[:10].numpy(), published, rtol=0, atol=6e-5)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradient_scale_is_the_log_prob_gradient(grid, schedule):
    """Autograd through sde_step's log-prob: ∂(Σ_dims log density)/∂v = −ξ·c(σ_i) per element, every step."""
    sig = _grid(grid)
    n = len(sig) - 1
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    xi = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    g = noise_levels(sig, schedule)
    _, log_prob = sde_step(x, v, sig[:-1], sig[1:], g, noise=xi)  # step i in batch row i
    (log_prob * 12).sum().backward()  # the log-prob is averaged over the 12 dims; undo that
    c = gradient_scale(sig, schedule).view(-1, 1, 1)
    torch.testing.assert_close(v.grad.abs(), xi.abs() * c, rtol=1e-10, atol=0)
    torch.testing.assert_close(v.grad, -xi * c, rtol=1e-10, atol=0)  # Δ < 0 flips the sign


def test_bf16_inputs_give_float32_within_bf16_rounding():
    gen = torch.Generator().manual_seed(8)
    x, v = torch.randn(2, 4, 16, generator=gen), torch.randn(2, 4, 16, generator=gen)
    xb, vb = x.bfloat16(), v.bfloat16()
    sigma, sigma_next, g = 0.9, 0.85, 0.8
    mean_b, std_b = sde_mean_std(xb, vb, sigma, sigma_next, g)
    assert mean_b.dtype == torch.float32 and std_b.dtype == torch.float32
    mean_up, _ = sde_mean_std(xb.float(), vb.float(), sigma, sigma_next, g)
    assert torch.equal(mean_b, mean_up)  # bf16 is cast up exactly, then computed in float32
    mean_32, std_32 = sde_mean_std(x, v, sigma, sigma_next, g)
    assert torch.equal(std_b, std_32)
    d = sigma_next - sigma
    a_x, a_v = 1 + g**2 * d / (2 * sigma), d * (1 + g**2 * (1 - sigma) / (2 * sigma))
    bound = 2**-8 * (abs(a_x) * x.abs() + abs(a_v) * v.abs()) + 1e-6  # bf16 has an 8-bit significand
    assert bool(((mean_b - mean_32).abs() <= bound).all())
    x_next, log_prob = sde_step(xb, vb, sigma, sigma_next, g, generator=gen)
    assert x_next.dtype == torch.float32 and log_prob.dtype == torch.float32
    assert transition_log_prob(x_next.bfloat16(), mean_b, std_b).dtype == torch.float32
    assert ode_step(xb, vb, sigma, sigma_next).dtype == torch.float32
    assert transition_kl(mean_b.bfloat16(), mean_32.bfloat16(), std_b).dtype == torch.float32


# ---- the coefficient-preserving step (CPS) ----


def _np_cps_mean_std(x, v, sigma, sigma_next, eta):
    """flow_grpo's sde_type "cps", written from its x̂₀ / ε̂ form (algorithms.md)."""
    std = sigma_next * math.sin(eta * math.pi / 2)
    x0_hat, eps_hat = x - sigma * v, x + (1 - sigma) * v
    return x0_hat * (1 - sigma_next) + eps_hat * math.sqrt(sigma_next**2 - std**2), std


@pytest.mark.parametrize(
    "sigma, sigma_next, eta", [(1.0, 0.98, 0.8), (0.75, 0.6, 0.3), (0.3, 0.25, 0.95), (0.5, 0.2, 0.0)]
)
def test_cps_mean_std_match_float64_reference(sigma, sigma_next, eta):
    rng = np.random.default_rng(10)
    x, v = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    ref_mean, ref_std = _np_cps_mean_std(x, v, sigma, sigma_next, eta)
    g = noise_levels(torch.tensor([sigma, sigma_next, 0.0] if sigma_next > 0 else [sigma, 0.0]), "cps", eta=eta)[0]
    mean, std = sde_mean_std(torch.from_numpy(x), torch.from_numpy(v), sigma, sigma_next, g, kind="cps")
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-12, atol=1e-15)


def test_cps_keeps_the_marginal_coefficients_of_a_perfect_velocity():
    """With v = ε − x₀ and x = (1 − σ)x₀ + σε, the next state is (1 − σ')x₀ + (noise of variance σ'²): the flow's."""
    sigma, sigma_next, eta = 0.7, 0.5, 0.8
    x0, eps = torch.eye(2, dtype=torch.float64)  # two orthogonal directions read off the coefficients
    x, v = ((1 - sigma) * x0 + sigma * eps)[None], (eps - x0)[None]
    g = math.sin(eta * math.pi / 2)
    mean, std = sde_mean_std(x, v, sigma, sigma_next, g, kind="cps")
    assert mean[0, 0].item() == pytest.approx(1 - sigma_next, abs=1e-12)  # the clean part, as the flow's
    assert mean[0, 1].item() ** 2 + float(std) ** 2 == pytest.approx(sigma_next**2, abs=1e-12)  # the noise variance


def test_cps_log_prob_matches_torch_normal_and_moments_match_draws():
    gen = torch.Generator().manual_seed(11)
    x, v = torch.randn(4, 3, 8, generator=gen), torch.randn(4, 3, 8, generator=gen)
    sigma = torch.tensor([0.9, 0.7, 0.5, 0.3], dtype=torch.float64)
    g = torch.full((4,), math.sin(0.8 * math.pi / 2), dtype=torch.float64)
    x_next, log_prob = sde_step(x, v, sigma, sigma - 0.1, g, generator=gen, kind="cps")
    mean, std = sde_mean_std(x, v, sigma, sigma - 0.1, g, kind="cps")
    ref = Normal(mean.double(), std.double()).log_prob(x_next.double()).mean(dim=(1, 2))
    torch.testing.assert_close(log_prob.double(), ref, rtol=1e-5, atol=1e-5)
    n = 200_000
    xs, vs = torch.full((1, n), 0.3), torch.full((1, n), -0.5)
    draws, _ = sde_step(xs, vs, 0.6, 0.4, 0.9, generator=torch.Generator().manual_seed(12), kind="cps")
    mu, s = _np_cps_mean_std(0.3, -0.5, 0.6, 0.4, 2 * math.asin(0.9) / math.pi)
    assert abs(draws.double().mean().item() - mu) < 5 * s / n**0.5
    assert abs(draws.double().std().item() - s) < 5 * s / (2 * n) ** 0.5


@pytest.mark.parametrize("grid", GRIDS)
def test_cps_gradient_scale_is_the_log_prob_gradient(grid):
    """As for the Flow-GRPO step; the last step (σ_N = 0) has no noise, so its scale is ∞."""
    sig = _grid(grid)
    n = len(sig) - 2  # every step but the last
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    xi = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    g = noise_levels(sig, "cps")
    _, log_prob = sde_step(x, v, sig[:-2], sig[1:-1], g[:-1], noise=xi, kind="cps")
    (log_prob * 12).sum().backward()
    c = gradient_scale(sig, "cps")
    assert torch.isinf(c[-1]) and torch.isfinite(c[:-1]).all()
    torch.testing.assert_close(v.grad.abs(), xi.abs() * c[:-1].view(-1, 1, 1), rtol=1e-10, atol=0)
    s, s_next = sig[:-2].numpy(), sig[1:-1].numpy()
    std = s_next * math.sin(0.8 * math.pi / 2)
    ref = np.abs(-s * (1 - s_next) + (1 - s) * np.sqrt(s_next**2 - std**2)) / std  # algorithms.md's c
    np.testing.assert_allclose(c[:-1].numpy(), ref, rtol=1e-12)
