"""Device-to-host syncs in one training step, counted on the CPU so that they do not creep back.

On a GPU, every op whose output size or Python value depends on tensor data (nonzero, boolean
masks, int(t), ...) makes the host wait for the device. None of them can be seen on the CPU by
timing, but all of them pass through PyTorch's dispatcher, where a TorchDispatchMode counts them.
"""
from collections import Counter

import pytest
import torch
from _models import make_model
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# One intra-op thread: the proposal layer then runs on the calling thread, where the mode is.
pytestmark = pytest.mark.usefixtures("one_thread")

_DATA_DEPENDENT = {aten._local_scalar_dense: "item", aten.nonzero: "nonzero",
                   aten.masked_select: "masked_select", aten._unique: "unique",
                   aten._unique2: "unique", aten.unique_dim: "unique",
                   aten.unique_consecutive: "unique"}
_INDEXING = (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_)


class HostSyncCounter(TorchDispatchMode):
    """Counts the aten ops that wait for the device on CUDA, by kind; `tolist` counts
    Tensor.tolist() (a copy to the host that the dispatcher does not see on the CPU).

    Boolean-mask `x[mask] = scalar` (index_put_ without accumulate, one-element value) is not
    counted: ATen turns it into masked_fill_, which needs no sync. torchvision's NMS is counted
    as "nms": its CUDA kernel finishes the greedy pass on the host."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _DATA_DEPENDENT:
            self.counts[_DATA_DEPENDENT[packet]] += 1
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None:
            self.counts["repeat_interleave"] += 1
        elif packet in _INDEXING and _has_mask(args[1]) and not _is_masked_fill(packet, args, kwargs):
            self.counts["bool_index"] += 1
        elif str(packet) == "torchvision.nms":
            self.counts["nms"] += 1
        return func(*args, **kwargs)


def _has_mask(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _is_masked_fill(packet, args, kwargs) -> bool:
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    return packet is not aten.index and not accumulate and args[2].numel() == 1


def count_host_syncs(num_images: int) -> Counter:
    """Sync counts of one joint training step (forward + backward) on num_images 64x64 images."""
    model = make_model().train()
    model.set_generator(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(num_images)]
    targets = [{"boxes": torch.tensor([[5.0, 5, 30, 25], [35, 15, 60, 55]]), "labels": torch.tensor([1, 4])}
               for _ in range(num_images)]
    counter = HostSyncCounter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counter.counts["tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist   # type: ignore[method-assign]
    try:
        with counter:
            losses = model(images, targets)
            sum(losses.values()).backward()
    finally:
        torch.Tensor.tolist = tolist   # type: ignore[method-assign]
    return counter.counts


def test_the_counter_sees_each_kind_of_sync():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        int(x.sum()), x.nonzero(), x[x > 2], torch.unique(x), x.repeat_interleave(torch.tensor([1] * 6))
        x.masked_select(x > 2)
        x[x > 2] = 0.0                          # masked_fill_: no sync
        x.repeat_interleave(torch.tensor([1] * 6), output_size=6)
    assert counter.counts == {"item": 1, "nonzero": 1, "bool_index": 1, "unique": 1,
                              "repeat_interleave": 1, "masked_select": 1}


@pytest.mark.parametrize("num_images", [2, 4])
def test_syncs_per_training_step(num_images):
    B = num_images
    counts = count_host_syncs(B)
    # Per image: int(foreground.sum()) in RoI sampling (item), the proposal layer's size filter
    # and the difficult-object filter of the targets (nonzero). Per batch: the RPN loss's
    # sampled / positive anchors and the detector's foreground RoIs (nonzero).
    assert counts["item"] <= B
    assert counts["nonzero"] <= 2 * B + 3
    assert counts["bool_index"] == counts["masked_select"] == counts["unique"] == 0
    assert counts["repeat_interleave"] == 0
    # At the door, per image: the pixel-range check and the target check (one tolist each);
    # in the proposal layer, one NMS per image.
    assert counts["tolist"] <= 2 * B
    assert counts["nms"] <= B
    assert sum(counts.values()) <= 6 * B + 3
