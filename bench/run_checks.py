"""What RL runs did to their held-out videos, check by check: every evaluation's saved samples scored again.

A GRPO run logs the rewards of its held-out evaluations; this reads the videos those evaluations saved (the same
captions and seeds each time) and scores them with the ShapeWorld checks the strict total multiplies (count,
presence, size and shape, motion), the objects' area over the stated shape's, the share of frames where an
object's colour is in more than one piece (stray specks widen the extent the size check measures), and the share of
objects that go the stated way (heading). A training
reward that rises while a check falls, or while the area ratio runs past 1, is the reward being hacked; a check
that does not move is what the reward does not reach.

    .venv/bin/python bench/run_checks.py --run additive=runs/grpo-additive --run checks=runs/flash-checks \\
        --until 72 --name flash_rewards

Writes bench/results/NAME.json and NAME.png (each score against iteration, one line per run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from named_args import named_pairs  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402
from shapeworld_models import CHECKS, DIAGNOSTICS, scores_by_objects  # noqa: E402

from vidpost.data.dataset import read_metadata  # noqa: E402
from vidpost.runlog import samples_dir, saved_evaluations  # noqa: E402

SHOWN = ("total", "instruction_checks", "instruction_additive", "quality", *CHECKS, *DIAGNOSTICS)


def evaluations(run_dir: Path, until: int | None = None) -> list[int]:
    """The iterations whose held-out samples the run saved, in order (up to `until`)."""
    steps = saved_evaluations(run_dir)
    if not steps:
        raise SystemExit(f"{run_dir}: no saved held-out samples (samples/step_*)")
    return [s for s in steps if until is None or s <= until]


def score_samples(folder: Path) -> dict:
    """Mean scores of one evaluation's saved videos against the captions they were generated for."""
    records, _ = read_metadata(folder)
    videos = np.stack([np.load(folder / r["file"]) for r in records])
    scores = scores_by_objects(videos, [r["caption"] for r in records])
    scores.pop("by_objects")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR, once per run")
    parser.add_argument("--until", type=int, default=None, help="the last iteration read from each run")
    parser.add_argument("--name", default="run_checks", help="results file stem")
    args = parser.parse_args()

    runs = {}
    for name, run in named_pairs(args.run, "--run").items():
        run_dir, points = Path(run), []
        for step in evaluations(run_dir, args.until):
            points.append({"iteration": step, **score_samples(samples_dir(run_dir, step))})
            print(f"{name:<12} {step:>4} " + " ".join(f"{k} {points[-1][k]:.4f}" for k in SHOWN), flush=True)
        runs[name] = {"run": str(run_dir), "curve": points}

    write_results(args.name, runs=runs)

    fig, axes = plt.subplots(2, (len(SHOWN) + 1) // 2, figsize=(3.2 * ((len(SHOWN) + 1) // 2), 6), squeeze=False)
    for ax, key in zip(axes.flat, SHOWN, strict=False):
        for name, run in runs.items():
            ax.plot([p["iteration"] for p in run["curve"]], [p[key] for p in run["curve"]], marker="o", label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(SHOWN) :]:
        ax.axis("off")
    n = next(iter(runs.values()))["curve"][0]["n"]
    fig.suptitle(f"held-out samples of each evaluation, scored check by check ({n} captions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)
    print(f"wrote {RESULTS / args.name}.json and .png")


if __name__ == "__main__":
    main()
