"""Training batches that do not depend on how they are loaded: any number of workers or ranks.

Batch k of a run is a pure function of (dataset, seed, k): the images of epoch e come in the
order of a permutation seeded with seed + e, and the horizontal flips ([F] Sec. 2.3) are drawn
from a generator seeded with (seed, k). So DataLoader worker processes (which load batches in
parallel, each with its own random state) and torchrun ranks (which each take their slice of
every global batch) see exactly the batches one process would, and a resumed run continues
with batch k without replaying the ones before it.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class TrainingBatches(Dataset):
    """Item k: this rank's share of global batch k, as (images [(3, H, W)], targets [dict]).

    batch_size is the per-rank batch; the global batch has batch_size * world_size images, and
    rank r takes images r * batch_size ... (r + 1) * batch_size - 1 of it.
    """

    def __init__(self, dataset, batch_size: int, seed: int, flip_prob: float = 0.5,
                 rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.seed, self.flip_prob = dataset, batch_size, seed, flip_prob
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.per_epoch = max(1, len(dataset) // self.global_batch)

    def __len__(self) -> int:
        return 2 ** 62     # endless: the sampler says which batches to load

    def global_indices(self, k: int) -> list[int]:
        """Dataset indices of global batch k (all ranks)."""
        epoch, offset = divmod(k, self.per_epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        picked = order[offset * self.global_batch: (offset + 1) * self.global_batch]
        if len(picked) < self.global_batch:      # a dataset smaller than one global batch: wrap around
            picked = order.repeat(-(-self.global_batch // len(order)))[: self.global_batch]
        return picked.tolist()

    def __getitem__(self, k: int):
        flips = torch.rand(self.global_batch, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k))
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        images, targets = [], []
        for index, draw in zip(self.global_indices(k)[mine], flips[mine].tolist()):
            image, target = self.dataset[index]
            if draw < self.flip_prob:
                image, target = horizontal_flip(image, target)
            images.append(image)
            targets.append(target)
        return images, targets


def horizontal_flip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror image (3, H, W) left-right; a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2)."""
    width = image.shape[-1]
    x1, y1, x2, y2 = target["boxes"].unbind(dim=1)
    return image.flip(-1), {**target, "boxes": torch.stack([width - x2, y1, width - x1, y2], dim=1)}


def batch_loader(batches: TrainingBatches, first: int, last: int, *, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Batches first .. last - 1 in order, loaded by `workers` processes (0: in this process)."""
    return DataLoader(batches, batch_size=None, sampler=range(first, last), num_workers=workers,
                      collate_fn=_as_is, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def _as_is(batch):
    return batch


def default_workers() -> int:
    """Worker processes for loading: a few, but not more than the CPU cores minus one."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))
