"""torch.distributed in one place: the process group, FSDP2 sharding, and the collectives the recipes need.

    # see docs/guide/training-and-sampling.md, "Training on several GPUs"
    torchrun --nproc_per_node 8 -m vidpost.cli grpo CONFIG --out RUN

`init_from_env` joins the process group torchrun describes (NCCL with one GPU per process, gloo on CPUs);
`shard_model` applies FSDP2 (`fully_shard`) to each transformer block and then to the root, with gradients
summed over ranks (each rank divides its loss by the global batch, so the reduced gradient is exactly the
one-process gradient). `unsharded` holds the full weights for a block of forwards that ranks run unevenly
(rollouts, evaluation shares); `full_tensors` / `shard_like` move tensors between the
sharded and the whole (world-size independent) form that checkpoints store.

Every function also works without an initialised process group (one process, world size 1), so the
recipes call them unconditionally and run the same code under `python` and under `torchrun`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from vidpost.errors import VidpostError


def init_from_env() -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    With CUDA: NCCL, one GPU per process (cuda:LOCAL_RANK); without: gloo on the CPU. Without torchrun's
    variables this is one process and nothing changes. Ranks other than 0 log warnings and errors only.
    """
    if "RANK" not in os.environ or is_distributed():
        return
    # rank 0 alone writes checkpoints and scores evaluations while the others wait in their next collective
    timeout = timedelta(minutes=30)
    if torch.cuda.is_available():
        local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    if not is_main():
        logging.getLogger("vidpost").setLevel(logging.WARNING)


def destroy(wait: bool = True) -> None:
    """Leave the process group at the end of a command; nothing in one process.

    wait (a normal end): the ranks meet in a barrier first, so that none closes its connections while another
    still works (rank 0 writes the last checkpoint after the others are done); a peer that left early can abort
    a process's exit. After an error, no barrier: the other ranks may never come to it.
    """
    if not is_distributed():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


@contextmanager
def leave_at_end() -> Iterator[None]:
    """Run a command's block, then leave the process group: together after a normal end, at once after an error."""
    try:
        yield
    except BaseException:
        destroy(wait=False)
        raise
    destroy()


def device() -> torch.device:
    """Where this rank computes: its GPU under NCCL, else the CPU (one process runs on the CPU, as always)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the process that logs, writes summaries and saves final models."""
    return rank() == 0


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n, ...) tensor along dim 0 in rank order; ranks may pass different n."""
    if not is_distributed():
        return t
    local = t.to(device()).contiguous()  # NCCL gathers GPU tensors only
    sizes = torch.tensor([local.shape[0]], device=local.device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    longest = max(int(n) for n in all_sizes)
    padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, all_sizes, strict=True)]).to(t.device)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of every rank's tensor `t` (the same shape on every rank)."""
    if not is_distributed():
        return t
    total = t.to(device()).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(t.device)


def max_over_ranks(value: int) -> int:
    """The largest of every rank's `value`."""
    if not is_distributed():
        return value
    t = torch.tensor([value], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank: ranks must agree on a decision (skip an update, stop) or they hang."""
    return bool(max_over_ranks(int(flag)))


def require_divisible(counts: Mapping[str, int]) -> None:
    """Refuse, in one line naming its config key, a count that `local_slice` could not split over the ranks.

    Each recipe calls this once, before any work, with every global count it splits: the same count would
    otherwise fail only when a step first splits it, after the model has loaded.
    """
    size = world_size()
    for key, count in counts.items():
        if count % size:
            raise VidpostError(f"{key} {count} must be a multiple of the world size {size}")


def local_slice(global_size: int) -> slice:
    """This rank's contiguous share of `global_size` items (which world size must divide)."""
    size = world_size()
    if global_size % size:
        raise ValueError(f"{global_size} items cannot be split evenly over {size} ranks")
    n = global_size // size
    return slice(rank() * n, (rank() + 1) * n)


def share(size: int) -> slice:
    """This rank's contiguous share of `size` items, which need not divide evenly (some shares may be empty)."""
    r, w = rank(), world_size()
    return slice(size * r // w, size * (r + 1) // w)


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's picklable `obj`, in rank order, on rank 0; None on the other ranks."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank (what the other ranks pass is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it writes files: run directory, dataset, cache), then the others (they find them).

    If rank 0 fails in the block, the other ranks raise instead of waiting for it forever.
    """
    if not is_distributed():
        yield
        return
    if is_main():
        failed = True
        try:
            yield
            failed = False
        finally:
            any_rank(failed)  # releases the other ranks
    else:
        if any_rank(False):
            raise VidpostError("rank 0 failed while preparing the run; see its error")
        yield


# ------------------------------------------------------------------------------------------------ FSDP2


def shard_model(module: torch.nn.Module, blocks: Iterable[torch.nn.Module]) -> None:
    """FSDP2: `fully_shard` each of `blocks`, then `module` (the rest: embeddings, head); nothing in one process.

    Every rank must hold the same weights when it is called (each keeps its own chunk of its own copy).
    Frozen weights (a LoRA base, a frozen reference) are sharded too; only parameters with gradients are
    reduced. Gradients are summed over ranks, not averaged: each rank divides its loss by the global batch.
    Build the optimizer after this call (its parameters are the sharded ones).
    """
    if not is_distributed():
        return
    # velocity() never changes the transformer's output in place, which is what this warning is about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device().type, (world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-multiplied sum)


@contextmanager
def unsharded(module: torch.nn.Module) -> Iterator[None]:
    """Hold the full weights of a sharded `module` on every rank for the block (one all-gather), then reshard.

    Inside, forwards need no collectives, so ranks may run different numbers of them (rollouts in buckets of
    equal k, uneven shares of evaluation prompts). It costs the full weights' memory on every rank. Not for
    saving: FSDP's state_dict() reshards first (use `full_tensors`). Nothing happens to an unsharded module.
    """
    if not isinstance(module, FSDPModule):
        yield
        return
    sharded = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:  # FSDP's defaults again: blocks reshard after forward, the root keeps its weights
            m.set_reshard_after_forward(m is not module, recurse=False)
            m.reshard()


def full_tensors(named: dict[str, Any]) -> dict[str, Any]:
    """`named`'s tensors whole, on the CPU of rank 0; {} on the other ranks.

    Sharded DTensors are all-gathered one at a time (a collective: every rank calls this with the same names,
    in the same order), so a rank holds one whole tensor at a time on its device and only rank 0 keeps them.
    Values that are not tensors (an optimizer's scalars) pass through on rank 0.
    """
    out = {}
    for name, t in named.items():
        if isinstance(t, DTensor):
            t = t.full_tensor()
        if is_main():
            out[name] = t.detach().cpu() if isinstance(t, torch.Tensor) else t
    return out


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (the whole tensor, held by every rank) sharded as `like` is; `full` itself if `like` is not sharded."""
    if not isinstance(like, DTensor):
        return full
    local = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)  # no communication


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients to a global norm of `max_norm` over all ranks' shards; return the norm before clipping (a
    plain tensor)."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


__all__ = [
    "all_gather_cat",
    "any_rank",
    "clip_grad_norm_",
    "destroy",
    "device",
    "full_tensors",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "is_main",
    "local_slice",
    "main_first",
    "max_over_ranks",
    "rank",
    "shard_like",
    "shard_model",
    "share",
    "sum_over_ranks",
    "unsharded",
    "world_size",
]
