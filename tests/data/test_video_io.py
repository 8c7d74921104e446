"""Round trips and failure modes of the clip reader/writer."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from vidpost.data.video_io import read_video, to_float, to_uint8, write_video
from vidpost.errors import ClipReadError

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)


def random_clip(t: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def palette_clip(t: int = 6, size: int = 32) -> np.ndarray:
    """Few flat colours and a moving square, so every frame differs (Pillow merges identical GIF frames)."""
    frames = np.empty((t, size, size, 3), dtype=np.uint8)  # (T, H, W, 3)
    for i in range(t):
        frames[i] = PALETTE[i % 2]
        frames[i, 8:16, 4 + 2 * i : 12 + 2 * i] = PALETTE[2 + i % 3]
    return frames


def smooth_clip(t: int = 6, size: int = 32) -> np.ndarray:
    """Smooth gradients compress well, so a lossy codec should stay close to the input."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    frames = [np.stack([x, y, (x + y + i / t) % 1.0], axis=-1) for i in range(t)]
    return to_uint8(np.stack(frames).astype(np.float32))


def test_npy_round_trip_is_exact(tmp_path: Path) -> None:
    clip = random_clip()
    write_video(tmp_path / "a.npy", clip)
    back = read_video(tmp_path / "a.npy")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, clip)


def test_gif_round_trip_is_exact_for_few_colours(tmp_path: Path) -> None:
    clip = palette_clip()
    write_video(tmp_path / "a.gif", clip)
    np.testing.assert_array_equal(read_video(tmp_path / "a.gif"), clip)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv"])
def test_lossy_round_trip_keeps_shape_and_is_close(tmp_path: Path, ext: str) -> None:
    clip = smooth_clip()
    write_video(tmp_path / f"a{ext}", clip, fps=8)
    back = read_video(tmp_path / f"a{ext}")
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clip.astype(int)).mean() < 8


def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    write_video(tmp_path / "a.npy", random_clip())
    write_video(tmp_path / "a.mp4", random_clip())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.npy"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.npy"
    write_video(target, random_clip(seed=1))
    with pytest.raises(ValueError, match="uint8"):
        write_video(target, random_clip().astype(np.float32))
    np.testing.assert_array_equal(read_video(target), random_clip(seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 4), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)],
)
def test_write_rejects_bad_shapes(tmp_path: Path, frames: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "a.npy", frames)


def test_write_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "a.avi", random_clip())


def _assert_clip_error(path: Path, reason: str) -> None:
    with pytest.raises(ClipReadError, match=reason) as info:
        read_video(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    _assert_clip_error(tmp_path / "nope.npy", "does not exist")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello")
    _assert_clip_error(path, "unknown extension")


def test_random_bytes_mp4(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    _assert_clip_error(path, "cannot read clip")


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    write_video(path, random_clip())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_clip_error(path, "cannot read clip")


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((2, 8, 8), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 4), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), np.float32), "dtype"),
        (np.zeros((0, 8, 8, 3), np.uint8), "zero frames"),
    ],
)
def test_bad_npy_contents(tmp_path: Path, array: np.ndarray, reason: str) -> None:
    path = tmp_path / "a.npy"
    np.save(path, array)
    _assert_clip_error(path, reason)


def test_grayscale_gif_reads_as_rgb(tmp_path: Path) -> None:
    gray = palette_clip()[..., 0]  # (T, H, W): Pillow writes a grayscale GIF
    iio.imwrite(tmp_path / "g.gif", gray, plugin="pillow", duration=125, loop=0)
    np.testing.assert_array_equal(read_video(tmp_path / "g.gif"), np.repeat(gray[..., None], 3, axis=-1))


def test_transparent_gif_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([palette_clip(), np.full((6, 32, 32, 1), 255, np.uint8)], axis=-1)
    rgba[:, :4, :4, 3] = 0  # (T, H, W, 4) with a transparent corner
    iio.imwrite(tmp_path / "a.gif", rgba, plugin="pillow", duration=125, loop=0)
    back = read_video(tmp_path / "a.gif")
    assert back.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(back[:, 8:, 8:], palette_clip()[:, 8:, 8:])


def test_float_conversions_round_trip_any_shape() -> None:
    clip = random_clip().reshape(2, 3, 32, 32, 3)
    as_float = to_float(clip)
    assert as_float.dtype == np.float32 and as_float.shape == clip.shape
    assert as_float.min() >= 0.0 and as_float.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(as_float), clip)


def test_to_uint8_clips_and_rounds() -> None:
    out = to_uint8(np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 255, 255])


def test_conversions_reject_wrong_dtypes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_float(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="floating"):
        to_uint8(np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan], np.float32))


def test_garbage_npy_is_reported_as_not_npy_without_pickle_advice(tmp_path):
    path = tmp_path / "clip.npy"
    path.write_bytes(b"garbage that is not an array")
    with pytest.raises(ClipReadError) as info:
        read_video(path)
    assert "not a .npy file" in str(info.value) and "pickle" not in str(info.value)
