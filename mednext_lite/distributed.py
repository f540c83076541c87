"""Multi-process helpers for ``torchrun``: this process's ranks, the process group, and collectives.

The trainer needs to know who this process is, to join and leave the group, and a few collective
operations (a barrier, a sum, an "any rank?" vote). Each is a no-op in a single process (no
process group), so the trainer runs one code path for 1 or N processes. Collectives run on the
GPU under nccl and on the CPU under gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Ranks", "all_reduce_sum", "any_rank", "barrier", "init_process_group", "leave_process_group",
           "ranks_from_env"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes files and logs."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """The ranks torchrun sets in ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (defaults: one process)."""
    return Ranks(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 world_size=int(os.environ.get("WORLD_SIZE", "1")))


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_process_group(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group of a multi-process run (nccl on CUDA, gloo on CPU), after pinning this
    process to its GPU. Returns whether this call created the group (and so should leave it)."""
    if not ranks.distributed or _joined():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def leave_process_group() -> None:
    """Destroy the process group, if one exists."""
    if _joined():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process arrives here."""
    if _joined():
        dist.barrier()


def _reduction_device() -> torch.device:
    # nccl reduces tensors on the process's GPU; gloo on the CPU.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes, on the CPU (``tensor`` itself alone)."""
    if not _joined():
        return tensor.cpu()
    total = tensor.detach().to(_reduction_device(), copy=True)
    dist.all_reduce(total)
    return total.cpu()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true in at least one process (every process gets the same answer)."""
    if not _joined():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_reduction_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
