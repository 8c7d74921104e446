"""A Hugging Face causal LM trained as the enhancer (`vidpost enhance train` with model.path): its chat template
lays out the prompt, LoRA through peft or all weights train, and the result is a plain model folder.

    model, tokenizer = load_causal_lm("models/Qwen2.5-1.5B-Instruct", "bfloat16")   # hf.py: offline, safetensors
    model = add_lora(model, rank=16, alpha=32, target_modules=[...], dropout=0.0)
    fmt = ChatFormat(tokenizer, instruction, max_prompt_tokens=256)
    fmt.prompt("red ball going left")      # system prompt + the user's turn + the assistant's header, as ids
    fmt.target("a large red circle ...")   # the rewrite's ids and the token that ends the assistant's turn
    save_chat_enhancer(model, tokenizer, fmt, "runs/enhance/sft", card)

The prompt is the same text the `hf` backend sends at apply time (`instruction.chat_messages`, the
tokenizer's chat template, tokenised without adding special tokens), and the saved card (`enhancer.json`,
backend hf) records the instruction, so `vidpost enhance apply --enhancer RUN` prompts the model exactly as it
was trained. The rewrite ends with the first token the template writes after an assistant's message
(`<|im_end|>` for ChatML); the saved generation config stops there, so stock `generate` stops too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vidpost.atomic import atomic_path
from vidpost.enhance.config import InstructionConfig
from vidpost.enhance.instruction import chat_messages
from vidpost.enhance.toy import CARD_NAME
from vidpost.errors import VidpostError

_SENTINEL = "\x00rewrite\x00"  # a message no template rewrites, to find where the assistant's text sits


class ChatFormat:
    """The `TextFormat` of a chat model: the conversation of `chat_messages` through the tokenizer's template."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, instruction: InstructionConfig, max_prompt_tokens: int
    ) -> None:
        if not tokenizer.chat_template:
            raise VidpostError(
                f"{tokenizer.name_or_path}: the tokenizer has no chat template; the enhancer is "
                "trained on the conversation the hf backend sends (add a chat template to it)"
            )
        self.tokenizer, self.instruction, self.max_prompt_tokens = tokenizer, instruction, max_prompt_tokens
        if tokenizer.pad_token_id is None:  # padding is masked out; any id serves
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id: int = tokenizer.pad_token_id
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([self._end_of_turn(), tokenizer.eos_token_id]))

    def _render(self, user: str, rewrite: str | None) -> str:
        messages = chat_messages(user, self.instruction)
        if rewrite is None:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": rewrite}], tokenize=False
        )

    def _end_of_turn(self) -> int:
        """The special token the template writes right after an assistant's message."""
        prompt, full = self._render("x", None), self._render("x", _SENTINEL)
        if not full.startswith(prompt) or _SENTINEL not in full:
            raise VidpostError(
                f"{self.tokenizer.name_or_path}: the chat template does not write an assistant's "
                "reply after the generation prompt; it cannot be trained as an enhancer"
            )
        after = self.tokenizer(full.split(_SENTINEL, 1)[1], add_special_tokens=False)["input_ids"]
        if not after or after[0] not in self.tokenizer.all_special_ids:
            raise VidpostError(
                f"{self.tokenizer.name_or_path}: the chat template ends an assistant's turn with no "
                "special token, so a rewrite would have no end"
            )
        return after[0]

    def prompt(self, text: str) -> list[int]:
        """The ids of the conversation up to the assistant's header; the user's text cut to max_prompt_tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_prompt_tokens:
            text = self.tokenizer.decode(ids[: self.max_prompt_tokens])
        return self.tokenizer(self._render(text, None), add_special_tokens=False)["input_ids"]

    def target(self, text: str) -> list[int]:
        return [*self.tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"], self.stop_ids[0]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def add_lora(
    model: PreTrainedModel, rank: int, alpha: float, target_modules: Sequence[str], dropout: float
) -> PeftModel:
    """LoRA adapters on the named Linear layers (peft); only they train, the model's weights stay frozen."""
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout, task_type="CAUSAL_LM"
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for a user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:  # peft names the modules it could not find
        raise VidpostError(
            f"model.lora.target_modules {list(target_modules)}: {' '.join(str(exc).split())[:300]}"
        ) from exc


def save_chat_enhancer(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: ChatFormat,
    directory: str | Path,
    card: dict,
    shapeworld: bool,
) -> Path:
    """A plain transformers folder (safetensors; LoRA merged into the weights, so the model is changed) with
    the card `enhancer.json` ({"backend": "hf", "enhancer": the settings `--enhancer` applies, **card}).

    `shapeworld`: the enhancer was trained to write canonical ShapeWorld captions, so its rewrites are
    checked as such in use.
    """
    directory = Path(directory)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.generation_config.eos_token_id = list(fmt.stop_ids)
    model.generation_config.pad_token_id = fmt.pad_id
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    settings = {"instruction": fmt.instruction.model_dump(), "check": {"shapeworld": shapeworld}}
    with atomic_path(directory / CARD_NAME) as tmp:
        tmp.write_text(json.dumps({"backend": "hf", "enhancer": settings, **card}, indent=1) + "\n")
    return directory
