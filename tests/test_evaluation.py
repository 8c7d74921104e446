"""`vidpost.evaluation`: scoring a dataset folder and the table `vidpost score` prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vidpost.errors import VidpostError
from vidpost.evaluation import DEFAULT_REWARDS, FolderScore, format_table, score_folder
from vidpost.rewards.registry import REWARDS
from vidpost.world.config import DatasetConfig
from vidpost.world.dataset import make_dataset


def folder(name: str, totals: list[float], successes: list[float], skipped: int = 0) -> FolderScore:
    score = FolderScore(dataset=f"/data/{name}", caption_key="caption")
    score.per_clip = [
        {"file": f"clips/{i:06d}.npy", "caption": "c", "total": t, "success": s}
        for i, (t, s) in enumerate(zip(totals, successes, strict=True))
    ]
    score.skipped = [{"file": f"clips/bad{i}.npy", "reason": "broken"} for i in range(skipped)]
    score.n = len(score.per_clip)
    return score


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("eval") / "curated", DatasetConfig(n=4, seed=2, split="eval"))


def test_format_table_two_folders() -> None:
    a = folder("curated_v1", [1.0, 0.5], [1.0, 0.0])
    b = folder("web_scrape", [0.25, 0.25, 0.25], [0.0, 0.0, 1.0], skipped=2)
    table = format_table([a, b])
    lines = table.splitlines()
    header = lines[0]
    assert "reward" in header and "curated_v1" in header and "web_scrape" in header
    assert header.index("curated_v1") < header.index("web_scrape")
    rows = {line[:20].strip(): line[20:].split() for line in lines[2:]}
    assert rows["total"] == ["0.750", "0.250"]
    assert rows["success_rate"] == ["0.500", "0.333"]
    assert "success" not in rows  # shown as success_rate
    assert rows["clips scored"] == ["2", "3"]
    assert rows["clips skipped"] == ["0", "2"]


def test_format_table_long_folder_name_stays_aligned() -> None:
    long_name = "a_really_long_dataset_folder_name"
    table = format_table([folder(long_name, [1.0], [1.0]), folder("x", [0.0], [0.0])])
    lines = table.splitlines()
    assert long_name in lines[0]
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header


def test_format_table_reward_missing_in_one_folder_is_nan() -> None:
    a = folder("a", [1.0], [1.0])
    b = FolderScore(dataset="b", caption_key="caption", n=1, per_clip=[{"file": "f", "caption": "c", "flicker": 0.9}])
    rows = {line[:20].strip(): line[20:].split() for line in format_table([a, b]).splitlines()[2:]}
    assert rows["total"] == ["1.000", "nan"]
    assert rows["flicker"] == ["nan", "0.900"]


def test_folder_score_mean_and_json() -> None:
    score = folder("d", [1.0, 0.0], [1.0, 0.0], skipped=1)
    assert score.mean == {"total": 0.5, "success": 0.5}
    data = json.loads(json.dumps(score.to_json()))
    assert data["n"] == 2 and data["skipped"] == 1
    assert data["success_rate"] == 0.5
    assert data["skipped_clips"] == [{"file": "clips/bad0.npy", "reason": "broken"}]
    empty = FolderScore(dataset="e", caption_key="caption")
    assert empty.mean == {}
    assert empty.to_json()["success_rate"] is None


def test_score_folder_curated(curated: Path) -> None:
    score = score_folder(curated, progress=False)
    assert score.n == 4 and score.skipped == []
    assert list(score.mean) == list(DEFAULT_REWARDS)
    assert score.mean["total"] >= 0.99
    assert score.mean["success"] == 1.0
    for clip in score.per_clip:
        assert all(0.0 <= clip[name] <= 1.0 and not math.isnan(clip[name]) for name in DEFAULT_REWARDS)


def test_score_folder_missing_caption_key_skips_every_clip(curated: Path) -> None:
    score = score_folder(curated, caption_key="no_such_key", rewards=["total"], progress=False)
    assert score.n == 0
    assert len(score.skipped) == 4
    assert all("no_such_key" in s["reason"] for s in score.skipped)
    assert score.to_json()["mean"] == {}


def test_score_folder_terse_intent_is_partial_but_parsable(curated: Path) -> None:
    # `intent` captions state fewer attributes; they must still parse and score the true clip well.
    score = score_folder(curated, caption_key="intent", rewards=["instruction"], progress=False)
    assert score.n == 4 and score.skipped == []
    assert score.mean["instruction"] >= 0.99


def test_score_folder_rejects_unknown_reward_before_reading(tmp_path: Path) -> None:
    with pytest.raises(VidpostError, match="nosuch"):
        score_folder(tmp_path / "does_not_exist", rewards=["total", "nosuch"], progress=False)


def test_default_rewards_are_registered() -> None:
    assert set(DEFAULT_REWARDS) <= set(REWARDS)


def test_all_unparsable_captions_hint_at_caption_key(tmp_path, caplog):
    import numpy as np

    from vidpost.data.dataset import DatasetWriter

    with DatasetWriter(tmp_path / "web") as writer:
        for text in ("moving up slowly, a blue large triangle", "a purple blob"):
            writer.add(np.zeros((10, 32, 32, 3), np.uint8), text, canonical="a red circle")
    with caplog.at_level("WARNING", logger="vidpost"):
        result = score_folder(tmp_path / "web", progress=False)
    assert result.n == 2 and len(result.skipped) == 2  # the caption-free metrics only
    assert "flicker" in result.mean and "total" not in result.mean
    assert "--caption-key canonical" in caplog.text
    with DatasetWriter(tmp_path / "bare") as writer:
        writer.add(np.zeros((10, 32, 32, 3), np.uint8), "a purple blob", source="camera 2")
    with caplog.at_level("WARNING", logger="vidpost"):
        score_folder(tmp_path / "bare", rewards=["total"], progress=False)
    assert "its string fields: source" in caplog.text  # never a key the dataset does not have


def test_unparsable_captions_still_get_the_caption_free_metrics(tmp_path: Path, caplog) -> None:
    web = make_dataset(tmp_path / "web", DatasetConfig(n=3, seed=2, split="eval", style="web"))
    score = score_folder(web, progress=False)
    assert score.n == 3 and len(score.skipped) == 3  # counted as skipped for the caption rewards
    assert set(score.mean) == {"flicker", "dynamic_degree", "frame_consistency"}
    assert all("scored flicker, dynamic_degree, frame_consistency only" in s["reason"] for s in score.skipped)
    assert "--caption-key): e.g. --caption-key canonical" in caplog.text


def test_vidpost_score_exits_non_zero_when_nothing_was_scored(curated: Path, capsys) -> None:
    from vidpost.cli import main

    assert main(["score", str(curated), "--caption-key", "no_such_key", "--rewards", "total"]) != 0
    assert "no clip was scored" in capsys.readouterr().err
    assert main(["score", str(curated), "--rewards", "total"]) == 0
