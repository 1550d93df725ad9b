"""Several GPUs through `torchrun`: one process per GPU, DistributedDataParallel, rank 0 writes.

`torchrun --nproc-per-node N -m trainer.cli fit ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
`init()` joins the process group from them (NCCL on GPUs, gloo on the CPU, so the same code is
tested on a CPU machine). Run without torchrun, everything here is the one-process identity:
`fit` calls these functions unconditionally and never branches on how it was started.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE > 1) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> torch.device:
    """Join the process group when launched by torchrun; the device this rank trains on."""
    if launched() and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs and reports."""
    return rank() == 0


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DDP when there are several processes, else itself."""
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's share of an epoch's sample order: every rank draws the same order (same
    seed), so the shares are disjoint; the order is cut to a multiple of the world size so every
    rank runs the same number of steps (DDP's all-reduce needs each rank at every step)."""
    n = world_size()
    usable = len(indices) - len(indices) % n
    return indices[rank():usable:n]


def mean(value: float, device: torch.device) -> float:
    """`value` averaged over ranks (a validation metric every rank must agree on)."""
    if world_size() == 1:
        return float(value)
    tensor = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
