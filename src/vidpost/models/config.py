"""Config of the video model: a local diffusers-layout checkpoint (`path`) or a tiny one built from `tiny`."""

from typing import Literal

from pydantic import Field, model_validator

from vidpost.config import Config

WAN_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class TinyModelConfig(Config):
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_attention_heads: int = Field(2, ge=1, description="attention heads per block")
    attention_head_dim: int = Field(
        8, ge=6, multiple_of=2, description="channels per head (even; RoPE splits it over t, h, w)"
    )
    ffn_dim: int = Field(32, ge=1, description="hidden width of each block's feed-forward layer")
    patch_size: tuple[int, int, int] = Field((1, 2, 2), description="(t, h, w) latent patch per token")
    freq_dim: int = Field(32, ge=2, multiple_of=2, description="sinusoidal timestep embedding width")
    text_dim: int = Field(32, ge=2, description="text encoder width (UMT5 d_model), also the transformer's text_dim")
    text_num_layers: int = Field(2, ge=1, description="UMT5 encoder layers")
    text_num_heads: int = Field(2, ge=1, description="UMT5 attention heads (text_dim must divide by it)")
    text_ffn_dim: int = Field(64, ge=1, description="UMT5 feed-forward width")
    seed: int = Field(0, description="seed of the random initialisation (the same seed gives the same weights)")
    identity_init: bool = Field(
        False,
        description="start the patch embedding and output projection as an identity path "
        "(pixel models with large patches)",
    )
    prediction: Literal["velocity", "preconditioned"] = Field(
        "velocity",
        description="transformer output: Wan's velocity, or EDM-preconditioned "
        "(skip + scaled output; WanVideoModel.velocity)",
    )
    sigma_data: float = Field(
        0.84, gt=0, description="data std for prediction: preconditioned (ShapeWorld pixels: 0.84)"
    )


class LoraSectionConfig(Config):
    enabled: bool = Field(False, description="train LoRA adapters on the transformer instead of all its weights")
    rank: int = Field(32, ge=1, description="LoRA rank r")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    target_modules: list[str] = Field(
        default_factory=lambda: list(WAN_LORA_TARGETS),
        description="transformer Linear layers (name suffixes) that get adapters",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch input")


class ModelConfig(Config):
    path: str | None = Field(
        None, description="local diffusers-layout model directory; null builds the tiny model described by `tiny`"
    )
    codec: Literal["pixel", "vae"] = Field(
        "pixel", description="pixel: denoise RGB frames directly (ShapeWorld); vae: Wan VAE latents"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights of the transformer and text encoder (the VAE stays float32)"
    )
    max_sequence_length: int = Field(
        64, ge=2, description="text tokens per prompt after padding/truncation (Wan2.1: 512)"
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig, description="architecture of the tiny model; only with path: null"
    )
    lora: LoraSectionConfig = Field(default_factory=LoraSectionConfig, description="LoRA adapters")
    gradient_checkpointing: bool = Field(
        False, description="recompute transformer block activations in backward to save memory"
    )

    @model_validator(mode="after")
    def _tiny_only_without_path(self) -> "ModelConfig":
        if self.path is not None and self.tiny != TinyModelConfig():
            raise ValueError(
                "tiny describes a model built from scratch and is unused with a path; remove it or set path: null"
            )
        if self.tiny.text_dim % self.tiny.text_num_heads:
            raise ValueError(
                f"tiny.text_dim {self.tiny.text_dim} must be divisible by "
                f"tiny.text_num_heads {self.tiny.text_num_heads}"
            )
        return self

    def require_float32_for_full_training(self) -> None:
        """Refuse training every weight in half precision: AdamW's updates round away below bf16 resolution."""
        if not self.lora.enabled and self.dtype != "float32":
            raise ValueError(
                f"model.dtype {self.dtype} with full fine-tuning: AdamW's updates fall below {self.dtype} resolution "
                "and most weights never change; load float32 weights (precision: auto still computes in bf16) "
                "or enable model.lora"
            )
