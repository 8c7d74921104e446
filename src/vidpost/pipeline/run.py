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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidpost.atomic import atomic_path
from vidpost.checkpoint import run_checkpoints
from vidpost.config import Config, load_config
from vidpost.data.dataset import DatasetWriter
from vidpost.errors import VidpostError
from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_requests
from vidpost.pipeline.config import PipelineConfig, StageConfig, resolve_stage_config
from vidpost.recipes.common import lock_run_dir, prepare_run_dir
from vidpost.recipes.prompts import rewrite_prompts

log = logging.getLogger(__name__)
HELDOUT_FILE = "heldout.json"
TABLE_KEYS = ("total", "success", "instruction", "coherence", "quality", "nfe", "seconds_per_video")


@dataclass(frozen=True)
class Stage:
    """How the pipeline drives one recipe: its config class, its train function, and what it produces."""

    config_class: Callable[[], type[Config]]
    train: Callable[[], Callable[..., Path | None]]
    model_key: str | None  # the config key that names the video model it starts from (None: it starts from none)
    produces: str  # "video" (a model directory that later stages start from) or "enhancer"
    curves: Callable[[], tuple[str, ...]]  # the recipe's logged series worth plotting (its CURVES)


def _sft() -> Stage:
    from vidpost.recipes import sft

    return Stage(lambda: sft.SFTConfig, lambda: sft.train, "model.path", "video",
                 lambda: sft.CURVES)


def _grpo() -> Stage:
    from vidpost.recipes import grpo

    return Stage(lambda: grpo.GRPOConfig, lambda: grpo.train, "model.path", "video",
                 lambda: grpo.CURVES)


def _enhance() -> Stage:
    from vidpost.recipes import enhance

    # its GRPO stage scores rewrites with the pipeline's latest video model, the one it will serve
    return Stage(lambda: enhance.EnhanceConfig, lambda: enhance.train, "grpo.video_model", "enhancer",
                 lambda: enhance.CURVES)


def _distill() -> Stage:
    from vidpost.recipes import distill

    return Stage(lambda: distill.DistillConfig, lambda: distill.train, "model.path", "video",
                 lambda: distill.CURVES)


STAGES: dict[str, Callable[[], Stage]] = {"sft": _sft, "grpo": _grpo, "enhance": _enhance, "distill": _distill}


def stage_recipe(name: str) -> Stage:
    if name not in STAGES:
        raise VidpostError(f"stage {name!r} has no recipe in this version of vidpost (available: {', '.join(STAGES)})")
    return STAGES[name]()


# ---------------------------------------------------------------------------------------------- held-out table


def heldout_row(model_ref: str | Path, out: Path, cfg: PipelineConfig, enhancer: str | Path | None = None) -> dict:
    """Generate and score the held-out prompts with a model (and enhancer); written once into `out`."""
    done = out / HELDOUT_FILE
    if done.is_file():
        return json.loads(done.read_text())
    from vidpost.generation import generate, recommended_sampling, recommended_video
    from vidpost.models.load import load_model

    prompts, references = heldout_prompts(cfg)
    if cfg.heldout.prompts == "canonical":
        enhancer = None  # a canonical caption is already what an enhancer would write
    used, rewrite_metrics = rewrite_prompts(prompts, None if enhancer is None else str(enhancer))
    model = load_model(str(model_ref))
    sampling, video = recommended_sampling(model), recommended_video(model)
    tick = time.perf_counter()
    generated = generate(model, used, sampling, video, seed=cfg.heldout.seed, progress=False)
    seconds = (time.perf_counter() - tick) / len(prompts)
    scores = score_videos(generated.videos, references, SHAPEWORLD_SCORES)  # what the user asked for
    with DatasetWriter(out / "heldout", overwrite=True) as writer:  # caption: what `vidpost score` checks
        for j, (frames, prompt, reference, prompt_used) in enumerate(
                zip(generated.videos, prompts, references, used, strict=True)):
            extra = {"prompt": prompt} if prompt != reference else {}
            if enhancer is not None:
                extra["prompt_used"] = prompt_used
            writer.add(frames, reference, ext=".npy", seed=cfg.heldout.seed + j, **extra)
    row = {**scores, "nfe": generated.nfe_per_video, "seconds_per_video": seconds, "model": str(model_ref),
           "enhancer": None if enhancer is None else str(enhancer), "sampling": sampling.model_dump(),
           "split": cfg.heldout.split, "prompts": cfg.heldout.prompts, "n": len(prompts), **rewrite_metrics}
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(row, indent=1) + "\n")
    return row


def heldout_prompts(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """(what the videos are made from, what they are scored against): terse prompts and their intents, or the
    canonical captions twice. The same for every stage, so the rows compare models on the same requests."""
    h = cfg.heldout
    return shapeworld_requests(h.split, h.n, h.seed, h.prompts, h.world)


def table_cells(row: dict) -> list[str]:
    """A held-out row's TABLE_KEYS as text, for the printed table and the report."""
    return [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in TABLE_KEYS]


def format_heldout_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per stage."""
    lines = ["| stage | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    for stage, row in rows.items():
        lines.append(f"| {stage} | " + " | ".join(table_cells(row)) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the run


def _only_unrun_stages_differ(old: list[dict], new: list[dict], out: Path) -> bool:
    """Whether two stage lists agree up to the first difference, and no stage from there on has started in out."""
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
    later = [stage["name"] for stage in old[first:]]
    return all(not run_checkpoints(out / name) and not (out / name / HELDOUT_FILE).is_file()
               for name in later)


def check_stages(cfg: PipelineConfig, recipes: dict[str, Stage], out: Path, pipeline_file: str | Path | None) -> None:
    """Load every stage's config (file and overrides) as the run will, naming the stage of the first error."""
    video_model = cfg.base
    for stage in cfg.stages:
        try:
            stage_config(stage, recipes[stage.name], video_model, pipeline_file)
        except VidpostError as error:
            message = str(error)
            raise VidpostError(message if message.startswith(f"stage {stage.name}:")
                               else f"stage {stage.name}: {message}") from None
        if recipes[stage.name].produces == "video":
            video_model = str(out / stage.name)


def with_stage_overrides(cfg_overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split command-line overrides into the pipeline's own and each stage's (`stages.NAME.key=value`)."""
    own, per_stage = [], {}
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
        raise VidpostError(f"stages.{unknown[0]}: the pipeline has no stage {unknown[0]!r} (its stages: "
                           f"{', '.join(stage.name for stage in cfg.stages)})")
    stages = [stage.model_copy(update={"overrides": [*stage.overrides, *per_stage.get(stage.name, [])]})
              for stage in cfg.stages]
    return cfg.model_copy(update={"stages": stages})


def stage_config(stage: StageConfig, recipe: Stage, start_model: str, pipeline_file: str | Path | None) -> Config:
    path = resolve_stage_config(stage, pipeline_file)
    if not path.is_file():
        raise VidpostError(f"stage {stage.name}: config file not found: {path}")
    start = [f"{recipe.model_key}={start_model}"] if recipe.model_key is not None else []
    return load_config(recipe.config_class(), path, [*start, *stage.overrides])


def run_pipeline(cfg: PipelineConfig, out: str | Path, pipeline_file: str | Path | None = None,
                 progress: bool = True) -> dict[str, dict] | None:
    """Run (or resume) every stage; return the held-out table {stage: row} (also printed per stage).

    None when a stage was stopped (SIGINT/SIGTERM) after writing its checkpoint: rerunning resumes there.
    """
    out = Path(out)
    lock_run_dir(out)
    prepare_run_dir(cfg, out, may_change=lambda key, old, new: key == "stages" and _only_unrun_stages_differ(old, new, out))
    recipes = {stage.name: stage_recipe(stage.name) for stage in cfg.stages}  # unknown stages fail before any work
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
    from vidpost.pipeline.report import write_report

    write_report(out)
    return rows


def heldout_clips(stage_dir: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """The first n held-out (user prompt, uint8 video (T, H, W, 3)) a stage wrote, for the report's grid."""
    meta = stage_dir / "heldout" / "metadata.jsonl"
    if not meta.is_file():
        return []
    records = [json.loads(line) for line in meta.read_text().splitlines()[:n]]
    return [(r.get("prompt", r["caption"]), np.load(stage_dir / "heldout" / r["file"])) for r in records]
