"""What every trainable enhancer language model shares: how texts become token ids, batched decoding that records
each token's log-probability, and the teacher-forced log-probabilities that SFT and GRPO train on.

    fmt = ToyFormat(tokenizer, max_prompt_tokens=64)      # toy.py: `<s> words <sep>` -> `words </s>`
    fmt = ChatFormat(tokenizer, instruction)              # chat.py: the model's chat template, a system prompt
    rollout = sample_rollout(model, fmt, ["red ball going left"], max_new_tokens=48, temperature=1.0)
    logp, mask = completion_logprobs(model, rollout.prompt_ids, rollout.completion_ids, fmt.pad_id)

A `TextFormat` is the only thing that differs between the toy enhancer's word-level tokenizer and a Hugging Face
chat model's byte-level BPE one; the recipe (`recipes/enhance.py`) trains either through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel

from vidpost.errors import VidpostError


class TextFormat(Protocol):
    """How an enhancer LM reads a prompt and writes a rewrite, as token ids."""

    @property
    def pad_id(self) -> int: ...

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """A rewrite ends with the first of these (included in its ids)."""

    def prompt(self, text: str) -> list[int]:
        """The ids the model continues from: everything before the rewrite's first token."""

    def target(self, text: str) -> list[int]:
        """The ids of `text` written as a rewrite, its stop token included: what SFT teaches."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids, special tokens dropped."""


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """Decoded completions of a batch of prompts, with what GRPO needs to score and re-weight them."""

    texts: list[str]  # decoded, special tokens dropped
    prompt_ids: list[list[int]]  # the format's prompt ids
    completion_ids: list[list[int]]  # generated tokens, the stop token included when it was generated
    logprobs: list[torch.Tensor]  # (len(completion_ids[i]),) log-probability each token was drawn with


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p, renormalised. probs: (B, V)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the mass before this token already reached top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def _draw(probs: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """One token per row of probs (B, V): from one generator for the batch, or from row i's own generator (so a
    row's draws do not depend on which other rows share its batch, e.g. on another rank)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)
    cpu = probs.cpu()
    return torch.cat([torch.multinomial(cpu[i], 1, generator=g) for i, g in enumerate(generator)])


@torch.no_grad()
def decode_ids(
    model: PreTrainedModel,
    rows: list[list[int]],
    stop_ids: Sequence[int],
    pad: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Decode a completion per prompt row, batched with left padding and a KV cache; (ids, log-probs) per row.

    temperature 0 is greedy and records log softmax(logits); otherwise tokens are drawn from
    softmax(logits / temperature), cut to top_p, and the recorded log-probability is that of this
    distribution (with top_p = 1 it equals `completion_logprobs(..., temperature)`). `generator`: one for the
    batch, or one per row. A row ends at its first stop token (kept).
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, pad)
    ids, mask = ids.to(device), mask.to(device)
    pos = positions(mask)
    batch, stops = len(rows), torch.tensor(list(stop_ids), device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, logits = out.cache, out.logits[:, -1].float()  # (B, V)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        if temperature == 0:
            logp = torch.log_softmax(logits, -1)
            token = logits.argmax(-1)
        else:
            probs = top_p_filter(torch.softmax(logits / temperature, -1), top_p)
            token = _draw(probs, generator).to(device)
            logp = probs.log()
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens.append(token)
        logps.append(logp.gather(1, token[:, None]).squeeze(1))
        done |= torch.isin(token, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
    generated, logprobs = torch.stack(tokens, 1).cpu(), torch.stack(logps, 1).cpu()  # (B, steps)
    completions, completion_logps = [], []
    stop_set = set(stop_ids)
    for i in range(batch):
        row = generated[i].tolist()
        length = next((k + 1 for k, t in enumerate(row) if t in stop_set), len(row))
        completions.append(row[:length])
        completion_logps.append(logprobs[i, :length])
    return completions, completion_logps


def sample_rollout(
    model: PreTrainedModel,
    fmt: TextFormat,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Rollout:
    """`decode_ids` of the prompts as `fmt` lays them out, decoded back to text."""
    rows = [fmt.prompt(p) for p in prompts]
    room = model.config.max_position_embeddings - max_new_tokens
    if max(len(r) for r in rows) > room:
        raise VidpostError(
            f"a prompt of {max(len(r) for r in rows)} tokens and max_new_tokens {max_new_tokens} "
            f"exceed the model's {model.config.max_position_embeddings} positions"
        )
    completions, logps = decode_ids(
        model, rows, fmt.stop_ids, fmt.pad_id, max_new_tokens, temperature, top_p, generator
    )
    return Rollout([fmt.decode(c) for c in completions], rows, completions, logps)


def completion_logprobs(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log π(completion token | prompt, earlier tokens), with gradients.

    Each row is laid out as [pad... prompt | completion ...pad], so every completion starts in the same
    column. Returns (log-probs (B, Lc), mask (B, Lc)) with mask 1 on real completion tokens.
    """
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(len(c) for c in completions)
    c_ids = torch.tensor([c + [pad_id] * (width - len(c)) for c in completions])
    c_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
    ids, mask = torch.cat([p_ids, c_ids], 1).to(device), torch.cat([p_mask, c_mask], 1).to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    start = p_ids.shape[1]
    logits = (
        logits[:, start - 1 : start - 1 + width].float() / temperature
    )  # (B, Lc, V): predicts each completion token
    logp = torch.log_softmax(logits, -1).gather(2, c_ids.to(device)[..., None]).squeeze(2)
    c_mask = c_mask.to(device)
    return logp * c_mask, c_mask


def pairs_nll(model: PreTrainedModel, fmt: TextFormat, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood of each rewrite's target ids after its prompt's, target tokens): the SFT
    loss's numerator and denominator. Prompt tokens are context only; the loss sees the rewrite's tokens alone."""
    prompts = [fmt.prompt(prompt) for prompt, _ in pairs]
    targets = [fmt.target(rewrite) for _, rewrite in pairs]
    logp, mask = completion_logprobs(model, prompts, targets, fmt.pad_id)
    return -logp.sum(), int(mask.sum())
