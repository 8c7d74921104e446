"""Flash-GRPO against full-trajectory and sliding-window GRPO, DiffusionNFT and Flash-GRPO with the
coefficient-preserving SDE step (flash-cps) on ShapeWorld: held-out reward versus time.

Runs `vidpost grpo` with each shipped strategy config (configs/shapeworld/grpo_{flash,full,window,nft}.yaml;
flash-cps is grpo_flash.yaml with rollout.noise.schedule=cps), evaluating on held-out captions every few
iterations (deterministic ODE, fixed seeds). From each run's log it reads the training wall-clock (the sum of the
timed phases; evaluation excluded) at every evaluation, and reports:
- at an equal number of updates (`--updates`): each strategy's final held-out total and success rate, and its time;
- at equal wall-clock budgets (`--minutes 15 45`: every run trains until its training wall-clock reaches the
  largest budget, then checkpoints and stops, the recipe's `stop_after_seconds`): each strategy's last held-out
  evaluation at or before each budget;
- the time flash needed to reach full's final held-out total (the goal: at most a fifth of full's time), and
  full's final graded and additive instruction scores.

    .venv/bin/python bench/grpo_strategies.py --updates 40 --eval-every 5
    .venv/bin/python bench/grpo_strategies.py --minutes 15 45 --eval-every flash=20 full=4 window=10 nft=16 \
        --set 'reward.weights={instruction_graded: 1.0}'
    .venv/bin/python bench/grpo_strategies.py --strategies flash full --set model.path=runs/my-sft
    .venv/bin/python bench/grpo_strategies.py --reward brightness   # a reward any model can move: does it learn?
    .venv/bin/python bench/grpo_strategies.py --minutes 15 45 --run flash=runs/grpo-additive --name grpo_additive

A run already in `--runs` resumes from its last checkpoint (runs are long; the bench can be stopped and rerun).
`--run STRATEGY=DIR` reads a run made elsewhere with the same settings; a longer one is read up to the largest
budget (its evaluations of steps begun within it).

`--reward brightness` trains on the mean pixel value of each video (a bench-only reward, registered here),
a check that each strategy's loop learns while the ShapeWorld reward is still out of the model's reach.

Writes bench/results/grpo_strategies{,_brightness}.{json,png} and `_samples.png` (the first held-out clips at the
start and after each strategy); the runs stay in
runs/bench-grpo-<strategy>[-brightness]/.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from named_args import named_pairs  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402

from vidpost.config import load_config  # noqa: E402
from vidpost.data.dataset import read_metadata  # noqa: E402
from vidpost.data.video_io import to_float  # noqa: E402
from vidpost.recipes.grpo import GRPOConfig, train  # noqa: E402
from vidpost.rewards.registry import register_family  # noqa: E402
from vidpost.runlog import read_metrics, samples_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("flash", "full", "window", "nft", "flash-cps")
VARIANTS = {"flash-cps": ("flash", ["rollout.noise.schedule=cps"])}  # name -> (config, overrides)


def brightness(videos, prompts) -> dict:
    """The mean pixel value of each video (N, T, H, W, 3) in [0, 1]: a reward every model can move."""
    return {"brightness": videos.reshape(len(videos), -1).mean(axis=1)}


def heldout_brightness(run_dir: Path, iteration: int) -> float:
    """The mean brightness of the held-out videos the evaluation at `iteration` saved (fixed captions and seeds)."""
    folder = samples_dir(run_dir, iteration)
    records, _ = read_metadata(folder)
    return float(np.mean([to_float(np.load(folder / r["file"])).mean() for r in records]))


def sample_sheet(runs: dict[str, dict], path: Path, clips: int = 6, scale: int = 4) -> None:
    """The first held-out clips, frames left to right: the starting model's, then each strategy's at its last
    evaluation (the same captions and seeds), to look for what the reward liked (an artefact, a vanished object)."""
    first = next(iter(runs.values()))
    rows = [("start", Path(first["run"]), first["curve"][0]["iteration"])]
    rows += [(name, Path(r["run"]), r["curve"][-1]["iteration"]) for name, r in runs.items()]
    strips, labels = [], []
    for k in range(clips):
        for name, run_dir, iteration in rows:
            folder = samples_dir(run_dir, iteration)
            record = read_metadata(folder)[0][k]
            frames = to_float(np.load(folder / record["file"]))  # (T, H, W, 3)
            framed = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
            strips.append(np.concatenate(list(framed), axis=1))
            caption = "\n".join(textwrap.wrap(record["caption"], 48)) + "\n" if name == "start" else ""
            labels.append(f"{caption}{name}, iteration {iteration}")
    image = np.concatenate(strips, axis=0).repeat(scale, 0).repeat(scale, 1)
    row_px = image.shape[0] / len(strips)
    fig, ax = plt.subplots(figsize=(image.shape[1] / 100 + 6, image.shape[0] / 100))
    ax.imshow(image, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * row_px for i in range(len(strips))], labels, fontsize=7)
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve(run_dir: Path, until_seconds: float = float("inf")) -> list[dict]:
    """Per evaluation: iteration, training seconds so far, the held-out rewards (with the held-out videos'
    brightness), and the mean training reward (reward/weighted, what the run optimises) over the iterations
    since the previous evaluation (the training prompts change every iteration, so it is noisy). Steps begun
    after `until_seconds` of training are left out, as a run stopped by that budget would not have made them."""
    seconds, step_began, points, trained = 0.0, 0.0, [], []
    for row in read_metrics(run_dir):
        spent = sum(v for k, v in row.items() if k.startswith("time/"))
        if spent:
            step_began, seconds = seconds, seconds + spent
        if step_began >= until_seconds:  # a step begun after the budget: a longer run read at that budget
            break
        if "reward/weighted" in row:
            trained.append(row["reward/weighted"])
        if "eval/total" in row:
            points.append(
                {
                    "iteration": row["step"],
                    "seconds": seconds,
                    "total": row["eval/total"],
                    "success": row["eval/success"],
                    "graded": row.get("eval/instruction_graded"),
                    "additive": row.get("eval/instruction_additive"),
                    "coherence": row.get("eval/coherence"),
                    "quality": row.get("eval/quality"),
                    "brightness": heldout_brightness(run_dir, row["step"]),
                    "training_reward": sum(trained) / len(trained) if trained else None,
                }
            )
            trained = []
    return points


def reward_at(points: list[dict], seconds: float, key: str = "total") -> float:
    """The last evaluated `key` at or before `seconds` of training."""
    return [p for p in points if p["seconds"] <= seconds + 1e-9][-1][key]


def training_seconds(run_dir: Path) -> float:
    """The training wall-clock so far (the sum of the timed phases in the run's log; evaluation excluded)."""
    try:
        rows = read_metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):  # not started yet, or a line being written
        return 0.0
    return sum(v for row in rows for k, v in row.items() if k.startswith("time/"))


def eval_every_for(spec: list[str], name: str) -> int:
    """`--eval-every 5` for every strategy, or `flash=20 full=4 ...` per strategy (a strategy left out: 5)."""
    if len(spec) == 1 and "=" not in spec[0]:
        return int(spec[0])
    table = dict(item.split("=", 1) for item in spec)
    return int(table.get(name, 5))


def time_to_reach(points: list[dict], target: float, key: str = "total") -> float | None:
    reached = [p["seconds"] for p in points if p[key] is not None and p[key] >= target]
    return reached[0] if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument(
        "--reward",
        choices=["config", "brightness"],
        default="config",
        help="the configs' reward (instruction_additive), or the mean brightness",
    )
    parser.add_argument("--updates", type=int, default=40, help="iterations per strategy (equal updates)")
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="*",
        default=[],
        help="equal wall-clock budgets in training minutes; each run trains to the largest (--updates is then a cap)",
    )
    parser.add_argument(
        "--eval-every", nargs="+", default=["5"], help="iterations between evaluations: N, or flash=N full=M ..."
    )
    parser.add_argument("--eval-n", type=int, default=32, help="held-out prompts per evaluation")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where the runs are written")
    parser.add_argument(
        "--run",
        nargs="*",
        default=[],
        metavar="STRATEGY=DIR",
        help="a strategy's run directory instead of --runs/bench-grpo-STRATEGY (a run trained with the same settings)",
    )
    parser.add_argument("--name", help="results file stem (default: grpo_strategies[_REWARD])")
    args = parser.parse_args()
    run_dirs = named_pairs(args.run, "--run")
    horizon = 60 * max(args.minutes) if args.minutes else float("inf")

    rewards = []
    if args.reward == "brightness":
        register_family("bench", brightness, ["brightness"])
        rewards = ["reward.weights={brightness: 1.0}"]
    runs = {}
    for name in args.strategies:
        config, variant = VARIANTS.get(name, (name, []))
        overrides = [
            f"train.steps={args.updates}",
            f"validation.every_steps={eval_every_for(args.eval_every, name)}",
            f"validation.n={args.eval_n}",
            "checkpoint.every_steps=1000",
            *variant,
            *rewards,
            *args.set,
        ]
        cfg = load_config(GRPOConfig, ROOT / "configs" / "shapeworld" / f"grpo_{config}.yaml", overrides)
        default_dir = f"bench-grpo-{name}" if args.reward == "config" else f"bench-grpo-{name}-{args.reward}"
        out = Path(run_dirs.get(name) or Path(args.runs) / default_dir)
        if args.minutes:
            if training_seconds(out) < horizon:  # else: this run already spent its budget
                train(cfg, out, stop_after_seconds=horizon)  # checkpointed there, resumable
        else:
            train(cfg, out)
        runs[name] = {
            "run": str(out),
            "overrides": overrides,
            "reward": cfg.reward.weights,
            "curve": curve(out, horizon),
        }
        print(
            f"{name}: "
            + ", ".join(f"it {p['iteration']} {p['seconds']:.0f}s total {p['total']:.3f}" for p in runs[name]["curve"]),
            flush=True,
        )

    budget = min(r["curve"][-1]["seconds"] for r in runs.values())
    table = []
    for name, r in runs.items():
        points = r["curve"]
        updates = points[-1]["iteration"]
        table.append(
            {
                "strategy": name,
                "updates": updates,
                "seconds": points[-1]["seconds"],
                "seconds_per_update": points[-1]["seconds"] / max(updates, 1),
                "start_total": points[0]["total"],
                "final_total": points[-1]["total"],
                "final_success": points[-1]["success"],
                "total_at_equal_time": reward_at(points, budget),
                "start_quality": points[0]["quality"],
                "final_quality": points[-1]["quality"],
                "start_coherence": points[0]["coherence"],
                "final_coherence": points[-1]["coherence"],
                "start_brightness": points[0]["brightness"],
                "final_brightness": points[-1]["brightness"],
                "brightness_at_equal_time": reward_at(points, budget, "brightness"),
                "final_training_reward": points[-1]["training_reward"],
                **{
                    f"{key}_at_{minutes:g}min": reward_at(points, 60 * minutes, key)
                    for minutes in args.minutes
                    for key in ("total", "success", "graded", "additive", "coherence", "quality")
                },
            }
        )
    summary = {"equal_time_budget_s": budget, "budgets_min": args.minutes}
    if "flash" in runs and "full" in runs:
        full_seconds = runs["full"]["curve"][-1]["seconds"]
        summary["full_seconds"] = full_seconds
        for key in ("total", "graded", "additive"):
            target = runs["full"]["curve"][-1][key]
            reach = None if target is None else time_to_reach(runs["flash"]["curve"], target, key)
            summary[f"full_final_{key}"] = target
            summary[f"flash_seconds_to_full_final_{key}"] = reach
            summary[f"flash_time_fraction_{key}"] = None if reach is None else reach / full_seconds

    stem = args.name or ("grpo_strategies" if args.reward == "config" else f"grpo_strategies_{args.reward}")
    write_results(stem, table=table, summary=summary, runs=runs)
    panels = [
        ("total", "held-out total reward"),
        ("success", "held-out success"),
        ("graded", "held-out graded instruction"),
        ("additive", "held-out additive instruction"),
        ("quality", "held-out quality"),
        ("training_reward", "training reward (reward.weights)"),
    ]
    if args.reward == "brightness":
        panels[0] = ("brightness", "held-out brightness")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, r in runs.items():
            shown = [p for p in r["curve"] if p[key] is not None]
            ax.plot([p["seconds"] / 60 for p in shown], [p[key] for p in shown], marker="o", label=name)
        for minutes in args.minutes:
            ax.axvline(minutes, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("training wall-clock (min, evaluation excluded)")
        ax.set_ylabel(label)
        ax.legend()
    rewards_trained = {json.dumps(r["reward"]) for r in runs.values()}
    fig.suptitle(f"RL strategies on ShapeWorld, trained on {' / '.join(sorted(rewards_trained))}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=120)
    sample_sheet(runs, RESULTS / f"{stem}_samples.png")
    for row in table:
        print(json.dumps(row))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
