"""The enhancer's losses: SFT's NLL per target token, GRPO's PPO-clip and k3 KL on hand-worked examples."""

import math

import pytest
import torch

from vidpost.enhance.losses import enhancer_grpo_loss, sft_loss
from vidpost.enhance.toy import build_toy_model, build_toy_tokenizer


def test_sft_loss_is_the_mean_nll_per_target_token():
    tokenizer = build_toy_tokenizer()
    model = build_toy_model(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    pairs = [("red ball", "a red circle"), ("a green box dropping fast", "a small green square moving down quickly")]
    loss, tokens = sft_loss(model, tokenizer, pairs, 64)
    assert tokens == 4 + 8  # the words and </s> of each target
    singles = [sft_loss(model, tokenizer, [p], 64) for p in pairs]
    expected = sum(value * n for value, n in singles) / sum(n for _, n in singles)
    torch.testing.assert_close(loss, expected)


def test_the_loss_on_a_hand_worked_example():
    # rewrite 0: 2 tokens, A = +1; its second token has ratio e^0.2 = 1.2214 > 1 + 0.2, so it is clipped
    # rewrite 1: 3 tokens, A = -0.5; ratios e^0.1 = 1.1052, 1, 1 (inside the clip range)
    logprobs = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -0.7, 0.0], [-2.1, -0.1, -0.3]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -0.5], dtype=torch.float64)
    loss, metrics = enhancer_grpo_loss(logprobs, old, mask, advantages, clip_range=0.2)
    # token terms max(-A·ρ, -A·clip(ρ, 0.8, 1.2)): rewrite 0: -1, max(-1.2214, -1.2) = -1.2; mean -1.1
    # rewrite 1: 0.5 · 1.1052 = 0.55259, 0.5, 0.5; mean 1.55259 / 3 = 0.51753; over rewrites: (-1.1 + 0.51753) / 2
    rewrite_0 = (-1.0 + -1.2) / 2
    rewrite_1 = (0.5 * math.exp(0.1) + 0.5 + 0.5) / 3
    assert loss.item() == pytest.approx((rewrite_0 + rewrite_1) / 2, abs=1e-12)
    assert metrics["clip_frac"] == pytest.approx(1 / 5)
    loss.backward()
    # d loss / d log π = -A·ρ / (tokens of the rewrite · rewrites), and 0 for the clipped token and for padding:
    # descending it raises the log-probs of the positive-advantage rewrite and lowers the negative one's
    expected = torch.tensor(
        [[-1.0 / (2 * 2), 0.0, 0.0], [0.5 * math.exp(0.1) / (3 * 2), 0.5 / (3 * 2), 0.5 / (3 * 2)]], dtype=torch.float64
    )
    torch.testing.assert_close(logprobs.grad, expected)


def test_the_kl_term_is_the_k3_estimate_per_token():
    logprobs = torch.tensor([[-0.5, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    mask, zero = torch.tensor([[1, 1]]), torch.zeros(1, dtype=torch.float64)
    loss, metrics = enhancer_grpo_loss(logprobs, logprobs, mask, zero, 0.2, ref_logprobs=ref, kl_beta=0.1)
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(r − l) − (r − l) − 1 with r − l = −0.5; the second token: 0
    assert metrics["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.1 * k3 / 2)  # A = 0: only β·KL, averaged over the 2 tokens
