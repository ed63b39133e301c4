"""Several processes training one model: PyTorch's DistributedDataParallel under torchrun.

    torchrun --nproc-per-node 4 -m frcnn_edu.cli train --dataset voc:VOC2007 --batch-size 2 ...

torchrun starts one process per GPU (or CPU slot) and tells each its RANK, WORLD_SIZE and
LOCAL_RANK; `init_from_env` joins them into a process group (NCCL on GPUs, gloo on CPUs).
Every rank then trains on its share of each global batch (frcnn_edu.data.loader), and
DistributedDataParallel averages the gradients over the ranks after every backward pass, so all
ranks hold the same weights. Rank 0 alone writes checkpoints, the loss log and the progress bar.
BatchNorm (only in the tiny backbone) keeps per-rank batch statistics: each rank normalises its
own images, as a single process would with batch_size images.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and is_distributed() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def agree(*flags: bool, device: torch.device) -> list[bool]:
    """Every flag true on any rank -> true on all (one small all-reduce), so that all ranks stop,
    or raise, at the same iteration instead of waiting for each other forever."""
    if not is_distributed():
        return list(flags)
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class StageLoss(torch.nn.Module):
    """A stage's loss function as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, losses):
        super().__init__()
        self.model, self.losses = model, losses

    def forward(self, images, targets) -> dict:
        return self.losses(images, targets)


def wrap_for_ranks(model: torch.nn.Module, losses, device: torch.device):
    """`losses` itself in one process; under torchrun, a DistributedDataParallel module whose
    backward pass averages the gradients of the trainable parameters over all ranks."""
    if not is_distributed():
        return losses
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(StageLoss(model, losses), device_ids=device_ids)
