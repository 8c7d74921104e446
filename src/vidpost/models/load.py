"""A video model for inference from a shipped name, a model directory or a run directory.

model = load_model("shapeworld-sft")          # its card sets the codec and the text length
"""

from __future__ import annotations

from vidpost.models.config import ModelConfig
from vidpost.models.resolve import resolve_model
from vidpost.models.wan import WanVideoModel

WAN_MAX_SEQUENCE_LENGTH = 512


def load_model(ref: str, dtype: str = "float32") -> WanVideoModel:
    """A model for inference from a shipped name, model directory or run directory (its card sets the rest)."""
    resolved = resolve_model(ref)
    codec = resolved.card.get("codec", "vae" if (resolved.path / "vae").is_dir() else "pixel")
    length = resolved.card.get("max_sequence_length", WAN_MAX_SEQUENCE_LENGTH)
    return WanVideoModel.from_config(ModelConfig(path=ref, codec=codec, dtype=dtype, max_sequence_length=length))
