"""The language model `vidpost enhance train` trains: the toy enhancer, or a local Hugging Face causal LM.

    model:                      # the toy: a tiny Qwen2 with ShapeWorld's word-level tokenizer
      hidden_size: 64 ...
    model:                      # a Hugging Face LM: its tokenizer and chat template, LoRA or all weights
      path: models/Qwen2.5-1.5B-Instruct
      lora: {enabled: true, rank: 16, alpha: 32}
      dtype: bfloat16           # with the recipe's train.precision: auto, bf16 autocast

`model.path` chooses: null is the toy (its architecture keys, `init` to start from a toy enhancer), a folder
is that LM (`lora`, `dtype`, `gradient_checkpointing`, and the config's `instruction` and `train.precision`). A key
of the other kind is a one-line error. Either way the recipe sees an `EnhancerLM`: the model, and the
`TextFormat`s that turn prompts and rewrites into its token ids (enhance/lm.py).
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from vidpost import dist
from vidpost.config import Config
from vidpost.enhance.chat import ChatFormat, add_lora, save_chat_enhancer
from vidpost.enhance.config import InstructionConfig
from vidpost.enhance.hf import load_causal_lm
from vidpost.enhance.lm import TextFormat
from vidpost.enhance.resolve import enhancer_dir
from vidpost.enhance.toy import CARD_NAME, ToyFormat, build_toy_model, build_toy_tokenizer, load_toy, save_toy
from vidpost.errors import VidpostError
from vidpost.precision import autocast

LM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Qwen2/Llama names
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOY_KEYS = ("init", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions")
HF_KEYS = ("lora", "dtype", "gradient_checkpointing")


class LMLoraConfig(Config):
    enabled: bool = Field(False, description="train LoRA adapters (peft) instead of every weight of model.path")
    rank: int = Field(16, ge=1, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LM_LORA_TARGETS), description="Linear layers (name suffixes) that get adapters"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the LoRA branch input (0 keeps GRPO's ratios exact)"
    )


class EnhancerModelConfig(Config):
    path: str | None = Field(
        None,
        description="local Hugging Face causal-LM folder to train (safetensors, chat "
        "template); null: the toy enhancer the keys below describe",
    )
    init: str | None = Field(
        None,
        description="toy: start from this toy enhancer's weights (shipped name, folder or "
        "run) instead of a random one; the keys below must match its architecture",
    )
    hidden_size: int = Field(64, ge=8, description="toy: width of the tiny Qwen2")
    num_layers: int = Field(2, ge=1, description="toy: transformer blocks")
    num_heads: int = Field(4, ge=1, description="toy: attention heads (hidden_size must divide by it)")
    intermediate_size: int = Field(256, ge=8, description="toy: MLP width")
    max_positions: int = Field(256, ge=32, description="toy: longest prompt + rewrite, in tokens")
    seed: int = Field(
        0,
        description="seed of the random initialisation: the toy's (unused with init), or "
        "path's LoRA adapters (the same in a resumed run)",
    )
    lora: LMLoraConfig = Field(
        default_factory=LMLoraConfig, description="path: LoRA adapters, or (off) full fine-tuning"
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="path: dtype the weights load in (full fine-tuning needs float32)"
    )
    gradient_checkpointing: bool = Field(False, description="path: recompute activations in backward to save memory")

    def check(self, instruction: InstructionConfig) -> None:
        """Refuse keys of the other kind of model (ValueError: the config loader makes it a one-line error)."""
        default = EnhancerModelConfig()
        if self.path is None:
            hf = [f"model.{k}" for k in HF_KEYS if getattr(self, k) != getattr(default, k)]
            hf += ["instruction"] if instruction != InstructionConfig() else []
            if hf:
                raise ValueError(
                    f"{', '.join(hf)}: only for a Hugging Face LM (model.path); the toy enhancer takes none of them"
                )
            return
        toy = [f"model.{k}" for k in TOY_KEYS if getattr(self, k) != getattr(default, k)]
        if toy:
            raise ValueError(f"model.path trains that LM; {', '.join(toy)} describe the toy enhancer: remove them")
        if not self.lora.enabled and self.dtype != "float32":
            raise ValueError(
                f"model.dtype {self.dtype} with full fine-tuning: AdamW's updates fall below its "
                "resolution; load float32 (precision auto still computes in bf16) or enable model.lora"
            )


@dataclass
class EnhancerLM:
    """A model trained as the enhancer, and how texts become its token ids."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pairs_fmt: TextFormat  # SFT pairs
    rollout_fmt: TextFormat  # decoding (the toy cuts prompts to leave room for max_new_tokens)
    precision: str  # autocast of every forward

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        return autocast(self.precision, self.device) if self.precision != "float32" else nullcontext()


def lm_device() -> torch.device:
    """Where a Hugging Face LM trains: this rank's GPU under torchrun, the GPU in one process when there is one."""
    if dist.is_distributed():
        return dist.device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _toy(model, tokenizer, max_prompt_tokens: int, max_new_tokens: int) -> EnhancerLM:
    room = model.config.max_position_embeddings - max_new_tokens
    if room < 3:
        raise VidpostError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in "
            f"{model.config.max_position_embeddings} positions"
        )
    return EnhancerLM(model, tokenizer, ToyFormat(tokenizer, max_prompt_tokens), ToyFormat(tokenizer, room), "float32")


def _hf(
    m: EnhancerModelConfig,
    precision: str,
    path: str | Path,
    instruction: InstructionConfig,
    max_prompt_tokens: int,
    trainable: bool,
) -> EnhancerLM:
    model, tokenizer = load_causal_lm(path, DTYPES[m.dtype])
    model.to(lm_device())
    if not trainable:
        model.requires_grad_(False)
    elif m.lora.enabled:
        with torch.random.fork_rng(devices=[]):  # seeded: GRPO's fresh adapters are those of an uninterrupted run
            torch.manual_seed(m.seed)
            model = add_lora(model, m.lora.rank, m.lora.alpha, m.lora.target_modules, m.lora.dropout)
    if trainable and m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if m.lora.enabled:  # the frozen embeddings' outputs must carry gradients into the checkpointed blocks
            model.enable_input_require_grads()
    fmt = ChatFormat(tokenizer, instruction, max_prompt_tokens)
    return EnhancerLM(model, tokenizer, fmt, fmt, precision)


def initial_lm(
    m: EnhancerModelConfig,
    precision: str,
    instruction: InstructionConfig,
    max_prompt_tokens: int,
    max_new_tokens: int,
    init: Path | None,
) -> EnhancerLM:
    """What SFT starts from: model.path's LM, every forward under autocast `precision`; or the toy enhancer in
    `init` (model.init's folder, as `init_dir` checked it); or else a seeded random toy of model.*'s architecture."""
    if m.path is not None:
        return _hf(m, precision, m.path, instruction, max_prompt_tokens, trainable=True)
    if init is not None:
        return _toy(*load_toy(init), max_prompt_tokens, max_new_tokens)
    tokenizer = build_toy_tokenizer(m.max_positions)
    model = build_toy_model(
        len(tokenizer), m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, m.max_positions, m.seed
    )
    return _toy(model, tokenizer, max_prompt_tokens, max_new_tokens)


def stage_lm(
    m: EnhancerModelConfig,
    precision: str,
    directory: Path,
    instruction: InstructionConfig,
    max_prompt_tokens: int,
    max_new_tokens: int,
    trainable: bool,
) -> EnhancerLM:
    """A saved stage (sft/) loaded again: GRPO's policy (trainable; with LoRA, fresh adapters on it) or its frozen
    reference."""
    if m.path is not None:
        return _hf(m, precision, directory, instruction, max_prompt_tokens, trainable)
    lm = _toy(*load_toy(directory), max_prompt_tokens, max_new_tokens)
    if not trainable:
        lm.model.requires_grad_(False)
    return lm


@contextmanager
def reference_model(policy: EnhancerLM, reference: EnhancerLM | None):
    """The model GRPO's KL anchors to: `reference`, or (LoRA, no copy loaded) the policy with its adapters off."""
    if reference is not None:
        yield reference.model
        return
    with policy.model.disable_adapter():
        yield policy.model


def needs_reference_copy(m: EnhancerModelConfig) -> bool:
    """LoRA's reference is the policy with its adapters off; every other policy needs a frozen copy."""
    return m.path is None or not m.lora.enabled


def save_lm(lm: EnhancerLM, directory: Path, card: dict, shapeworld: bool) -> Path:
    """The enhancer folder: the toy's (`save_toy`), or a transformers folder with LoRA merged (`save_chat_enhancer`)."""
    lm.model.eval()
    if isinstance(lm.pairs_fmt, ChatFormat):
        return save_chat_enhancer(lm.model, lm.tokenizer, lm.pairs_fmt, directory, card, shapeworld)
    return save_toy(lm.model, lm.tokenizer, directory, card)


def init_dir(m: EnhancerModelConfig) -> Path:
    """model.init's enhancer folder, checked to be a toy enhancer with model.*'s architecture (weights not read)."""
    assert m.init is not None
    directory = enhancer_dir(m.init)
    if not (directory / CARD_NAME).is_file():
        raise VidpostError(f"model.init {m.init}: {directory} is not a toy enhancer (no {CARD_NAME})")
    if json.loads((directory / CARD_NAME).read_text()).get("backend", "toy") != "toy":
        raise VidpostError(
            f"model.init {m.init}: {directory} is a Hugging Face LM enhancer; start from it with "
            "model.path, not model.init"
        )
    c = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    found = {
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "max_positions": c.max_position_embeddings,
    }
    differ = [f"{key} {getattr(m, key)} (init: {value})" for key, value in found.items() if getattr(m, key) != value]
    if differ:
        raise VidpostError(f"model.init {m.init}: model.* must match its architecture; differs in " + ", ".join(differ))
    return directory
