"""Where a model comes from: a shipped name, a model directory, or a run directory, and what it recommends.

    resolve_model("shapeworld-base")      # assets/shapeworld-base (shipped in the repository)
    resolve_model("runs/sft")             # a run directory: its final model (runs/sft/model or runs/sft/lora)
    resolve_model("models/Wan2.1-T2V-1.3B-Diffusers")   # any diffusers-layout directory

A model directory written by vidpost carries a model card, `vidpost.json`: its codec, the video geometry it
was trained on and its recommended sampling settings, so `vidpost sample --model DIR` needs no flags.
Stock diffusers ignores the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vidpost.atomic import atomic_path
from vidpost.errors import VidpostError

CARD_NAME = "vidpost.json"
MODEL_DIR, LORA_DIR = "model", "lora"
SHIPPED_MODELS = ("shapeworld-base", "shapeworld-sft")


def assets_dir() -> Path:
    """The repository's assets/ (override with VIDPOST_ASSETS, e.g. for an installed, non-editable copy)."""
    return Path(os.environ.get("VIDPOST_ASSETS", Path(__file__).resolve().parents[3] / "assets"))


@dataclass
class ResolvedModel:
    """A diffusers-layout directory, optional LoRA adapters to load on it, and the model card."""

    path: Path
    lora: Path | None = None
    card: dict = field(default_factory=dict)


def read_card(directory: Path) -> dict:
    path = directory / CARD_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VidpostError(f"{path}: invalid JSON ({exc})") from exc


def write_card(directory: str | Path, card: dict) -> None:
    with atomic_path(Path(directory) / CARD_NAME) as tmp:
        tmp.write_text(json.dumps(card, indent=1) + "\n")


def resolve_model(name_or_path: str | Path) -> ResolvedModel:
    """Resolve a shipped name, model directory or run directory; a clear error for anything else."""
    text = str(name_or_path)
    path = Path(text)
    if text in SHIPPED_MODELS and not path.exists():
        path = assets_dir() / text
        if not path.is_dir():
            raise VidpostError(f"shipped model {text!r} not found at {path} (set VIDPOST_ASSETS to the assets folder)")
    if not path.is_dir():
        names = ", ".join(SHIPPED_MODELS)
        raise VidpostError(f"model not found: {text} (expected a model directory, a run directory, or one of: {names})")
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, card=read_card(path))
    if (path / MODEL_DIR / "model_index.json").is_file():
        return ResolvedModel(path / MODEL_DIR, card=read_card(path / MODEL_DIR))
    if (path / LORA_DIR).is_dir():
        card = read_card(path / LORA_DIR)
        if "base" not in card:
            raise VidpostError(f"{path / LORA_DIR}: its {CARD_NAME} names no base model")
        base = resolve_model(card["base"])
        if base.lora is not None:
            raise VidpostError(f"{path}: LoRA on a LoRA base ({card['base']}) is not supported; merge the base first")
        return ResolvedModel(base.path, lora=path / LORA_DIR, card={**base.card, **card})
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        raise VidpostError(f"{path}: this run has no final model yet; finish it (rerun its command to resume)")
    raise VidpostError(f"{path}: not a model directory (no model_index.json) nor a run directory (no model/ or lora/)")
