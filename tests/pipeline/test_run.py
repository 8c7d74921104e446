"""`vidpost run` on ShapeWorld from the shipped base model with tiny stages: the stages chain, each gets a
held-out row, a rerun resumes without recomputing, the report is one self-contained page."""

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidpost.cli import main
from vidpost.config import load_config
from vidpost.enhance.resolve import load_enhancer
from vidpost.enhance.trainable import init_dir
from vidpost.errors import VidpostError
from vidpost.evaluation import shapeworld_prompts
from vidpost.intervals import paired_difference
from vidpost.metric_names import CURVES
from vidpost.pipeline.config import STAGE_ORDER, PipelineConfig
from vidpost.pipeline.heldout import (
    DIFFERENCES_HEAD,
    PAIRED_KEYS,
    TABLE_KEYS,
    format_heldout_table,
    heldout_prompts,
    heldout_row,
)
from vidpost.pipeline.run import run_pipeline
from vidpost.pipeline.stages import STAGES, stage_config, stage_recipe
from vidpost.recipes.common import finished_model
from vidpost.runlog import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "shapeworld"
SFT = [
    "data.shapeworld.n=8",
    "train.steps=2",
    "train.batch_size=4",
    "train.precision=float32",
    "validation.n=2",
    "checkpoint.every_steps=1",
]
GRPO = [
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=2",
    "rollout.sampling.steps=4",
    "strategy.flash.k_max=1",
    "reward.weights={quality: 1.0, coherence: 0.5}",
    "train.steps=1",
    "train.precision=float32",
    "validation.n=2",
    "validation.every_steps=0",
    "checkpoint.every_steps=1",
]


ENHANCE = [
    "model.init=shapeworld-enhancer",
    "sft.steps=1",
    "sft.pairs_per_step=4",
    "grpo.steps=1",
    "grpo.prompts_per_step=2",
    "grpo.samples_per_prompt=2",
    "grpo.sampling={steps: 2}",
    "validation.videos=2",
    "data.eval_n=4",
    "reward.weights={quality: 1.0}",
    "grpo.video_precision=float32",
]
DISTILL = [
    "student_steps=[2]",
    "train.steps_per_round=1",
    "train.prompts_per_step=2",
    "train.precision=float32",
    "validation.n=2",
    "log.every_steps=1",
]


def _pipeline(tmp_path, stages=("sft", "grpo", "enhance", "distill")) -> Path:
    overrides = {"sft": SFT, "grpo": GRPO, "enhance": ENHANCE, "distill": DISTILL}
    files = {"sft": "sft.yaml", "grpo": "grpo_flash.yaml", "enhance": "enhance.yaml", "distill": "distill.yaml"}
    cfg = {
        "base": "shapeworld-base",
        "heldout": {"n": 2, "grid": 2},
        "stages": [{"name": s, "config": str(CONFIGS / files[s]), "overrides": overrides[s]} for s in stages],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = _pipeline(tmp)
    out = tmp / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    return config, out


def test_stages_chain_and_each_gets_a_heldout_row(finished):
    _, out = finished
    table = json.loads((out / "heldout_table.json").read_text())
    assert list(table) == ["base", "sft", "grpo", "enhance", "distill"]
    for row in table.values():
        assert row["n"] == 2 and 0 <= row["total"] <= 1 and row["nfe"] > 0
        for key in PAIRED_KEYS:  # kept prompt by prompt, for the differences between stages
            assert len(row["per_prompt"][key]) == 2 and np.mean(row["per_prompt"][key]) == pytest.approx(row[key])
    assert finished_model(out / "sft") is not None and finished_model(out / "grpo") is not None
    # each stage starts from the previous one's output
    assert yaml.safe_load((out / "sft" / "config.yaml").read_text())["model"]["path"] == "shapeworld-base"
    assert yaml.safe_load((out / "grpo" / "config.yaml").read_text())["model"]["path"] == str(out / "sft")
    assert table["grpo"]["model"] == str(out / "grpo")
    # the same prompts for every stage, kept as captions of the held-out videos
    captions = [
        [json.loads(line)["caption"] for line in (out / s / "heldout" / "metadata.jsonl").read_text().splitlines()]
        for s in table
    ]
    assert all(c == captions[0] for c in captions) and len(captions[0]) == 2
    assert table["enhance"]["model"] == str(out / "grpo") and table["enhance"]["enhancer"] == str(out / "enhance")
    assert yaml.safe_load((out / "distill" / "config.yaml").read_text())["model"]["path"] == str(out / "grpo")


def test_a_rerun_resumes_without_recomputing(finished):
    config, out = finished
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/heldout.json")}
    weights = out / "grpo" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/heldout.json")} == stamps
    assert weights.stat().st_mtime_ns == before


def test_the_report_is_one_self_contained_page(finished):
    _, out = finished
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"(src|href)=\"https?:", page)  # opens with no network
    assert page.count('src="data:image/gif;base64,') == 2 * 5  # grid: 2 prompts x (base and 4 stages)
    for stage in ("base", "sft", "grpo", "enhance", "distill"):
        assert f"<td>{stage}</td>" in page
    assert html.escape(DIFFERENCES_HEAD) in page
    for stage in ("sft", "grpo", "enhance", "distill"):  # in the table and in the differences under it
        assert page.count(f"<td>{stage}</td>") == 2
    assert main(["report", str(out)]) == 0  # the command rewrites it


def test_the_report_plots_every_curve_of_every_stage(finished):
    _, out = finished
    page = (out / "report.html").read_text()
    for stage in ("sft", "grpo", "enhance", "distill"):
        logged = set().union(*read_metrics(out / stage))
        assert set(CURVES[stage]) <= logged, (stage, set(CURVES[stage]) - logged)  # a renamed series shows here
        names = ", ".join(CURVES[stage])
        assert f'<h2>{stage}: training curves</h2><img src="data:image/png;base64,' in page
        assert f'alt="{names}"' in page, stage


def test_the_grid_labels_the_enhancers_columns_and_shows_each_rewrite(finished):
    _, out = finished
    page = (out / "report.html").read_text()
    for stage in ("base", "sft", "grpo"):
        assert f"<th>{stage}</th>" in page
    for stage in ("enhance", "distill"):  # the enhancer rewrites every prompt from its stage on
        model = "grpo" if stage == "enhance" else "distill"
        assert f"<th>{stage}<div class='sub'>{model}'s videos of enhance's rewrites</div></th>" in page
        rewrites = [
            json.loads(line)["prompt_used"]
            for line in (out / stage / "heldout" / "metadata.jsonl").read_text().splitlines()
        ]
        for rewrite in rewrites:
            assert f"<div class='rw'>{html.escape(rewrite)}</div>" in page
    assert page.count("<div class='rw'>") == 2 * 2  # 2 prompts x (enhance, distill)


def test_every_stage_has_curves_named():
    assert set(CURVES) == set(STAGES) == set(STAGE_ORDER)


def test_a_rerun_with_another_config_is_refused(finished, tmp_path):
    config, out = finished
    changed = yaml.safe_load(config.read_text())
    changed["heldout"]["n"] = 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    with pytest.raises(VidpostError, match="heldout.n"):
        run_pipeline(load_config(PipelineConfig, other), out, pipeline_file=other, progress=False)


def test_bad_pipelines_fail_before_any_work(tmp_path):
    with pytest.raises(VidpostError, match="order"):
        load_config(PipelineConfig, None, ["stages=[{name: grpo, config: a.yaml}, {name: sft, config: b.yaml}]"])
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"stages": [{"name": "sft", "config": "missing.yaml"}]}))
    with pytest.raises(VidpostError, match="missing.yaml"):
        run_pipeline(load_config(PipelineConfig, config), tmp_path / "run", pipeline_file=config, progress=False)


def test_heldout_rows_score_against_the_user_prompt(tmp_path):
    cfg = load_config(PipelineConfig, None, ["stages=[]", "heldout.n=2"])
    row = heldout_row("shapeworld-sft", tmp_path / "sft", cfg)
    again = heldout_row("shapeworld-sft", tmp_path / "other", cfg)  # deterministic: same prompts and seeds
    assert {k: row[k] for k in ("total", "quality")} == {k: again[k] for k in ("total", "quality")}
    assert row["sampling"]["steps"] == 20 and row["nfe"] == 40


def test_every_stage_of_the_shipped_pipeline_loads_with_its_recipe():
    path = CONFIGS / "pipeline.yaml"
    cfg = load_config(PipelineConfig, path)
    assert [s.name for s in cfg.stages][:3] == ["sft", "grpo", "enhance"]
    for stage in cfg.stages:
        recipe = stage_recipe(stage.name)
        loaded = stage_config(stage, recipe, "some/model", path)
        if recipe.produces == "video":
            assert loaded.model.path == "some/model"  # the previous stage's output is the starting model
        else:  # the enhancer it starts from is shipped and has the architecture the config states
            assert loaded.model.init == "shapeworld-enhancer"
            init_dir(loaded.model)


def test_an_enhancer_row_keeps_the_user_prompt_and_records_the_rewrite(parrot_toy, tmp_path):
    cfg = load_config(PipelineConfig, None, ["stages=[]", "heldout.n=2"])
    row = heldout_row("shapeworld-sft", tmp_path, cfg, enhancer=parrot_toy)
    records = [json.loads(line) for line in (tmp_path / "heldout" / "metadata.jsonl").read_text().splitlines()]
    terse, intents = heldout_prompts(cfg)
    assert terse != intents and row["prompts"] == "terse"
    assert [r["prompt"] for r in records] == terse  # made from what a user types ...
    assert [r["caption"] for r in records] == intents  # ... and scored against what they asked for
    assert [r["prompt_used"] for r in records] == load_enhancer(str(parrot_toy)).rewrite(terse)
    assert row["enhancer"] == str(parrot_toy)
    assert (row["enhance/prompts"], row["enhance/rewritten"] + row["enhance/fallbacks"]) == (2, 2)


def test_canonical_heldout_captions_are_scored_as_they_are_and_never_rewritten(parrot_toy, tmp_path):
    cfg = load_config(PipelineConfig, None, ["stages=[]", "heldout.n=2", "heldout.wording=canonical"])
    row = heldout_row("shapeworld-sft", tmp_path, cfg, enhancer=parrot_toy)
    records = [json.loads(line) for line in (tmp_path / "heldout" / "metadata.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in records] == shapeworld_prompts("heldout", 2, 0)
    assert not any("prompt_used" in r or "prompt" in r for r in records) and row["enhancer"] is None


def test_a_bad_key_in_a_later_stage_fails_before_the_first_stage_runs(tmp_path, monkeypatch, capsys):
    config = _pipeline(tmp_path)
    monkeypatch.setattr("vidpost.pipeline.run.heldout_row", lambda *a, **k: pytest.fail("work started"))
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "stages.grpo.train.nonsense=1"]) != 0
    assert capsys.readouterr().err.startswith("error: stage grpo: override 'train.nonsense=1': unknown key")


def test_stage_overrides_on_the_command_line_reach_their_stage(tmp_path, monkeypatch):
    from vidpost.pipeline.run import add_stage_overrides, with_stage_overrides

    own, per_stage = with_stage_overrides(["heldout.n=3", "stages.grpo.train.steps=7", "stages.sft.train.steps=5"])
    assert own == ["heldout.n=3"] and per_stage == {"grpo": ["train.steps=7"], "sft": ["train.steps=5"]}
    cfg = add_stage_overrides(load_config(PipelineConfig, _pipeline(tmp_path, ("sft", "grpo")), own), per_stage)
    recipes = {s.name: stage_recipe(s.name) for s in cfg.stages}
    assert [stage_config(s, recipes[s.name], "m", None).train.steps for s in cfg.stages] == [5, 7]  # the last word
    with pytest.raises(VidpostError, match="the pipeline has no stage 'distill'"):
        add_stage_overrides(cfg, {"distill": ["train.steps=1"]})


def test_report_on_a_training_run_says_so_in_one_line(tmp_path, capsys):
    from vidpost.config import save_config
    from vidpost.recipes.sft import SFTConfig

    save_config(load_config(SFTConfig, None, []), tmp_path / "config.yaml")
    assert main(["report", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: {tmp_path}: not a `vidpost run` directory (its config.yaml is not a pipeline's; a training "
        "run's samples are in its samples/ folder)"
    )


def test_only_stages_not_yet_run_may_change_when_a_pipeline_resumes(finished, tmp_path):
    from vidpost.pipeline.run import _only_unrun_stages_differ

    config, out = finished
    stages = yaml.safe_load(config.read_text())["stages"][:2]  # sft, grpo
    partial = tmp_path / "partial"  # a pipeline run that has finished sft only
    (partial / "sft").mkdir(parents=True)
    (partial / "sft" / "heldout.json").write_text("{}")
    extra = {"name": "distill", "config": "distill.yaml", "overrides": []}
    assert _only_unrun_stages_differ(stages, [*stages, extra], partial)  # a stage added after the run ones
    assert _only_unrun_stages_differ(stages, [stages[0], {**stages[1], "overrides": ["train.steps=9"]}], partial)
    assert not _only_unrun_stages_differ(stages, [{**stages[0], "overrides": []}, stages[1]], partial)  # sft ran
    assert not _only_unrun_stages_differ(stages, [stages[0], {**stages[1], "overrides": []}], out)  # grpo ran there
    changed = yaml.safe_load(config.read_text())
    changed["stages"][1]["overrides"].append("optim.learning_rate=1e-5")  # grpo has run: its past would change
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    with pytest.raises(VidpostError, match="another config \\(stages:"):
        run_pipeline(load_config(PipelineConfig, other), out, pipeline_file=other, progress=False)


def test_the_table_says_which_stage_changes_are_more_than_noise():
    """Under the table, each stage against the row above, prompt by prompt; a row from before rows kept their
    per-prompt scores shows n/a."""
    rng = np.random.default_rng(0)
    base_total = rng.random(64) * 0.1
    rows = {
        "base": _row(base_total, np.zeros(64)),
        "sft": _row(base_total + 0.05, (np.arange(64) < 8).astype(float)),  # every prompt gains; 8 new successes
        "grpo": _row(rng.permutation(base_total + 0.05), (np.arange(64) < 8).astype(float)),  # shuffled: noise
        "old": {key: 0.0 for key in TABLE_KEYS},
    }
    lines = format_heldout_table(rows).splitlines()
    below = lines[lines.index(DIFFERENCES_HEAD) :]
    changes = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in below)}
    total = paired_difference(base_total, base_total + 0.05)
    success = paired_difference(np.zeros(64), (np.arange(64) < 8).astype(float))
    assert changes["sft"] == [total.signed(), success.signed()]
    assert total.excludes_zero and success.excludes_zero
    grpo = paired_difference(rows["sft"]["per_prompt"]["total"], rows["grpo"]["per_prompt"]["total"])
    assert changes["grpo"][0] == grpo.signed() and not grpo.excludes_zero
    assert changes["old"] == ["n/a", "n/a"]


def _row(total: np.ndarray, success: np.ndarray) -> dict:
    row = {key: 0.0 for key in TABLE_KEYS}
    row.update(total=float(total.mean()), success=float(success.mean()))
    return {**row, "per_prompt": {"total": total.tolist(), "success": success.tolist()}}
