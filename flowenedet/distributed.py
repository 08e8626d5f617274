"""torch.distributed helpers: no-ops in a single process, collective ops under torchrun.

The detector calls these itself, so the same ``fit`` runs on one CPU or many GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_sum",
    "average_gradients",
    "broadcast_module",
    "is_distributed",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes (returns a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    work = tensor.to(_collective_device()).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            work = tensor.detach().to(_collective_device())
            dist.broadcast(work, src=0)
            tensor.copy_(work.to(tensor.device))


def average_gradients(module: nn.Module) -> None:
    """Replace each gradient by its mean over all processes."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for param in module.parameters():
        if param.grad is not None:
            param.grad.copy_(all_reduce_sum(param.grad) / world)
