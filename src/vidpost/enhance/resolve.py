"""From what a user types (`--enhancer NAME_OR_DIR`) to a ready enhancer.

    load_enhancer("shapeworld-enhancer")              # assets/shapeworld-enhancer, the shipped toy enhancer
    load_enhancer("runs/enhance")                     # a `vidpost enhance train` run: its last finished stage
    load_enhancer("models/Qwen2.5-1.5B-Instruct")     # any local causal LM directory: the hf backend
    load_enhancer("configs/enhancers/vllm.yaml")      # an EnhancerConfig file (e.g. the openai backend)
    load_enhancer("http://127.0.0.1:8000/v1")         # an OpenAI-compatible endpoint, its first listed model

`overrides` (key=value) adjust the resulting config: `generation.temperature=0.7`, `check.max_words=120`.
A folder with an `enhancer.json` card is an enhancer trained by `vidpost enhance train`: the card names its
backend (toy, or hf for a Hugging Face LM) and the instruction it was trained with; any other folder with a
`config.json` is loaded by the hf backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vidpost.config import load_config
from vidpost.enhance.base import Enhancer
from vidpost.enhance.client import OpenAIEnhancer
from vidpost.enhance.config import EnhancerConfig
from vidpost.enhance.hf import HFEnhancer
from vidpost.enhance.toy import CARD_NAME, ToyEnhancer
from vidpost.errors import VidpostError
from vidpost.models.resolve import assets_dir

ENHANCERS: dict[str, type[Enhancer]] = {"toy": ToyEnhancer, "hf": HFEnhancer, "openai": OpenAIEnhancer}
SHIPPED_ENHANCERS = ("shapeworld-enhancer",)
RUN_STAGES = ("grpo", "sft")  # a training run's enhancer is its latest finished stage, in this order


def enhancer_dir(ref: str) -> Path:
    """The model folder of a shipped name, a toy or hf model folder, or a training run."""
    path = Path(ref)
    if ref in SHIPPED_ENHANCERS and not path.exists():
        path = assets_dir() / ref
        if not path.is_dir():
            raise VidpostError(
                f"shipped enhancer {ref!r} not found at {path} (set VIDPOST_ASSETS to the assets "
                "folder, or train one: vidpost enhance train configs/shapeworld/enhance.yaml --out DIR)"
            )
    if not path.is_dir():
        raise VidpostError(
            f"enhancer not found: {ref} (expected {', '.join(SHIPPED_ENHANCERS)}, a model or run directory, "
            "an enhancer YAML config, or an http(s):// endpoint)"
        )
    for stage in RUN_STAGES:
        if (path / stage / CARD_NAME).is_file():
            return path / stage
    if (path / CARD_NAME).is_file() or (path / "config.json").is_file():
        return path
    if (path / "config.yaml").is_file():
        raise VidpostError(f"{path}: this run has no finished enhancer yet; finish it (rerun its command to resume)")
    raise VidpostError(f"{path}: not an enhancer (no {CARD_NAME}), a language model (no config.json) nor a run")


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def enhancer_config(ref: str, overrides: Sequence[str] = ()) -> EnhancerConfig:
    """The config `ref` stands for, with `overrides` applied."""
    if ref.endswith((".yaml", ".yml")):
        return load_config(EnhancerConfig, ref, overrides)
    if ref.startswith(("http://", "https://")):
        base: dict[str, Any] = {"backend": "openai", "openai.base_url": ref}
        if not ref.startswith("https://") and urlsplit(ref).hostname not in LOOPBACK:
            base["openai.send_api_key"] = False  # not in clear text to a host only a command line named
    else:
        path = enhancer_dir(ref)
        card: dict[str, Any] = (
            json.loads((path / CARD_NAME).read_text()) if (path / CARD_NAME).is_file() else {"backend": "hf"}
        )
        # an enhancer trained here is applied with the instruction and checks it was trained with
        base = {"backend": card.get("backend", "toy"), "path": str(path), **_dotted(card.get("enhancer", {}))}
    # JSON strings are YAML scalars, so a path or URL is never re-read as a number or a mapping
    return load_config(EnhancerConfig, None, [*(f"{k}={json.dumps(v)}" for k, v in base.items()), *overrides])


def _dotted(settings: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a card's settings as overrides."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_enhancer(cfg: EnhancerConfig, name: str) -> Enhancer:
    return ENHANCERS[cfg.backend](cfg, name)


def load_enhancer(ref: str, overrides: Sequence[str] = ()) -> Enhancer:
    """A ready enhancer for a shipped name, a directory, a YAML config or an endpoint URL."""
    return build_enhancer(enhancer_config(ref, overrides), ref)
