"""Held-out quality of the shipped ShapeWorld models: base (pretrained on web data) and SFT (on curated data).

For each model and prompt split (eval: unseen captions; heldout: unseen colour-shape pairs), generates one
video per canonical caption with the model's recommended sampling (its model card) from fixed seeds, and
scores it with the ShapeWorld rewards: total, success rate, instruction, coherence, quality.

    .venv/bin/python bench/shapeworld_models.py                       # shapeworld-base, shapeworld-sft
    .venv/bin/python bench/shapeworld_models.py --models runs/my-sft  # any model or run directory

Writes bench/results/shapeworld_models.json and bench/results/shapeworld_models.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_prompts  # noqa: E402
from vidpost.generation import generate, recommended_sampling, recommended_video  # noqa: E402
from vidpost.sample import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapeworld-base", "shapeworld-sft"])
    parser.add_argument("--splits", nargs="+", default=["eval", "heldout"])
    parser.add_argument("--n", type=int, default=128, help="prompts per split")
    parser.add_argument("--seed", type=int, default=0, help="prompt and noise seed")
    parser.add_argument("--name", default="shapeworld_models", help="results file stem")
    args = parser.parse_args()

    rows = []
    for ref in args.models:
        model = load_model(ref)
        sampling, video = recommended_sampling(model), recommended_video(model)
        for split in args.splits:
            prompts = shapeworld_prompts(split, args.n, args.seed)
            tick = time.perf_counter()
            out = generate(model, prompts, sampling, video, seed=args.seed, progress=False)
            seconds = (time.perf_counter() - tick) / len(prompts)
            scores = score_videos(out.videos, prompts, SHAPEWORLD_SCORES)
            rows.append({"model": ref, "split": split, "n": len(prompts), **scores, "nfe": out.nfe_per_video,
                         "seconds_per_video": seconds, "sampling": sampling.model_dump()})
            print(f"{ref:<24} {split:<8} " + " ".join(f"{k} {scores[k]:.3f}" for k in SHAPEWORLD_SCORES), flush=True)

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "command": "python " + " ".join(sys.argv),
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": datetime.date.today().isoformat(),
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")

    fig, axes = plt.subplots(1, len(args.splits), figsize=(5 * len(args.splits), 3.5), squeeze=False)
    for ax, split in zip(axes[0], args.splits, strict=True):
        split_rows = [r for r in rows if r["split"] == split]
        width = 0.8 / len(split_rows)
        for j, row in enumerate(split_rows):
            ax.bar([i + j * width for i in range(len(SHAPEWORLD_SCORES))], [row[k] for k in SHAPEWORLD_SCORES],
                   width, label=Path(row["model"]).name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(SHAPEWORLD_SCORES))], SHAPEWORLD_SCORES)
        ax.set_ylim(0, 1)
        ax.set_title(f"{split} prompts (n={args.n})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)
    print(f"wrote {RESULTS / args.name}.json and .png")


if __name__ == "__main__":
    main()
