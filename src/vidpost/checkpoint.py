"""Training checkpoints: trained weights, optimizer state and loop state, written atomically, safetensors only.

    checkpoints/step_000300/
        trainable.safetensors    the trained parameters by name (all weights, or only the LoRA ones)
        optimizer.safetensors    every tensor of the optimizer state, keyed "<param index>.<name>"
        state.json               step, the optimizer's param_groups and scalar state, the recipe's counters

A checkpoint holds whole tensors, whatever the world size of the run that wrote it: under FSDP the ranks
gather their shards (`full_training_state`, a collective), rank 0 writes, and `load_checkpoint` shards what it
reads like the model's parameters, so a run resumes at another world size.

A checkpoint is written into a hidden temporary folder, flushed to disk (files and folder) and renamed into
place, the rename flushed too, so neither a kill nor a power loss during a save leaves no whole checkpoint,
and the previous ones stay intact until then; resume skips a newest checkpoint that does not read; an old checkpoint
is renamed
away before it is deleted, for the same reason. The next save removes what a kill left behind. One process
writes a run's checkpoints (rank 0). Randomness needs no saving: recipes draw every step's randomness from
(seed, step).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vidpost import dist
from vidpost.errors import VidpostError

log = logging.getLogger("vidpost")


class UnreadableCheckpoint(VidpostError):
    """A checkpoint whose files cannot be read (truncated, empty, corrupt): an older one may still load."""


_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"  # folders being written or deleted; never listed as checkpoints


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first (a temporary folder left by a kill is ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for p in root.iterdir():
        match = _STEP_DIR.match(p.name)
        if match and (p / "state.json").is_file():
            found.append((int(match.group(1)), p))
    return [p for _, p in sorted(found, key=lambda step_path: step_path[0])]


def run_checkpoints(out: str | Path) -> list[Path]:
    """Every complete checkpoint of a run directory: checkpoints/ and its stage folders (checkpoints/sft/), and
    a pipeline's stages (NAME/checkpoints/...); the data and sample folders, thousands of files, are not walked."""
    out = Path(out)
    roots = [
        out / "checkpoints",
        *(out / "checkpoints").glob("*"),
        *out.glob("*/checkpoints"),
        *out.glob("*/checkpoints/*"),
    ]
    return [
        path for root in roots if root.is_dir() and not _STEP_DIR.match(root.name) for path in list_checkpoints(root)
    ]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def full_training_state(
    trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Whole trained tensors and optimizer state dict (as `optimizer.state_dict()`) on rank 0's CPU, for rank 0's
    `save_checkpoint`. Sharded (FSDP) tensors are all-gathered one by one: every rank must call this.
    """
    state = optimizer.state_dict()
    full_state = {index: dist.full_tensors(entries) for index, entries in state["state"].items()}
    return dist.full_tensors(trainable), {"state": full_state, "param_groups": state["param_groups"]}


def _optimizer_tensors(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous()  # save_file copies; no clone
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    root: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict,
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` under root atomically, then delete all but the newest `keep_last`.

    `optimizer`: the optimizer, or its state dict (as `full_training_state` returns it under FSDP).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = _step_dir(root, step)
    if (final / "state.json").is_file():
        return final  # already saved at this step (same weights: steps are deterministic)
    for debris in root.glob(f"{_TMP_PREFIX}*"):  # left by a save or a deletion that was killed
        shutil.rmtree(debris, ignore_errors=True)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        tensors, optim_meta = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": optim_meta, **state}, indent=1))
        for written in (*tmp.iterdir(), tmp):  # on disk before the rename: a power loss keeps a whole checkpoint
            _fsync(written)
        if final.exists():  # an incomplete folder of that name (no state.json) from an older kill
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)  # the rename itself, before any older checkpoint is deleted
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        # renamed first: a kill during rmtree would leave a step folder with state.json but without weights
        doomed = root / f"{_TMP_PREFIX}deleting-{old.name}-{secrets.token_hex(4)}"
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a directory's on POSIX only)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | Path, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore trained weights (in place) and optimizer state; return state.json (step, counters).

    Sharded (FSDP) parameters take their shard of each whole tensor; every rank reads the checkpoint.
    """
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "trainable.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if set(weights) != set(parameters):
        missing, extra = sorted(set(parameters) - set(weights)), sorted(set(weights) - set(parameters))
        raise VidpostError(
            f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was the run's model or LoRA config changed?"
        )
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(dist.shard_like(weights[name], param))
    optim_meta = state.pop("optimizer")
    ordered = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's indices
    entries: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *optim_meta["scalars"].items()]:
        index, name = key.split(".", 1)
        param = ordered[int(index)]
        if isinstance(value, torch.Tensor) and name != "step" and value.shape == param.shape:  # Adam's moments
            value = dist.shard_like(value, param)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": optim_meta["param_groups"]})
    return state


def load_latest_checkpoint(
    root: str | Path, parameters: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> tuple[Path, dict[str, Any]] | None:
    """`load_checkpoint` of the newest checkpoint under root that reads; (its path, state.json), or None if none.

    A newer one that cannot be read (a truncated or empty file after a crash) is passed over with a one-line
    warning naming it; if none reads, the run stops rather than start again from nothing. Under torchrun
    rank 0 decides and every other rank loads the same checkpoint, or all of them stop.
    """
    root = Path(root)
    found, chosen = list_checkpoints(root), None
    if dist.is_main():
        for path in reversed(found):
            try:
                chosen = path, load_checkpoint(path, parameters, optimizer)
                break
            except UnreadableCheckpoint as error:
                log.warning("%s; trying the checkpoint before it", error)
    name = dist.broadcast_object(None if chosen is None else chosen[0].name)
    failed = None
    if not dist.is_main() and name is not None:
        try:
            chosen = root / name, load_checkpoint(root / name, parameters, optimizer)
        except VidpostError as error:
            failed = str(error)
            log.error("rank %d: %s", dist.rank(), error)
    if dist.any_rank(failed is not None):
        raise VidpostError(
            f"not every rank could read {root / name}, the checkpoint rank 0 resumes from (see the errors above)"
        )
    if name is None and dist.any_rank(bool(found)):
        raise VidpostError(
            f"no checkpoint under {root} could be read (see the warnings above); move them away "
            "to start again from the beginning"
        )
    return chosen
