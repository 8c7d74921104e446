"""The dataset folder every stage reads and writes: `metadata.jsonl` plus clip files.

Each line of `metadata.jsonl` is one JSON object with at least `file` (path relative to the folder) and
`caption`; other keys are kept as metadata. Readers tolerate damage (bad lines, missing or corrupt clips):
they skip it with a one-line warning and count it, because one bad clip must not stop a long run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from vidpost.data.video_io import VIDEO_EXTENSIONS, read_video, write_video
from vidpost.errors import ClipReadError, VidpostError

METADATA_NAME = "metadata.jsonl"
CLIPS_DIR = "clips"

log = logging.getLogger("vidpost")


class DatasetWriter:
    """Appends clips and their records; every finished `add` is on disk, so an interrupted run keeps them."""

    def __init__(self, root: str | os.PathLike, overwrite: bool = False) -> None:
        self.root = Path(root)
        meta_path = self.root / METADATA_NAME
        if meta_path.exists():
            if not overwrite:
                raise VidpostError(f"{meta_path} already exists; overwrite it (--overwrite) or choose another folder")
            meta_path.unlink()
            if (self.root / CLIPS_DIR).exists():
                shutil.rmtree(self.root / CLIPS_DIR)
        (self.root / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
        self._meta = open(meta_path, "w", encoding="utf-8")
        self._count = 0

    def add(self, frames: np.ndarray, caption: str, ext: str = ".npy", **meta: Any) -> dict:
        """Write the clip first and its record second, so every record points at a complete clip."""
        if self._meta.closed:
            raise VidpostError(f"DatasetWriter for {self.root} is closed")
        if not isinstance(caption, str):
            raise ValueError(f"caption must be a str, got {type(caption).__name__}")
        if "file" in meta:
            raise ValueError("'file' is set by DatasetWriter and cannot be passed as metadata")
        if ext not in VIDEO_EXTENSIONS:
            raise ValueError(f"unknown clip extension {ext!r}, expected one of {VIDEO_EXTENSIONS}")
        rel = f"{CLIPS_DIR}/{self._count:06d}{ext}"
        record = {"file": rel, "caption": caption, **meta}
        try:
            line = json.dumps(record, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata of clip {rel} is not JSON-serialisable: {exc}") from exc
        write_video(self.root / rel, frames)
        self._meta.write(line + "\n")
        self._meta.flush()
        self._count += 1
        return record

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._meta.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _parse_line(raw: bytes) -> tuple[dict | None, str]:
    """Return (record, "") or (None, reason) for one metadata line."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    for key in ("file", "caption"):
        if not isinstance(obj.get(key), str):
            return None, f"missing or non-string {key!r}"
    return obj, ""


def _inside(root: Path, file: str) -> bool:
    """Whether `file` (relative to root) stays inside root: no absolute path, no ../ out of it, no link out."""
    return (root / file).resolve().is_relative_to(root.resolve())


def read_metadata(root: str | os.PathLike) -> tuple[list[dict], list[tuple[str, str]]]:
    """Return (records, problems); bad lines are warned about and listed as ("metadata.jsonl:N", reason)."""
    root = Path(root)
    if not root.is_dir():
        raise VidpostError(f"dataset folder {root} does not exist")
    meta_path = root / METADATA_NAME
    if not meta_path.is_file():
        raise VidpostError(f"dataset folder {root} has no {METADATA_NAME}")
    records: list[dict] = []
    problems: list[tuple[str, str]] = []
    # Split bytes, not text: str.splitlines would also break on U+2028 inside a caption.
    for lineno, raw in enumerate(meta_path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        record, reason = _parse_line(raw)
        if record is not None and not _inside(root, record["file"]):
            reason = f"file {record['file']!r} is outside the dataset folder"
            record = None
        if record is None:
            problems.append((f"{METADATA_NAME}:{lineno}", reason))
            log.warning("skipping %s:%d: %s", meta_path, lineno, reason)
        else:
            records.append(record)
    return records, problems


@dataclass(frozen=True)
class Clip:
    file: str
    caption: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    record: dict


class ClipReader:
    """Iterates the readable clips of a dataset; `skipped` and `n_read` count what each pass met.

    `problems` holds the metadata lines that never became records (see `read_metadata`); `skipped` holds
    records whose clip could not be read or which lack `caption_key`. Each pass resets both counters.
    """

    def __init__(self, root: str | os.PathLike, caption_key: str = "caption") -> None:
        self.root = Path(root)
        self.caption_key = caption_key
        self.records, self.problems = read_metadata(self.root)
        self.skipped: list[tuple[str, str]] = []
        self.n_read = 0

    def __len__(self) -> int:
        return len(self.records)

    def _skip(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))
        log.warning("skipping clip %s in %s: %s", what, self.root, reason)

    def __iter__(self) -> Iterator[Clip]:
        self.skipped = []
        self.n_read = 0
        for record in self.records:
            caption = record.get(self.caption_key)
            if not isinstance(caption, str):
                self._skip(record["file"], f"missing or non-string {self.caption_key!r}")
                continue
            try:
                frames = read_video(self.root / record["file"])
            except ClipReadError as exc:
                self._skip(record["file"], str(exc))
                continue
            self.n_read += 1
            yield Clip(file=record["file"], caption=caption, frames=frames, record=record)


def iter_clips(root: str | os.PathLike, caption_key: str = "caption") -> ClipReader:
    """Iterate a dataset's clips, skipping (and counting) what cannot be read."""
    return ClipReader(root, caption_key)
