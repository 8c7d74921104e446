"""One Flash-GRPO iteration of the Wan2.1-T2V-1.3B architecture on a GPU: rollout and training step, timed.

Random weights built from the public 1.3B config (nothing is downloaded): WanTransformer3DModel (dim 1536,
30 layers), the Wan VAE from its default config, and prompt embeddings drawn at random (the UMT5 encoder
runs once per prompt and is not part of the iteration). 480x832, 33 frames (a 9x60x104 latent, 14,040
tokens), 20 steps, CFG 4.5, one group of G samples with its SDE step at k; then one update on the G
transitions at k, LoRA (r = 32) or full, bf16 autocast, gradient checkpointing. Reports seconds per phase,
peak memory and model FLOPs utilisation (transformer FLOPs only, against the GPU's dense bf16 peak).

    .venv/bin/python bench/gpu_grpo_step.py --group 4            # on a machine with a CUDA GPU
    .venv/bin/python bench/gpu_grpo_step.py --smoke              # the same code on the CPU, tiny Wan, seconds

Without a GPU (and without --smoke) it prints why and writes {"skipped": ...}. --smoke runs every phase on a
tiny model of the same classes (the tests do, so the GPU run never meets its first bug there) and writes to
bench/results/smoke/ instead. Writes bench/results/gpu_grpo_step.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per the vendors' datasheets


@dataclass(frozen=True)
class Setup:
    """What is timed: the transformer's config, the video's geometry and the prompt length, on a device."""

    transformer: dict
    frames: int
    height: int
    width: int
    text_tokens: int
    device: str
    vae: dict = field(default_factory=dict)  # AutoencoderKLWan kwargs; {} is Wan2.1's VAE

    @property
    def dim(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]

    @property
    def text_dim(self) -> int:
        return self.transformer["text_dim"]

    def tokens(self, latent_shape: Sequence[int]) -> int:
        patch = self.transformer["patch_size"]
        return (latent_shape[1] // patch[0]) * (latent_shape[2] // patch[1]) * (latent_shape[3] // patch[2])

    def prompt_embeds(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        embeds = torch.randn(1, self.text_tokens, self.text_dim, generator=generator)
        return embeds.to(self.device, torch.bfloat16)


WAN_1_3B_480P = Setup(WAN_1_3B, frames=33, height=480, width=832, text_tokens=512, device="cuda")
# The same classes at toy size (diffusers' own Wan test config and tiny VAE), for the CPU smoke run.
SMOKE = Setup(
    dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=8, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2),
    frames=5,
    height=32,
    width=32,
    text_tokens=16,
    device="cpu",
    vae=dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
)


def choose_setup(smoke: bool, out: Path) -> tuple[Setup, Path] | None:
    """The setup to time and where its JSON goes; None (after writing {"skipped": ...}) without a GPU."""
    if smoke:
        (RESULTS / "smoke").mkdir(parents=True, exist_ok=True)
        return SMOKE, RESULTS / "smoke" / out.name
    if torch.cuda.is_available():
        return WAN_1_3B_480P, out
    print(f"{out.stem}: skipped (no CUDA GPU on this machine; --smoke runs the same code on the CPU)")
    out.write_text(json.dumps({"skipped": "no CUDA GPU", "date": datetime.date.today().isoformat()}) + "\n")
    return None


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def peak_tflops(device: str) -> float | None:
    """The device's dense bf16 peak, for MFU; None where it is not in the table (the CPU included)."""
    name = device_name(device)
    return next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)


def transformer_flops(params: int, tokens: int, dim: int, layers: int, text_tokens: int) -> float:
    """Forward FLOPs of one pass: 2·params·tokens for the matmuls, plus self- and cross-attention scores."""
    return 2 * params * tokens + 4 * layers * dim * tokens * (tokens + text_tokens)


def flops_per_pass(model, setup: Setup, latent_shape: Sequence[int]) -> float:
    params = sum(p.numel() for p in model.transformer.parameters())
    return transformer_flops(
        params, setup.tokens(latent_shape), setup.dim, setup.transformer["num_layers"], setup.text_tokens
    )


def build(mode: str, setup: Setup):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidpost.models.codecs import WanVAECodec
    from vidpost.models.text import build_shapeworld_tokenizer
    from vidpost.models.wan import WanVideoModel, cast_like_from_pretrained

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**setup.transformer).to(setup.device)
    cast_like_from_pretrained(transformer, torch.bfloat16)  # norms, time embedding and modulation stay float32
    # A one-layer stand-in with the text encoder's width: only its d_model is read (embeddings are random).
    text = UMT5EncoderModel(
        UMT5Config(vocab_size=256, d_model=setup.text_dim, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )
    model = WanVideoModel(
        transformer,
        text,
        build_shapeworld_tokenizer(),
        FlowMatchEulerDiscreteScheduler(shift=3.0),
        WanVAECodec(AutoencoderKLWan(**setup.vae).to(setup.device)),
        max_sequence_length=setup.text_tokens,
    )
    if mode == "lora":
        model.enable_lora(32, 64.0, ["to_q", "to_k", "to_v", "to_out.0"])
    model.enable_gradient_checkpointing()
    return model


def run(mode: str, group: int, steps: int, guidance: float, setup: Setup) -> dict:
    from vidpost.diffusion.schedule import sampling_sigmas
    from vidpost.diffusion.sde import gradient_scale, noise_levels
    from vidpost.rl.losses import policy_loss, rectification_weights
    from vidpost.rl.rollout import rollout, transition_log_probs
    from vidpost.rl.strategies import StepPlan

    device = setup.device
    reset_peak_memory(device)
    model = build(mode, setup)
    shape = model.latent_shape(setup.frames, setup.height, setup.width)  # 1.3B: (16, 9, 60, 104)
    embeds, uncond = setup.prompt_embeds(0), setup.prompt_embeds(1)
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flash")
    k = steps // 4
    sde = torch.zeros(group, steps, dtype=torch.bool)
    sde[:, k] = True
    plan = StepPlan(sde=sde, train=sde.clone(), k=torch.tensor([k]))
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    seconds = {}

    synchronize(device)
    tick = time.perf_counter()
    batch = rollout(
        model,
        shape,
        embeds,
        uncond,
        plan,
        sigmas,
        g,
        guidance,
        torch.arange(group),
        torch.Generator(device=device).manual_seed(0),
        "bf16",
    )
    synchronize(device)
    seconds["rollout"] = time.perf_counter() - tick
    tick = time.perf_counter()
    with torch.no_grad():
        model.decode(batch.final[:1])  # one video's decode; the reward model is someone else's GPU
    synchronize(device)
    seconds["decode_one_video"] = time.perf_counter() - tick

    tick = time.perf_counter()
    tr = batch.transitions
    tr_embeds = embeds.expand(len(tr), -1, -1)
    with torch.no_grad():
        old = transition_log_probs(model, tr, tr_embeds, uncond, guidance, "bf16")[0]
    lp = transition_log_probs(model, tr, tr_embeds, uncond, guidance, "bf16")[0]
    weights = rectification_weights(gradient_scale(sigmas, "flash")[tr.step])
    advantages = torch.linspace(-1, 1, len(tr), device=device)
    policy_loss(lp, old, advantages, 1e-3, weights.to(device)).loss.mean().backward()
    optimizer.step()
    synchronize(device)
    seconds["train_step"] = time.perf_counter() - tick

    per_pass = flops_per_pass(model, setup, shape)
    passes = 2 if guidance > 1 else 1
    rollout_flops = per_pass * passes * steps * group
    train_flops = per_pass * passes * len(tr) * (1 + 3 + 1)  # old fwd + fwd/bwd (bwd = 2 fwd) + recompute (ckpt)
    peak = peak_tflops(device)
    mfu = (
        None
        if peak is None
        else {
            "rollout": rollout_flops / seconds["rollout"] / (peak * 1e12),
            "train_step": train_flops / seconds["train_step"] / (peak * 1e12),
        }
    )
    return {
        "mode": mode,
        "group": group,
        "steps": steps,
        "guidance": guidance,
        "tokens": setup.tokens(shape),
        "params": sum(p.numel() for p in model.transformer.parameters()),
        "seconds": seconds,
        "peak_memory_gb": peak_memory_gb(device),
        "tflops_per_pass": per_pass / 1e12,
        "mfu": mfu,
        "gpu": device_name(device),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny Wan on the CPU: checks the code, times nothing real"
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    chosen = choose_setup(args.smoke, RESULTS / "gpu_grpo_step.json")
    if chosen is None:
        return
    setup, out = chosen
    rows = []
    for mode in args.modes:
        rows.append(run(mode, args.group, args.steps, args.guidance, setup))
        print(json.dumps(rows[-1]), flush=True)
        if setup.device == "cuda":
            torch.cuda.empty_cache()
    out.write_text(
        json.dumps(
            {"rows": rows, "smoke": args.smoke, "date": datetime.date.today().isoformat(), "torch": torch.__version__},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
