"""The held-out table of `vidpost run`: every stage's model (and enhancer) on the same prompts and seeds, scored
against what the user asked for; its rows, their text form, and the videos the report shows."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidpost.atomic import atomic_path
from vidpost.data.dataset import DatasetWriter
from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_requests
from vidpost.pipeline.config import PipelineConfig
from vidpost.recipes.prompts import rewrite_prompts

HELDOUT_FILE = "heldout.json"
TABLE_KEYS = ("total", "success", "instruction", "coherence", "quality", "nfe", "seconds_per_video")


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
    scores = score_videos(generated.videos, references, SHAPEWORLD_SCORES)  # what the user asked for
    with DatasetWriter(out / "heldout", overwrite=True) as writer:  # caption: what `vidpost score` checks
        for j, (frames, prompt, reference, prompt_used) in enumerate(
            zip(generated.videos, prompts, references, used, strict=True)
        ):
            extra = {"prompt": prompt} if prompt != reference else {}
            if enhancer is not None:
                extra["prompt_used"] = prompt_used
            writer.add(frames, reference, ext=".npy", seed=cfg.heldout.seed + j, **extra)
    row = {
        **scores,
        "nfe": generated.nfe_per_video,
        "seconds_per_video": seconds,
        "model": str(model_ref),
        "enhancer": None if enhancer is None else str(enhancer),
        "sampling": sampling.model_dump(),
        "split": cfg.heldout.split,
        "prompts": cfg.heldout.wording,
        "n": len(prompts),
        **rewrite_metrics,
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


def format_heldout_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per stage."""
    lines = ["| stage | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
    for stage, row in rows.items():
        lines.append(f"| {stage} | " + " | ".join(table_cells(row)) + " |")
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
