"""Flash-GRPO against full-trajectory and sliding-window GRPO on ShapeWorld: held-out reward versus time.

Runs `vidpost grpo` with each shipped strategy config (configs/shapeworld/grpo_{flash,full,window}.yaml) for
the same number of updates, evaluating on held-out captions every few iterations (deterministic ODE, fixed
seeds). From each run's log it reads the training wall-clock (the sum of the timed phases; evaluation
excluded) at every evaluation, and reports:
- at an equal number of updates: each strategy's final held-out total and success rate, and its time;
- at an equal wall-clock budget (the shortest run's time): each strategy's last held-out total by then;
- the time flash needed to reach full's final held-out total (the goal: at most a fifth of full's time).

    .venv/bin/python bench/grpo_strategies.py --updates 40 --eval-every 5
    .venv/bin/python bench/grpo_strategies.py --strategies flash full --set model.path=runs/my-sft

Writes bench/results/grpo_strategies.{json,png}; the runs stay in runs/bench-grpo-<strategy>/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vidpost.config import load_config  # noqa: E402
from vidpost.recipes.grpo import GRPOConfig, train  # noqa: E402
from vidpost.runlog import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def curve(run_dir: Path) -> list[dict]:
    """[(iteration, training seconds so far, eval/total, eval/success)] from a run's metrics log."""
    seconds, points = 0.0, []
    for row in read_metrics(run_dir):
        seconds += sum(v for k, v in row.items() if k.startswith("time/"))
        if "eval/total" in row:
            points.append({"iteration": row["step"], "seconds": seconds, "total": row["eval/total"],
                           "success": row["eval/success"]})
    return points


def reward_at(points: list[dict], seconds: float) -> float:
    """The last evaluated total at or before `seconds` of training."""
    return [p for p in points if p["seconds"] <= seconds + 1e-9][-1]["total"]


def time_to_reach(points: list[dict], target: float) -> float | None:
    reached = [p["seconds"] for p in points if p["total"] >= target]
    return reached[0] if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["flash", "full", "window"])
    parser.add_argument("--updates", type=int, default=40, help="iterations per strategy (equal updates)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-n", type=int, default=32, help="held-out prompts per evaluation")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where the runs are written")
    args = parser.parse_args()

    runs = {}
    for name in args.strategies:
        overrides = [f"train.steps={args.updates}", f"evaluation.every_steps={args.eval_every}",
                     f"evaluation.n={args.eval_n}", "checkpoint.every_steps=1000", *args.set]
        cfg = load_config(GRPOConfig, ROOT / "configs" / "shapeworld" / f"grpo_{name}.yaml", overrides)
        out = Path(args.runs) / f"bench-grpo-{name}"
        train(cfg, out)
        runs[name] = {"run": str(out), "overrides": overrides, "curve": curve(out)}
        print(f"{name}: " + ", ".join(f"it {p['iteration']} {p['seconds']:.0f}s total {p['total']:.3f}"
                                      for p in runs[name]["curve"]), flush=True)

    budget = min(r["curve"][-1]["seconds"] for r in runs.values())
    table = []
    for name, r in runs.items():
        points = r["curve"]
        table.append({"strategy": name, "updates": points[-1]["iteration"], "seconds": points[-1]["seconds"],
                      "start_total": points[0]["total"], "final_total": points[-1]["total"],
                      "final_success": points[-1]["success"], "total_at_equal_time": reward_at(points, budget)})
    summary = {"equal_time_budget_s": budget}
    if "flash" in runs and "full" in runs:
        target = runs["full"]["curve"][-1]["total"]
        reach = time_to_reach(runs["flash"]["curve"], target)
        summary.update({"full_final_total": target, "flash_seconds_to_full_final": reach,
                        "full_seconds": runs["full"]["curve"][-1]["seconds"],
                        "flash_time_fraction": None if reach is None else reach / runs["full"]["curve"][-1]["seconds"]})

    RESULTS.mkdir(exist_ok=True)
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "table": table, "summary": summary,
               "runs": runs, "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                         "torch": torch.__version__, "threads": torch.get_num_threads()},
               "date": datetime.date.today().isoformat()}
    (RESULTS / "grpo_strategies.json").write_text(json.dumps(payload, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in runs.items():
        ax.plot([p["seconds"] / 60 for p in r["curve"]], [p["total"] for p in r["curve"]], marker="o", label=name)
    ax.set_xlabel("training wall-clock (min, evaluation excluded)")
    ax.set_ylabel("held-out total reward")
    ax.set_title("GRPO strategies on ShapeWorld")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "grpo_strategies.png", dpi=120)
    for row in table:
        print(json.dumps(row))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
