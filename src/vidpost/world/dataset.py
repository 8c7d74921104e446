"""ShapeWorld datasets: clip i is a pure function of (seed, split, i), whatever n is.

The curated and web datasets made with the same seed and split show the same scenes, so the effect
of web-style corruption can be measured clip by clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidpost.config import save_config
from vidpost.data.dataset import DatasetWriter
from vidpost.data.video_io import to_uint8
from vidpost.errors import VidpostError
from vidpost.world.config import DatasetConfig
from vidpost.world.defects import apply_random_defects
from vidpost.world.grammar import caption
from vidpost.world.prompts import terse_prompt, web_caption
from vidpost.world.render import Placement, fits, layout, render
from vidpost.world.sampling import SPLITS, random_spec_in_split
from vidpost.world.spec import SceneSpec

_SCENE, _TERSE, _WEB = 0, 1, 2  # independent random streams per clip


def _rng(cfg: DatasetConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS.index(cfg.split), index, stream])


def scene(cfg: DatasetConfig, index: int) -> tuple[SceneSpec, list[Placement]]:
    """The complete scene of clip `index` and its layout; scenes that do not fit the canvas are redrawn
    (render.fits: never drawn, so every caption of a dataset is one its canvas can show)."""
    rng = _rng(cfg, index, _SCENE)
    w = cfg.world
    vocabulary = w.vocabulary()
    while True:
        spec = random_spec_in_split(rng, cfg.split, w.max_objects, w.p_still, vocabulary)
        if not fits(spec, w.frames, w.height, w.width, w.min_gap_px):
            continue
        try:  # only a scene of three or more objects can still fail here
            return spec, layout(spec, rng, w.frames, w.height, w.width, w.min_gap_px)
        except VidpostError:
            continue


def prompt_record(cfg: DatasetConfig, index: int, spec: SceneSpec | None = None) -> dict:
    """The texts of clip `index` (whose scene is `spec`, if already drawn): canonical, terse and intent."""
    if spec is None:
        spec, _ = scene(cfg, index)
    terse, intent = terse_prompt(spec, _rng(cfg, index, _TERSE))
    return {"canonical": caption(spec), "terse": terse, "intent": caption(intent), "spec": spec.to_dict()}


def make_clip(cfg: DatasetConfig, index: int) -> tuple[np.ndarray, dict]:
    """(uint8 video (T, H, W, 3), metadata) of clip `index`."""
    w = cfg.world
    spec, placements = scene(cfg, index)
    record = prompt_record(cfg, index, spec)
    video = render(spec, placements, w.frames, w.height, w.width)
    meta = {"caption": record["canonical"], **record, "split": cfg.split, "style": cfg.style, "index": index}
    if cfg.style == "web":
        rng = _rng(cfg, index, _WEB)
        meta["caption"], meta["caption_wrong"] = web_caption(spec, rng, cfg.web.p_wrong_attribute)
        video, meta["defects"] = apply_random_defects(video, rng, cfg.web.p_defect)
    return to_uint8(video), meta


def make_dataset(out: str | Path, cfg: DatasetConfig, overwrite: bool = False) -> Path:
    """Write a dataset folder (metadata.jsonl, clips/, config.yaml) with a progress bar."""
    out = Path(out)
    with DatasetWriter(out, overwrite=overwrite) as writer:
        save_config(cfg, out / "config.yaml")
        for index in tqdm(range(cfg.n), desc=f"world make {cfg.style}/{cfg.split}", unit="clip"):
            video, meta = make_clip(cfg, index)
            writer.add(video, meta.pop("caption"), **meta)
    return out
