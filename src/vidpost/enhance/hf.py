"""The hf enhancer: any local transformers causal language model directory (e.g. Qwen2.5-1.5B-Instruct).

    backend: hf
    path: models/Qwen2.5-1.5B-Instruct

The folder is loaded offline and safely: local files only, safetensors weights only, and no code from the
folder is run (`trust_remote_code=False`), so an architecture transformers does not ship is an error. A
tokenizer with a chat template gets the conversation of `instruction.chat_messages` (system prompt, worked
examples, the prompt); one without gets the same instruction as a plain completion prompt, and the first
line of its continuation is the rewrite. The model runs on the GPU when there is one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from vidpost.enhance.base import Enhancer
from vidpost.enhance.config import EnhancerConfig
from vidpost.enhance.instruction import chat_messages, completion_prompt
from vidpost.errors import VidpostError


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def load_causal_lm(
    path: str | Path, dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a local transformers causal-LM folder: local files, safetensors and shipped
    architectures only (nothing is downloaded, unpickled or executed from the folder)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise VidpostError(f"{path}: not a transformers model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        raise VidpostError(f"{path}: cannot load the language model ({' '.join(str(exc).split())[:300]})") from exc
    return model, tokenizer


class HFEnhancer(Enhancer):
    def __init__(self, cfg: EnhancerConfig, name: str) -> None:
        super().__init__(cfg, name)
        assert cfg.path is not None  # EnhancerConfig requires a path for the hf backend
        self.model, self.tokenizer = load_causal_lm(cfg.path)
        self.model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = bool(self.tokenizer.chat_template)
        self._calls = 0

    def prompt_text(self, prompt: str) -> str:
        """The full text the model continues: the chat template applied, or the plain completion prompt."""
        if self.chat:
            return self.tokenizer.apply_chat_template(
                chat_messages(prompt, self.cfg.instruction), add_generation_prompt=True, tokenize=False
            )
        return completion_prompt(prompt, self.cfg.instruction)

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str | None]:
        g = self.cfg.generation
        sampling = (
            {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p}
            if g.temperature > 0
            else {"do_sample": False}
        )
        texts: list[str | None] = []
        for start in range(0, len(prompts), g.batch_size):
            chunk = [self.prompt_text(p) for p in prompts[start : start + g.batch_size]]
            # the chat template already holds the special tokens (BOS, role markers)
            inputs = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
            inputs = inputs.to(self.model.device)
            with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []):
                torch.manual_seed(g.seed + self._calls)  # reproducible, and the caller's RNG stays untouched
                self._calls += 1
                out = self.model.generate(
                    **inputs, max_new_tokens=g.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
                )
            new = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            texts += new if self.chat else [_first_line(t) for t in new]
        return texts
