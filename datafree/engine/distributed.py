"""Several ranks under torchrun: the process group, and the few decisions every rank must take together.

Rank 0 owns the run folder, evaluates and writes the records; every rank synthesises and trains on its own
batches, with DDP (:class:`datafree.engine.trainer.Trainer`) keeping the students together. On one process
every function here is a no-op that returns its input.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import torch
from torch import nn


def init_distributed() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) under torchrun (WORLD_SIZE > 1), else (0, 1, 0).

    Uses NCCL on CUDA and gloo on CPU; the process group is created once.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def agree(flag: bool, world_size: int, device: torch.device) -> bool:
    """Rank 0's decision (it alone evaluates), on every rank."""
    if world_size <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def earliest_failure(
    bad: Optional[Tuple[int, str]], rank: int, world_size: int, device: torch.device
) -> Optional[Tuple[int, str]]:
    """The earliest ``(step, reason)`` of any rank (every rank stops together), or None when no rank failed;
    another rank's reason is prefixed with its rank."""
    if world_size <= 1:
        return bad
    import torch.distributed as dist

    never = 2**62
    first = torch.tensor([bad[0] if bad is not None else never], dtype=torch.long, device=device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if int(first.item()) == never:
        return None
    reasons: List[Any] = [None] * world_size  # a failure is rare: the names can travel as objects
    dist.all_gather_object(reasons, bad)
    who, (step, reason) = min(((r, b) for r, b in enumerate(reasons) if b is not None), key=lambda rb: rb[1][0])
    return step, (reason if who == rank else f"rank {who}: {reason}")


def ranks_in_sync(student: nn.Module, device: torch.device) -> bool:
    """True when every rank ends with the same student weights (DDP kept them together)."""
    import torch.distributed as dist

    total = torch.stack([p.detach().double().sum() for p in student.parameters()]).sum().reshape(1)
    total = total.to(device)
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.isclose(lo, hi, rtol=0, atol=1e-9 * max(1.0, float(hi.abs()))).item())


def shut_down() -> None:
    """Destroy the process group (after every rank has left the loop)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
