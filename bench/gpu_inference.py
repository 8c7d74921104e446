"""Sampling cost of the Wan2.1-T2V-1.3B architecture on a GPU: the 20-step CFG teacher against the
configurations of bench/inference.py (one pass per step, 8, 4 and 2 steps), each with and without a feature
cache and torch.compile.

Random weights built from the public 1.3B config (bench/gpu_grpo_step.py's `build`; nothing is downloaded),
480x832, 33 frames (14,040 tokens), one video, random prompt embeddings, bf16 autocast. Times the denoising
loop only (the same for every configuration: the text encoder and the VAE decode are not part of it) after one
untimed warm-up run, which pays torch.compile's compilation. Reports NFE, seconds per video, peak memory and
model FLOPs utilisation. With random weights a cache's skip decisions are not those of a trained model: its
rows show the cost of the cache machinery and of the skips it happened to make, not a quality trade-off.

    .venv/bin/python bench/gpu_inference.py                 # on a machine with a CUDA GPU
    .venv/bin/python bench/gpu_inference.py --no-compile    # faster, without the compiled rows
    .venv/bin/python bench/gpu_inference.py --smoke --no-compile   # the same code on the CPU, tiny Wan

Without a GPU (and without --smoke) it prints why and writes {"skipped": ...}; --smoke is gpu_grpo_step.py's.
Writes bench/results/gpu_inference.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from gpu_grpo_step import (
    build,
    choose_setup,
    device_name,
    flops_per_pass,
    peak_memory_gb,
    peak_tflops,
    reset_peak_memory,
    synchronize,
)

RESULTS = Path(__file__).resolve().parent / "results"
# (name, steps, guidance): the teacher, then the students bench/inference.py measures on ShapeWorld
CONFIGURATIONS = [("teacher", 20, 5.0), ("cfg", 20, 1.0), ("8-step", 8, 1.0), ("4-step", 4, 1.0), ("2-step", 2, 1.0)]


def time_one(model, shape, embeds, uncond, steps: int, guidance: float, acceleration) -> tuple[float, int]:
    """Seconds and NFE of one video's denoising loop (after a warm-up run) under `acceleration`."""
    from vidpost.diffusion.sampler import GuidedVelocity, run_steps
    from vidpost.diffusion.schedule import sampling_sigmas
    from vidpost.inference.acceleration import accelerated
    from vidpost.precision import autocast

    sigmas = sampling_sigmas(steps, 3.0)
    device = model.device
    with accelerated(model, acceleration, steps) as acc, torch.no_grad(), autocast("bf16", model.device):
        results = []
        for _ in range(2):  # warm-up, then timed
            acc.new_run()
            velocity = GuidedVelocity(model, embeds, uncond, guidance, contexts=acc.context, batch_cfg=acc.batch_cfg)
            noise = torch.randn((1, *shape), device=device, generator=torch.Generator(device).manual_seed(0))
            synchronize(device.type)
            tick = time.perf_counter()
            run_steps(velocity, noise, sigmas)
            synchronize(device.type)
            results.append((time.perf_counter() - tick, velocity.nfe))
    return results[-1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="first_block")
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny Wan on the CPU: checks the code, times nothing real"
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    chosen = choose_setup(args.smoke, RESULTS / "gpu_inference.json")
    if chosen is None:
        return
    setup, out = chosen

    from vidpost.inference.acceleration import AccelerationConfig, CacheConfig

    cache = CacheConfig(name=args.cache, threshold=args.cache_threshold)
    accelerations = {"none": None, args.cache: AccelerationConfig(cache=cache)}
    if not args.no_compile:
        accelerations["compile"] = AccelerationConfig(compile=True)
        accelerations[f"{args.cache}+compile"] = AccelerationConfig(cache=cache, compile=True)
    model = build("full", setup)
    model.transformer.eval().requires_grad_(False)
    shape = model.latent_shape(setup.frames, setup.height, setup.width)  # 1.3B: (16, 9, 60, 104)
    embeds, uncond = setup.prompt_embeds(0), setup.prompt_embeds(1)
    per_pass = flops_per_pass(model, setup, shape)
    peak = peak_tflops(setup.device)

    rows = []
    for config, steps, guidance in CONFIGURATIONS:
        for acc_name, acceleration in accelerations.items():
            reset_peak_memory(setup.device)
            seconds, nfe = time_one(model, shape, embeds, uncond, steps, guidance, acceleration)
            row = {
                "model": config,
                "acceleration": acc_name,
                "steps": steps,
                "guidance": guidance,
                "nfe": nfe,
                "seconds_per_video": seconds,
                "peak_memory_gb": peak_memory_gb(setup.device),
                # a cache's skipped blocks still count here: its MFU is of the uncached work
                "mfu": None if peak is None else per_pass * nfe / seconds / (peak * 1e12),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for row in rows:
        row["speedup"] = rows[0]["seconds_per_video"] / row["seconds_per_video"]
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "gpu": device_name(setup.device),
                "tokens": setup.tokens(shape),
                "tflops_per_pass": per_pass / 1e12,
                "smoke": args.smoke,
                "date": datetime.date.today().isoformat(),
                "torch": torch.__version__,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
