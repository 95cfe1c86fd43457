"""Process-group setup from torchrun's environment, and the few collectives the tools need: one :class:`DistInfo`
that every caller (training, evaluation, the gradient steps) takes.

torchrun (single node or ``--nnodes N --node_rank i --rdzv_backend c10d --rdzv_endpoint HOST:PORT``) sets
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a plain ``python`` run is rank 0
of 1 and creates no process group. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mseg_semantic.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (one process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Read torchrun's variables, pick the device, and join the process group when there are several ranks."""
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return DistInfo(0, 1, 0, 1, device, None)
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise UserError("Distributed.dist_backend=nccl needs CUDA GPUs and none is visible; set dist_backend=gloo (or leave it unset: gloo on CPUs, nccl on GPUs)")
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise UserError(f"WORLD_SIZE={world_size} but {var} is not set: launch with torchrun (see the README's distributed commands)")
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world_size, "timeout": timedelta(minutes=timeout_minutes)}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistInfo(rank, world_size, local_rank, local_world_size, device, backend)


def shutdown_distributed(info: DistInfo, *, finished: bool = True) -> None:
    """Leave the process group; after a finished run, only once every rank is done with it.

    Without the barrier a rank that finishes first tears its gloo context down while a peer may still be in a
    collective, and the peer can die in C++ ("terminate called without an active exception", SIGABRT). After a failure
    (``finished=False``) there is no barrier: the peers may never arrive.
    """
    if info.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The global batch split evenly over ranks (the learning rate is not rescaled)."""
    if batch_size % world_size != 0:
        raise UserError(f"TRAIN.batch_size={batch_size} (global) is not divisible by the number of processes {world_size}; choose a multiple of {world_size}")
    return batch_size // world_size


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (on every rank)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_tensor(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's values in ``tensor`` on every rank (in place)."""
    if info.distributed:
        dist.broadcast(tensor, src=0)
    return tensor
