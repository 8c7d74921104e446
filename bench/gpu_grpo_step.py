"""One Flash-GRPO iteration of the Wan2.1-T2V-1.3B architecture on a GPU: rollout and training step, timed.

Random weights built from the public 1.3B config (nothing is downloaded): WanTransformer3DModel (dim 1536,
30 layers), the Wan VAE from its default config, and prompt embeddings drawn at random (the UMT5 encoder
runs once per prompt and is not part of the iteration). 480x832, 33 frames (a 9x60x104 latent, 14,040
tokens), 20 steps, CFG 4.5, one group of G samples with its SDE step at k; then one update on the G
transitions at k, LoRA (r = 32) or full, bf16 autocast, gradient checkpointing. Reports seconds per phase,
peak memory and model FLOPs utilisation (transformer FLOPs only, against the GPU's dense bf16 peak).

    .venv/bin/python bench/gpu_grpo_step.py --group 4            # on a machine with a CUDA GPU

Without a GPU it prints why and writes {"skipped": ...}: nothing here runs on CPU.
Writes bench/results/gpu_grpo_step.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per the vendors' datasheets


def skipped_without_gpu(out: Path) -> bool:
    """Without a CUDA GPU, say so and write {"skipped": ...} to `out`; True when skipped."""
    if torch.cuda.is_available():
        return False
    print(f"{out.stem}: skipped (no CUDA GPU on this machine)")
    out.write_text(json.dumps({"skipped": "no CUDA GPU", "date": datetime.date.today().isoformat()}) + "\n")
    return True


def transformer_flops(params: int, tokens: int, dim: int, layers: int, text_tokens: int) -> float:
    """Forward FLOPs of one pass: 2·params·tokens for the matmuls, plus self- and cross-attention scores."""
    return 2 * params * tokens + 4 * layers * dim * tokens * (tokens + text_tokens)


def build(mode: str):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidpost.models.codecs import WanVAECodec
    from vidpost.models.text import build_shapeworld_tokenizer
    from vidpost.models.wan import WanVideoModel

    transformer = WanTransformer3DModel(**WAN_1_3B).to("cuda", torch.bfloat16)
    # A one-layer stand-in with UMT5-XXL's width: only its d_model is read (embeddings are drawn at random).
    text = UMT5EncoderModel(UMT5Config(vocab_size=256, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=2))
    model = WanVideoModel(transformer, text, build_shapeworld_tokenizer(), FlowMatchEulerDiscreteScheduler(shift=3.0),
                          WanVAECodec(AutoencoderKLWan().to("cuda")), max_sequence_length=512)
    if mode == "lora":
        model.enable_lora(32, 64.0, ["to_q", "to_k", "to_v", "to_out.0"])
    model.enable_gradient_checkpointing()
    return model


def run(mode: str, group: int, steps: int, guidance: float) -> dict:
    from vidpost.diffusion.schedule import sampling_sigmas
    from vidpost.diffusion.sde import gradient_scale, noise_levels
    from vidpost.rl.losses import policy_loss, rectification_weights
    from vidpost.rl.rollout import rollout, transition_log_probs
    from vidpost.rl.strategies import StepPlan

    torch.cuda.reset_peak_memory_stats()
    model = build(mode)
    shape = model.latent_shape(33, 480, 832)  # (16, 9, 60, 104)
    embeds = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    uncond = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    sigmas = sampling_sigmas(steps, 3.0)
    g = noise_levels(sigmas, "flash")
    k = steps // 4
    sde = torch.zeros(group, steps, dtype=torch.bool)
    sde[:, k] = True
    plan = StepPlan(sde=sde, train=sde.clone(), k=torch.tensor([k]))
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    seconds = {}

    torch.cuda.synchronize()
    tick = time.perf_counter()
    batch = rollout(model, shape, embeds, uncond, plan, sigmas, g, guidance, torch.arange(group),
                    torch.Generator(device="cuda").manual_seed(0), "bf16")
    torch.cuda.synchronize()
    seconds["rollout"] = time.perf_counter() - tick
    tick = time.perf_counter()
    with torch.no_grad():
        model.decode(batch.final[:1])  # one video's decode; the reward model is someone else's GPU
    torch.cuda.synchronize()
    seconds["decode_one_video"] = time.perf_counter() - tick

    tick = time.perf_counter()
    tr = batch.transitions
    tr_embeds = embeds.expand(len(tr), -1, -1)
    with torch.no_grad():
        old = transition_log_probs(model, tr, tr_embeds, uncond, guidance, "bf16")[0]
    lp = transition_log_probs(model, tr, tr_embeds, uncond, guidance, "bf16")[0]
    weights = rectification_weights(gradient_scale(sigmas, "flash")[tr.step])
    advantages = torch.linspace(-1, 1, len(tr), device="cuda")
    policy_loss(lp, old, advantages, 1e-3, weights.to("cuda")).loss.mean().backward()
    optimizer.step()
    torch.cuda.synchronize()
    seconds["train_step"] = time.perf_counter() - tick

    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    n_params = sum(p.numel() for p in model.transformer.parameters())
    per_pass = transformer_flops(n_params, tokens, 1536, 30, 512)
    passes = 2 if guidance > 1 else 1
    rollout_flops = per_pass * passes * steps * group
    train_flops = per_pass * passes * len(tr) * (1 + 3 + 1)  # old fwd + fwd/bwd (bwd = 2 fwd) + recompute (ckpt)
    name = torch.cuda.get_device_name()
    peak = next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)
    mfu = None if peak is None else {
        "rollout": rollout_flops / seconds["rollout"] / (peak * 1e12),
        "train_step": train_flops / seconds["train_step"] / (peak * 1e12),
    }
    return {"mode": mode, "group": group, "steps": steps, "guidance": guidance, "tokens": tokens,
            "params": n_params, "seconds": seconds, "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "tflops_per_pass": per_pass / 1e12, "mfu": mfu, "gpu": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gpu_grpo_step.json"
    if skipped_without_gpu(out):
        return
    rows = []
    for mode in args.modes:
        rows.append(run(mode, args.group, args.steps, args.guidance))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    out.write_text(json.dumps({"rows": rows, "date": datetime.date.today().isoformat(),
                               "torch": torch.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
