"""The strategy bench's reading of a run's log: a longer run read at a wall-clock budget keeps only the
evaluations of steps begun within it, as a run stopped by that budget would have made them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def strategies(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("grpo_strategies")
    monkeypatch.setattr(module, "heldout_brightness", lambda run_dir, iteration: 0.0)
    return module


def write_log(run: Path, rows: list[dict]) -> None:
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluation(step: int, total: float) -> dict:
    return {"step": step, "eval/total": total, "eval/success": 0.0, "eval/instruction_additive": 0.5 + total}


def training(step: int, seconds: float) -> dict:
    return {"step": step, "reward/weighted": 0.1 * step, "time/rollout_s": seconds - 1.0, "time/update_s": 1.0}


def test_curve_cuts_a_longer_run_at_the_budget_and_keeps_the_step_that_crossed_it(strategies, tmp_path):
    rows = [evaluation(0, 0.0)]
    for step in range(1, 5):
        rows += [training(step, 10.0), evaluation(step, 0.1 * step)]
    write_log(tmp_path, rows)

    whole = strategies.curve(tmp_path)
    assert [p["iteration"] for p in whole] == [0, 1, 2, 3, 4]
    assert [p["seconds"] for p in whole] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert whole[2]["training_reward"] == pytest.approx(0.2)

    cut = strategies.curve(tmp_path, until_seconds=25.0)  # step 3 began at 20 s, step 4 at 30 s
    assert [p["iteration"] for p in cut] == [0, 1, 2, 3]
    assert strategies.curve(tmp_path, until_seconds=30.0)[-1]["iteration"] == 3

    assert strategies.time_to_reach(whole, 0.25) == 30.0
    assert strategies.time_to_reach(whole, 0.8, "additive") == 30.0
    assert strategies.time_to_reach(cut, 0.35) is None
