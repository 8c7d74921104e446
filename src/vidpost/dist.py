"""torch.distributed in one place: rank, world size and the collectives the recipes need.

Every function also works without an initialised process group (one process, world size 1), so the
recipes call them unconditionally and run the same code under `python` and under `torchrun`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
    """Concatenate every rank's (n, ...) tensor along dim 0 in rank order; all ranks must pass the same n."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank: ranks must agree on a decision (skip an update, stop) or they hang."""
    if not is_distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def local_slice(global_size: int) -> slice:
    """This rank's contiguous share of `global_size` items (which world size must divide)."""
    size = world_size()
    if global_size % size:
        raise ValueError(f"{global_size} items cannot be split evenly over {size} ranks")
    n = global_size // size
    return slice(rank() * n, (rank() + 1) * n)


__all__ = ["all_gather_cat", "any_rank", "is_distributed", "is_main", "local_slice", "rank", "world_size"]
