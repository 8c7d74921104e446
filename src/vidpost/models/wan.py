"""The diffusers Wan family (Wan2.1 T2V) behind vidpost's model interface.

A `WanVideoModel` holds the stock diffusers/transformers modules (`WanTransformer3DModel`,
`UMT5EncoderModel`, a tokenizer, a scheduler config) and a codec (`WanVAECodec` or `PixelCodec`), and only
runs them forward; schedulers and samplers live in `vidpost.diffusion`.

    model = WanVideoModel.from_pretrained("models/Wan2.1-T2V-1.3B-Diffusers", dtype=torch.bfloat16)
    model = WanVideoModel.build_tiny(codec="pixel")            # ShapeWorld / tests, built offline
    c = model.encode_prompts(["a red circle moving left"])     # (B, L, text_dim), as WanPipeline
    v = model.velocity(x, sigma, c)                            # x: (B, C, T, H, W), sigma: (B,) in [0, 1]

Conventions (checked against diffusers 0.42 in tests/models):
- Flow time sigma in [0, 1], x_sigma = (1 - sigma) x0 + sigma eps; the transformer predicts v = eps - x0,
  so an Euler step is x_next = x + (sigma_next - sigma) v (FlowMatchEulerDiscreteScheduler.step).
- The transformer gets timestep = sigma * num_train_timesteps as float32, which is what WanPipeline passes
  with FlowMatchEulerDiscreteScheduler (its timesteps are sigmas * 1000). Wan2.1's shipped
  UniPCMultistepScheduler rounds its timesteps to int64; `velocity` never rounds.
- A model may be *preconditioned* (`prediction="preconditioned"`, recorded in its model card), as EDM
  (Karras et al. 2022) preconditions a denoiser, written for x_σ = a x0 + σ ε with a = 1 − σ and data std
  σ_d: the transformer F sees x_σ / √D, D = a²σ_d² + σ², and x̂₀ = c_skip x_σ + c_out F with
  c_skip = aσ_d²/D, c_out = σσ_d/√D (the best linear estimate of x₀ and its error). `velocity` returns
  v = (x_σ − x̂₀)/σ = ((σ − aσ_d²)/D) x_σ − (σ_d/√D) F, finite at every σ, so samplers, losses and GRPO
  see a velocity either way. Why: a velocity carries the input's noise, which a small pixel-space
  transformer with large patches must route from input to output; the skip does that, F's target has unit
  variance at every σ, and its errors reach x̂₀ scaled by c_out (small at both ends). Stock WanPipeline
  reads the transformer's output as a velocity, so it samples such a model wrongly; vidpost's sampler does not.
  On ShapeWorld pixels (1,000 steps; docs/research/shapeworld-base-model.md) it drew x̂₀'s structure best but took
  out no noise below σ ≈ 0.4.
- Prompt embeddings are WanPipeline's: padded to max_sequence_length, encoded with the attention mask,
  and every position past a prompt's tokens set to exactly zero (the transformer attends to them).

Precision: `dtype` sets the transformer and text-encoder weights; diffusers keeps Wan's norms, time
embedding and modulation tables in float32, and the VAE stays float32. LoRA adapters are kept in float32
on any base (peft casts their input), so optimizer updates are not lost to bf16 rounding. Autocast is the
caller's choice: wrap `velocity` in `torch.autocast(device_type, torch.bfloat16)` to run float32 weights in
bf16. `velocity` always returns float32.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from vidpost.errors import VidpostError, first_line
from vidpost.models.codecs import PixelCodec, VideoCodec, WanVAECodec, build_tiny_vae
from vidpost.models.config import ModelConfig
from vidpost.models.resolve import read_card, resolve_model
from vidpost.models.text import build_shapeworld_tokenizer, build_tiny_text_encoder

LORA_ADAPTER = "default"
PREDICTIONS = ("velocity", "preconditioned")
_EXPECTED_CLASSES = {
    "transformer": "WanTransformer3DModel",
    "text_encoder": "UMT5EncoderModel",
    "vae": "AutoencoderKLWan",
}


class WanVideoModel:
    """Text encoder + Wan transformer + codec; see the module docstring for conventions."""

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        text_encoder: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        scheduler: SchedulerMixin,
        codec: VideoCodec,
        max_sequence_length: int = 512,
        prediction: str = "velocity",
        sigma_data: float = 1.0,
    ):
        config = transformer.config
        if prediction not in PREDICTIONS:
            raise VidpostError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        if not sigma_data > 0:
            raise VidpostError(f"sigma_data must be positive, got {sigma_data}")
        if config.in_channels != codec.channels or config.out_channels != codec.channels:
            raise VidpostError(
                f"the transformer maps {config.in_channels} -> {config.out_channels} channels but the "
                f"{type(codec).__name__} gives {codec.channels} (a Wan checkpoint needs codec 'vae', "
                "a pixel-space model codec 'pixel')"
            )
        if config.text_dim != text_encoder.config.d_model:
            raise VidpostError(
                f"the transformer takes text_dim {config.text_dim} but the text encoder gives "
                f"{text_encoder.config.d_model}"
            )
        self.transformer = transformer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.codec = codec
        self.max_sequence_length = max_sequence_length
        self.prediction = prediction  # what the transformer outputs; `velocity` always returns a velocity
        self.sigma_data = float(sigma_data)
        self.lora_config: LoraConfig | None = None
        # the model card (models/resolve.py): codec, trained video geometry, recommended sampling
        self.card: dict = {}

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        codec: str = "vae",
        max_sequence_length: int = 512,
    ) -> WanVideoModel:
        """Load a local diffusers-layout directory (model_index.json + one folder per component).

        Offline and safetensors-only; never runs remote code. `codec="pixel"` loads a pixel-space model
        saved by `save` (no vae/ folder needed). What the transformer predicts comes from the directory's
        model card (`vidpost.json`: "prediction", "sigma_data"); without one it is Wan's velocity.
        """
        root = Path(path)
        if not root.is_dir():
            raise VidpostError(f"model directory not found: {root}")
        if codec not in ("vae", "pixel"):
            raise VidpostError(f"unknown codec {codec!r}; expected 'vae' or 'pixel'")
        index = _read_model_index(root)
        components = ["transformer", "text_encoder", "tokenizer", "scheduler"] + (["vae"] if codec == "vae" else [])
        for name in components:
            if not (root / name).is_dir():
                raise VidpostError(f"{root}: missing component folder '{name}/'")
            if index.get(name, [None, None])[0] is None:
                raise VidpostError(f"{root}: model_index.json names no '{name}' component")
            expected = _EXPECTED_CLASSES.get(name)
            if expected is not None and index[name][1] != expected:
                raise VidpostError(f"{root}: {name} is a {index[name][1]}, expected {expected}")

        local = {"local_files_only": True, "use_safetensors": True}
        with _load_errors(root, "transformer"):
            transformer = WanTransformer3DModel.from_pretrained(
                root, subfolder="transformer", torch_dtype=dtype, **local
            )
        with _load_errors(root, "text_encoder"):
            text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype=dtype, **local)
        with _load_errors(root, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(
                root / "tokenizer", local_files_only=True, trust_remote_code=False
            )
        with _load_errors(root, "scheduler"):
            scheduler = _scheduler_class(root, index["scheduler"]).from_pretrained(root, subfolder="scheduler")
        video_codec: VideoCodec = PixelCodec()
        if codec == "vae":
            with _load_errors(root, "vae"):
                vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32, **local)
            video_codec = WanVAECodec(vae)
        card = read_card(root)
        return cls(
            transformer,
            text_encoder,
            tokenizer,
            scheduler,
            video_codec,
            max_sequence_length,
            card.get("prediction", "velocity"),
            card.get("sigma_data", 1.0),
        )

    @classmethod
    def build_tiny(
        cls,
        codec: str = "pixel",
        *,
        num_layers: int = 2,
        num_attention_heads: int = 2,
        attention_head_dim: int = 8,
        ffn_dim: int = 32,
        patch_size: Sequence[int] = (1, 2, 2),
        freq_dim: int = 32,
        text_dim: int = 32,
        text_num_layers: int = 2,
        text_num_heads: int = 2,
        text_ffn_dim: int = 64,
        seed: int = 0,
        identity_init: bool = False,
        prediction: str = "velocity",
        sigma_data: float = 1.0,
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 64,
    ) -> WanVideoModel:
        """The real Wan classes at toy size, randomly initialised from `seed`, with the ShapeWorld tokenizer.

        codec "pixel": transformer in/out channels 3; "vae": diffusers' tiny test VAE (z_dim 16). The global
        torch RNG is left untouched. identity_init: start with an identity path from input to output
        (init_identity_path). prediction, sigma_data: the transformer's output (module docstring).
        """
        if codec not in ("vae", "pixel"):
            raise VidpostError(f"unknown codec {codec!r}; expected 'vae' or 'pixel'")
        tokenizer = build_shapeworld_tokenizer(model_max_length=max_sequence_length)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder = build_tiny_text_encoder(
                len(tokenizer), text_dim, text_num_layers, text_num_heads, text_ffn_dim
            )
            video_codec: VideoCodec = WanVAECodec(build_tiny_vae()) if codec == "vae" else PixelCodec()
            transformer = WanTransformer3DModel(
                patch_size=tuple(patch_size),
                num_attention_heads=num_attention_heads,
                attention_head_dim=attention_head_dim,
                in_channels=video_codec.channels,
                out_channels=video_codec.channels,
                text_dim=text_dim,
                freq_dim=freq_dim,
                ffn_dim=ffn_dim,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
            )
            if identity_init:
                init_identity_path(transformer)
        cast_like_from_pretrained(transformer, dtype)
        text_encoder.to(dtype)
        return cls(
            transformer,
            text_encoder,
            tokenizer,
            FlowMatchEulerDiscreteScheduler(),
            video_codec,
            max_sequence_length,
            prediction,
            sigma_data,
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> WanVideoModel:
        """Build or load the model a `ModelConfig` describes, with its LoRA and checkpointing settings.

        `path` may be a shipped name, a model directory or a run directory (models/resolve.py); a run's
        LoRA is loaded and merged, so a new LoRA (or full fine-tuning) starts from it.
        """
        dtype = getattr(torch, cfg.dtype)
        if cfg.path is None:
            model = cls.build_tiny(
                cfg.codec, dtype=dtype, max_sequence_length=cfg.max_sequence_length, **cfg.tiny.model_dump()
            )
        else:
            resolved = resolve_model(cfg.path)
            card_codec = resolved.card.get("codec", cfg.codec)
            if card_codec != cfg.codec:
                raise VidpostError(f"model {cfg.path} uses codec {card_codec!r} but the config says {cfg.codec!r}")
            model = cls.from_pretrained(
                resolved.path, dtype=dtype, codec=cfg.codec, max_sequence_length=cfg.max_sequence_length
            )
            if resolved.lora is not None:
                model.load_lora(resolved.lora)
                model.merge_lora()
            model.card = resolved.card
        if cfg.lora.enabled:
            model.enable_lora(cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.dropout)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    # ------------------------------------------------------------------------------------------ forward

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def to(self, device: torch.device | str) -> WanVideoModel:
        self.transformer.to(device)
        self.text_encoder.to(device)
        self.codec.to(device)
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, text_dim) embeddings in the text encoder's dtype, equal to WanPipeline.encode_prompt's.

        L = max_sequence_length; positions past each prompt's tokens (including its </s>) are zero.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_prompts takes a list of prompts, not a single string")
        length = self.max_sequence_length
        inputs = self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        mask = inputs.attention_mask.to(device)
        seq_lens = mask.gt(0).sum(dim=1)  # (B,)
        hidden = self.text_encoder(inputs.input_ids.to(device), mask).last_hidden_state  # (B, L, D)
        # WanPipeline keeps the first seq_len positions of each prompt and re-pads with zeros.
        keep = torch.arange(length, device=device)[None, :] < seq_lens[:, None]  # (B, L)
        return torch.where(keep[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=device))

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """v_theta(x_sigma, sigma, c): latents (B, C, T, H, W), sigma (B,) in [0, 1] -> v (B, C, T, H, W), float32."""
        if sigma.ndim != 1 or sigma.shape[0] != latents.shape[0]:
            raise ValueError(f"sigma must have shape ({latents.shape[0]},), got {tuple(sigma.shape)}")
        sigma = sigma.to(device=latents.device, dtype=torch.float32)
        if self.prediction == "velocity":
            return self._transformer(latents, sigma, prompt_embeds)
        s = sigma.view(-1, *([1] * (latents.ndim - 1)))
        var_data = self.sigma_data**2
        d = (1 - s) ** 2 * var_data + s**2  # variance of x_σ
        out = self._transformer(latents / d.sqrt(), sigma, prompt_embeds)
        return (s - (1 - s) * var_data) / d * latents.float() - self.sigma_data / d.sqrt() * out

    def _transformer(self, latents: torch.Tensor, sigma: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        dtype = self.transformer.dtype
        return self.transformer(
            hidden_states=latents.to(dtype),
            timestep=sigma * self.num_train_timesteps,  # (B,)
            encoder_hidden_states=prompt_embeds.to(dtype),
            return_dict=False,
        )[0].float()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, H, W, 3) in [0, 1] -> latents (B, C, T', H', W')."""
        return self.codec.encode(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, T', H', W') -> frames (B, T, H, W, 3) in [0, 1]."""
        return self.codec.decode(latents)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of one video; errors if the codec or the transformer's patches do not fit."""
        shape = self.codec.latent_shape(frames, height, width)
        if any(size % patch for size, patch in zip(shape[1:], self.transformer.config.patch_size, strict=True)):
            raise VidpostError(
                f"latent (T, H, W) {shape[1:]} for a {frames}x{height}x{width} video is not divisible by the "
                f"transformer's patch {tuple(self.transformer.config.patch_size)}"
            )
        return shape

    # ----------------------------------------------------------------------------------------- training

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The transformer's weights, or only its LoRA weights once `enable_lora` ran; never the text encoder or VAE."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def enable_lora(self, rank: int, alpha: float, target_modules: Sequence[str], dropout: float = 0.0) -> None:
        """Freeze the transformer and add LoRA adapters (B = 0 at the start, so outputs do not change)."""
        if self.lora_config is not None:
            raise VidpostError("LoRA is already enabled on this model")
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout, init_lora_weights=True
        )
        self.transformer.requires_grad_(False)
        try:
            self.transformer.add_adapter(config, adapter_name=LORA_ADAPTER)
        except ValueError as exc:
            raise VidpostError(f"LoRA target_modules {list(target_modules)}: {first_line(exc)}") from exc
        self._finish_lora()

    def load_lora(self, directory: str | Path) -> None:
        """Load adapters saved by `save_lora` (or any diffusers-format Wan LoRA) into a model without LoRA, to train
        on."""
        directory = Path(directory)
        if self.lora_config is not None:
            raise VidpostError("LoRA is already enabled on this model")
        if not directory.is_dir():
            raise VidpostError(f"LoRA directory not found: {directory}")
        with _load_errors(directory.parent, directory.name):
            state_dict, metadata = WanPipeline.lora_state_dict(
                directory, return_lora_metadata=True, local_files_only=True, use_safetensors=True
            )
        self.transformer.requires_grad_(False)
        WanPipeline.load_lora_into_transformer(
            state_dict, transformer=self.transformer, adapter_name=LORA_ADAPTER, metadata=metadata
        )
        self._finish_lora()

    def _finish_lora(self) -> None:
        for name, param in self.transformer.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
                param.requires_grad_(True)
        self.lora_config = self.transformer.peft_config[LORA_ADAPTER]

    def merge_lora(self) -> None:
        """Fold the adapters into the base weights (W + alpha/r * B A) and drop them; all weights train again."""
        if self.lora_config is None:
            raise VidpostError("merge_lora: this model has no LoRA adapters")
        self.transformer.fuse_lora(adapter_names=[LORA_ADAPTER])
        self.transformer.unload_lora()
        self.transformer.requires_grad_(True)
        self.lora_config = None

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def compile_blocks(self) -> None:
        """torch.compile each transformer block in place, for training (inference: inference/acceleration.py).

        Module.compile keeps parameter names, so checkpoints, EMA and saving see the same model; the blocks
        share one compiled graph. Elementwise work (modulation, RoPE, norms) dominates a small model's step on
        CPU, and fusing it is what compile buys there.
        """
        for block in self.transformer.blocks:
            block.compile()

    # ------------------------------------------------------------------------------------------- saving

    def save(self, directory: str | Path) -> None:
        """Write a stock diffusers WanPipeline directory (safetensors); vae/ only with the VAE codec.

        Loads back with `WanVideoModel.from_pretrained(dir, codec=...)`, `WanTransformer3DModel.from_pretrained(
        dir, subfolder="transformer")`, and `WanPipeline.from_pretrained(dir)` (pass `vae=None` for a
        pixel-space model, whose model_index.json names no VAE).
        """
        if self.lora_config is not None:
            raise VidpostError(
                "save: the transformer carries LoRA adapters; write them with save_lora, or merge_lora first"
            )
        vae = self.codec.vae if isinstance(self.codec, WanVAECodec) else None
        pipeline = WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=vae,
            scheduler=self.scheduler,
            transformer=self.transformer,
        )
        with _quiet():
            pipeline.save_pretrained(directory, safe_serialization=True)

    def save_lora(self, directory: str | Path) -> None:
        """Write the adapters as `pytorch_lora_weights.safetensors` for `WanPipeline.load_lora_weights(dir)`.

        Keys are `transformer.<module path>.lora_A.weight` / `.lora_B.weight`; the LoRA config (rank, alpha,
        targets) travels in the file's metadata, so the loader scales by alpha / rank as training did.
        """
        if self.lora_config is None:
            raise VidpostError("save_lora: this model has no LoRA adapters (call enable_lora first)")
        WanPipeline.save_lora_weights(
            directory,
            transformer_lora_layers=get_peft_model_state_dict(self.transformer, adapter_name=LORA_ADAPTER),
            transformer_lora_adapter_metadata=self.lora_config.to_dict(),
            safe_serialization=True,
        )


def _read_model_index(root: Path) -> dict:
    path = root / "model_index.json"
    if not path.is_file():
        raise VidpostError(f"{root}: no model_index.json; expected a diffusers-layout model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VidpostError(f"{path}: invalid JSON ({exc})") from exc


def _scheduler_class(root: Path, entry: list) -> type[SchedulerMixin]:
    library, name = entry
    scheduler_cls = getattr(diffusers, str(name), None)
    if library != "diffusers" or not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise VidpostError(f"{root}: scheduler {library}.{name} is not a diffusers scheduler")
    return scheduler_cls


@contextmanager
def _load_errors(root: Path, name: str) -> Iterator[None]:
    """Turn a loader's missing-file error (OSError) into a one-line VidpostError naming the component; the
    loaders' progress bars stay off (a component loads in a blink)."""
    try:
        with _quiet():
            yield
    except OSError as exc:
        raise VidpostError(f"{root / name}: cannot load: {first_line(exc)}") from exc


class _NoMissingVAE(logging.Filter):
    """A pixel-space model has no VAE by design: diffusers' warning that it 'cannot be saved' says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "self.vae=None" not in record.getMessage()


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from diffusers and transformers, and no missing-VAE warning, for one load or save."""
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers.utils.logging, transformers.utils.logging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    pipeline_log, vae_filter = logging.getLogger("diffusers.pipelines.pipeline_utils"), _NoMissingVAE()
    pipeline_log.addFilter(vae_filter)
    try:
        yield
    finally:
        pipeline_log.removeFilter(vae_filter)
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()


def init_identity_path(transformer: WanTransformer3DModel) -> None:
    """Make the patch embedding an isometry Q and the output projection its transpose, so that the untrained
    transformer's velocity is its input, normalised per token (the blocks add their random residuals on top).

    Why: the velocity ε − x₀ carries each token's noise, which the model must pass from its patch embedding
    through the residual stream to its output. A randomly initialised pixel-space model with large patches
    learns that slowly and leaves the noise in its samples (measured on ShapeWorld with 10x4x4 patches, 480
    values per token in width 512: flow-matching loss 0.29 at σ 0.95 after 400 steps from random init, 0.16
    from this one). Q's columns are orthogonal to the all-ones vector, so the final LayerNorm only rescales.
    Uses the global torch RNG (build_tiny seeds it).
    """
    conv, out = transformer.patch_embedding, transformer.proj_out
    width, channels, *patch = conv.weight.shape  # (d, C, p_t, p_h, p_w)
    values = conv.weight[0].numel()  # values per token
    if width <= values:
        raise VidpostError(
            f"identity_init needs the transformer width ({width}) above the values per token ({values} = "
            f"{channels} channels x patch {tuple(patch)})"
        )
    q = torch.randn(width, values)
    q, _ = torch.linalg.qr(q - q.mean(0, keepdim=True))  # (d, values), orthonormal columns
    with torch.no_grad():
        conv.weight.copy_(q.view(conv.weight.shape))
        conv.bias.zero_()
        # proj_out lays a token out as (p_t, p_h, p_w, C) (WanTransformer3DModel's unpatchify);
        # the conv reads (C, p_t, p_h, p_w)
        q_out = q.view(width, channels, *patch).permute(0, 2, 3, 4, 1).reshape(width, values)
        out.weight.copy_(
            q_out.T * (values / width) ** 0.5
        )  # LayerNorm scales a token to norm sqrt(d); undo to sqrt(values)
        out.bias.zero_()


def cast_like_from_pretrained(transformer: WanTransformer3DModel, dtype: torch.dtype) -> None:
    """Cast parameters to dtype except `_keep_in_fp32_modules`, as diffusers' from_pretrained(torch_dtype=) does."""
    keep = transformer._keep_in_fp32_modules
    for name, param in transformer.named_parameters():
        target = torch.float32 if any(part in keep for part in name.split(".")) else dtype
        param.data = param.data.to(target)
