"""PPO-clip loss by hand, and the rectification weights against an independent float64 autograd computation."""

import math

import numpy as np
import pytest
import torch

from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.diffusion.sde import gradient_scale, noise_levels, sde_mean_std
from vidpost.rl.losses import policy_loss, rectification_weights


def test_policy_loss_by_hand():
    lp = torch.tensor([0.0, 0.01, -0.01, 0.002], requires_grad=True)
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    out = policy_loss(lp, old, adv, clip_range=0.005, weights=torch.tensor([1.0, 2.0, 1.0, 0.5]))
    r = [1.0, math.exp(0.01), math.exp(-0.01), math.exp(0.002)]
    want = [
        -1.0,  # ratio 1
        max(-r[1], -1.005) * 2.0,  # A > 0, ratio above 1 + eps: clipped branch taken (the larger loss)
        max(r[2], 0.995),  # A < 0, ratio below 1 - eps: clipped
        max(2 * r[3], 2 * r[3]) * 0.5,  # inside the range
    ]
    np.testing.assert_allclose(out.loss.detach().numpy(), want, rtol=1e-6)
    assert out.clipped.tolist() == [False, True, True, False]
    out.loss.sum().backward()
    assert lp.grad[1] == 0 and lp.grad[2] == 0  # clipped terms carry no gradient
    assert lp.grad[0].item() == pytest.approx(-1.0)
    assert (out.approx_kl >= 0).all()


def test_kl_term_needs_the_kl():
    with pytest.raises(ValueError, match="needs the KL"):
        policy_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), 1e-3, kl_beta=0.1)


def _autograd_scale(sigma, sigma_next, g):
    """|∂ log N(x_next; μ(v), s²)/∂v| / |ξ| for one scalar dimension, float64, via torch.distributions."""
    x = torch.tensor([[0.3]], dtype=torch.float64)
    v = torch.tensor([[-0.7]], dtype=torch.float64, requires_grad=True)
    xi = 1.3
    mean, std = sde_mean_std(x, v, sigma, sigma_next, g)
    x_next = (mean + std * xi).detach()
    log_p = torch.distributions.Normal(mean, std).log_prob(x_next).sum()
    (grad,) = torch.autograd.grad(log_p, v)
    return abs(grad.item()) / xi


@pytest.mark.parametrize("schedule", ["flow_grpo", "flash", "dance"])
@pytest.mark.parametrize(
    "steps,shift,scheduler", [(20, 3.0, "flow_match_euler"), (10, 5.0, "unipc"), (16, 1.0, "flow_match_euler")]
)
def test_gradient_scale_and_rectification_weights_match_autograd(schedule, steps, shift, scheduler):
    sigmas = sampling_sigmas(steps, shift, scheduler)
    g = noise_levels(sigmas, schedule)
    expected_c = np.array([_autograd_scale(sigmas[i].item(), sigmas[i + 1].item(), g[i].item()) for i in range(steps)])
    c = gradient_scale(sigmas, schedule)
    np.testing.assert_allclose(c.numpy(), expected_c, rtol=1e-9)
    assert expected_c.max() / expected_c.min() > 2  # the scale really varies over the steps: weights matter
    steps_drawn = torch.tensor([0, 3, 3, steps - 1, 1])
    w = rectification_weights(c[steps_drawn])
    inv = 1 / expected_c[steps_drawn.numpy()]
    np.testing.assert_allclose(w.numpy(), inv / inv.mean(), rtol=1e-9)
    assert w.mean().item() == pytest.approx(1.0)
