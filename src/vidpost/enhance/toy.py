"""The toy enhancer: a tiny causal language model that rewrites terse ShapeWorld prompts into canonical captions.

    <s> red ball going right fast <sep> a large red circle moving right quickly on a black background </s>

The model is a stock transformers `Qwen2ForCausalLM` (a few hundred thousand parameters), and the tokenizer a
word-level `PreTrainedTokenizerFast` over the ShapeWorld vocabulary (models/text.py), built offline; both save
in Hugging Face layout (config.json, model.safetensors, tokenizer.json) next to a card, `enhancer.json`, that
marks the folder as a toy enhancer. Any word outside the vocabulary is `<unk>`, and control tokens typed
into a prompt ("</s>", "<sep>") are split into unknown words too, so an instruction hidden in a prompt reaches
the model as unknown words and cannot steer it off the caption grammar.

`ToyFormat` lays prompts and rewrites out as token ids for the shared decoding and log-probabilities of
`enhance/lm.py`; `sample` decodes a batch (greedy or sampled) and returns each generated token's log-probability,
which GRPO needs; `completion_logprobs` recomputes them with gradients (teacher forcing), which is also the SFT loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vidpost.atomic import atomic_path
from vidpost.enhance.base import Enhancer
from vidpost.enhance.config import EnhancerConfig
from vidpost.enhance.intent import normalised_prompt
from vidpost.enhance.lm import Rollout, sample_rollout
from vidpost.errors import VidpostError
from vidpost.models.text import EOS, PAD, UNK, shapeworld_vocabulary

BOS, SEP = "<s>", "<sep>"
CARD_NAME = "enhancer.json"


def toy_vocabulary() -> list[str]:
    """`<pad>` 0, `</s>` 1, `<unk>` 2, `<s>` 3, `<sep>` 4, then the ShapeWorld words and punctuation."""
    words = shapeworld_vocabulary()
    assert words[:3] == [PAD, EOS, UNK]
    return [PAD, EOS, UNK, BOS, SEP, *words[3:]]


def build_toy_tokenizer(model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """Word-level, lower-cased, punctuation split off; adds no special tokens by itself (see `prompt_ids`)."""
    vocab = {token: i for i, token in enumerate(toy_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=BOS,
        sep_token=SEP,
        model_max_length=model_max_length,
        padding_side="left",
    )


def build_toy_model(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_positions: int = 256,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised tiny Qwen2 (tied embeddings, no dropout), seeded, in eval mode."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def save_toy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, directory: str | Path, card: dict) -> Path:
    """Hugging Face layout (safetensors) plus the `enhancer.json` card ({"backend": "toy", **card})."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    with atomic_path(directory / CARD_NAME) as tmp:
        tmp.write_text(json.dumps({"backend": "toy", **card}, indent=1) + "\n")
    return directory


def load_toy(directory: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The model (eval mode) and tokenizer of a toy enhancer folder; nothing is downloaded or executed."""
    directory = Path(directory)
    if not (directory / CARD_NAME).is_file():
        raise VidpostError(f"{directory}: not a toy enhancer (no {CARD_NAME})")
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    return model.eval(), tokenizer


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """The words of `text`; control tokens typed as text ("</s>", "<sep>") are split into unknown words."""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def prompt_ids(tokenizer: PreTrainedTokenizerFast, text: str, max_tokens: int) -> list[int]:
    """`<s> words <sep>`, the words cut to fit max_tokens in all."""
    return [tokenizer.bos_token_id, *encode(tokenizer, text)[: max_tokens - 2], tokenizer.sep_token_id]


def target_ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """`words </s>`: what the model is trained to write after `<sep>`."""
    return [*encode(tokenizer, text), tokenizer.eos_token_id]


def decode(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> str:
    """Words joined by single spaces; special tokens (`</s>`, `<pad>`) dropped."""
    return tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class ToyFormat:
    """`<s> words <sep>` -> `words </s>` (a `TextFormat`), the prompt's words cut to fit max_prompt_tokens in all."""

    tokenizer: PreTrainedTokenizerFast
    max_prompt_tokens: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.tokenizer.eos_token_id,)

    def prompt(self, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, text, self.max_prompt_tokens)

    def target(self, text: str) -> list[int]:
        return target_ids(self.tokenizer, text)

    def decode(self, ids) -> str:
        return decode(self.tokenizer, list(ids))


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Decode a completion per prompt (`lm.decode_ids`), each prompt cut to leave room for max_new_tokens."""
    max_prompt = model.config.max_position_embeddings - max_new_tokens
    if max_prompt < 3:
        raise VidpostError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in "
            f"{model.config.max_position_embeddings} positions"
        )
    return sample_rollout(
        model, ToyFormat(tokenizer, max_prompt), prompts, max_new_tokens, temperature, top_p, generator
    )


class ToyEnhancer(Enhancer):
    """A toy enhancer folder (`save_toy`) behind the `Enhancer` interface."""

    def __init__(self, cfg: EnhancerConfig, name: str) -> None:
        super().__init__(cfg, name)
        assert cfg.path is not None  # EnhancerConfig requires a path for the toy backend
        self.model, self.tokenizer = load_toy(cfg.path)
        self.generator = torch.Generator().manual_seed(cfg.generation.seed)

    def generate(self, prompts: list[str]) -> list[str | None]:
        g = self.cfg.generation
        texts: list[str | None] = []
        if self.cfg.checks_intent:  # synonyms it never saw in training, written in the words it knows
            prompts = [normalised_prompt(p) for p in prompts]
        for start in range(0, len(prompts), g.batch_size):
            chunk = prompts[start : start + g.batch_size]
            texts += sample(
                self.model, self.tokenizer, chunk, g.max_new_tokens, g.temperature, g.top_p, self.generator
            ).texts
        return texts
