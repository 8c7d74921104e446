"""The run-checks bench's reading of a run's saved held-out samples: every evaluation in order, scored check by
check against the captions the videos were made for."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from vidpost.runlog import samples_dir
from vidpost.world.grammar import parse_caption
from vidpost.world.render import render_scene

BENCH = Path(__file__).resolve().parents[2] / "bench"
CAPTION = "a large red square moving right slowly on a black background"


@pytest.fixture
def run_checks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("run_checks")


def save_evaluation(run: Path, step: int, videos: list[np.ndarray]) -> None:
    folder = samples_dir(run, step)
    (folder / "clips").mkdir(parents=True)
    lines = []
    for i, video in enumerate(videos):
        np.save(folder / "clips" / f"{i:06d}.npy", np.round(video * 255).astype(np.uint8))
        lines.append(json.dumps({"file": f"clips/{i:06d}.npy", "caption": CAPTION}) + "\n")
    (folder / "metadata.jsonl").write_text("".join(lines))


def test_evaluations_are_read_in_order_and_scored_check_by_check(run_checks, tmp_path):
    truth = render_scene(parse_caption(CAPTION), np.random.default_rng(0))
    doubled = truth.copy()
    doubled[:, :, 1:] = np.maximum(doubled[:, :, 1:], doubled[:, :, :-1])  # every object a pixel wider
    for step, videos in [(10, [truth, doubled]), (0, [doubled, doubled]), (20, [truth, truth])]:
        save_evaluation(tmp_path, step, videos)

    assert run_checks.evaluations(tmp_path) == [0, 10, 20]
    assert run_checks.evaluations(tmp_path, until=10) == [0, 10]
    first, middle, last = (run_checks.score_samples(samples_dir(tmp_path, s)) for s in (0, 10, 20))
    # a 10 px wide square of a stated 9 passes the size check (1 px of tolerance) at 90/81 of the stated area
    assert last["size_shape"] == first["size_shape"] == 1.0 and last["n"] == 2
    assert last["area_ratio"] == pytest.approx(1.0)
    assert first["area_ratio"] == pytest.approx(90 / 81)
    assert middle["area_ratio"] == pytest.approx((1 + 90 / 81) / 2)


def test_a_run_without_samples_or_a_bad_pair_is_named(run_checks, tmp_path):
    with pytest.raises(SystemExit, match="no saved held-out samples"):
        run_checks.evaluations(tmp_path)
    named_pairs = importlib.import_module("named_args").named_pairs
    for bad in ("runs/flash", "=runs/flash", "flash="):
        with pytest.raises(SystemExit, match="--run expects NAME=VALUE"):
            named_pairs([bad], "--run")
    assert named_pairs(["a=runs/x", "b=c=d"], "--run") == {"a": "runs/x", "b": "c=d"}


def test_main_writes_the_curves_with_the_command_machine_and_date(run_checks, tmp_path, monkeypatch):
    truth = render_scene(parse_caption(CAPTION), np.random.default_rng(0))
    for step in (0, 8):
        save_evaluation(tmp_path / "run", step, [truth])
    results = tmp_path / "results"
    monkeypatch.setattr(importlib.import_module("results_file"), "RESULTS", results)
    monkeypatch.setattr(run_checks, "RESULTS", results)
    monkeypatch.setattr("sys.argv", ["run_checks.py", "--run", f"a={tmp_path / 'run'}", "--name", "t"])
    run_checks.main()
    payload = json.loads((results / "t.json").read_text())
    assert list(payload) == ["command", "runs", "machine", "date"]
    assert [p["iteration"] for p in payload["runs"]["a"]["curve"]] == [0, 8]
    assert payload["runs"]["a"]["curve"][1]["total"] >= 0.99
    assert (results / "t.png").stat().st_size > 0
