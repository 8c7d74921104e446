"""The `vidpost` command, run in-process through `vidpost.cli.main` (plus one real console-script run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidpost.cli import main
from vidpost.config import load_config
from vidpost.data.dataset import read_metadata
from vidpost.data.video_io import read_video
from vidpost.world.config import DatasetConfig, WorldConfig
from vidpost.world.grammar import parse_caption


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one in-process `vidpost` call."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def make(
    capsys: pytest.CaptureFixture[str], out: Path, *extra: str, n: int = 4, seed: int = 3, split: str = "eval"
) -> Path:
    code, _, err = run(capsys, "world", "make", "--out", out, "--n", n, "--seed", seed, "--split", split, *extra)
    assert code == 0, err
    return out


def records(root: Path) -> list[dict]:
    recs, problems = read_metadata(root)
    assert problems == []
    return recs


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- world make ----------------------------------------------------------------------------------------


def test_world_make_writes_dataset_and_reloadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    code, stdout, err = run(
        capsys,
        "world",
        "make",
        "--out",
        out,
        "--n",
        5,
        "--seed",
        7,
        "--split",
        "heldout",
        "--style",
        "web",
        "world.frames=12",
        "web.p_defect=1.0",
    )
    assert code == 0, err
    assert "wrote 5 web clips" in stdout
    recs = records(out)
    assert len(recs) == 5
    assert [r["index"] for r in recs] == list(range(5))
    for rec in recs:
        assert rec["style"] == "web" and rec["split"] == "heldout"
        frames = read_video(out / rec["file"])
        assert frames.shape == (12, 24, 24, 3) and frames.dtype == np.uint8
    saved = load_config(DatasetConfig, out / "config.yaml")
    expected = DatasetConfig(
        n=5, seed=7, style="web", split="heldout", world=WorldConfig(frames=12), web={"p_defect": 1.0}
    )
    assert saved == expected
    assert saved != DatasetConfig()


def test_world_make_flags_override_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "world.yaml"
    cfg.write_text("n: 9\nseed: 1\nsplit: train\nworld:\n  frames: 8\n")
    out = tmp_path / "ds"
    code, _, err = run(capsys, "world", "make", "--config", cfg, "--out", out, "--n", 2, "--seed", 5)
    assert code == 0, err
    assert len(records(out)) == 2
    saved = load_config(DatasetConfig, out / "config.yaml")
    assert saved == DatasetConfig(n=2, seed=5, split="train", world=WorldConfig(frames=8))


def test_world_make_refuses_existing_dataset_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = make(capsys, tmp_path / "ds", n=3)
    before = (out / "metadata.jsonl").read_bytes()
    code, stdout, err = run(capsys, "world", "make", "--out", out, "--n", 2, "--seed", 3, "--split", "eval")
    assert code == 2
    assert stdout == ""
    assert_one_line_error(err, "metadata.jsonl")
    assert (out / "metadata.jsonl").read_bytes() == before  # untouched

    code, _, err = run(capsys, "world", "make", "--out", out, "--n", 2, "--seed", 4, "--split", "eval", "--overwrite")
    assert code == 0, err
    assert len(records(out)) == 2
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["000000.npy", "000001.npy"]
    assert load_config(DatasetConfig, out / "config.yaml").seed == 4


def test_world_make_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make(capsys, tmp_path / "a", n=4, seed=11)
    b = make(capsys, tmp_path / "b", n=4, seed=11)
    c = make(capsys, tmp_path / "c", n=4, seed=12)
    assert records(a) == records(b)
    for rec in records(a):
        assert (a / rec["file"]).read_bytes() == (b / rec["file"]).read_bytes()
    assert (a / "config.yaml").read_bytes() == (b / "config.yaml").read_bytes()
    assert [r["caption"] for r in records(a)] != [r["caption"] for r in records(c)]
    assert any((a / r["file"]).read_bytes() != (c / r["file"]).read_bytes() for r in records(a))


def test_world_make_prefix_does_not_depend_on_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = make(capsys, tmp_path / "small", n=2, seed=5)
    large = make(capsys, tmp_path / "large", n=4, seed=5)
    assert records(large)[:2] == records(small)
    for rec in records(small):
        assert (small / rec["file"]).read_bytes() == (large / rec["file"]).read_bytes()


# --- world prompts -------------------------------------------------------------------------------------


def test_world_prompts_match_dataset_captions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("world", "prompts", "--n", 5, "--seed", 3, "--split", "eval")
    code, canonical, err = run(capsys, *args)
    assert code == 0, err
    canonical_lines = canonical.splitlines()
    assert len(canonical_lines) == 5
    out = make(capsys, tmp_path / "ds", n=5, seed=3, split="eval")
    assert canonical_lines == [r["caption"] for r in records(out)]

    code, terse, err = run(capsys, *args, "--terse")
    assert code == 0, err
    terse_lines = terse.splitlines()
    assert len(terse_lines) == 5
    assert all(line.strip() for line in terse_lines)
    assert terse_lines != canonical_lines
    assert terse_lines == [r["terse"] for r in records(out)]

    code, jsonl, err = run(capsys, *args, "--jsonl")
    assert code == 0, err
    objects = [json.loads(line) for line in jsonl.splitlines()]
    assert len(objects) == 5
    for obj, canon, short in zip(objects, canonical_lines, terse_lines, strict=True):
        assert set(obj) == {"terse", "intent", "canonical"}
        assert obj["canonical"] == canon and obj["terse"] == short
        intent = parse_caption(obj["intent"])
        assert len(intent.objects) == len(parse_caption(canon).objects)


def test_world_prompts_depend_on_seed_and_split(capsys: pytest.CaptureFixture[str]) -> None:
    base = run(capsys, "world", "prompts", "--n", 4, "--seed", 3, "--split", "eval")[1]
    assert run(capsys, "world", "prompts", "--n", 4, "--seed", 3, "--split", "eval")[1] == base
    assert run(capsys, "world", "prompts", "--n", 4, "--seed", 4, "--split", "eval")[1] != base
    assert run(capsys, "world", "prompts", "--n", 4, "--seed", 3, "--split", "train")[1] != base


# --- config errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["world.framez=3"], "world.framez"),
        (["world.frames=abc"], "world.frames"),
        (["world.frames=1"], "world.frames"),
        (["nonsense"], "nonsense"),
    ],
)
def test_world_make_config_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    out = tmp_path / "ds"
    code, stdout, err = run(capsys, "world", "make", "--out", out, *extra)
    assert code == 2
    assert stdout == ""
    assert_one_line_error(err, needle)
    assert not (out / "metadata.jsonl").exists()


def test_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    code, _, err = run(capsys, "world", "make", "--out", tmp_path / "ds", "--config", missing)
    assert code == 2
    assert_one_line_error(err, "missing.yaml")
    code, _, err = run(capsys, "world", "prompts", "--config", missing)
    assert code == 2
    assert_one_line_error(err, "missing.yaml")


def test_bad_yaml_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("world:\n  frames: [1,\n")
    code, _, err = run(capsys, "world", "prompts", "--config", bad)
    assert code == 2
    assert_one_line_error(err, "bad.yaml")


# --- score ---------------------------------------------------------------------------------------------


def test_score_curated_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make(capsys, tmp_path / "cur", n=6)
    report = tmp_path / "reports" / "cur.json"
    code, stdout, err = run(capsys, "score", out, "--json", report)
    assert code == 0, err
    assert "total" in stdout and "success_rate" in stdout
    data = json.loads(report.read_text())
    assert data["n"] == 6
    assert data["skipped"] == 0 and data["skipped_clips"] == []
    assert data["mean"]["total"] >= 0.99
    assert data["success_rate"] == 1.0
    assert len(data["per_clip"]) == 6
    assert {c["file"] for c in data["per_clip"]} == {r["file"] for r in records(out)}
    for name in (
        "total",
        "instruction",
        "coherence",
        "quality",
        "success",
        "flicker",
        "dynamic_degree",
        "frame_consistency",
    ):
        assert name in data["mean"]
        assert 0.0 <= data["mean"][name] <= 1.0


def test_score_web_is_worse_than_curated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cur = make(capsys, tmp_path / "cur", n=8)
    web = make(capsys, tmp_path / "web", "--style", "web", n=8)
    totals = {}
    for name, folder in (("cur", cur), ("web", web)):
        report = tmp_path / f"{name}.json"
        code, _, err = run(capsys, "score", folder, "--caption-key", "canonical", "--json", report)
        assert code == 0, err
        data = json.loads(report.read_text())
        assert data["caption_key"] == "canonical" and data["n"] == 8
        totals[name] = data["mean"]["total"]
    assert totals["web"] < totals["cur"] - 0.05, totals


def test_score_two_folders_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cur = make(capsys, tmp_path / "curated_set", n=3)
    web = make(capsys, tmp_path / "web_set", "--style", "web", n=3)
    report = tmp_path / "both.json"
    code, stdout, err = run(
        capsys, "score", cur, web, "--rewards", "total,success", "--caption-key", "canonical", "--json", report
    )
    assert code == 0, err
    header = stdout.splitlines()[0]
    assert "curated_set" in header and "web_set" in header
    data = json.loads(report.read_text())
    assert [f["dataset"] for f in data["folders"]] == [str(cur), str(web)]
    assert all(set(f["mean"]) == {"total", "success"} and f["n"] == 3 for f in data["folders"])


def test_score_skips_damage_and_counts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make(capsys, tmp_path / "ds", n=6)
    recs = records(out)
    missing, corrupt, unparsable = recs[1]["file"], recs[2]["file"], recs[4]["file"]
    (out / missing).unlink()
    (out / corrupt).write_bytes(b"\x00garbage, not a clip\xff" * 10)
    recs[4]["caption"] = "a purple elephant dancing the tango"
    lines = [json.dumps(r) for r in recs] + ["{this is not json"]
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")

    report = tmp_path / "score.json"
    code, stdout, err = run(capsys, "score", out, "--json", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["n"] == 4  # 6 records - missing - corrupt (the unparsable caption's clip: caption-free metrics)
    assert data["skipped"] == 4  # missing, corrupt, unparsable caption and the non-JSON metadata line
    assert {c["file"] for c in data["per_clip"]} == {recs[i]["file"] for i in (0, 3, 4, 5)}
    assert "total" not in next(c for c in data["per_clip"] if c["file"] == unparsable)
    reasons = {s["file"]: s["reason"] for s in data["skipped_clips"]}
    assert set(reasons) == {missing, corrupt, unparsable, "metadata.jsonl:7"}
    assert "does not exist" in reasons[missing]
    assert Path(corrupt).name in reasons[corrupt]
    assert "elephant" in reasons[unparsable]
    assert "JSON" in reasons["metadata.jsonl:7"]
    assert data["mean"]["total"] >= 0.99  # the surviving clips are still clean
    assert "clips skipped" in stdout and "4" in stdout.split("clips skipped")[1]


def test_score_missing_dataset_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = tmp_path / "no_such_dataset"
    report = tmp_path / "s.json"
    code, stdout, err = run(capsys, "score", gone, "--json", report)
    assert code == 2
    assert stdout == ""
    assert_one_line_error(err, "no_such_dataset")
    assert not report.exists()


def test_score_dir_without_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "score", tmp_path / "empty")
    assert code == 2
    assert_one_line_error(err, "metadata.jsonl")


def test_score_unknown_reward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make(capsys, tmp_path / "ds", n=2)
    code, stdout, err = run(capsys, "score", out, "--rewards", "total,nosuch")
    assert code == 2
    assert stdout == ""
    assert_one_line_error(err, "nosuch")


def test_score_selected_rewards_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = make(capsys, tmp_path / "ds", n=2)
    report = tmp_path / "s.json"
    code, stdout, err = run(capsys, "score", out, "--rewards", "flicker,total", "--json", report)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert list(data["mean"]) == ["flicker", "total"]
    assert data["success_rate"] is None  # `success` was not asked for
    assert "instruction" not in stdout


# --- rewards -------------------------------------------------------------------------------------------


def test_rewards_lists_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(capsys, "rewards")
    assert code == 0, err
    names = {line.split()[0] for line in stdout.splitlines() if line.strip()}
    assert {"total", "flicker", "instruction", "success", "dynamic_degree", "frame_consistency"} <= names


@pytest.mark.parametrize("command", ["pretrain", "sft", "grpo", "distill", "enhance", "run", "world", "acceleration"])
def test_config_describes_every_key_and_its_example_loads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    from vidpost.cli import CONFIGS

    code, out, _ = run(capsys, "config", command)
    assert code == 0
    module, name, example = CONFIGS[command]
    schema = getattr(importlib.import_module(module), name)
    lines = out.splitlines()
    assert lines[0].startswith(f"# {command}:") and example in lines[0]
    top_sections = {line.split(".")[0].split(":")[0] for line in lines[1:]}
    assert top_sections == set(schema.model_fields)  # every section of the schema, nothing else
    assert all(" = " in line or "(required)" in line for line in lines[1:])
    assert all("  # " in line for line in lines[1:])
    load_config(schema, Path(__file__).resolve().parents[1] / example)  # the example the help names is valid


def test_config_lines_name_type_default_and_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "config", "sft")
    (steps,) = [line for line in out.splitlines() if line.startswith("train.steps:")]
    assert steps.startswith("train.steps: int = 1000  # ")


def test_training_help_names_example_config_and_config_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "configs/shapeworld/grpo_flash.yaml" in out and "vidpost config grpo" in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


# --- the installed console script ----------------------------------------------------------------------


def test_console_script_runs(tmp_path: Path) -> None:
    exe = shutil.which("vidpost") or str(Path(sys.executable).with_name("vidpost"))
    command = [exe] if Path(exe).exists() else [sys.executable, "-m", "vidpost.cli"]
    ok = subprocess.run(
        [*command, "world", "prompts", "--n", "3", "--seed", "3", "--split", "eval"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 3
    bad = subprocess.run(
        [*command, "world", "make", "--out", str(tmp_path / "ds"), "world.framez=3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "world.framez")
