import pytest

from vidpost.atomic import atomic_path


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "clip.npy"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy"]
