"""Seconds per training step of the ShapeWorld designs: float32 against bf16 autocast, eager against compiled blocks.

Each row builds a model from `configs/shapeworld/pretrain.yaml` (with the design's overrides), gives it a
synthetic cached dataset of the right shapes (random clips and caption embeddings: the cost of a step does
not depend on their values), and times the recipe's own step: `sft.training_loss` (forward and backward),
gradient clipping and the AdamW update. The first steps are warm-up (compile, allocator) and not timed.

    .venv/bin/python bench/training_speed.py [--steps 20] [--warmup 3]

Writes bench/results/training_speed.json and bench/results/training_speed.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from results_file import RESULTS, machine, write_results  # noqa: E402

from vidpost.config import load_config  # noqa: E402
from vidpost.data.cache import EncodedDataset  # noqa: E402
from vidpost.models.wan import WanVideoModel  # noqa: E402
from vidpost.precision import native_bf16  # noqa: E402
from vidpost.recipes.sft import SFTConfig, batch_indices, training_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "shapeworld" / "pretrain.yaml"
DESIGNS = {
    "pretrain.yaml (2x4x4, 8 heads x 32, batch 32)": [],
    "10x2x2, 4 heads x 64, ffn 1024, batch 16": [
        "model.tiny.num_attention_heads=4",
        "model.tiny.attention_head_dim=64",
        "model.tiny.ffn_dim=1024",
        "model.tiny.patch_size=[10,2,2]",
        "model.tiny.identity_init=true",
        "train.batch_size=16",
    ],
}
N_CLIPS, N_CAPTIONS = 256, 64


def synthetic_data(model: WanVideoModel, cfg: SFTConfig) -> EncodedDataset:
    world = cfg.data.shapeworld.world
    frames = torch.rand(1, world.frames, world.height, world.width, 3)
    latent_shape = model.encode(frames).shape[1:]
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(
        N_CAPTIONS, cfg.model.max_sequence_length, model.transformer.config.text_dim, generator=generator
    )
    embeds[0] = 0  # row 0 is the empty prompt of caption dropout
    return EncodedDataset(
        latents=(torch.rand(N_CLIPS, *latent_shape, generator=generator) * 2 - 1).to(torch.bfloat16),
        caption_ids=torch.randint(1, N_CAPTIONS, (N_CLIPS,), generator=generator),
        embeds=embeds,
        captions=[""] * N_CAPTIONS,
        frames=world.frames,
        height=world.height,
        width=world.width,
        skipped=0,
    )


def seconds_per_step(overrides: list[str], precision: str, compile_blocks: bool, steps: int, warmup: int) -> float:
    cfg = load_config(SFTConfig, PRETRAIN, [*overrides, f"train.precision={precision}"])
    torch.manual_seed(0)
    model = WanVideoModel.from_config(cfg.model)
    data = synthetic_data(model, cfg)
    if compile_blocks:
        model.compile_blocks()
    model.transformer.train()
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.learning_rate)
    times = []
    for step in range(1, warmup + steps + 1):
        tick = time.perf_counter()
        indices = batch_indices(len(data), cfg.train.batch_size, step, cfg.train.seed)
        training_loss(model, data, indices, cfg.train, torch.Generator().manual_seed(step))
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tick)
    return sum(times[warmup:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compile happens here)")
    args = parser.parse_args()
    precisions = ["float32", "bf16"] if native_bf16(torch.device("cpu")) else ["float32"]
    rows = []
    for design, overrides in DESIGNS.items():
        for precision in precisions:
            for compile_blocks in (False, True):
                seconds = seconds_per_step(overrides, precision, compile_blocks, args.steps, args.warmup)
                rows.append(
                    {
                        "design": design,
                        "precision": precision,
                        "compile": compile_blocks,
                        "seconds_per_step": round(seconds, 4),
                    }
                )
                print(f"{design:48s} {precision:8s} compile={compile_blocks!s:5s} {seconds:.3f} s/step", flush=True)
    native = native_bf16(torch.device("cpu"))
    write_results("training_speed", rows=rows, native_bf16=native)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [
        f"{r['design'].split(',')[0].split(' (')[0]}\n{r['precision']}{' +compile' if r['compile'] else ''}"
        for r in rows
    ]
    ax.bar(range(len(rows)), [r["seconds_per_step"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("seconds per training step")
    ax.set_title(f"training step time ({machine()}, native bf16: {native})", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "training_speed.png", dpi=120)
    print(f"wrote {RESULTS / 'training_speed.json'}")


if __name__ == "__main__":
    main()
