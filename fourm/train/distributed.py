"""Process-group set-up and model wrapping for data-parallel training.

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process group starts
with NCCL on GPUs and gloo on CPUs; without it everything runs in one process and
the collectives below are no-ops. The model is wrapped with DDP, or sharded with
FSDP2 (``fully_shard``) for the large sizes; checkpoints go through the full
(unsharded) state dicts either way, so model files hold plain tensors whatever the
strategy. Resuming needs the same number of processes (the run fingerprint has it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if there is one; pick the device (``auto``: CUDA if present)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; unchanged in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` from rank ``src`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """``strategy``: ``ddp`` (replicate) or ``fsdp`` (shard each block, then the root)."""
    if not info.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*model.encoder, *model.decoder]:
            fully_shard(block)
        return fully_shard(model)
    return nn.parallel.DistributedDataParallel(  # buffers are fixed position tables: nothing to sync
        model,
        device_ids=[info.local_rank] if info.device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The FourM inside a DDP wrapper (FSDP2 shards in place, so it is already the module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
