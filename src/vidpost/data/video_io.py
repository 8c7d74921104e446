"""Read and write video clips as uint8 arrays of shape (T, H, W, 3).

`.npy` is the lossless format every stage uses internally. `.gif`, `.mp4`, `.webm` and `.mkv` exist for
user data and previews: they are lossy (GIF quantises to a palette and Pillow merges identical
consecutive frames into one, so a GIF may read back with fewer frames; the ffmpeg formats are lossy codecs,
and their yuv420p pixels need even sizes, so imageio-ffmpeg resizes an odd height or width up by one pixel).
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from vidpost.atomic import atomic_path
from vidpost.errors import ClipReadError, VidpostError, first_line

VIDEO_EXTENSIONS = (".npy", ".gif", ".mp4", ".webm", ".mkv")

# ffmpeg's default codec (libx264) is not allowed in a WebM container.
_FFMPEG_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}


def _clip_error(path: Path, reason: str) -> ClipReadError:
    return ClipReadError(f"cannot read clip {path}: {reason}")


_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(path: Path) -> np.ndarray:
    # Check the magic first: np.load guesses "pickle" for any other bytes and suggests allow_pickle,
    # which is exactly the unsafe advice a user must not get.
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise _clip_error(path, first_line(exc)) from exc
    if magic != _NPY_MAGIC:
        raise _clip_error(path, "not a .npy file (bad header)")
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _clip_error(path, first_line(exc)) from exc
    if not isinstance(frames, np.ndarray):
        raise _clip_error(path, "file holds an .npz archive, not a single array")
    if frames.dtype != np.uint8:
        raise _clip_error(path, f"dtype is {frames.dtype}, expected uint8")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise _clip_error(path, f"shape is {frames.shape}, expected (T, H, W, 3)")
    return frames


def _decode(path: Path) -> np.ndarray:
    """Decode to RGB with pinned plugins, so the result does not depend on which optional backends exist.

    Both decoders convert for us: Pillow's mode="RGB" expands grayscale and drops alpha (and keeps frames
    of a transparent GIF the same shape, which its default mode does not); ffmpeg always emits rgb24.
    """
    if path.suffix.lower() == ".gif":
        kwargs = {"plugin": "pillow", "mode": "RGB"}
    else:
        kwargs = {"plugin": "FFMPEG"}
    try:
        frames = np.asarray(iio.imread(path, index=None, **kwargs))
    except Exception as exc:  # decoders raise anything from OSError to RuntimeError on bad input
        raise _clip_error(path, first_line(exc)) from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise _clip_error(path, f"decoded to {frames.dtype} {frames.shape}, expected uint8 (T, H, W, 3)")
    return frames


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read a clip as uint8 (T, H, W, 3); every failure is a one-line ClipReadError naming the file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise _clip_error(path, f"unknown extension {ext!r}, expected one of {', '.join(VIDEO_EXTENSIONS)}")
    if not path.is_file():
        raise _clip_error(path, "file does not exist")
    frames = _read_npy(path) if ext == ".npy" else _decode(path)
    if frames.shape[0] == 0:
        raise _clip_error(path, "clip has zero frames")
    return frames


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T >= 1, got {frames.shape}")


def _write_ffmpeg(tmp: Path, frames: np.ndarray, fps: float, target: Path) -> None:
    """imageio-ffmpeg does not check ffmpeg's exit code, so a failed encode is caught by counting frames."""
    iio.imwrite(
        tmp,
        frames,
        plugin="FFMPEG",
        fps=fps,
        codec=_FFMPEG_CODECS[target.suffix.lower()],
        macro_block_size=2,  # yuv420p needs even sizes; odd sizes are resized up by one pixel
        ffmpeg_log_level="error",
    )
    try:
        n_written, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
    except RuntimeError as exc:
        raise VidpostError(f"ffmpeg failed to write {target}: {first_line(exc)}") from exc
    if n_written != frames.shape[0]:
        raise VidpostError(f"ffmpeg wrote {n_written} of {frames.shape[0]} frames to {target}")


def _write_to(tmp: Path, frames: np.ndarray, fps: float, target: Path) -> None:
    ext = target.suffix.lower()
    if ext == ".npy":
        with open(tmp, "xb") as fh:
            np.save(fh, frames, allow_pickle=False)
    elif ext == ".gif":
        iio.imwrite(tmp, frames, plugin="pillow", duration=1000.0 / fps, loop=0)
    else:
        _write_ffmpeg(tmp, frames, fps, target)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8) -> None:
    """Write uint8 (T, H, W, 3) frames, format by extension, atomically: a kill mid-write leaves no half file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"cannot write {path}: unknown extension {ext!r}, expected one of {VIDEO_EXTENSIONS}")
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with atomic_path(path) as tmp:
        _write_to(tmp, frames, fps, path)


def to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1], any leading shape; models and rewards work on floats."""
    if frames.dtype != np.uint8:
        raise ValueError(f"to_float expects uint8 frames, got {frames.dtype}")
    return frames.astype(np.float32) / np.float32(255.0)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, clipping out-of-range values (model outputs overshoot) and rounding."""
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"to_uint8 expects floating frames, got {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError("to_uint8 got NaN or infinite values")
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
