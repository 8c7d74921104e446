"""`vidpost run`: the post-training stages in order in one run directory, each starting from the last video model.

    RUN/
      config.yaml          the pipeline config as resolved
      base/heldout/        the starting model's held-out videos (dataset folder) and heldout.json
      sft/ grpo/ ...       each a run directory of its recipe (`vidpost sample --model RUN/sft` accepts it),
                           with heldout/ and heldout.json beside the recipe's own files
      report.html          `vidpost report RUN`

Rerunning the same command resumes: a stage whose final model exists is skipped (its recipe sees that), an
interrupted stage resumes from its last checkpoint, and a held-out row already written is not recomputed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vidpost.atomic import atomic_path
from vidpost.checkpoint import run_checkpoints
from vidpost.errors import VidpostError
from vidpost.pipeline.config import PipelineConfig
from vidpost.pipeline.heldout import HELDOUT_FILE, format_heldout_table, heldout_row
from vidpost.pipeline.report import write_report
from vidpost.pipeline.stages import Stage, stage_config, stage_recipe
from vidpost.recipes.common import lock_run_dir, prepare_run_dir

log = logging.getLogger(__name__)


def _only_unrun_stages_differ(old: list[dict], new: list[dict], out: Path) -> bool:
    """Whether two stage lists agree up to the first difference, and no stage from there on has started in out."""
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
    later = [stage["name"] for stage in old[first:]]
    return all(not run_checkpoints(out / name) and not (out / name / HELDOUT_FILE).is_file() for name in later)


def check_stages(cfg: PipelineConfig, recipes: dict[str, Stage], out: Path, pipeline_file: str | Path | None) -> None:
    """Load every stage's config (file and overrides) as the run will, naming the stage of the first error."""
    video_model = cfg.base
    for stage in cfg.stages:
        try:
            stage_config(stage, recipes[stage.name], video_model, pipeline_file)
        except VidpostError as error:
            message = str(error)
            raise VidpostError(
                message if message.startswith(f"stage {stage.name}:") else f"stage {stage.name}: {message}"
            ) from None
        if recipes[stage.name].produces == "video":
            video_model = str(out / stage.name)


def with_stage_overrides(cfg_overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split command-line overrides into the pipeline's own and each stage's (`stages.NAME.key=value`)."""
    own: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for item in cfg_overrides:
        key = item.split("=", 1)[0]
        if key.startswith("stages.") and key.count(".") >= 2:
            _, name, rest = item.split(".", 2)
            per_stage.setdefault(name, []).append(rest)
        else:
            own.append(item)
    return own, per_stage


def add_stage_overrides(cfg: PipelineConfig, per_stage: dict[str, list[str]]) -> PipelineConfig:
    """`cfg` with each named stage's overrides extended by the command line's (which win, coming last)."""
    names = {stage.name for stage in cfg.stages}
    unknown = sorted(set(per_stage) - names)
    if unknown:
        raise VidpostError(
            f"stages.{unknown[0]}: the pipeline has no stage {unknown[0]!r} (its stages: "
            f"{', '.join(stage.name for stage in cfg.stages)})"
        )
    stages = [
        stage.model_copy(update={"overrides": [*stage.overrides, *per_stage.get(stage.name, [])]})
        for stage in cfg.stages
    ]
    return cfg.model_copy(update={"stages": stages})


def run_pipeline(
    cfg: PipelineConfig, out: str | Path, pipeline_file: str | Path | None = None, progress: bool = True
) -> dict[str, dict] | None:
    """Run (or resume) every stage; return the held-out table {stage: row} (also printed per stage).

    None when a stage was stopped (SIGINT/SIGTERM) after writing its checkpoint: rerunning resumes there.
    """
    out = Path(out)
    lock_run_dir(out)
    prepare_run_dir(
        cfg, out, may_change=lambda key, old, new: key == "stages" and _only_unrun_stages_differ(old, new, out)
    )
    recipes: dict[str, Stage] = {
        stage.name: stage_recipe(stage.name) for stage in cfg.stages
    }  # unknown stages fail before any work
    check_stages(cfg, recipes, out, pipeline_file)  # a bad key in the last stage fails now, not an hour in
    video_model, enhancer = cfg.base, None
    rows = {"base": heldout_row(video_model, out / "base", cfg)}
    print(format_heldout_table(rows), flush=True)
    for stage in cfg.stages:
        recipe, stage_dir = recipes[stage.name], out / stage.name
        stage_cfg = stage_config(stage, recipe, video_model, pipeline_file)
        log.info("stage %s: %s -> %s", stage.name, video_model, stage_dir)
        final = recipe.train()(stage_cfg, stage_dir, progress=progress)
        if final is None:
            return None
        if recipe.produces == "video":
            video_model = str(stage_dir)
        else:
            enhancer = str(stage_dir)
        rows[stage.name] = heldout_row(video_model, stage_dir, cfg, enhancer)
        print(format_heldout_table(rows), flush=True)
    with atomic_path(out / "heldout_table.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")

    write_report(out)
    return rows
