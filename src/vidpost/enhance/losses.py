"""The enhancer's training losses: teacher-forced NLL of the toy's pairs (SFT) and GRPO's per-token PPO-clip
loss with a k3 KL to the reference, averaged per rewrite."""

from __future__ import annotations

import torch

from vidpost.enhance.lm import pairs_nll
from vidpost.enhance.toy import ToyFormat
from vidpost.rl.losses import policy_loss


def sft_loss(model, tokenizer, pairs: list[tuple[str, str]], max_prompt_tokens: int) -> tuple[torch.Tensor, int]:
    """The toy's mean negative log-likelihood per target token of `canonical </s>` after `<s> terse <sep>`;
    (loss, tokens)."""
    nll, tokens = pairs_nll(model, ToyFormat(tokenizer, max_prompt_tokens), pairs)
    return nll / tokens, tokens


def enhancer_grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    ref_logprobs: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss on a batch of B rewrites of up to L tokens, and what the logs report about it.

    Each token of rewrite i is one PPO-clip term (`rl.losses.policy_loss`, elementwise) with the rewrite's
    advantage A_i, plus kl_beta·KL to the reference. The terms are averaged over the real tokens of each
    rewrite, then over rewrites (GRPO's per-sequence token mean): every rewrite has the same say whatever its
    length. The KL is the k3 estimate on the drawn tokens, exp(r − l) − (r − l) − 1 with l, r the policy's and
    the reference's log-probabilities: >= 0, unbiased for KL(π ‖ π_ref) on tokens drawn from π, and needs no
    full logits. logprobs (B, L) carry the gradient; old_logprobs, ref_logprobs (B, L); mask (B, L) is 1 on
    real tokens; advantages (B,). Metrics (means over real tokens): clip_frac, approx_kl (to the old policy)
    and, with a reference, kl.
    """
    real = mask.bool()
    kl = None
    if ref_logprobs is not None:
        delta = (ref_logprobs.to(logprobs.dtype) - logprobs).masked_fill(~real, 0.0)
        kl = torch.exp(delta) - delta - 1
    terms = policy_loss(
        logprobs,
        old_logprobs.masked_fill(~real, 0.0),
        advantages[:, None].expand_as(logprobs),
        clip_range,
        kl=kl,
        kl_beta=kl_beta,
    )
    lengths = real.sum(1)
    loss = (terms.loss.masked_fill(~real, 0.0).sum(1) / lengths).mean()

    def token_mean(values: torch.Tensor) -> float:
        return float(values.double()[real].mean())

    metrics = {"clip_frac": token_mean(terms.clipped), "approx_kl": token_mean(terms.approx_kl)}
    if terms.kl is not None:
        metrics["kl"] = token_mean(terms.kl)
    return loss, metrics
