"""Held-out quality of the shipped ShapeWorld models: base (pretrained on web data) and SFT (on curated data).

For each model and prompt split (eval: unseen captions; heldout: unseen colour-shape pairs), generates one
video per canonical caption with the model's recommended sampling (its model card) from fixed seeds, and
scores it with the ShapeWorld rewards: total, success rate, instruction, coherence, quality; then the same for
one-object and two-object scenes apart, and the share of each instruction check that passes (count: frames
with as many blobs as objects; presence and size_shape: frames where each stated object is present, and
present with its stated size and shape; motion: the motion score), so the lowest one says where the
headroom is; and how objects are drawn: their area over the stated shape's (area_ratio), where drawing them too
large shows, the share of frames where an object's colour lies in more than one piece (fragmented), and the
share of objects that go the stated way (heading: the fitted velocity within 45 degrees of the stated direction,
or still where still is stated). Total and success come with 95% intervals over the prompts (bootstrap; Wilson's for
the success rate), and every model after the first with its paired difference from the first, prompt by prompt on
the same seeds: a model gains only where that interval lies above 0.

    .venv/bin/python bench/shapeworld_models.py                       # shapeworld-base, shapeworld-sft
    .venv/bin/python bench/shapeworld_models.py --models runs/my-sft  # any model or run directory

Writes bench/results/shapeworld_models.json and bench/results/shapeworld_models.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402

from vidpost.data.video_io import to_float  # noqa: E402
from vidpost.evaluation import SHAPEWORLD_SCORES, shapeworld_prompts  # noqa: E402
from vidpost.generation import generate, recommended_sampling, recommended_video  # noqa: E402
from vidpost.intervals import Interval, mean_interval, paired_difference, rate_interval  # noqa: E402
from vidpost.rewards.shapeworld import score_clip  # noqa: E402
from vidpost.sample import load_model  # noqa: E402
from vidpost.world.grammar import parse_caption  # noqa: E402

CHECKS = ("count", "presence", "size_shape", "motion")
PAIRED = ("total", "success")  # kept prompt by prompt: intervals, and differences from the first model
# why checks fail, off the bar chart of check shares: an object's area over the stated shape's (1: as stated), the
# share of present frames where its colour lies in more than one piece (a stray speck widens the measured extent), and
# the share of objects whose fitted velocity goes the stated way (a wrong heading fails the motion check outright)
DIAGNOSTICS = ("area_ratio", "fragmented", "heading")


def scores_by_objects(videos: np.ndarray, prompts: list[str]) -> dict:
    """Mean scores and check shares over all scenes, and over the scenes of each object count ("1", "2", ...);
    total and success prompt by prompt, with their 95% intervals."""
    specs = [parse_caption(p) for p in prompts]
    clips = [score_clip(to_float(v), spec) for v, spec in zip(videos, specs, strict=True)]
    per_prompt = {key: [c[key] for c in clips] for key in PAIRED}

    def mean(rows: list[dict]) -> dict:
        return {
            "n": len(rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in (*SHAPEWORLD_SCORES, *CHECKS, *DIAGNOSTICS)},
        }

    counts = sorted({len(spec.objects) for spec in specs})
    by_objects = {
        str(c): mean([r for r, spec in zip(clips, specs, strict=True) if len(spec.objects) == c]) for c in counts
    }
    intervals = {
        "total": mean_interval(per_prompt["total"]).to_json(),
        "success": rate_interval(per_prompt["success"]).to_json(),
    }
    return {**mean(clips), "by_objects": by_objects, "intervals": intervals, "per_prompt": per_prompt}


def against_first(rows: list[dict]) -> None:
    """Each row's paired difference from the first model's row of its split (same prompts and seeds)."""
    for row in rows:
        first = next(r for r in rows if r["split"] == row["split"])
        if first is not row:
            row["vs_first"] = {
                key: paired_difference(first["per_prompt"][key], row["per_prompt"][key]).to_json() for key in PAIRED
            }


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
            scores = scores_by_objects(out.videos, prompts)
            rows.append(
                {
                    "model": ref,
                    "split": split,
                    **scores,
                    "nfe": out.nfe_per_video,
                    "seconds_per_video": seconds,
                    "sampling": sampling.model_dump(),
                }
            )
            for group, part in [("all", scores), *scores["by_objects"].items()]:
                print(
                    f"{ref:<24} {split:<8} {group:>3} (n={part['n']:>3}) "
                    + " ".join(f"{k} {part[k]:.3f}" for k in (*SHAPEWORLD_SCORES, *CHECKS, *DIAGNOSTICS)),
                    flush=True,
                )

    against_first(rows)
    for row in rows:
        intervals = "  ".join(f"{k} {Interval(**row['intervals'][k])}" for k in PAIRED)
        changes = "".join(
            f"  {k} change {Interval(**row['vs_first'][k]).signed()}" for k in PAIRED if "vs_first" in row
        )
        print(f"{row['model']:<24} {row['split']:<8} 95% intervals: {intervals}{changes}")
    write_results(args.name, rows=rows)

    keys = (*SHAPEWORLD_SCORES, *CHECKS)
    fig, axes = plt.subplots(1, len(args.splits), figsize=(7 * len(args.splits), 3.5), squeeze=False)
    for ax, split in zip(axes[0], args.splits, strict=True):
        split_rows = [r for r in rows if r["split"] == split]
        width = 0.8 / len(split_rows)
        for j, row in enumerate(split_rows):
            ax.bar(
                [i + j * width for i in range(len(keys))], [row[k] for k in keys], width, label=Path(row["model"]).name
            )
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys, rotation=30)
        ax.set_ylim(0, 1)
        ax.set_title(f"{split} prompts (n={args.n}); right: the instruction checks' shares")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)
    print(f"wrote {RESULTS / args.name}.json and .png")


if __name__ == "__main__":
    main()
