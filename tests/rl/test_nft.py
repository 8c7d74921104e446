"""DiffusionNFT's loss against an independent float64 implementation written from algorithms.md, and the
behaviour it exists for: a better-than-average sample pulls the velocity towards its clean sample, a worse
one pushes it away, and a tie (r = 1/2) pulls both ways equally."""

import numpy as np
import pytest
import torch

from vidpost.rl.nft import Renoised, nft_loss, optimality, renoise, velocity_kl


def _reference(v, v_old, x, x0, sigma, adv, beta, adv_max):
    """L = A_max·mean[r‖x_σ − σv⁺ − x₀‖²/w⁺ + (1 − r)‖x_σ − σv⁻ − x₀‖²/w⁻]/β per sample, float64 numpy."""
    out = []
    for j in range(v.shape[0]):
        a = min(max(adv[j], -adv_max), adv_max)
        r = min(max(a / (2 * adv_max) + 0.5, 0.0), 1.0)
        v_pos = beta * v[j] + (1 - beta) * v_old[j]
        v_neg = (1 + beta) * v_old[j] - beta * v[j]
        terms = []
        for vel in (v_pos, v_neg):
            err = x[j] - sigma[j] * vel - x0[j]
            w = max(np.abs(err).mean(), 1e-5)
            terms.append((err**2).mean() / w)
        out.append(adv_max * (r * terms[0] + (1 - r) * terms[1]) / beta)
    return np.array(out)


def _points(rng, m=5, shape=(3, 2, 4, 4)):
    x0 = rng.standard_normal((m, *shape))
    sigma = rng.uniform(0.05, 0.95, m)
    eps = rng.standard_normal((m, *shape))
    x = (1 - sigma.reshape(-1, 1, 1, 1, 1)) * x0 + sigma.reshape(-1, 1, 1, 1, 1) * eps
    return (
        Renoised(
            x=torch.from_numpy(x).float(),
            x0=torch.from_numpy(x0).float(),
            sample=torch.arange(m),
            step=torch.zeros(m, dtype=torch.long),
            sigma=torch.from_numpy(sigma),
        ),
        eps,
        x0,
    )


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_loss_matches_float64_reference(beta):
    rng = np.random.default_rng(0)
    points, _, _ = _points(rng)
    v = rng.standard_normal(points.x.shape)
    v_old = v + 0.1 * rng.standard_normal(points.x.shape)
    adv = np.array([-7.0, -1.0, 0.0, 2.5, 6.0])  # beyond ±A_max too: clipped
    terms = nft_loss(
        torch.from_numpy(v).float(), torch.from_numpy(v_old).float(), points, torch.from_numpy(adv), beta, adv_clip=5.0
    )
    ref = _reference(
        v, v_old, points.x.double().numpy(), points.x0.double().numpy(), points.sigma.numpy(), adv, beta, 5.0
    )
    np.testing.assert_allclose(terms.loss.double().numpy(), ref, rtol=2e-5)


def test_optimality_probability():
    adv = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 8.0], dtype=torch.float64)
    torch.testing.assert_close(optimality(adv, 5.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0], dtype=torch.float64))


def _gradient(adv: float, rng_seed: int = 1):
    rng = np.random.default_rng(rng_seed)
    points, eps, x0 = _points(rng, m=1)
    v_old = torch.from_numpy(eps - x0).float() + 0.3 * torch.randn(
        points.x.shape, generator=torch.Generator().manual_seed(2)
    )
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, points, torch.tensor([adv]), 1.0, 5.0).loss.sum().backward()
    return v.grad, v_old, torch.from_numpy(eps - x0).float()


def test_a_good_sample_pulls_the_velocity_to_its_clean_sample_and_a_bad_one_pushes_it_away():
    grad, v_old, v_true = _gradient(3.0)
    step = -grad  # gradient descent
    assert (v_old + 1e-3 * step - v_true).square().sum() < (v_old - v_true).square().sum()
    grad, v_old, v_true = _gradient(-3.0)
    assert (v_old - 1e-3 * grad - v_true).square().sum() > (v_old - v_true).square().sum()


def test_a_tie_at_the_old_policy_gives_no_gradient():
    grad, _, _ = _gradient(0.0)
    assert grad.abs().max() < 1e-6


def test_renoise_draws_each_row_from_its_own_stream():
    final = torch.randn(3, 2, 4, 4)
    train = torch.tensor([[True, False, True], [False, True, False], [True, True, False]])
    sigmas = torch.tensor([1.0, 0.7, 0.3, 0.0], dtype=torch.float64)
    generators = lambda: [torch.Generator().manual_seed(10 + j) for j in range(3)]  # noqa: E731
    points = renoise(final, train, sigmas, torch.tensor([4, 5, 6]), generators())
    assert points.sample.tolist() == [4, 4, 5, 6, 6] and points.step.tolist() == [0, 2, 1, 0, 1]
    first_row_alone = renoise(final[:1], train[:1], sigmas, torch.tensor([4]), generators()[:1])
    torch.testing.assert_close(points.x[:2], first_row_alone.x, rtol=0, atol=0)  # the batch does not change a row
    eps = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(11))  # row 1's first draw
    torch.testing.assert_close(points.x[2], 0.3 * final[1] + 0.7 * eps)
    torch.testing.assert_close(points.x0[2], final[1])


def test_velocity_kl_is_the_mean_squared_difference():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(velocity_kl(a, b), ((a - b) ** 2).mean(dim=(1, 2)))
