"""`vidpost sample`: model names and run directories resolve, videos land in a dataset folder that scores."""

import json

import pytest
import torch

from vidpost.cli import main
from vidpost.data.prompts import read_prompts
from vidpost.errors import VidpostError
from vidpost.models.resolve import resolve_model
from vidpost.models.wan import WanVideoModel
from vidpost.sample import sample_to_folder

PROMPTS = ["a red circle moving left", "a large blue square staying still on a white background"]


@pytest.fixture(scope="module")
def model_dir(tiny_video_model):
    return tiny_video_model("model", {"steps": 3, "shift": 2.0, "guidance": 3.0})


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def test_sample_writes_a_scorable_dataset_with_the_models_defaults(model_dir, prompts_file, tmp_path):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(model_dir), "--prompts", str(prompts_file), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in records] == PROMPTS
    report = json.loads((out / "sample.json").read_text())
    assert report["sampling"]["steps"] == 3 and report["nfe_per_video"] == 6  # 3 steps x 2 passes (CFG)
    assert report["video"] == {"frames": 3, "height": 16, "width": 16}
    assert report["seconds_per_video"] > 0 and report["peak_memory_mb"] > 0
    assert main(["score", str(out), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 2


def test_flags_override_the_card_and_seeds_fix_the_videos(model_dir, prompts_file, tmp_path):
    a = sample_to_folder(
        str(model_dir), str(prompts_file), tmp_path / "a", sampling_overrides={"guidance": 1.0}, progress=False
    )
    assert a["nfe_per_video"] == 3
    sample_to_folder(
        str(model_dir),
        str(prompts_file),
        tmp_path / "b",
        sampling_overrides={"guidance": 1.0},
        batch_size=1,
        progress=False,
    )
    # video j depends on (prompt, seed + j) only, not on the batch it was generated in
    for name in ("000000.npy", "000001.npy"):
        assert (tmp_path / "a" / "clips" / name).read_bytes() == (tmp_path / "b" / "clips" / name).read_bytes()


def test_shipped_names_resolve_to_assets(monkeypatch, model_dir, tmp_path):
    (tmp_path / "shapeworld-base").symlink_to(model_dir)
    monkeypatch.setenv("VIDPOST_ASSETS", str(tmp_path))
    assert resolve_model("shapeworld-base").path == tmp_path / "shapeworld-base"
    with pytest.raises(VidpostError, match="shipped model 'shapeworld-sft' not found"):
        resolve_model("shapeworld-sft")


def test_bad_model_and_prompt_inputs_are_named(tmp_path, prompts_file, capsys):
    assert main(["sample", "--model", "no-such-model", "--prompts", str(prompts_file), "--out", str(tmp_path)]) == 2
    assert "model not found: no-such-model" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(VidpostError, match="no prompts"):
        read_prompts(str(tmp_path / "empty.txt"))
    with pytest.raises(VidpostError, match="prompts file not found"):
        read_prompts(str(tmp_path / "missing.txt"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    with pytest.raises(VidpostError, match="no final model yet"):
        resolve_model(run)


def test_loaded_model_matches_the_saved_one(model_dir):
    from vidpost.models.load import load_model

    model = load_model(str(model_dir))
    assert model.card["video"]["frames"] == 3 and model.max_sequence_length == 64
    fresh = WanVideoModel.build_tiny("pixel", patch_size=(1, 4, 4), seed=2)
    for (name, a), b in zip(
        model.transformer.state_dict().items(), fresh.transformer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_sample_with_a_feature_cache_records_it(model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sample", "--model", str(model_dir), "--prompts", str(prompts_file), "--out", str(out)]
    assert main([*args, "--cache", "first_block", "--cache-threshold", "0.2"]) == 0
    report = json.loads((out / "sample.json").read_text())
    assert report["acceleration"] == {
        "cache": {"name": "first_block", "threshold": 0.2},
        "compile": False,
        "attention_backend": None,
    }
    assert report["nfe_per_video"] == 6  # transformer calls, however much of each the cache skipped
    assert main([*args, "--cache", "mag", "--overwrite"]) == 0  # calibrates on one extra video
    cache = json.loads((out / "sample.json").read_text())["acceleration"]["cache"]
    assert cache["calibrate"] is True and len(cache["mag_ratios"]) == 3 and cache["calibration_nfe"] == 6
    capsys.readouterr()
    assert main([*args, "--cache", "pab", "--cache-threshold", "0.2", "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        "error: --cache pab: threshold: not a key of cache 'pab' (its keys: spatial_attention_block_skip_range, "
        "spatial_attention_timestep_skip_range)\n"
    )
    assert main([*args, "--attention-backend", "sage", "--overwrite"]) == 2
    assert (
        capsys.readouterr().err.splitlines()[-1].startswith("error: attention backend 'sage' is not available here: ")
    )


def test_an_acceleration_file_sets_every_cache_key_and_excludes_the_flags(model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sample", "--model", str(model_dir), "--prompts", str(prompts_file), "--out", str(out)]
    assert main([*args, "--cache", "mag"]) == 0
    ratios = json.loads((out / "sample.json").read_text())["acceleration"]["cache"]["mag_ratios"]
    # MagCache's calibrated ratios can only come from a file: given, they are used, and nothing is recalibrated
    accel = tmp_path / "mag.yaml"
    accel.write_text(f"cache:\n  name: mag\n  mag_ratios: {json.dumps(ratios)}\n  threshold: 0.5\n")
    assert main([*args, "--acceleration", str(accel), "--overwrite"]) == 0
    cache = json.loads((out / "sample.json").read_text())["acceleration"]["cache"]
    assert cache["mag_ratios"] == ratios and cache["threshold"] == 0.5 and not cache.get("calibration_nfe")
    capsys.readouterr()
    assert main([*args, "--acceleration", str(accel), "--compile", "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        f"error: --acceleration {accel} sets the cache, compile and attention backend; drop --compile\n"
    )
    accel.write_text("cache:\n  name: mag\n  treshold: 0.5\n")
    assert main([*args, "--acceleration", str(accel), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "treshold" in error and str(accel) in error
