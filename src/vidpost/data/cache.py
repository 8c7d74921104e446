"""Encode a dataset once: latents of every clip and text embeddings of every distinct caption.

Training then never runs the text encoder or the VAE. The cache is a folder in the run directory:

    cache/tensors.safetensors   latents (N, C, T, H, W), caption_ids (N,), embeds (U, L, D)
    cache/cache.json            the captions (row u of embeds), the clips used and skipped, a fingerprint

Row 0 of `embeds` is the empty caption, which caption dropout trains on (the unconditional input of
classifier-free guidance). The cache is rebuilt when the fingerprint (dataset metadata, every file's size and
modification time, caption key, model key, dtype) changes; clips whose shape differs from the first clip's are
skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vidpost.atomic import atomic_path
from vidpost.data.dataset import METADATA_NAME, iter_clips
from vidpost.data.video_io import to_float
from vidpost.errors import VidpostError

log = logging.getLogger("vidpost")

TENSORS_NAME, INFO_NAME = "tensors.safetensors", "cache.json"
CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class EncodedDataset:
    latents: torch.Tensor  # (N, C, T, H, W), cache dtype
    caption_ids: torch.Tensor  # (N,) int64, row of embeds
    embeds: torch.Tensor  # (U, L, D), row 0 = ""
    captions: list[str]  # (U,)
    frames: int  # video geometry of the clips
    height: int
    width: int
    skipped: int

    def __len__(self) -> int:
        return self.latents.shape[0]


def _fingerprint(dataset: Path, caption_key: str, model_key: str, dtype: str) -> str:
    """Of the metadata, every file's size and modification time (a clip replaced in place changes it), and the
    encoding's settings."""
    digest = hashlib.sha256((dataset / METADATA_NAME).read_bytes())
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(dataset)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps([caption_key, model_key, dtype]).encode())
    return digest.hexdigest()


def load_or_build_cache(
    dataset: str | Path,
    model,
    cache_dir: str | Path,
    caption_key: str = "caption",
    model_key: str = "",
    dtype: str = "bfloat16",
    batch_size: int = 64,
    progress: bool = True,
) -> EncodedDataset:
    """The encoded dataset, from cache_dir when its fingerprint matches, else encoded now and saved there.

    model_key identifies the text encoder and codec (e.g. the model config as JSON): change it and the
    cache is rebuilt.
    """
    dataset, cache_dir = Path(dataset), Path(cache_dir)
    if not (dataset / METADATA_NAME).is_file():
        raise VidpostError(f"dataset not found: {dataset / METADATA_NAME}")
    if dtype not in CACHE_DTYPES:
        raise VidpostError(f"unknown cache dtype {dtype!r}; expected one of {', '.join(CACHE_DTYPES)}")
    fingerprint = _fingerprint(dataset, caption_key, model_key, dtype)
    info_path = cache_dir / INFO_NAME
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info["fingerprint"] == fingerprint:
            tensors = load_file(cache_dir / TENSORS_NAME)
            frames, height, width = info["video"]
            return EncodedDataset(
                tensors["latents"],
                tensors["caption_ids"],
                tensors["embeds"],
                info["captions"],
                frames,
                height,
                width,
                skipped=info["skipped"],
            )
        log.info("dataset or model changed since %s was built; re-encoding", cache_dir)
    encoded = _encode(dataset, model, caption_key, CACHE_DTYPES[dtype], batch_size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / TENSORS_NAME) as tmp:
        save_file({"latents": encoded.latents, "caption_ids": encoded.caption_ids, "embeds": encoded.embeds}, tmp)
    info = {
        "fingerprint": fingerprint,
        "dataset": str(dataset),
        "captions": encoded.captions,
        "video": [encoded.frames, encoded.height, encoded.width],
        "skipped": encoded.skipped,
    }
    with atomic_path(info_path) as tmp:  # written last: it marks the cache complete
        tmp.write_text(json.dumps(info))
    return encoded


@torch.no_grad()
def _encode(dataset: Path, model, caption_key: str, dtype: torch.dtype, batch_size: int, progress: bool):
    reader = iter_clips(dataset, caption_key)
    shape, skipped = None, 0
    latents, caption_ids, index = [], [], {"": 0}
    pending: list = []

    def flush() -> None:
        frames = torch.from_numpy(to_float(np.stack(pending))).to(model.device)
        latents.append(model.encode(frames).to(dtype).cpu().contiguous())
        pending.clear()

    for clip in tqdm(reader, total=len(reader), desc=f"encode {dataset.name}", unit="clip", disable=not progress):
        if shape is None:
            shape = clip.frames.shape
            model.latent_shape(*shape[:3])  # errors now if the transformer's patches do not fit
        if clip.frames.shape != shape:
            log.warning(
                "skipping clip %s: shape %s differs from the first clip's %s", clip.file, clip.frames.shape, shape
            )
            skipped += 1
            continue
        caption_ids.append(index.setdefault(clip.caption, len(index)))
        pending.append(clip.frames)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    skipped += len(reader.skipped) + len(reader.problems)
    if not latents:
        raise VidpostError(f"{dataset}: no readable clips (skipped {skipped})")
    captions = list(index)
    embeds = torch.cat(
        [
            model.encode_prompts(captions[i : i + batch_size]).to(dtype).cpu()
            for i in range(0, len(captions), batch_size)
        ]
    )
    assert shape is not None  # set by the first clip, and there is one
    frames, height, width = shape[:3]
    return EncodedDataset(
        torch.cat(latents),
        torch.tensor(caption_ids, dtype=torch.int64),
        embeds,
        captions,
        frames,
        height,
        width,
        skipped,
    )
