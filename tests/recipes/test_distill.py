"""The distillation recipe on a tiny Wan: every mode runs and records the student's sampling, which `vidpost sample`
then uses; progressive rounds resume exactly (also across a round boundary); a LoRA student loads in diffusers."""

import json
import math

import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import load_file

from vidpost.cli import main
from vidpost.config import load_config, save_config
from vidpost.diffusion.config import SamplingConfig
from vidpost.errors import ConfigError, VidpostError
from vidpost.models.resolve import resolve_model
from vidpost.models.wan import WanVideoModel
from vidpost.recipes.distill import DistillConfig, plan_rounds, round_of, train
from vidpost.runlog import read_metrics

CARD_SAMPLING = {"steps": 4, "shift": 3.0, "guidance": 2.0}
TINY = [
    "prompts.n=16",
    "train.steps_per_round=2",
    "train.prompts_per_step=2",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "validation.n=2",
    "validation.every_steps=0",
    "checkpoint.every_steps=1",
    "log.every_steps=1",
]


@pytest.fixture(scope="module")
def teacher_dir(tiny_video_model):
    """A tiny pixel-space teacher saved with a card: 4 steps, shift 3, guidance 2, 3x16x16 videos."""
    return tiny_video_model("teacher", CARD_SAMPLING)


def _config(teacher_dir, *overrides):
    return load_config(DistillConfig, None, [f"model.path={teacher_dir}", *TINY, *overrides])


def _weights(run_dir):
    return load_file(run_dir / "model" / "transformer" / "diffusion_pytorch_model.safetensors")


MODES = {  # mode -> (overrides, the student's recorded steps and guidance)
    "cfg": (["mode=cfg"], 4, 1.0),
    "steps": (["mode=steps", "student_steps=[2]"], 2, 2.0),
    "both": (["mode=both", "student_steps=[2]"], 2, 1.0),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_trains_and_records_the_students_sampling(mode, teacher_dir, tmp_path):
    overrides, steps, guidance = MODES[mode]
    assert train(_config(teacher_dir, *overrides), tmp_path, progress=False) == tmp_path / "model"
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in rows)
    assert rows[0]["nfe/teacher_per_prompt"] == 8  # the teacher's 4 steps x 2 passes (CFG)
    card = json.loads((tmp_path / "model" / "vidpost.json").read_text())
    assert card["sampling"] == {**SamplingConfig().model_dump(), "steps": steps, "shift": 3.0, "guidance": guidance}
    assert card["video"] == {"frames": 3, "height": 16, "width": 16}
    before = load_file(teacher_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    after = _weights(tmp_path)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    vals = [r for r in read_metrics(tmp_path) if "val/mse_to_teacher" in r]
    assert [r["step"] for r in vals] == [0, 2] and all(r["val/mse_to_teacher"] >= 0 for r in vals)
    assert any("teacher/total" in r for r in read_metrics(tmp_path))
    assert len((tmp_path / "samples" / "teacher" / "metadata.jsonl").read_text().splitlines()) == 2


def test_the_tiny_wan_with_its_vae_distils_with_the_teacher_set_in_the_config(tmp_path):
    cfg = load_config(
        DistillConfig,
        None,
        [
            *TINY,
            "model.path=null",
            "model.codec=vae",
            "video={frames: 5, height: 16, width: 16}",
            "teacher.steps=4",
            "teacher.shift=3.0",
            "teacher.guidance=2.0",
            "mode=both",
            "student_steps=[2]",
        ],
    )
    assert train(cfg, tmp_path, progress=False) == tmp_path / "model"
    card = json.loads((tmp_path / "model" / "vidpost.json").read_text())
    assert card["codec"] == "vae" and (card["sampling"]["steps"], card["sampling"]["guidance"]) == (2, 1.0)
    assert (tmp_path / "model" / "vae").is_dir()


def test_sample_uses_the_students_recorded_steps_and_guidance(teacher_dir, tmp_path):
    run, config = tmp_path / "run", tmp_path / "distill.yaml"
    save_config(_config(teacher_dir), config)
    assert main(["distill", str(config), "--out", str(run), *MODES["both"][0]]) == 0
    (tmp_path / "prompts.txt").write_text("a red circle moving left\na blue square\n")
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(run), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out)]) == 0
    report = json.loads((out / "sample.json").read_text())
    assert report["sampling"]["steps"] == 2 and report["sampling"]["guidance"] == 1.0
    assert report["sampling"]["shift"] == 3.0 and report["nfe_per_video"] == 2  # one pass per step
    assert report["video"] == {"frames": 3, "height": 16, "width": 16}


def test_progressive_rounds_resume_exactly_mid_round_and_at_a_round_boundary(teacher_dir, tmp_path):
    rounds = ["mode=both", "student_steps=[3,2]"]  # round 1: 4 -> 3 steps; round 2: 3 -> 2 (teacher: round 1's student)
    straight = tmp_path / "straight"
    train(_config(teacher_dir, *rounds), straight, progress=False)
    assert [r["train/round"] for r in read_metrics(straight) if "train/loss" in r] == [1, 1, 2, 2]
    vals = [r["step"] for r in read_metrics(straight) if "val/mse_to_teacher" in r]
    assert vals == [0, 2, 4]  # before training and at the end of each round
    for stop in (2, 3):  # the last step of round 1; the middle of round 2 (its teacher comes from the checkpoint)
        resumed = tmp_path / f"stop{stop}"
        assert train(_config(teacher_dir, *rounds), resumed, progress=False, stop_after=stop) is None
        assert train(_config(teacher_dir, *rounds), resumed, progress=False) == resumed / "model"
        a, b = _weights(straight), _weights(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a), stop
        assert [r["step"] for r in read_metrics(resumed) if "train/loss" in r] == [1, 2, 3, 4]


def test_micro_batches_give_the_same_update(teacher_dir, tmp_path):
    one = ["mode=both", "student_steps=[2]", "train.steps_per_round=1"]
    whole = train(_config(teacher_dir, *one), tmp_path / "whole", progress=False)
    split = train(_config(teacher_dir, *one, "train.micro_batch_size=1"), tmp_path / "split", progress=False)
    # the first moments, not the weights: Adam's first step is about lr x sign(gradient), blind to its scale
    moments = [
        load_file(run.parent / "checkpoints" / "step_000001" / "optimizer.safetensors") for run in (whole, split)
    ]
    assert any(k.endswith("exp_avg") and v.abs().max() > 0 for k, v in moments[0].items())
    for key, value in moments[0].items():
        torch.testing.assert_close(moments[1][key], value, rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    teacher = load_file(teacher_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    a = _weights(whole.parent)
    assert any(not torch.equal(a[k], teacher[k]) for k in a)  # the student moved from the teacher


def test_a_lora_student_saves_adapters_that_stock_diffusers_loads(teacher_dir, tmp_path):
    cfg = _config(teacher_dir, "mode=both", "student_steps=[2]", "model.lora.enabled=true", "model.lora.rank=2")
    assert train(cfg, tmp_path, progress=False) == tmp_path / "lora"
    resolved = resolve_model(tmp_path)
    assert resolved.path == teacher_dir and resolved.lora == tmp_path / "lora"
    assert resolved.card["sampling"]["steps"] == 2 and resolved.card["sampling"]["guidance"] == 1.0
    base = WanVideoModel.from_pretrained(teacher_dir, codec="pixel", max_sequence_length=64)
    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=None,
        scheduler=base.scheduler,
        transformer=base.transformer,
    )
    pipe.load_lora_weights(tmp_path / "lora")
    assert any("lora" in name for name, _ in pipe.transformer.named_parameters())


def test_rounds_follow_the_mode():
    teacher = SamplingConfig(steps=20, shift=5.0, guidance=4.0)
    (cfg,) = plan_rounds("cfg", teacher, None)
    assert cfg.teacher == teacher and cfg.student == teacher.model_copy(update={"guidance": 1.0})
    assert torch.equal(cfg.teacher_sigmas, cfg.student_sigmas)
    (steps,) = plan_rounds("steps", teacher, None)
    assert (steps.student.steps, steps.student.guidance, steps.student.shift) == (4, 4.0, 5.0)
    first, second = plan_rounds("both", teacher, [8, 4])
    assert (first.teacher.steps, first.teacher.guidance, first.student.steps, first.student.guidance) == (
        20,
        4.0,
        8,
        1.0,
    )
    assert second.teacher == first.student and second.student.steps == 4
    assert [round_of(s, 3) for s in (1, 3, 4, 6)] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    with pytest.raises(VidpostError, match="teacher's guidance is 1"):
        plan_rounds("cfg", teacher.model_copy(update={"guidance": 1.0}), None)
    cfg_first, steps_after = plan_rounds("both", teacher, [20, 4])  # guidance first, then steps (Meng et al.)
    assert (
        cfg_first.student == teacher.model_copy(update={"guidance": 1.0}) and steps_after.teacher == cfg_first.student
    )
    with pytest.raises(VidpostError, match="must start below the teacher's 20 steps"):
        plan_rounds("steps", teacher, [20, 4])
    with pytest.raises(VidpostError, match="must start below the teacher's 20 steps"):
        plan_rounds("both", teacher.model_copy(update={"guidance": 1.0}), [20, 4])


def test_bad_step_ladders_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="mode cfg keeps the teacher's steps"):
        load_config(DistillConfig, None, ["mode=cfg", "student_steps=[4]"])
    with pytest.raises(ConfigError, match="must decrease from round to round"):
        load_config(DistillConfig, None, ["student_steps=[4,8]"])
    cfg = load_config(DistillConfig, None, ["teacher.guidance=6"])
    assert cfg.teacher.resolve(SamplingConfig(steps=20, shift=5.0, guidance=4.0)) == SamplingConfig(
        steps=20, shift=5.0, guidance=6.0
    )
