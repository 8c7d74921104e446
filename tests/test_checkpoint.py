"""Checkpoints survive kills: a process SIGKILLed at any point of a save leaves the previous checkpoint intact
and the latest one loadable, and the next save works (and clears what the kill left behind)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from vidpost import checkpoint
from vidpost.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    run_checkpoints,
    save_checkpoint,
)

TESTS = Path(__file__).resolve().parent

# Run in a fresh interpreter (a SIGKILL must not take pytest with it): save checkpoint 2 next to checkpoint 1,
# dying at the given point of the save.
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from test_checkpoint import die_during_save, dummy_state
from vidpost.checkpoint import save_checkpoint

die_during_save(sys.argv[3])
save_checkpoint(sys.argv[2], 2, *dummy_state(2.0), {"mark": 2.0}, keep_last=1)
sys.exit("the save was not killed")
"""


def dummy_state(fill: float) -> tuple[dict[str, torch.nn.Parameter], torch.optim.Optimizer]:
    """4 MB of weights equal to `fill` and the AdamW state of one step (lr 0 keeps the weights at `fill`)."""
    params = {
        "w": torch.nn.Parameter(torch.full((1024, 1024), fill)),
        "b": torch.nn.Parameter(torch.full((1024,), fill)),
    }
    optimizer = torch.optim.AdamW(params.values(), lr=0.0)
    for p in params.values():
        p.grad = torch.full_like(p, fill)
    optimizer.step()
    optimizer.zero_grad()
    return params, optimizer


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_during_save(point: str) -> None:
    """In the child: make the next save SIGKILL its own process at `point`, as a pre-emption would."""
    if point in ("trainable", "optimizer"):  # half of that file is on disk
        real_save_file = checkpoint.save_file

        def save_half_then_die(tensors, filename, metadata=None):
            if Path(filename).name != f"{point}.safetensors":
                return real_save_file(tensors, filename, metadata)
            data = safetensors.torch.save(tensors, metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            _kill_self()

        checkpoint.save_file = save_half_then_die
    elif point == "publish":  # every file is written, the rename into place is not done
        checkpoint.os.replace = lambda *args: _kill_self()
    elif point == "prune":  # checkpoint 2 is in place; deleting checkpoint 1 has removed one file of it

        def remove_one_file_then_die(path, ignore_errors=False):
            os.remove(Path(path) / "trainable.safetensors")
            _kill_self()

        checkpoint.shutil.rmtree = remove_one_file_then_die
    else:
        raise ValueError(point)


def _assert_holds(path: Path, fill: float) -> None:
    """The checkpoint at `path` loads and holds exactly dummy_state(fill)."""
    params, optimizer = dummy_state(0.0)
    state = load_checkpoint(path, params, optimizer)
    assert state["mark"] == fill
    want_params, want_optimizer = dummy_state(fill)
    assert all(torch.equal(params[k], want_params[k]) for k in params)
    got, want = optimizer.state_dict()["state"], want_optimizer.state_dict()["state"]
    assert all(torch.equal(got[i][k], want[i][k]) for i in want for k in want[i])


@pytest.mark.parametrize("point", ["trainable", "optimizer", "publish", "prune"])
def test_a_kill_during_a_save_leaves_the_latest_checkpoint_intact(point, tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, *dummy_state(1.0), {"mark": 1.0}, keep_last=1)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(TESTS), str(root), point], capture_output=True, text=True, timeout=600
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert any(p.name.startswith(".") for p in root.iterdir())  # the kill struck mid-save and left debris

    # only whole checkpoints are listed; the newest is checkpoint 1, or 2 when the kill came after its rename
    survivors = list_checkpoints(root)
    marks = [2.0] if point == "prune" else [1.0]
    assert [p.name for p in survivors] == [f"step_{int(m):06d}" for m in marks]
    assert latest_checkpoint(root) == survivors[-1]
    _assert_holds(survivors[-1], marks[-1])

    # the next save works and removes the debris
    save_checkpoint(root, 3, *dummy_state(3.0), {"mark": 3.0}, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step_000003"]
    _assert_holds(root / "step_000003", 3.0)


def test_old_checkpoints_are_pruned_and_a_repeated_step_is_not_rewritten(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, *dummy_state(float(step)), {"mark": float(step)}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    save_checkpoint(tmp_path, 3, *dummy_state(9.0), {"mark": 9.0}, keep_last=2)
    _assert_holds(tmp_path / "step_000003", 3.0)


def test_a_save_reaches_the_disk_before_older_checkpoints_are_deleted(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, *dummy_state(1.0), {}, keep_last=1)
    events, real_fsync, real_rmtree = [], os.fsync, checkpoint.shutil.rmtree

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def rmtree(path, *args, **kwargs):
        events.append(("rmtree", Path(path).name))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    save_checkpoint(tmp_path, 2, *dummy_state(2.0), {}, keep_last=1)
    synced = [name for kind, name in events if kind == "fsync"]
    assert {"trainable.safetensors", "optimizer.safetensors", "state.json", tmp_path.name} <= set(synced)
    deleting = next(i for i, (kind, name) in enumerate(events) if kind == "rmtree" and "step_000001" in name)
    assert events[deleting - 1] == ("fsync", tmp_path.name)  # the rename is on disk before step 1 goes


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_passes_over_a_newest_checkpoint_that_does_not_read(tmp_path, damage, caplog):
    save_checkpoint(tmp_path, 1, *dummy_state(1.0), {"mark": 1.0}, keep_last=2)
    save_checkpoint(tmp_path, 2, *dummy_state(2.0), {"mark": 2.0}, keep_last=2)
    broken = tmp_path / "step_000002" / "trainable.safetensors"
    broken.write_bytes(broken.read_bytes()[: 100 if damage == "truncated" else 0])
    params, optimizer = dummy_state(0.0)
    path, state = checkpoint.load_latest_checkpoint(tmp_path, params, optimizer)
    assert path.name == "step_000001" and state["mark"] == 1.0 and bool((params["w"] == 1.0).all())
    assert "step_000002: unreadable checkpoint (SafetensorError" in caplog.text
    (tmp_path / "step_000001" / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(checkpoint.VidpostError, match="no checkpoint under .* could be read"):
        checkpoint.load_latest_checkpoint(tmp_path, *dummy_state(0.0))
    assert checkpoint.load_latest_checkpoint(tmp_path / "none", *dummy_state(0.0)) is None


def test_run_checkpoints_finds_recipe_stage_and_pipeline_checkpoints_but_not_other_folders(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for root in ("checkpoints", "checkpoints/sft", "grpo/checkpoints", "enhance/checkpoints/grpo"):
        save_checkpoint(tmp_path / root, 3, model.state_dict(), optimizer, {})
    (tmp_path / "data" / "clips" / "step_000009").mkdir(parents=True)
    (tmp_path / "data" / "clips" / "step_000009" / "state.json").write_text("{}")
    found = {str(p.relative_to(tmp_path)) for p in run_checkpoints(tmp_path)}
    assert found == {
        "checkpoints/step_000003",
        "checkpoints/sft/step_000003",
        "grpo/checkpoints/step_000003",
        "enhance/checkpoints/grpo/step_000003",
    }
