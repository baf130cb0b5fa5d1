"""Several processes, one job: `torch.distributed` as `torchrun` launches it (NCCL on GPUs, Gloo on CPUs).

    torchrun --nproc-per-node 2 -m scan train --config f30k_t2i_avg ...

`torchrun` starts the processes and sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and the rendezvous
address in their environment; `init_from_env` joins the process group they describe (or does
nothing in a plain single process), and the rest of the package asks `World` which part of the
work is its own. Nothing here manages processes: that is torchrun's job.

The collectives are the few the package needs: gathering rows of different lengths from every
rank (`gather_rows`, for the score matrix of a distributed evaluation) and gathering equal-shaped
tensors with gradients (`all_gather_with_grad`, for negatives searched over the global batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from scan.errors import ConfigError

__all__ = ["World", "all_gather_with_grad", "finish", "gather_rows", "init_from_env", "world"]


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes, and its device's local index."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    local_size: int = 1  # processes on this machine (they share its CPUs)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, logs and reports (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, items: list[Any]) -> list[Any]:
        """This rank's share of a list every rank holds alike: every `size`-th item from `rank`."""
        return items[self.rank :: self.size]


def world() -> World:
    """The current process group, or a world of one when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def init_from_env(device: str = "auto", *, timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes in the environment; a world of one without it.

    Args:
        device: The run's device setting: NCCL when it is (or "auto" finds) a GPU, else Gloo.
            With NCCL, each process takes the GPU of its `LOCAL_RANK`.
        timeout_s: How long a collective may wait for a slow rank (a validation on rank 0).

    Raises:
        ConfigError: a multi-process launch asked for a device this machine lacks.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if dist.is_initialized():
        return world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_gpu = device != "cpu" and torch.cuda.is_available() and not device.startswith("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but this machine has no CUDA device; use --device cpu")
    if use_gpu:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    return world()


def finish(current: World) -> None:
    """Leave the process group together: wait for every rank, then tear it down.

    A rank that simply exits while Gloo's threads still run aborts the process ("terminate
    called without an active exception"), and torchrun reports the whole job failed.
    """
    if current.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_rows(block: torch.Tensor, current: World) -> torch.Tensor:
    """Every rank's `(n_r, ...)` block, concatenated in rank order (`n_r` may differ); no gradient."""
    if not current.distributed:
        return block
    if block.dtype == torch.bool:  # Gloo gathers no booleans
        return gather_rows(block.to(torch.uint8), current).bool()
    sizes = [torch.zeros(1, dtype=torch.long, device=block.device) for _ in range(current.size)]
    dist.all_gather(sizes, torch.tensor([block.shape[0]], dtype=torch.long, device=block.device))
    longest = int(max(int(s.item()) for s in sizes))
    padded = block.new_zeros((longest, *block.shape[1:]))
    padded[: block.shape[0]] = block
    parts = [torch.empty_like(padded) for _ in range(current.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of the gradient of its own part.

    Every rank computes its loss from the gathered tensor; the gradient of the sum of those
    losses with respect to rank r's part is the sum of every rank's gradient of that part, which
    an all_reduce gives (Gloo has no reduce_scatter; the all_reduce is what open_clip's gather
    amounts to on Gloo too).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def all_gather_with_grad(tensor: torch.Tensor, current: World) -> torch.Tensor:
    """Every rank's `(n, ...)` tensor (the same shape on every rank), concatenated, differentiably."""
    if not current.distributed:
        return tensor
    return _AllGather.apply(tensor, current.rank, current.size)
