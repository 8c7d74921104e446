"""What prompt enhancement buys on ShapeWorld: videos from a user's terse prompt, as typed or rewritten.

For held-out terse prompts (colour-shape pairs never seen in training), one video each from the video model
given (a) the raw terse prompt, (b) the SFT enhancer's rewrite, (c) the GRPO enhancer's rewrite, (d) the
oracle: the clip's full canonical caption. Every video is scored against the user's intent (the spec behind
the terse prompt, what the rewards may check), from the same noise seed per prompt in every row. Also
reported per enhancer: the share of rewrites that passed its check (the rest fell back to the raw prompt)
and that state everything the intent states.

    .venv/bin/python bench/enhancer.py --enhancers sft=runs/shapeworld-enhancer/sft grpo=shapeworld-enhancer

Writes bench/results/enhancer.json and bench/results/enhancer.png.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from named_args import named_pairs  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402

from vidpost.enhance.intent import rewrite_metrics  # noqa: E402
from vidpost.enhance.resolve import load_enhancer  # noqa: E402
from vidpost.enhance.rewards import prompts_used  # noqa: E402
from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_records  # noqa: E402
from vidpost.generation import generate, recommended_sampling, recommended_video  # noqa: E402
from vidpost.models.load import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-model", default="shapeworld-sft")
    parser.add_argument(
        "--enhancers",
        nargs="*",
        default=[],
        metavar="NAME=ENHANCER",
        help="enhancers to compare (name, directory or run directory)",
    )
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--n", type=int, default=128, help="prompts")
    parser.add_argument("--seed", type=int, default=0, help="prompt and noise seed")
    parser.add_argument("--name", default="enhancer", help="results file stem")
    args = parser.parse_args()

    records = shapeworld_records(args.split, args.n, args.seed)
    terse, intents = [r["terse"] for r in records], [r["intent"] for r in records]
    prompts = {"raw terse prompt": terse}
    extra: dict[str, dict] = {"raw terse prompt": {}}
    for name, ref in named_pairs(args.enhancers, "--enhancers").items():
        raw = [text or "" for text in load_enhancer(ref).generate(terse)]  # unchecked, for the intent share
        used, passed = prompts_used(terse, raw)  # a rewrite that fails the check falls back, as in use
        prompts[f"{name} enhancer"] = used
        extra[f"{name} enhancer"] = {
            "ref": ref,
            "passed_check": float(passed.mean()),
            **{f"rewrite_{k}": v for k, v in rewrite_metrics(raw, intents).items()},
        }
    prompts["oracle caption"] = [r["canonical"] for r in records]
    extra["oracle caption"] = {}

    model = load_model(args.video_model)
    sampling, video = recommended_sampling(model), recommended_video(model)
    rows = []
    for name, used in prompts.items():
        out = generate(model, used, sampling, video, seed=args.seed, progress=False)
        scores = score_videos(out.videos, intents, SHAPEWORLD_SCORES)
        rows.append({"prompts": name, **extra[name], **scores, "examples": list(zip(terse[:3], used[:3], strict=True))})
        print(f"{name:<20} " + " ".join(f"{k} {scores[k]:.3f}" for k in SHAPEWORLD_SCORES), flush=True)

    write_results(
        args.name,
        video_model=args.video_model,
        split=args.split,
        n=args.n,
        seed=args.seed,
        sampling=sampling.model_dump(),
        rows=rows,
    )

    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for j, row in enumerate(rows):
        ax.bar(
            [i + j * width for i in range(len(SHAPEWORLD_SCORES))],
            [row[k] for k in SHAPEWORLD_SCORES],
            width,
            label=row["prompts"],
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(SHAPEWORLD_SCORES))], SHAPEWORLD_SCORES)
    ax.set_ylim(0, 1)
    ax.set_title(f"{args.video_model}, {args.split} terse prompts (n={args.n}), scored against the intent")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
