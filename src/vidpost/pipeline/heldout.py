"""The held-out table of `vidpost run`: every stage's model (and enhancer) on the same prompts and seeds, scored
against what the user asked for; its rows, their text form, and the videos the report shows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from vidpost.atomic import atomic_path
from vidpost.data.dataset import DatasetWriter
from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos_per_clip, shapeworld_requests
from vidpost.intervals import paired_difference
from vidpost.pipeline.config import PipelineConfig
from vidpost.recipes.prompts import rewrite_prompts

HELDOUT_FILE = "heldout.json"
TABLE_KEYS = ("total", "success", "instruction", "coherence", "quality", "nfe", "seconds_per_video")
PAIRED_KEYS = ("total", "success")  # compared prompt by prompt with the row above
DIFFERENCES_HEAD = (
    "Each stage against the row above it, on the same prompts and seeds: the mean difference and its 95% "
    "interval; a stage gains only where the interval lies above 0."
)


def heldout_row(model_ref: str | Path, out: Path, cfg: PipelineConfig, enhancer: str | Path | None = None) -> dict:
    """Generate and score the held-out prompts with a model (and enhancer); written once into `out`."""
    done = out / HELDOUT_FILE
    if done.is_file():
        return json.loads(done.read_text())
    from vidpost.generation import generate, recommended_sampling, recommended_video
    from vidpost.models.load import load_model

    prompts, references = heldout_prompts(cfg)
    if cfg.heldout.wording == "canonical":
        enhancer = None  # a canonical caption is already what an enhancer would write
    used, rewrite_metrics = rewrite_prompts(prompts, None if enhancer is None else str(enhancer))
    model = load_model(str(model_ref))
    sampling, video = recommended_sampling(model), recommended_video(model)
    tick = time.perf_counter()
    generated = generate(model, used, sampling, video, seed=cfg.heldout.seed, progress=False)
    seconds = (time.perf_counter() - tick) / len(prompts)
    per_prompt = score_videos_per_clip(generated.videos, references, SHAPEWORLD_SCORES)  # what the user asked for
    with DatasetWriter(out / "heldout", overwrite=True) as writer:  # caption: what `vidpost score` checks
        for j, (frames, prompt, reference, prompt_used) in enumerate(
            zip(generated.videos, prompts, references, used, strict=True)
        ):
            extra = {"prompt": prompt} if prompt != reference else {}
            if enhancer is not None:
                extra["prompt_used"] = prompt_used
            writer.add(frames, reference, ext=".npy", seed=cfg.heldout.seed + j, **extra)
    row = {
        **{name: float(np.mean(values)) for name, values in per_prompt.items()},
        "nfe": generated.nfe_per_video,
        "seconds_per_video": seconds,
        "model": str(model_ref),
        "enhancer": None if enhancer is None else str(enhancer),
        "sampling": sampling.model_dump(),
        "split": cfg.heldout.split,
        "prompts": cfg.heldout.wording,
        "n": len(prompts),
        **rewrite_metrics,
        "per_prompt": {name: per_prompt[name].tolist() for name in PAIRED_KEYS},
    }
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(row, indent=1) + "\n")
    return row


def heldout_prompts(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """(what the videos are made from, what they are scored against): terse prompts and their intents, or the
    canonical captions twice. The same for every stage, so the rows compare models on the same requests."""
    h = cfg.heldout
    return shapeworld_requests(h.split, h.n, h.seed, h.wording, h.world)


def table_cells(row: dict) -> list[str]:
    """A held-out row's TABLE_KEYS as text, for the printed table and the report."""
    return [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in TABLE_KEYS]


def stage_differences(rows: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(stage, its difference_cells) for every stage after the first."""
    return [(stage, difference_cells(rows[above], rows[stage])) for above, stage in pairwise(rows)]


def difference_cells(above: dict, row: dict) -> list[str]:
    """PAIRED_KEYS of `row` minus the row above, prompt by prompt, with 95% intervals ("n/a" for a row written
    before rows kept their per-prompt scores)."""
    if "per_prompt" not in above or "per_prompt" not in row:
        return ["n/a"] * len(PAIRED_KEYS)
    return [paired_difference(above["per_prompt"][k], row["per_prompt"][k]).signed() for k in PAIRED_KEYS]


def format_heldout_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per stage; under it, each stage's difference from the stage before."""
    lines = ["| stage | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    for stage, row in rows.items():
        lines.append(f"| {stage} | " + " | ".join(table_cells(row)) + " |")
    if len(rows) > 1:
        lines += ["", DIFFERENCES_HEAD, "", "| stage | " + " | ".join(f"{k} change" for k in PAIRED_KEYS) + " |"]
        lines.append("|---" * (len(PAIRED_KEYS) + 1) + "|")
        lines += [f"| {stage} | " + " | ".join(cells) + " |" for stage, cells in stage_differences(rows)]
    return "\n".join(lines)


@dataclass(frozen=True)
class HeldoutClip:
    prompt: str  # what the user typed
    video: np.ndarray  # uint8 (T, H, W, 3)
    rewrite: str | None  # what the video was made from, when an enhancer rewrote the prompt


def heldout_clips(stage_dir: Path, n: int) -> list[HeldoutClip]:
    """The first n held-out clips a stage wrote, for the report's grid."""
    meta = stage_dir / "heldout" / "metadata.jsonl"
    if not meta.is_file():
        return []
    records = [json.loads(line) for line in meta.read_text().splitlines()[:n]]
    return [
        HeldoutClip(r.get("prompt", r["caption"]), np.load(stage_dir / "heldout" / r["file"]), r.get("prompt_used"))
        for r in records
    ]
