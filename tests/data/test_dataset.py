"""The dataset folder format: writing, reading, and surviving damage."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vidpost.data.dataset import DatasetWriter, iter_clips, read_metadata
from vidpost.errors import VidpostError


def clip(value: int, t: int = 3, size: int = 8) -> np.ndarray:
    return np.full((t, size, size, 3), value, dtype=np.uint8)  # (T, H, W, 3)


def write_dataset(root: Path, n: int) -> None:
    with DatasetWriter(root) as writer:
        for i in range(n):
            writer.add(clip(10 * i), f"caption {i}", seed=i, objects=[{"shape": "circle", "xy": [i, i]}])


def test_round_trip_keeps_frames_captions_and_metadata(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", 3)
    reader = iter_clips(tmp_path / "ds")
    clips = list(reader)
    assert len(reader) == 3 and reader.n_read == 3 and reader.skipped == [] and reader.problems == []
    for i, c in enumerate(clips):
        assert c.file == f"clips/{i:06d}.npy"
        assert c.caption == f"caption {i}"
        np.testing.assert_array_equal(c.frames, clip(10 * i))
        assert c.record == {
            "file": c.file,
            "caption": c.caption,
            "seed": i,
            "objects": [{"shape": "circle", "xy": [i, i]}],
        }


def test_record_key_order_and_return_value(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as writer:
        record = writer.add(clip(1), "a red circle", ext=".gif", zeta=1, alpha=2)
        assert len(writer) == 1
    line = (tmp_path / "metadata.jsonl").read_text().strip()
    assert list(json.loads(line)) == ["file", "caption", "zeta", "alpha"]
    assert record == {"file": "clips/000000.gif", "caption": "a red circle", "zeta": 1, "alpha": 2}


def test_add_rejects_unserialisable_metadata_before_writing(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="JSON"):
            writer.add(clip(1), "x", weights=np.zeros(2))
        assert len(writer) == 0
    assert list((tmp_path / "clips").iterdir()) == []


def test_overwrite_refused_then_allowed(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2)
    with pytest.raises(VidpostError, match="metadata.jsonl"):
        DatasetWriter(tmp_path)
    with DatasetWriter(tmp_path, overwrite=True) as writer:
        writer.add(clip(7), "new")
    records, problems = read_metadata(tmp_path)
    assert [r["caption"] for r in records] == ["new"] and problems == []
    assert [p.name for p in (tmp_path / "clips").iterdir()] == ["000000.npy"]


def test_interrupted_writer_keeps_finished_clips(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path)
    for i in range(3):
        writer.add(clip(i), f"c{i}")
    # No close(): the process could be killed here. Every add() has been flushed.
    reader = iter_clips(tmp_path)
    assert [c.caption for c in reader] == ["c0", "c1", "c2"]
    assert reader.n_read == 3
    writer.close()


def test_missing_folder_or_metadata_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VidpostError, match="nope"):
        read_metadata(tmp_path / "nope")
    with pytest.raises(VidpostError, match="metadata.jsonl"):
        iter_clips(tmp_path)


def _damage(root: Path) -> None:
    """Delete clip 1, corrupt clip 2, add a bad JSON line, a record without caption and a non-object."""
    (root / "clips/000001.npy").unlink()
    (root / "clips/000002.npy").write_bytes(b"not a numpy file")
    with open(root / "metadata.jsonl", "a", encoding="utf-8") as fh:
        fh.write("\n")  # blank lines are ignored
        fh.write('{"file": "clips/000000.npy", "caption": \n')  # line 6: bad JSON
        fh.write('{"file": "clips/000000.npy"}\n')  # line 7: no caption
        fh.write('["file", "caption"]\n')  # line 8: not an object


def test_damaged_dataset_yields_good_clips_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_dataset(tmp_path, 4)
    _damage(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vidpost"):
        reader = iter_clips(tmp_path)
        clips = list(reader)
    assert [c.caption for c in clips] == ["caption 0", "caption 3"]
    assert reader.n_read == 2 and len(reader) == 4
    assert [what for what, _ in reader.problems] == [
        "metadata.jsonl:6",
        "metadata.jsonl:7",
        "metadata.jsonl:8",
    ]
    assert "JSON" in reader.problems[0][1] and "caption" in reader.problems[1][1]
    assert "object" in reader.problems[2][1]
    assert [what for what, _ in reader.skipped] == ["clips/000001.npy", "clips/000002.npy"]
    assert "does not exist" in reader.skipped[0][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and all("\n" not in w for w in warnings)


def test_second_pass_resets_counters(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2)
    (tmp_path / "clips/000000.npy").unlink()
    reader = iter_clips(tmp_path)
    list(reader)
    list(reader)
    assert reader.n_read == 1 and len(reader.skipped) == 1


def test_caption_key_selects_field_and_skips_records_without_it(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path) as writer:
        writer.add(clip(1), "short", long_caption="a long caption")
        writer.add(clip(2), "short only")
    reader = iter_clips(tmp_path, caption_key="long_caption")
    assert [c.caption for c in reader] == ["a long caption"]
    assert reader.skipped == [("clips/000001.npy", "missing or non-string 'long_caption'")]


def test_non_utf8_line_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    write_dataset(tmp_path, 1)
    with open(tmp_path / "metadata.jsonl", "ab") as fh:
        fh.write(b'{"file": "x.npy", "caption": "\xff"}\n')
    records, problems = read_metadata(tmp_path)
    assert len(records) == 1 and problems == [("metadata.jsonl:2", "not valid UTF-8")]


def test_files_outside_the_dataset_folder_are_never_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "ds", tmp_path / "secret.npy"
    write_dataset(root, 1)
    np.save(outside, clip(200))
    (root / "clips" / "link.npy").symlink_to(outside)
    with open(root / "metadata.jsonl", "a") as f:
        for file in ("../secret.npy", str(outside), "clips/link.npy", "clips/../clips/000000.npy"):
            f.write(json.dumps({"file": file, "caption": "stolen"}) + "\n")
    reader = iter_clips(root)
    assert [c.file for c in reader] == ["clips/000000.npy", "clips/../clips/000000.npy"]  # inside, however written
    assert [reason for _, reason in reader.problems] == [
        f"file {f!r} is outside the dataset folder" for f in ("../secret.npy", str(outside), "clips/link.npy")
    ]
