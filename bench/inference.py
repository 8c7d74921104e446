"""Inference cost and quality on ShapeWorld: the 20-step CFG teacher against its distilled students,
each with and without a feature cache and with and without torch.compile.

For every configuration, one video per held-out canonical caption from fixed seeds (the same seeds for every
configuration, so videos are comparable pixel for pixel), scored with the ShapeWorld rewards. Reported per
configuration: transformer forward passes per video (NFE), the fraction of them in which the last block really ran
(a cache skips
blocks inside a pass that NFE still counts), wall-clock seconds per video (after one untimed
warm-up batch, which pays torch.compile's compilation; that first call is reported separately), total,
success, coherence, quality, and the mean squared pixel difference to the teacher's videos (how faithfully
a student reproduces its teacher; in [0, 1] pixel units).

    .venv/bin/python bench/inference.py \
        --teacher shapeworld-sft \
        --students cfg=runs/distill-cfg 8-step=runs/distill-8 4-step=runs/distill-4 2-step=runs/distill-2

Students are any model or run directories (their model cards set steps, shift and guidance); the README's
"inference" section has the commands that made the ones measured. Writes bench/results/inference.json and
bench/results/inference.png.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from named_args import named_pairs  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402

from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_prompts  # noqa: E402
from vidpost.generation import generate, recommended_sampling, recommended_video  # noqa: E402
from vidpost.inference.acceleration import AccelerationConfig, CacheConfig  # noqa: E402
from vidpost.models.load import load_model  # noqa: E402


def measure(
    model, prompts: list[str], sampling, video, acceleration: AccelerationConfig | None, seed: int, batch_size: int
) -> dict:
    """Generate (warm-up batch first, untimed), time and score; returns the row without its name."""
    tick = time.perf_counter()
    generate(
        model,
        prompts[:batch_size],
        sampling,
        video,
        seed=seed,
        batch_size=batch_size,
        progress=False,
        acceleration=acceleration,
    )
    first_call = time.perf_counter() - tick
    # A cache skips blocks inside a transformer call that NFE still counts: count the calls that reached
    # the last block's feed-forward to see how much of the work was really done.
    last_block_runs = [0]

    def count(*_) -> None:
        last_block_runs[0] += 1

    hook = model.transformer.blocks[-1].ffn.register_forward_pre_hook(count)
    tick = time.perf_counter()
    try:
        out = generate(
            model, prompts, sampling, video, seed=seed, batch_size=batch_size, progress=False, acceleration=acceleration
        )
    finally:
        hook.remove()
    seconds = (time.perf_counter() - tick) / len(prompts)
    batches = -(-len(prompts) // batch_size)
    return {
        "videos": out.videos,
        "nfe": out.nfe_per_video,
        "seconds_per_video": seconds,
        # compiled blocks run their feed-forward inside the graph, where the hook does not fire: unknown
        "blocks_computed": None
        if acceleration is not None and acceleration.compile
        else last_block_runs[0] / (out.nfe_per_video * batches),
        "first_call_seconds": first_call,
        "sampling": sampling.model_dump(),
        **score_videos(out.videos, prompts, SHAPEWORLD_SCORES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="shapeworld-sft", help="model with CFG (its card's sampling)")
    parser.add_argument("--students", nargs="*", default=[], metavar="NAME=MODEL", help="distilled students")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--n", type=int, default=64, help="prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt and noise seed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cache", default="first_block", help="the cache measured against none")
    parser.add_argument(
        "--cache-threshold",
        type=float,
        default=0.1,
        help="first_block: 0.05 (diffusers' default) never skips on shapeworld-sft; 0.1 skips 1 in 4",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled configurations")
    parser.add_argument("--name", default="inference", help="results file stem")
    args = parser.parse_args()

    models = {"teacher": args.teacher, **named_pairs(args.students, "--students")}
    prompts = shapeworld_prompts(args.split, args.n, args.seed)
    accelerations = {
        "none": None,
        args.cache: AccelerationConfig(cache=CacheConfig(name=args.cache, threshold=args.cache_threshold)),
    }
    if not args.no_compile:
        accelerations["compile"] = AccelerationConfig(compile=True)
        accelerations[f"{args.cache}+compile"] = AccelerationConfig(
            cache=CacheConfig(name=args.cache, threshold=args.cache_threshold), compile=True
        )

    rows, teacher_videos = [], None
    for name, ref in models.items():
        model = load_model(ref)
        sampling, video = recommended_sampling(model), recommended_video(model)
        for acc_name, acc in accelerations.items():
            row = measure(model, prompts, sampling, video, acc, args.seed, args.batch_size)
            videos = row.pop("videos").astype(np.float32) / 255
            if teacher_videos is None:
                teacher_videos = videos
            row = {
                "model": name,
                "ref": ref,
                "acceleration": acc_name,
                "pixel_mse_to_teacher": float(np.mean((videos - teacher_videos) ** 2)),
                **row,
            }
            rows.append(row)
            print(
                f"{name:<10} {acc_name:<22} nfe {row['nfe']:>3}  blocks {row['blocks_computed'] or float('nan'):.2f}  "
                f"{row['seconds_per_video']:.3f} s/video  "
                + " ".join(f"{k} {row[k]:.3f}" for k in SHAPEWORLD_SCORES)
                + f"  mse {row['pixel_mse_to_teacher']:.4f}",
                flush=True,
            )
        del model

    base = rows[0]
    for row in rows:
        row["nfe_reduction"] = base["nfe"] / row["nfe"]
        row["speedup"] = base["seconds_per_video"] / row["seconds_per_video"]
    write_results(
        args.name,
        split=args.split,
        n=args.n,
        seed=args.seed,
        rows=rows,
    )

    labels = [f"{r['model']}\n{r['acceleration']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, len(rows) * 0.9), 4))
    left.bar(range(len(rows)), [r["seconds_per_video"] for r in rows])
    left.set_ylabel("seconds per video")
    right.bar(range(len(rows)), [r["pixel_mse_to_teacher"] for r in rows], label="pixel MSE to teacher")
    right.plot(range(len(rows)), [r["quality"] for r in rows], "o", color="C1", label="quality")
    right.plot(range(len(rows)), [r["total"] for r in rows], "s", color="C2", label="total")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
